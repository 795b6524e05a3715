"""Per-generation logic of the extension that needs no sampling: step mapping, image numbering,
XYZ overrides, the enforcement merge and the open-session bookkeeping."""

from types import SimpleNamespace

import pytest
import torch

from lib_safedenoise.webui import enforcement, hooks, infotext, xyz
from lib_safedenoise.webui.session import EngineSpec, GenerationSession, Negation, OpenSessions
from lib_safedenoise.webui.args import GenerationArgs
from lib_safedenoise.core.latent_bank import LatentBank


@pytest.mark.parametrize("steps, second_order, calls, expected", [
    (5, False, range(5), [0, 1, 2, 3, 4]),
    (4, True, range(7), [0, 0, 1, 1, 2, 2, 3]),  # Heun: two calls a step, one on the last
])
def test_sampler_step_from_denoiser_calls(steps, second_order, calls, expected):
    total = steps * 2 if second_order else steps  # SamplerData.total_steps
    got = [hooks.sampler_step(SimpleNamespace(step=k, steps=steps, total_steps=total)) for k in calls]
    assert got == [(s, steps) for s in expected]


def test_image_index_follows_both_create_infotext_callers():
    p = SimpleNamespace(iteration=2, batch_size=3, prompts=["a"] * 3)
    assert infotext.image_index(p, 1, p.prompts) == 7  # process_images_inner: batch prompts, local index
    assert infotext.image_index(p, 4, ["a"] * 9) == 4  # Processed.infotext: job prompts, job-wide index


def test_xyz_overrides_replace_the_accordion_values():
    args = GenerationArgs(True, ("a", "b"), (1.0, 1.0), "paper")
    p = SimpleNamespace(safe_denoiser_strength=0.25, safe_denoiser_window="0.1-0.5", safe_denoiser_bank="c")
    changed = xyz.apply_xyz_overrides(args, p)
    assert changed.banks == ("c",) and changed.strengths == (0.25,)
    assert (changed.window_start, changed.window_end) == (0.1, 0.5)
    assert xyz.apply_xyz_overrides(args, SimpleNamespace()) is args
    with pytest.raises(ValueError, match="0-0.25"):
        xyz.apply_xyz_overrides(args, SimpleNamespace(safe_denoiser_window="early"))


def test_enforced_names_merge_flag_and_setting_without_duplicates():
    assert enforcement.merge_enforced_names(" nsfw, gore ,", ["gore", "faces", ""]) == ("nsfw", "gore", "faces")
    assert enforcement.merge_enforced_names(None, []) == ()
    rules = enforcement.enforced_args(("nsfw",))
    assert rules.enabled and rules.strength_of(0) == 1.0 and rules == enforcement.enforced_args(("nsfw",))


def test_stale_sessions_are_those_whose_generation_left_the_stack():
    registry = OpenSessions()
    bank = LatentBank(name="b", latents=torch.ones(1, 4, 8, 8))
    bank.adapted(device="cpu", dtype=torch.float16, size=(8, 8))
    session = GenerationSession([], [], engine_factory=None)
    session.specs = [EngineSpec(GenerationArgs(), [Negation(bank, 1.0)])]

    def crashed_generation():
        p = SimpleNamespace()
        registry.begin(p, session)
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        crashed_generation()
    assert len(registry) == 1

    def outer_generation():
        p_outer = SimpleNamespace()
        registry.begin(p_outer, GenerationSession([], [], engine_factory=None))
        registry.drop_stale()  # e.g. an ADetailer pass starting inside this generation
        return len(registry), p_outer

    still_open, p_outer = outer_generation()
    assert still_open == 1  # the crashed one was dropped, the running one kept
    assert bank._views == {}  # and the crashed session's device copies were released
    assert registry.end(p_outer) is not None and len(registry) == 0
