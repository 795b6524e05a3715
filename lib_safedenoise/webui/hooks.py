"""The extension's hooks into a generation: the script's ``before_process``/``process``/``postprocess`` and
the two CFG callbacks, which map the WebUI's batch layout onto images and steps."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from lib_safedenoise.webui import host, server
from lib_safedenoise.webui.args import GenerationArgs
from lib_safedenoise.webui.enforcement import API_PROTECTED_OPTIONS, EnforcementError
from lib_safedenoise.webui.infotext import ApiOnlyValue, infotext_values
from lib_safedenoise.webui.keys import (HIRES_PASS, FIRST_PASS, INFOTEXT_ERROR_KEY, REPORT_KEY, SESSION_ATTR,
                                        SETTING_HIDE_PREVIEWS)
from lib_safedenoise.webui.session import GenerationSession, OpenSessions, plan_session, remember_report
from lib_safedenoise.webui.xyz import apply_xyz_overrides


@dataclass
class _Capture:
    session: GenerationSession | None
    x: torch.Tensor | None = None
    sigma: torch.Tensor | None = None
    denoiser: Any = None


class CfgHooks:
    """``on_cfg_denoiser`` + ``on_cfg_after_cfg`` for every generation at once.

    One registration serves all generations: each call finds its session through ``denoiser.p``, so the
    txt2img and img2img script instances never fire twice, a crashed generation's session is never
    consulted again, and nested generations (an ADetailer pass inside another) keep their own sessions.
    ``after_cfg`` gets no denoiser (AfterCFGCallbackParams has none), so ``denoiser`` stashes what it needs;
    the WebUI calls the two in strict sequence within ``CFGDenoiser.forward``.
    """

    def __init__(self):
        self._pending: _Capture | None = None

    def on_cfg_denoiser(self, params) -> None:
        denoiser = getattr(params, "denoiser", None)
        session = getattr(getattr(denoiser, "p", None), SESSION_ATTR, None)
        if session is None or not session.active:
            self._pending = None
            return
        self._pending = _Capture(session, params.x, params.sigma, denoiser)

    def on_cfg_after_cfg(self, params) -> None:
        capture, self._pending = self._pending, None
        if capture is None:
            return
        denoised = params.x
        images = denoised.shape[0]
        # A1111 lays rows out as [cond rows (one per AND sub-prompt)..., uncond rows]; the uncond rows are
        # the plain per-image latents, so the last `images` rows are x and sigma of each image. Forge hands
        # the un-batched x, for which the same slice is the whole tensor.
        x, sigma = capture.x[-images:], capture.sigma[-images:]
        denoiser, session = capture.denoiser, capture.session
        p = denoiser.p
        first_image = getattr(p, "iteration", 0) * p.batch_size
        step, steps = sampler_step(denoiser)
        try:
            with outside_inference_mode():
                params.x = session.correct(
                    denoised, x, sigma, eps_alphas=host.eps_alphas_cumprod(denoiser), step=step, steps=steps,
                    pass_name=HIRES_PASS if getattr(p, "is_hr_pass", False) else FIRST_PASS,
                    image_ids=list(range(first_image, first_image + images)))
        except ValueError as error:  # the engine's clear message (e.g. channel counts differ): stop, once
            session.stop(str(error))
            host.log_problem(f"correction stopped for the rest of this generation: {error}")


@contextmanager
def outside_inference_mode():
    """Run a correction as ordinary no-grad code even where the WebUI samples under ``torch.inference_mode``.

    Forge and reForge do (modules/processing.py ``process_images_inner``); tensors made there are inference
    tensors, which have no version counter (the kernel's derived-value cache keys on it) and refuse in-place
    updates once outside that mode (the bank's device copies outlive one model call). Inference tensors may
    still be read here; A1111 samples under ``no_grad`` and is unaffected.
    """
    with torch.inference_mode(False), torch.no_grad():
        yield


def sampler_step(denoiser) -> tuple[int, int]:
    """``(step, steps)``: the 0-based sampler step of this model call, of the steps this pass runs.

    ``denoiser.step`` counts model calls and ``total_steps`` is ``steps`` doubled for second-order
    samplers (modules/sd_samplers_common.py); ``state.sampling_step`` lags a step behind and is not used.
    For img2img and hires passes ``steps`` is what actually runs (``t_enc + 1``), not the slider value.
    """
    steps = denoiser.steps or denoiser.total_steps
    calls_per_step = max(1, denoiser.total_steps // steps)
    return min(denoiser.step // calls_per_step, steps - 1), steps


CFG_HOOKS = CfgHooks()
OPEN_SESSIONS = OpenSessions()


def before_generation(p) -> None:
    """``Script.before_process``: hide live previews on an enforced server if the operator asked to."""
    if server.enforced_bank_names() and host.opts_value(SETTING_HIDE_PREVIEWS, False):
        host.hide_live_previews(p)


def begin_generation(p, script_args: Sequence[Any]) -> None:
    """``Script.process``: plan the session, write the infotext keys, register the CFG callbacks.

    Leftover callbacks of a generation that raised (and so never reached ``postprocess``) go first.
    A bad request or an unusable bank is reported and the generation runs without it; an enforced bank
    that cannot be applied stops the generation.
    """
    OPEN_SESSIONS.drop_stale()
    if not len(OPEN_SESSIONS):
        host.remove_cfg_callbacks(CFG_HOOKS.on_cfg_denoiser, CFG_HOOKS.on_cfg_after_cfg)
    try:
        request = apply_xyz_overrides(GenerationArgs.from_script_args(script_args), p)
    except ValueError as error:
        host.log_problem(str(error))
        p.extra_generation_params[INFOTEXT_ERROR_KEY] = str(error)
        request = GenerationArgs(enabled=False)
    enforced = server.enforced_bank_names()
    if enforced:
        host.protect_options_from_api(API_PROTECTED_OPTIONS)
    if not request.enabled and not enforced:
        return
    try:
        session = plan_session(request, enforced, server.bank_loader(), server.engine_factory())
    except EnforcementError as error:
        host.log_problem(str(error))
        p.extra_generation_params[INFOTEXT_ERROR_KEY] = str(error)
        host.abort_generation()
        return
    for problem in session.problems:
        host.log_problem(problem)
    p.extra_generation_params.update(infotext_values(session))
    if session.active:
        OPEN_SESSIONS.begin(p, session)
        host.register_cfg_callbacks(CFG_HOOKS.on_cfg_denoiser, CFG_HOOKS.on_cfg_after_cfg)


def end_generation(p) -> None:
    """``Script.postprocess``: close the session (banks leave the device), remove the callbacks when no
    other generation is running, and hand the per-image report to the API response and the UI."""
    session = OPEN_SESSIONS.end(p)
    if not len(OPEN_SESSIONS):
        host.remove_cfg_callbacks(CFG_HOOKS.on_cfg_denoiser, CFG_HOOKS.on_cfg_after_cfg)
    if session is not None:
        report = session.report()
        p.extra_generation_params[REPORT_KEY] = ApiOnlyValue(report)  # Processed.js() holds the same dict
        remember_report(report)


def protect_enforcement(_demo, app) -> None:
    """``on_app_started``: on an enforced server, API clients may not change the protected options."""
    host.honour_restricted_options_on_api(app)
    if server.enforced_bank_names():
        host.protect_options_from_api(API_PROTECTED_OPTIONS)
