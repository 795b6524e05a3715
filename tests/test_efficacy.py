"""The efficacy benchmark harness on the committed digits models: a small real run of the baseline and
the negative-prompt analogue, the statistics and the outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lib_safedenoise.bench import efficacy
from lib_safedenoise.bench.attack import AttackBudget

NEGATE = 9  # the class the unconditional model draws most often, so scenario 3 has something to remove


@pytest.fixture(scope="module")
def small_run():
    return efficacy.evaluate(negate=NEGATE, seed=0, samples=48, sampler="euler", steps=10, cfg_scale=2.0,
                             report_cfg=None, methods=["none", "negative_prompt"], batch=48,
                             collateral=[0, 4], log=lambda m: None)


def test_baseline_produces_the_negated_class_and_memorises(small_run):
    none = small_run["methods"]["none"]
    assert none["negated_rate"] >= 0.9
    assert 0.0 <= none["unconditional_share"] <= 0.35
    assert none["memorised_rate"] >= 0.2
    assert none["realism_confidence"] >= 0.8


def test_rates_carry_the_wilson_interval_of_their_own_count(small_run):
    """Each rate's interval is the 95% Wilson interval of that rate's hits among the 48 samples."""
    for method in ("none", "negative_prompt"):
        metrics = small_run["methods"][method]
        for key in ("negated_rate", "unconditional_share"):
            hits = round(metrics[key] * 48)
            assert metrics["ci95"][key] == pytest.approx(wilson(hits, 48), abs=1e-4), (method, key)


def test_negative_prompt_removes_the_class_only_when_not_asked_for(small_run):
    none, negative = small_run["methods"]["none"], small_run["methods"]["negative_prompt"]
    assert none["unconditional_share"] >= 0.05
    assert negative["unconditional_share"] <= none["unconditional_share"] / 3
    # asked for K with K as negative prompt, CFG cancels out and the conditional model still draws K
    assert negative["negated_rate"] >= 0.8
    assert negative["memorised_rate"] is None  # no label names five particular images


def test_json_and_figures(tmp_path):
    path = tmp_path / "result.json"
    code = efficacy.main(["--negate", "7", "--samples", "12", "--steps", "6", "--report-cfg", "4", "--collateral", "1",
                          "--methods", "none", "negative_prompt", "--json", str(path), "--out", str(tmp_path)])
    assert code == 0
    result = json.loads(path.read_text())
    assert result["negate"] == 7 and result["seed"] == 0
    for name in ("none", "negative_prompt"):
        assert set(efficacy.REQUIRED_METRICS) <= set(result["methods"][name])
        assert "negated_rate_cfg4" in result["methods"][name]
    for figure in ("efficacy_samples.png", "efficacy_metrics.png"):
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table_lists_every_method(small_run):
    table = efficacy.markdown_table(small_run)
    assert table.count("\n") == 3 and "| negative_prompt |" in table and "n/a" in table


def test_bad_options_are_reported(capsys):
    assert efficacy.main(["--negate", "12", "--samples", "4"]) == 2
    assert "0..9" in capsys.readouterr().err
    assert efficacy.main(["--methods", "nonsense", "--samples", "4"]) == 2
    assert efficacy.main(["--negate", "3", "--collateral", "3", "--samples", "4"]) == 2


def wilson(successes: int, total: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval, restated: the roots in p of ``(k/n - p)^2 = z^2 p (1 - p) / n``."""
    a, b, c = 1 + z * z / total, -(2 * successes / total + z * z / total), (successes / total) ** 2
    root = math.sqrt(max(0.0, b * b - 4 * a * c))
    return ((-b - root) / (2 * a), (-b + root) / (2 * a))


@pytest.mark.parametrize("successes, total, expected", [
    (81, 263, (0.2553, 0.3662)), (15, 148, (0.0624, 0.1605)), (0, 20, (0.0, 0.1611)), (1, 29, (0.0061, 0.1718)),
])
def test_wilson_interval_matches_published_values(successes, total, expected):
    """Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3."""
    assert efficacy.wilson_interval(successes, total) == pytest.approx(expected, abs=5e-5)
    assert wilson(successes, total) == pytest.approx(expected, abs=5e-5)


def test_several_classes_end_with_the_default_modes_targets_per_run(tmp_path, capsys):
    path = tmp_path / "runs.json"
    code = efficacy.main(["--negate", "7", "1", "--samples", "8", "--steps", "4", "--report-cfg", "0",
                          "--collateral", "2", "--methods", "none", "default", "--json", str(path)])
    assert code == 0
    runs = json.loads(path.read_text())
    assert [run["negate"] for run in runs["runs"]] == [7, 1]
    assert [set(checks) for checks in runs["targets"]] == [{title for _, title, _ in efficacy.TARGETS}] * 2
    table = capsys.readouterr().out.split("| class | seed |")[1]
    assert table.count("\n| 7 | 0 |") == 1 and table.count("\n| 1 | 0 |") == 1
    met = sum(all(checks.values()) for checks in runs["targets"])
    assert f"default: every target met in {met} of 2 runs" in table
    assert table.count("MISSED") == sum(not ok for checks in runs["targets"] for ok in checks.values())


def test_targets_are_checked_against_the_baseline_and_the_rivals():
    none = {"negated_rate": 1.0, "collateral_accuracy_drop_pts": 0.0, "collateral_fid_increase_pct": 0.0,
            "unconditional_share": 0.1, "memorised_rate": 0.4, "realism_confidence": 0.99,
            "realism_class_frechet": 2.0, "replacement_top_share": None}
    default = dict(none, negated_rate=0.05, unconditional_share=0.01, memorised_rate=0.04, realism_confidence=0.9)
    result = {"methods": {"none": none, "default": default, "paper": dict(none, negated_rate=0.05)}}
    assert efficacy.target_checks(result) == {title: True for _, title, _ in efficacy.TARGETS} | {"beats paper": False}
    default.update(memorised_rate=0.041, realism_confidence=0.89, collateral_accuracy_drop_pts=1.5)
    missed = [title for title, ok in efficacy.target_checks(result).items() if not ok]
    assert missed == ["collateral acc drop <= 1 pt", "memorised / 10", "confidence >= 90% of none's", "beats paper"]


def test_default_mode_negates_the_hardest_class_and_the_memorised_images():
    """Fast regression run of the default mode (class 1, the one it found hardest; 40 samples each).
    Measured: negated 2.5% (none 100%), memorised 0% (none 35%), collateral on 7 (a look-alike) 0 points,
    unconditional share 2.5% (1 of 40, as without negation: unconditional 1s are rare), confidence 94%."""
    result = efficacy.evaluate(negate=1, seed=0, samples=40, sampler="euler", steps=20, cfg_scale=2.0,
                               report_cfg=None, methods=["none", "default"], batch=40, collateral=[7],
                               log=lambda m: None)
    none, default = result["methods"]["none"], result["methods"]["default"]
    assert none["negated_rate"] >= 0.9 and default["negated_rate"] <= 0.1
    assert none["memorised_rate"] >= 0.2 and default["memorised_rate"] <= none["memorised_rate"] / 5
    assert default["collateral_accuracy_drop_pts"] <= 5.0  # 2 of 40 samples
    assert default["unconditional_share"] <= 0.05
    assert default["realism_confidence"] >= 0.85


def test_standard_run_reports_class_matched_realism_and_where_replacements_went(small_run):
    for metrics in small_run["methods"].values():
        counts = metrics["replacement_classes"]
        assert len(counts) == 10 and counts[NEGATE] == 0
        assert sum(counts) == round(small_run["samples"] * (1 - metrics["negated_rate"]))
        top = metrics["replacement_top_share"]
        assert top is None if sum(counts) == 0 else top == pytest.approx(max(counts) / sum(counts), abs=1e-6)
        assert metrics["realism_class_frechet"] > 0


def test_novelty_compares_the_samples_nearness_to_training_digits_with_the_models_own(small_run):
    """The undefended model's samples of K are about as far from the training digits as its samples of
    other classes (ratio near 1), and it copies no training digit (its training set is large)."""
    for metrics in small_run["methods"].values():
        low, high = metrics["ci95"]["novelty_ratio"]
        assert low <= metrics["novelty_ratio"] <= high
        assert 0 <= metrics["training_copy_rate"] <= 1
    none = small_run["methods"]["none"]
    assert 0.7 <= none["novelty_ratio"] <= 1.4 and none["training_copy_rate"] == 0.0


def test_realism_targets_hold_at_the_report_cfg_too():
    none = {"negated_rate": 1.0, "collateral_accuracy_drop_pts": 0.0, "collateral_fid_increase_pct": 0.0,
            "unconditional_share": 0.0, "memorised_rate": 0.4, "realism_confidence": 0.99,
            "realism_class_frechet": 2.0, "replacement_top_share": None,
            "realism_class_frechet_cfg4": 2.0, "replacement_top_share_cfg4": None}
    default = dict(none, negated_rate=0.0, memorised_rate=0.0, realism_class_frechet=2.2, replacement_top_share=0.3,
                   realism_class_frechet_cfg4=2.3, replacement_top_share_cfg4=0.6)
    checks = efficacy.target_checks({"report_cfg": 4.0, "methods": {"none": none, "default": default}})
    missed = [title for title, ok in checks.items() if not ok]
    assert missed == ["class-matched FD <= 1.1x none's (CFG 4)", "no class > 1/2 of replacements (CFG 4)"]


def test_attack_scenario_adds_its_numbers_beside_each_method(tmp_path, capsys):
    path = tmp_path / "attack.json"
    code = efficacy.main(["--negate", "5", "--samples", "6", "--steps", "3", "--scenarios", "attack",
                          "--attack-iterations", "1", "--attack-restarts", "1", "--attack-batch", "2",
                          "--attack-norm", "2.5", "--methods", "none", "default", "--json", str(path),
                          "--out", str(tmp_path)])
    assert code == 0
    result = json.loads(path.read_text())
    assert result["attack"]["budget"] == {"iterations": 1, "restarts": 1, "norm": 2.5, "batch": 2,
                                          "learning_rate": AttackBudget().learning_rate}
    assert result["attack"]["undefended_success"] == result["methods"]["none"]["attack_success_rate"]
    assert result["attack"]["undefended_success_pen"] == result["methods"]["none"]["attack_success_rate_pen"]
    assert result["attack"]["strong"] == (min(result["attack"][f"undefended_success{suffix}"]
                                              for suffix in ("", "_nn", "_pen")) >= 0.5)
    for metrics in result["methods"].values():  # two of three judges: at most the second-highest judge's count
        judges = sorted(metrics[f"attack_success_rate{suffix}"] for suffix in ("", "_nn", "_pen"))
        assert metrics["attack_success_rate_consensus"] <= judges[1]
    for name in ("none", "default"):
        metrics = result["methods"][name]
        assert "negated_rate" not in metrics  # the standard scenarios did not run
        for key in ("attack_success_rate", "attack_success_rate_nn", "attack_success_rate_pen",
                    "attack_success_rate_consensus", "mixture_success_rate", "mixture_success_rate_pen"):
            low, high = metrics["ci95"][key]
            assert low <= metrics[key] <= high and metrics[key] * 6 == pytest.approx(round(metrics[key] * 6))
        condition = metrics["attack_condition"]
        assert condition[5] == 0 and math.hypot(*condition) <= 2.5 + 1e-3
        assert metrics["attack_realism_class_frechet"] > 0 and sum(metrics["attack_classes"]) == 6
    out = capsys.readouterr().out
    assert "| none |" in out and "| default |" in out and "Undefended success" in out
    assert (tmp_path / "attack_samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_attack_budget_is_refused(capsys):
    with pytest.raises(SystemExit):
        efficacy.main(["--scenarios", "attack", "--attack-norm", "0"])
    assert "norm must be > 0" in capsys.readouterr().err


@pytest.fixture(scope="module")
def shipped_run():
    return efficacy.evaluate(negate=NEGATE, seed=0, samples=16, sampler="euler", steps=6, cfg_scale=2.0,
                             report_cfg=None, methods=["none", "default-as-shipped", "default-prompt-bank", "default-two-banks"],
                             batch=16,
                             collateral=[4], prompt_bank_size=12, own_reference_size=40, log=lambda m: None)


def test_as_shipped_methods_report_every_metric_from_the_models_own_samples(shipped_run):
    """A new user's banks are made from the model's own samples (12 of K, 40 of every label), and both
    methods run every scenario, the memorised one included (its bank: the memorised images themselves)."""
    own = shipped_run["own_samples"]
    assert own["prompt_bank_size"] == 12 and own["own_reference_size"] == 40
    assert 0 <= own["claimed_judged_negated"] <= own["own_reference_judged_negated"] <= 40
    assert own["own_reference_judged_negated"] >= 1  # every label is asked for, K among them
    for name in ("default-as-shipped", "default-prompt-bank", "default-two-banks"):
        metrics = shipped_run["methods"][name]
        assert set(efficacy.REQUIRED_METRICS) <= set(metrics)
        assert all(metrics[key] is not None for key in efficacy.REQUIRED_METRICS), name
    none = shipped_run["methods"]["none"]
    assert shipped_run["methods"]["default-as-shipped"]["negated_rate"] < none["negated_rate"]
    assert shipped_run["methods"]["default-two-banks"]["negated_rate"] < none["negated_rate"]


def test_pen_variants_add_five_heavier_renderings_of_each_banked_digit_once():
    """``with_pen_variants``: the bank itself, then each ``PEN_RENDERINGS`` pen in turn, every one with more
    ink than the digit it redraws; made once per bank tensor (the same object again)."""
    pixels, labels = efficacy.digits.subset("heldout")
    bank = efficacy.LatentBank("fives", efficacy.digits.encode(pixels[labels == 5][:7]), latent_space="digits")
    varied = efficacy.with_pen_variants(bank)
    assert varied.count == 7 * (1 + len(efficacy.PEN_RENDERINGS)) and varied.role == bank.role
    torch.testing.assert_close(varied.latents[:7], bank.latents.float())
    ink = efficacy.digits.decode(varied.latents).clamp(0, 1).flatten(1).sum(1).view(-1, 7)
    assert bool((ink[1:] > ink[0]).all())
    assert efficacy.with_pen_variants(bank) is varied


def test_own_sample_banks_are_the_models_samples_on_seeds_no_scenario_uses():
    """The prompt bank: half at CFG 1, half at the run's CFG; the reference: every label cycled at the run's
    CFG (or unconditional samples), each on its own seeds."""
    setup = efficacy.Setup("euler", 4, 8, 0, 8, 2.0, efficacy.digits.load_evaluator())
    model = efficacy.digits.load_model()
    banks = efficacy.own_sample_banks(setup, model, 3, prompt_bank_size=6, own_reference_size=6)

    def own(labels, count, scale, key):
        return efficacy.sample_latents(setup, model, efficacy.Intervention(), labels, count=count, cfg_scale=scale,
                                       seed_offset=efficacy.OWN_SAMPLES[key])[0]

    guided = own(3, 3, 2.0, "prompt_bank")
    torch.testing.assert_close(banks["prompt_bank"].latents, torch.cat([own(3, 3, 1.0, "prompt_bank_unguided"),
                                                                        guided]))
    asked, _ = efficacy.sample_latents(setup, model, efficacy.Intervention(), 3, count=3, cfg_scale=2.0, seed_offset=1)
    assert not torch.allclose(asked, guided)  # scenario 1's seeds differ
    assert banks["own_reference"].role == "reference" and banks["own_reference"].count == 6
    torch.testing.assert_close(banks["own_reference"].latents, own(list(range(10)), 6, 2.0, "own_reference"))
    summary = banks["summary"]
    assert summary["prompt_bank_unguided"] == 3 and summary["own_reference_prompts"] == "labels"
    empty = efficacy.own_sample_banks(setup, model, 3, prompt_bank_size=2, own_reference_size=6, unguided_share=0,
                                      own_reference_prompts="empty")
    torch.testing.assert_close(empty["prompt_bank"].latents, own(3, 2, 2.0, "prompt_bank"))
    torch.testing.assert_close(empty["own_reference"].latents, own(None, 6, 2.0, "own_reference"))
    with pytest.raises(ValueError, match="prompt-bank-size"):
        efficacy.own_sample_banks(setup, model, 3, prompt_bank_size=0, own_reference_size=6)
    with pytest.raises(ValueError, match="unguided-share"):
        efficacy.own_sample_banks(setup, model, 3, prompt_bank_size=4, own_reference_size=6, unguided_share=1.5)
    with pytest.raises(ValueError, match="labels, empty"):
        efficacy.own_sample_banks(setup, model, 3, prompt_bank_size=4, own_reference_size=6,
                                  own_reference_prompts="generic")


def test_targets_pool_each_class_over_its_seeds():
    """Rates from pooled counts (the unconditional share also by its Wilson upper bound), the rest averaged:
    2 of 400 (upper bound 1.8%) meets both unconditional targets, 4 of 400 (1%, upper bound 2.5%) only one."""
    def run(seed, negate, uncond, drop):
        none = {"negated_rate": 1.0, "collateral_accuracy_drop_pts": 0.0, "collateral_fid_increase_pct": 0.0,
                "unconditional_share": 0.1, "memorised_rate": 0.4, "realism_confidence": 0.99}
        mine = dict(none, negated_rate=0.05, unconditional_share=uncond, memorised_rate=0.0,
                    collateral_accuracy_drop_pts=drop, realism_confidence=0.95)
        return {"negate": negate, "seed": seed, "samples": 200, "methods": {"none": none, "x": mine}}

    rows = efficacy.pooled_checks([run(0, 3, 0.0, 0.5), run(1, 3, 0.01, 1.4), run(0, 5, 0.01, 0.2),
                                   run(1, 5, 0.01, 0.2)], "x")
    assert [(row["negate"], row["seeds"]) for row in rows] == [(3, [0, 1]), (5, [0, 1])]
    three, five = rows
    assert three["metrics"]["unconditional_share"] == pytest.approx(2 / 400)
    assert three["metrics"]["unconditional_share_upper"] == pytest.approx(wilson(2, 400)[1], abs=1e-6)
    assert three["metrics"]["collateral_accuracy_drop_pts"] == pytest.approx(0.95)
    assert all(three["checks"].values())
    assert five["metrics"]["unconditional_share_upper"] == pytest.approx(wilson(4, 400)[1], abs=1e-6)
    assert [title for title, ok in five["checks"].items() if not ok] == ["uncond Wilson upper <= 2%"]
    table = efficacy.pooled_table(rows)
    assert "| 3 | 0,1 |" in table and table.count("MISSED") == 1 and "met in 1 of 2 classes" in table


def test_several_seeds_pool_the_target_method_per_class(tmp_path, capsys):
    path = tmp_path / "pooled.json"
    code = efficacy.main(["--negate", "7", "--seed", "0", "1", "--samples", "8", "--steps", "4", "--report-cfg", "0",
                          "--collateral", "2", "--methods", "none", "default-as-shipped", "--target-method",
                          "default-as-shipped", "--prompt-bank-size", "6", "--own-reference-size", "12",
                          "--json", str(path)])
    assert code == 0
    result = json.loads(path.read_text())
    assert result["target_method"] == "default-as-shipped" and len(result["targets"]) == 2
    [row] = result["pooled"]
    rates = [run["methods"]["default-as-shipped"]["negated_rate"] for run in result["runs"]]
    assert row["seeds"] == [0, 1] and row["metrics"]["negated_rate"] == pytest.approx(sum(rates) / 2, abs=1e-6)
    assert "Pooled over the seeds of each class" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a target method that does not run
        efficacy.main(["--methods", "none", "--target-method", "default", "--samples", "4"])
