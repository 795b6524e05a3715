"""The efficacy benchmark harness on the committed digits models: a small real run of the baseline and
the negative-prompt analogue, the statistics and the outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lib_safedenoise.bench import efficacy



NEGATE = 9  # the class the unconditional model draws most often, so scenario 3 has something to remove


@pytest.fixture(scope="module")
def small_run():
    return efficacy.evaluate(negate=NEGATE, seed=0, samples=48, sampler="euler", steps=10, cfg_scale=2.0,
                             report_cfg=None, methods=["none", "negative_prompt"], batch=48,
                             collateral=[0, 4], log=lambda m: None)


def test_baseline_produces_the_negated_class_and_memorises(small_run):
    none = small_run["methods"]["none"]
    assert none["negated_rate"] >= 0.9
    assert none["collateral_accuracy_drop_pts"] == 0 and none["collateral_fid_increase_pct"] == 0
    assert 0.0 <= none["unconditional_share"] <= 0.35
    assert none["memorised_rate"] >= 0.2
    low, high = none["ci95"]["negated_rate"]
    assert low <= none["negated_rate"] <= high
    assert none["realism_confidence"] >= 0.8


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


def test_wilson_interval():
    low, high = efficacy.wilson_interval(0, 50)
    assert low == 0 and 0.05 < high < 0.1
    low, high = efficacy.wilson_interval(25, 50)
    assert low < 0.5 < high and math.isclose(0.5 - low, high - 0.5, rel_tol=1e-9)
    assert efficacy.wilson_interval(250, 500)[1] - efficacy.wilson_interval(250, 500)[0] < high - low


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
    assert "every target met in" in table


def test_targets_are_checked_against_the_baseline_and_the_rivals():
    none = {"negated_rate": 1.0, "collateral_accuracy_drop_pts": 0.0, "collateral_fid_increase_pct": 0.0,
            "unconditional_share": 0.1, "memorised_rate": 0.4, "realism_confidence": 0.99}
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
