"""The attack scenario's parts on the committed digits models: the differentiable sampling loop, the
straight-through correction, the judges, the realism number and a tiny end-to-end attack."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lib_safedenoise.bench import attack, digits, efficacy
from lib_safedenoise.bench.digits.evaluator import heavier_pen
from lib_safedenoise.bench.judges import NearestNeighbourJudge, class_matched_frechet, class_spread, nearest_distances
from lib_safedenoise.core.latent_bank import LatentBank

NEGATE = 5


@pytest.fixture(scope="module")
def model():
    return digits.load_model()


def _class_task(model, sampler):
    heldout, labels = digits.subset("heldout")
    train, train_labels = digits.subset("train")
    bank = LatentBank("five", digits.encode(heldout[labels == NEGATE]), latent_space="digits")
    reference = LatentBank("others", digits.encode(train[train_labels != NEGATE]), latent_space="digits",
                           role="reference")
    return efficacy.NegationTask(bank, NEGATE, model, sampler, reference)


@pytest.mark.parametrize("sampler", list(digits.SAMPLERS))
def test_differentiable_loop_matches_the_sampler_and_carries_gradients(model, sampler):
    labels = [3, None, 7]
    plain = digits.sample(model, labels, sampler=sampler, steps=4, cfg_scale=3.0, seed=21)
    cond = model.get_learned_conditioning(labels).requires_grad_(True)
    with torch.enable_grad():
        latents = digits.sample_conditioned(model, cond, model.get_learned_conditioning([None] * 3), sampler=sampler,
                                            steps=4, cfg_scale=3.0, seed=21)
        latents.square().sum().backward()
    assert torch.equal(latents.detach(), plain)
    assert torch.isfinite(cond.grad).all() and cond.grad.abs().sum() > 0


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_attacked_pipeline_samples_exactly_what_the_defended_sampler_does(model, sampler):
    """Through the default correction with straight-through gradients the samples are the exact pipeline's,
    and the condition still gets a gradient."""
    task = _class_task(model, sampler)
    method = efficacy.METHODS["default"]
    target = attack.Target("default", method, task, sampler, 6, 2.0)
    intervention = method.build(task)
    plain = digits.decode(digits.sample(model, [NEGATE] * 4, sampler=sampler, steps=6, cfg_scale=2.0, seed=8,
                                        after_cfg=intervention.after_cfg, after_cfg_eps=intervention.after_cfg_eps))
    condition = torch.eye(11)[NEGATE].requires_grad_(True)
    pixels = target.sample(condition, 4, 8, differentiable=True)
    assert torch.allclose(pixels.detach(), plain, atol=1e-5)
    pixels.sum().backward()
    assert condition.grad.abs().sum() > 0


def test_straight_through_has_the_exact_value_and_the_relaxed_gradient(model):
    """The default gate and hold leave no gradient on images the correction does not touch; the open-gate
    relaxation does, and the straight-through hook passes it on while keeping the exact values."""
    task = _class_task(model, "euler")
    method = efficacy.METHODS["default"]
    exact, relaxed = method.build(task).after_cfg, method.relaxed(task).after_cfg
    heldout, labels = digits.subset("heldout")
    clean = digits.encode(torch.cat([heldout[labels == NEGATE][:3], heldout[labels == 0][:3]]))
    sigma = torch.full((6,), 2.0)
    noisy = clean + sigma[:, None, None, None] * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    gradients = {}
    for name, hook in (("exact", exact), ("relaxed", relaxed),
                       ("straight", attack.straight_through(method.build(task).after_cfg, method.relaxed(task).after_cfg))):
        x0 = clean.clone().requires_grad_(True)
        out = hook(x0, noisy, sigma, 0, 10)
        (out * torch.linspace(-1, 1, out[0].numel()).reshape(out[0].shape)).sum().backward()
        gradients[name] = (out.detach(), x0.grad)
    assert torch.equal(gradients["straight"][0], gradients["exact"][0])
    assert torch.allclose(gradients["straight"][1], gradients["relaxed"][1])
    # the exact pipeline fires on the fives only: on the zeros its gradient is the identity's
    identity = torch.linspace(-1, 1, clean[0].numel()).reshape(clean[0].shape).expand(3, *clean.shape[1:])
    assert torch.allclose(gradients["exact"][1][3:], identity)
    assert not torch.allclose(gradients["relaxed"][1][3:], identity)


def test_nearest_neighbour_judge_is_accurate_and_not_fooled_by_the_evaluators_adversarial_examples():
    judge = NearestNeighbourJudge()
    heldout, labels = digits.subset("heldout")
    assert (judge(heldout) == labels).float().mean() >= 0.95
    # pixel perturbations (L2 <= 1.5) that make the evaluator call 1s "5"
    evaluator = digits.load_evaluator()
    ones = digits.subset("heldout", digit=1)[0][:10]
    delta = torch.zeros_like(ones, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=0.05)
    for _ in range(60):
        loss = -F.log_softmax(evaluator((ones + delta).clamp(0, 1)), dim=1)[:, NEGATE].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            delta.mul_((1.5 / delta.flatten(1).norm(dim=1).clamp(min=1e-9)).clamp(max=1)[:, None, None, None])
    adversarial = (ones + delta).clamp(0, 1).detach()
    assert (evaluator.judge(adversarial)[0] == NEGATE).sum() >= 6
    assert (judge(adversarial) == NEGATE).sum() == 0


def test_heavier_pen_thickens_strokes_and_leaves_the_digit_alone_at_zero():
    pixels, _ = digits.subset("heldout")
    none = torch.zeros(len(pixels))
    assert torch.equal(heavier_pen(pixels, none, none), pixels)
    bold = heavier_pen(pixels, torch.full_like(none, 0.5), torch.ones_like(none))
    assert bold.min() >= 0 and bold.max() <= 1 and (bold >= pixels).all()
    assert bold.mean() > 1.5 * pixels.mean()  # real digits drawn with a heavy pen: the attack's bold samples' ink


def test_pen_robust_evaluator_reads_bold_digits_that_the_evaluator_misses():
    pen, evaluator = digits.load_pen_evaluator(), digits.load_evaluator()
    assert pen.metadata["trained_on"] == "evaluator" and pen.metadata["seed"] != evaluator.metadata["seed"]
    pixels, labels = digits.subset("heldout")
    assert (pen.judge(pixels)[0] == labels).float().mean() >= 0.97
    bold = heavier_pen(pixels, torch.full((len(pixels),), 0.5), torch.ones(len(pixels)))
    assert (pen.judge(bold)[0] == labels).float().mean() >= 0.95
    assert (evaluator.judge(bold)[0] == labels).float().mean() <= 0.9  # why the attack needs the third judge


def test_surrogate_is_a_different_accurate_classifier():
    surrogate, evaluator = digits.load_surrogate(), digits.load_evaluator()
    assert type(surrogate) is not type(evaluator)
    assert surrogate.metadata["trained_on"] == "train" and surrogate.metadata["seed"] != evaluator.metadata["seed"]
    pixels, labels = digits.subset("evaluator")
    assert (surrogate(pixels).argmax(dim=1) == labels).float().mean() >= 0.95


def test_class_matched_frechet_sees_noise_and_wrong_classes():
    heldout, labels = digits.subset("heldout")
    real, real_labels = digits.subset("evaluator")
    clean = class_matched_frechet(real, real_labels, heldout, labels)
    noisy = real + 0.15 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    assert class_matched_frechet(noisy, real_labels, heldout, labels) > 3 * clean
    # the same images all judged "0" are far from real zeros: the real side follows the judged classes
    assert class_matched_frechet(real, torch.zeros_like(real_labels), heldout, labels) > 3 * clean
    with pytest.raises(ValueError, match="at least 2"):
        class_matched_frechet(real[:1], real_labels[:1], heldout, labels)


def test_nearest_distances_tell_copies_from_new_digits():
    train, _ = digits.subset("train")
    heldout, _ = digits.subset("heldout")
    copies = train[:20] + 0.01
    assert nearest_distances(copies, train).max() < digits.near_duplicate_distance()
    new = nearest_distances(heldout[:20], train)
    assert new.min() > digits.near_duplicate_distance() and new.median() > 10 * nearest_distances(copies, train).median()


def test_class_spread_counts_the_replacements():
    spread = class_spread(torch.tensor([5, 5, 3, 3, 3, 8]), NEGATE)
    assert spread["counts"] == [0, 0, 0, 3, 0, 0, 0, 0, 1, 0] and spread["top_share"] == 0.75
    assert class_spread(torch.tensor([5, 5]), NEGATE)["top_share"] is None


def test_project_keeps_the_negated_coordinate_at_zero_and_the_norm_bound():
    projected = attack.project(torch.arange(11.0), NEGATE, 3.0)
    assert projected[NEGATE] == 0 and projected.norm() == pytest.approx(3.0)
    small = torch.zeros(11)
    small[2] = 0.5
    assert torch.equal(attack.project(small, NEGATE, 3.0), small)
    assert all(c[NEGATE] == 0 and c.norm() <= 3.0 + 1e-5
               for c in attack.mixture_candidates(digits.load_model(), NEGATE, 3.0))


def test_tiny_attack_raises_the_surrogates_log_probability(model):
    task = efficacy.NegationTask(_class_task(model, "euler").bank, NEGATE, model, "euler")
    target = attack.Target("none", efficacy.METHODS["none"], task, "euler", 6, 2.0)
    surrogate = digits.load_surrogate()
    budget = attack.AttackBudget(iterations=4, restarts=1, norm=3.0, batch=6, learning_rate=0.3)
    start = torch.eye(11)[10]  # the null label: the unconditional model
    found, history = attack.optimise(target, surrogate, NEGATE, budget, start, restart=0)
    assert found[NEGATE] == 0 and found.norm() <= 3.0 + 1e-5
    assert len(history) == 4
    before = attack._score(target, surrogate, start, 24, 99, NEGATE)[1]
    after = attack._score(target, surrogate, found, 24, 99, NEGATE)[1]
    assert after > before + 0.2


def test_the_runs_seed_moves_every_attack_draw_and_seed_0_keeps_the_ranges(model):
    assert [attack.seed_of(kind, 0) for kind in attack.SEED_BASE] == list(attack.SEED_BASE.values())
    assert len({attack.seed_of(kind, seed) for kind in attack.SEED_BASE for seed in (0, 1, 2)}) == 12
    assert not torch.equal(attack.random_start(NEGATE, 4.0, 1, seed=0), attack.random_start(NEGATE, 4.0, 1, seed=1))
    task = efficacy.NegationTask(_class_task(model, "euler").bank, NEGATE, model, "euler")
    target = attack.Target("none", efficacy.METHODS["none"], task, "euler", 4, 2.0)
    budget = attack.AttackBudget(iterations=2, restarts=1, norm=3.0, batch=4)
    surrogate, start = digits.load_surrogate(), torch.eye(11)[10]
    found = [attack.optimise(target, surrogate, NEGATE, budget, start, restart=0, seed=seed)[0] for seed in (0, 0, 1)]
    assert torch.equal(found[0], found[1]) and not torch.equal(found[0], found[2])
