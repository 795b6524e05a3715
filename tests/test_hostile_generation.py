"""Hostile and careless input against a server with enforced banks (issue 10, "Enforcement must fail closed").

The rule: no request, no file in the bank folder and no fault yields an image without the enforced
correction; when the enforced correction cannot run, the generation stops with no image and says why; a
request's own problems drop only the request's own correction; the infotext and report never claim a
correction that did not run. Generations go through the host stub (tests/host_stub) as in
tests/test_enforcement.py; the library cases (5) call the engine directly.

Faults are injected without replacing our own code: bank files that really hold NaN or bad bytes, a file
deleted or rewritten by a CFG callback mid-generation, and, for exceptions raised inside a correction,
the engine factory the server hands the session (``server.engine_factory``, the boundary between the
server's configuration and the session) wrapped so that the real engine it builds fails at a given step.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace

import pytest
import torch

from lib_safedenoise.banks import fileformat, metadata, spaces
from lib_safedenoise.core.engine import SafeDenoiser
from lib_safedenoise.core.latent_bank import LatentBank
from lib_safedenoise.core.modes import MAX_STRENGTH, MODES
from lib_safedenoise.webui import server
from lib_safedenoise.webui.args import GenerationArgs
from lib_safedenoise.webui.keys import INFOTEXT_ENFORCED_KEY, INFOTEXT_ERROR_KEY, INFOTEXT_KEY, REPORT_KEY
from tests.host_stub import webui_fixtures as wf

STEPS = 6
REQUEST = dict(prompt=str(wf.NEGATED_CLASS), seed=21, steps=STEPS, cfg_scale=2.0)
MINE = "mine"  # the request's own bank (another digit), next to the enforced wf.BANK
FAULT_STEP = 2  # 0-based sampler step at which an injected fault strikes


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Latents of the same request on a server without enforcement: off, and with the enforced settings."""
    return wf.open_server_latents(tmp_path_factory.mktemp("open"), REQUEST)


@pytest.fixture
def enforced(tmp_path):
    webui = wf.start(tmp_path, enforce=wf.BANK)
    wf.write_bank(webui.bank_dir, MINE, digit=5)
    return webui


def infotext(response) -> str:
    return json.loads(response["info"])["infotexts"][0]


def params(response) -> dict:
    from modules import infotext_utils

    return infotext_utils.parse_generation_parameters(infotext(response))


def report(response) -> dict:
    return json.loads(response["info"])["extra_generation_params"][REPORT_KEY]


def assert_enforced_exactly(response, reference):
    """An image corrected exactly as the enforced settings say, and the infotext says so once."""
    off, on = reference
    assert len(response["images"]) == 1
    latents = response["p"].latents[0]
    assert not torch.equal(latents, off)
    assert torch.equal(latents, on)
    assert infotext(response).count(INFOTEXT_ENFORCED_KEY) == 1


def assert_stopped(response, *words):
    """No image, and the infotext and report say why."""
    assert response["images"] == []
    error = params(response)[INFOTEXT_ERROR_KEY]
    assert "enforced" in error and all(word in error for word in words), error
    assert INFOTEXT_ENFORCED_KEY not in params(response)  # no claim of a correction that did not run


def write_raw_bank(path, latents: torch.Tensor, *, role: str = "reference"):
    """A bank file with a valid header and hash whatever its latents hold (NaN included): what someone with
    write access to the bank folder can put there without going through our writers."""
    from safetensors.torch import save_file

    data = latents.half().contiguous()
    meta = metadata.new_metadata(title=path.stem, count=data.shape[0], shape=tuple(data.shape[1:]),
                                 space=spaces.latent_space("digits"), role=role)
    digest = hashlib.sha256(data.numpy().tobytes()).hexdigest()
    save_file({"latents": data}, str(path), metadata=replace(meta, hash_sha256="0x" + digest).to_strings())
    return path


def nan_latents(count: int = 8) -> torch.Tensor:
    latents = wf.ordinary_latents()[:count].clone()
    latents[0, 0, 0, 0] = math.nan
    return latents


# ---- 1. strength ------------------------------------------------------------------------------------

@pytest.mark.parametrize("strength", ["1e300", "1e30", "1e6", "nan", "-1", "inf", f"{MAX_STRENGTH * 1.01}"])
def test_a_strength_outside_0_to_s_max_is_a_request_error_and_enforcement_still_runs(enforced, reference,
                                                                                    strength):
    response = enforced.txt2img(**REQUEST, safe_denoiser=[True, [wf.BANK], strength])
    assert_enforced_exactly(response, reference)
    assert "strengths" in params(response)[INFOTEXT_ERROR_KEY]


def test_s_max_is_shared_by_the_request_args_and_the_engine():
    bank = LatentBank("b", torch.randn(3, 4, 8, 8))
    assert GenerationArgs(True, ("b",), (MAX_STRENGTH,)).strengths == (MAX_STRENGTH,)
    with pytest.raises(ValueError, match=f"\\[0, {MAX_STRENGTH:g}\\]"):
        GenerationArgs(True, ("b",), (MAX_STRENGTH * 1.5,))
    SafeDenoiser([(bank, MAX_STRENGTH)])
    for strength in (MAX_STRENGTH * 1.5, 1e300, math.nan, -0.5, math.inf):
        with pytest.raises(ValueError, match="strength must lie in"):
            SafeDenoiser([(bank, strength)])
    assert MODES["paper"].max_strength == math.inf  # its strength is the paper's eta (see modes.MAX_STRENGTH)
    with pytest.raises(ValueError, match="strength"):
        SafeDenoiser([(bank, math.inf)], mode="paper")


# ---- 2, 3. reference banks --------------------------------------------------------------------------

def bad_reference_banks(folder):
    """A reference bank whose file really holds NaN, one whose bytes were damaged after it was written,
    and a channel-normalised one (a valid file that only the released code's modes can read)."""
    write_raw_bank(folder / f"nan-ref{fileformat.BANK_SUFFIX}", nan_latents())
    damaged = wf.write_bank(folder, "damaged-ref", bank=wf.ordinary_latents()[:8], role="reference")
    raw = bytearray(damaged.read_bytes())
    raw[-3] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    latents = wf.ordinary_latents()[:8]
    unit = latents / latents.norm(dim=1, keepdim=True)
    meta = metadata.new_metadata(title="unit-ref", count=8, shape=tuple(unit.shape[1:]),
                                 space=spaces.latent_space("digits"), role="reference", channel_normalized=True)
    fileformat.save_bank(folder / f"unit-ref{fileformat.BANK_SUFFIX}", meta, unit.half())
    return ("nan-ref", "damaged-ref", "unit-ref")


def test_bad_reference_banks_are_skipped_and_reported_and_enforcement_runs_without_them(enforced, reference):
    names = bad_reference_banks(enforced.bank_dir)
    response = enforced.txt2img(**REQUEST)
    assert_enforced_exactly(response, reference)  # the fallback (no reference bank), as on a folder without them
    error = params(response)[INFOTEXT_ERROR_KEY]
    assert all(f"reference bank {name!r} skipped" in error for name in names), error
    assert all(any(name in problem for problem in report(response)["problems"]) for name in names)


def test_the_remaining_reference_bank_is_still_used(tmp_path):
    """A good reference bank next to bad ones: the enforced correction contrasts against the good one,
    exactly as on a folder holding only it."""
    clean = wf.start(tmp_path / "clean", enforce=wf.BANK)
    wf.write_bank(clean.bank_dir, "ordinary", bank=wf.ordinary_latents()[:64], role="reference")
    expected = clean.txt2img(**REQUEST)
    assert "reference=ordinary@" in infotext(expected)
    hostile = wf.start(tmp_path / "hostile", enforce=wf.BANK)
    wf.write_bank(hostile.bank_dir, "ordinary", bank=wf.ordinary_latents()[:64], role="reference")
    bad_reference_banks(hostile.bank_dir)
    response = hostile.txt2img(**REQUEST)
    assert torch.equal(response["p"].latents[0], expected["p"].latents[0])
    assert "reference=ordinary@" in infotext(response) and "skipped" in params(response)[INFOTEXT_ERROR_KEY]


def test_reference_join_is_cached_by_content(tmp_path):
    webui = wf.start(tmp_path)
    for name, digit_slice in (("ref-a", slice(0, 16)), ("ref-b", slice(16, 40))):
        wf.write_bank(webui.bank_dir, name, bank=wf.ordinary_latents()[digit_slice], role="reference")
    first = server.reference_bank()
    assert first.count == 40 and server.reference_bank() is first  # not joined again
    wf.write_bank(webui.bank_dir, "ref-b", bank=wf.ordinary_latents()[40:48], role="reference")
    changed = server.reference_bank()
    assert changed is not first and changed.count == 24


# ---- one engine per spec and pass ------------------------------------------------------------------

def test_each_engine_is_built_once_per_spec_and_sampling_pass(enforced, monkeypatch):
    built = []
    real_factory = server.engine_factory

    def counting_factory(problems=None):
        make = real_factory(problems)

        def counted(negations, **settings):
            built.append(tuple(bank.name for bank, _ in negations))
            return make(negations, **settings)
        return counted

    monkeypatch.setattr(server, "engine_factory", counting_factory)
    response = enforced.txt2img(**REQUEST, n_iter=2, enable_hr=True, hr_scale=2.0, hr_second_pass_steps=3,
                                safe_denoiser=[True, [MINE], "1", "default", 0, 0, 1, -1])
    assert len(response["images"]) == 2
    assert sorted(built) == sorted([(MINE,), (MINE,), (wf.BANK,), (wf.BANK,)])  # 2 specs x (first, hires)


def test_a_fault_while_planning_stops_an_enforced_generation_and_spares_an_open_one(tmp_path, monkeypatch):
    """The host adapter (the boundary to the WebUI) failing to name the model's latent space: an enforced
    server cannot plan its correction and stops; an open server only loses the request's correction."""
    from lib_safedenoise.webui import host

    def broken(sd_model=None):
        raise RuntimeError("model half-unloaded (injected)")

    enforced = wf.start(tmp_path / "enforced", enforce=wf.BANK)
    monkeypatch.setattr(host, "model_latent_space", broken)
    assert_stopped(enforced.txt2img(**REQUEST), "model half-unloaded")
    monkeypatch.undo()
    open_server = wf.start(tmp_path / "open")
    monkeypatch.setattr(host, "model_latent_space", broken)
    response = open_server.txt2img(**REQUEST, safe_denoiser=wf.args())
    assert len(response["images"]) == 1 and "model half-unloaded" in params(response)[INFOTEXT_ERROR_KEY]


# ---- 4. request errors are kept on an enforced server -------------------------------------------------

def test_a_bad_argument_error_and_the_sessions_problems_both_reach_the_infotext(enforced, reference):
    write_raw_bank(enforced.bank_dir / f"nan-ref{fileformat.BANK_SUFFIX}", nan_latents())
    response = enforced.txt2img(**REQUEST, safe_denoiser=[True, [MINE], "nan"])
    assert_enforced_exactly(response, reference)
    error = params(response)[INFOTEXT_ERROR_KEY]
    assert "strengths" in error and "must be finite" in error  # the request's own error ...
    assert "reference bank 'nan-ref' skipped" in error  # ... and the session's problems


# ---- 5. the library ---------------------------------------------------------------------------------

def test_an_empty_batch_is_returned_unchanged():
    bank = LatentBank("b", torch.randn(3, 4, 8, 8))
    empty = torch.zeros(0, 4, 8, 8)
    engine = SafeDenoiser([(bank, 1.0)], window=(0, 1))
    assert engine.correct_x0(empty, empty, torch.zeros(0), 0, 4) is empty
    alphas = torch.linspace(0.999, 0.01, 1000)
    assert engine.correct_eps(empty, empty, torch.zeros(0), alphas, 0, 4) is empty
    assert engine.report.images == {}


@pytest.mark.parametrize("timestep", [1000, 5000, -1, math.nan])
def test_a_timestep_beyond_the_schedule_is_a_clear_value_error(timestep):
    bank = LatentBank("b", torch.randn(3, 4, 8, 8))
    eps = torch.randn(2, 4, 8, 8)
    engine = SafeDenoiser([(bank, 1.0)], window=(0, 1))
    with pytest.raises(ValueError, match="outside the schedule's 0..999"):
        engine.correct_eps(eps, eps, timestep, torch.linspace(0.999, 0.01, 1000), 0, 4)


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("setting, value", [("bandwidth", math.nan), ("bandwidth", -1.0), ("bandwidth", 0.0),
                                            ("bandwidth", math.inf), ("threshold", math.nan),
                                            ("threshold", math.inf), ("threshold", "high")])
def test_bad_bandwidth_or_threshold_is_refused_where_given(mode, setting, value):
    bank = LatentBank("b", torch.randn(3, 4, 8, 8))
    with pytest.raises(ValueError, match=f"{setting} must be a finite number"):
        SafeDenoiser([(bank, 1.0)], mode=mode, **{setting: value})


def test_a_negative_threshold_is_refused_where_it_is_a_probability_or_beta():
    bank = LatentBank("b", torch.randn(3, 4, 8, 8))
    for mode in ("posterior", "contrastive"):
        with pytest.raises(ValueError, match="threshold must be a finite number >= 0"):
            SafeDenoiser([(bank, 1.0)], mode=mode, threshold=-0.5)
    for mode in ("paper", "reference"):  # a log density / a gate a negative value keeps open
        assert SafeDenoiser([(bank, 1.0)], mode=mode, threshold=-5.0).settings.threshold == -5.0


def test_a_negative_bandwidth_in_the_request_args_is_refused():
    with pytest.raises(ValueError, match="bandwidth"):
        GenerationArgs.from_script_args([True, ["b"], "1", "default", -1.0])


# ---- fault injection --------------------------------------------------------------------------------

class InjectedFault(Exception):
    """A plain Exception subclass, as a third-party library might raise."""


FAULTS = {
    "ValueError": ValueError("injected"),
    "RuntimeError": RuntimeError("CUDA error: an illegal memory access (injected)"),
    "IndexError": IndexError("index 1000 is out of bounds (injected)"),
    "OSError": OSError(5, "Input/output error (injected)"),
    "MemoryError": MemoryError("injected"),
    "InjectedFault": InjectedFault("injected"),
    "non-finite": None,  # the engine returns NaN instead of raising
}


class FailingEngine:
    """The real engine built by the server's factory, made to fail from sampler step ``FAULT_STEP`` on:
    it raises ``fault``, or (``fault`` None) returns NaN. Every other attribute is the engine's own."""

    def __init__(self, engine, fault):
        self._engine, self._fault, self.calls = engine, fault, []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def correct_x0(self, x0_hat, x, sigma, step, total_steps, image_ids=None):
        return self._fail(step, self._engine.correct_x0(x0_hat, x, sigma, step, total_steps, image_ids=image_ids))

    def correct_eps(self, eps, x, timestep, alphas_cumprod, step, total_steps, image_ids=None):
        return self._fail(step, self._engine.correct_eps(eps, x, timestep, alphas_cumprod, step, total_steps,
                                                         image_ids=image_ids))

    def _fail(self, step, corrected):
        self.calls.append(step)
        if step < FAULT_STEP:
            return corrected
        if self._fault is None:
            return torch.full_like(corrected, math.nan)
        raise self._fault


def inject(monkeypatch, target: str, fault):
    """Make the server's engine factory wrap the ``target`` engine ("request" or "enforced") in
    ``FailingEngine``; returns the engines built, by target."""
    built = {"request": [], "enforced": []}
    real_factory = server.engine_factory

    def factory(problems=None):
        make = real_factory(problems)

        def engine(negations, **settings):
            which = "enforced" if [bank.name for bank, _ in negations] == [wf.BANK] else "request"
            made = make(negations, **settings)
            made = FailingEngine(made, fault) if which == target else made
            built[which].append(made)
            return made
        return engine

    monkeypatch.setattr(server, "engine_factory", factory)
    return built


def request_args():
    return [True, [MINE], "1", "default", 0, 0, 1, -1]


def assert_enforced_ran_every_step(response, built, reference):
    off, _ = reference
    assert len(response["images"]) == 1
    assert not torch.equal(response["p"].latents[0], off)
    assert INFOTEXT_ENFORCED_KEY in params(response)
    (engine,) = built["enforced"]
    assert [record.step for record in engine.report.images[0]] == list(range(STEPS))


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failing_request_correction_drops_only_itself(enforced, reference, monkeypatch, fault):
    built = inject(monkeypatch, "request", FAULTS[fault])
    response = enforced.txt2img(**REQUEST, safe_denoiser=request_args())
    assert_enforced_ran_every_step(response, built, reference)
    (failing,) = built["request"]
    assert failing.calls == [0, 1, 2]  # dropped at the fault, never called again
    error = params(response)[INFOTEXT_ERROR_KEY]
    assert f"step {FAULT_STEP + 1}" in error and MINE in error
    assert (fault if FAULTS[fault] is not None else "not a finite tensor") in error
    assert INFOTEXT_KEY not in params(response)  # the request's correction did not run to the end
    assert [c["enforced"] for c in report(response)["corrections"]] == [True]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failing_enforced_correction_stops_the_generation_without_an_image(enforced, monkeypatch, fault):
    built = inject(monkeypatch, "enforced", FAULTS[fault])
    response = enforced.txt2img(**REQUEST, safe_denoiser=request_args())
    assert_stopped(response, f"step {FAULT_STEP + 1}", "images discarded")
    assert report(response)["failed"] and report(response)["corrections"] == []
    (failing,) = built["enforced"]
    assert failing.calls == [0, 1, 2]
    # the server is not left broken: the next generation is enforced again
    monkeypatch.undo()
    assert len(enforced.txt2img(**REQUEST)["images"]) == 1


@pytest.mark.parametrize("host, sampler", [("forge", "Euler"), ("a1111", "DDIM"), ("a1111", "Heun")])
def test_the_enforced_failure_stops_every_host_layout_and_sampler_kind(tmp_path, monkeypatch, host, sampler):
    webui = wf.start(tmp_path, enforce=wf.BANK, forge=host == "forge")
    inject(monkeypatch, "enforced", RuntimeError("injected"))
    response = webui.txt2img(**REQUEST, sampler_name=sampler, batch_size=2, n_iter=2)
    assert_stopped(response, "RuntimeError: injected")


def test_a_bad_reference_bank_under_a_request_in_the_default_mode(enforced, reference):
    write_raw_bank(enforced.bank_dir / f"nan-ref{fileformat.BANK_SUFFIX}", nan_latents())
    response = enforced.txt2img(**REQUEST, safe_denoiser=request_args())
    assert len(response["images"]) == 1 and not torch.equal(response["p"].latents[0], reference[0])
    assert INFOTEXT_ENFORCED_KEY in params(response) and INFOTEXT_KEY in params(response)
    assert "nan-ref" in params(response)[INFOTEXT_ERROR_KEY]


def at_step(step, action):
    """A CFG callback (another extension, say) that runs ``action`` once, at model call ``step``."""
    from modules import script_callbacks

    done = []

    def callback(params):
        if params.denoiser.step == step and not done:
            done.append(action())

    script_callbacks.on_cfg_denoiser(callback)


@pytest.mark.parametrize("change", ["deleted", "rewritten with NaN", "replaced by another bank"])
@pytest.mark.parametrize("which", [MINE, wf.BANK])
def test_a_bank_file_that_disappears_or_changes_mid_generation(enforced, reference, which, change):
    path = enforced.bank_dir / f"{which}{fileformat.BANK_SUFFIX}"
    first = enforced.txt2img(**REQUEST, safe_denoiser=request_args())  # the same request, undisturbed
    actions = {"deleted": path.unlink,
               "rewritten with NaN": lambda: write_raw_bank(path, nan_latents(), role="negation"),
               "replaced by another bank": lambda: wf.write_bank(enforced.bank_dir, which, digit=8)}
    at_step(FAULT_STEP, actions[change])
    response = enforced.txt2img(**REQUEST, safe_denoiser=request_args())
    # the generation under way keeps the banks it loaded: the same image as undisturbed
    assert torch.equal(response["p"].latents[0], first["p"].latents[0])
    assert INFOTEXT_ENFORCED_KEY in params(response)
    # and the next one is still enforced: the new file, or the copy loaded earlier with a note
    after = enforced.txt2img(**REQUEST)
    assert len(after["images"]) == 1 and not torch.equal(after["p"].latents[0], reference[0])
    assert INFOTEXT_ENFORCED_KEY in params(after)
    if which == wf.BANK and change != "replaced by another bank":
        assert "copy loaded earlier" in params(after)[INFOTEXT_ERROR_KEY]
