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
        """Correct the CFG result in place (``params.x``), under the session's failure policy.

        Whatever goes wrong (any ``Exception``; the WebUI's dispatcher would otherwise log it and sample
        on uncorrected): a request engine that fails is dropped alone (``GenerationSession.correct``); the
        enforced one failing, or a failure outside the engines on an enforced session, interrupts the
        generation and marks the session failed, so ``discard_unprotected_images`` keeps no image of it.
        The infotext key of every correction that stopped is withdrawn.
        """
        capture, self._pending = self._pending, None
        if capture is None:
            return
        denoiser, session = capture.denoiser, capture.session
        p = denoiser.p
        specs, known_problems = list(session.specs), len(session.problems)
        try:
            denoised = params.x
            images = denoised.shape[0]
            # A1111 lays rows out as [cond rows (one per AND sub-prompt)..., uncond rows]; the uncond rows
            # are the plain per-image latents, so the last `images` rows are x and sigma of each image.
            # Forge hands the un-batched x, for which the same slice is the whole tensor.
            x, sigma = capture.x[-images:], capture.sigma[-images:]
            first_image = getattr(p, "iteration", 0) * p.batch_size
            step, steps = sampler_step(denoiser)
            with outside_inference_mode():
                params.x = session.correct(
                    denoised, x, sigma, eps_alphas=host.eps_alphas_cumprod(denoiser), step=step, steps=steps,
                    pass_name=HIRES_PASS if getattr(p, "is_hr_pass", False) else FIRST_PASS,
                    image_ids=list(range(first_image, first_image + images)))
        except EnforcementError:  # the session has failed and says why
            host.abort_generation()
        except Exception as error:  # outside any one engine (batch layout, step count, host adapter)
            reason = f"{type(error).__name__}: {error}"
            if session.enforced:
                session.fail(f"the enforced correction could not run ({reason}); the generation was stopped "
                             f"and its images discarded")
                host.abort_generation()
            else:
                session.stop(f"correction stopped for the rest of this generation ({reason})")
        for problem in session.problems[known_problems:]:
            host.log_problem(problem)
        for spec in specs:
            if all(kept is not spec for kept in session.specs):  # never claim a correction that stopped
                p.extra_generation_params.pop(spec.infotext_key, None)


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
    PLMS (modules/sd_samplers_timesteps_impl.py ``plms``, the sampler's ``funcname``) calls the model twice
    in its first step and once in every later one. For img2img and hires passes ``steps`` is what actually
    runs (``t_enc + 1``), not the slider value.
    """
    steps = denoiser.steps or denoiser.total_steps
    if getattr(getattr(getattr(denoiser, "sampler", None), "funcname", None), "__name__", None) == "plms":
        return min(max(denoiser.step - 1, 0), steps - 1), steps
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
    A bad request or an unusable bank is reported (``Safe Denoiser error``, with every other problem) and
    the generation runs without it; on a server with enforced banks, anything that keeps the enforced
    correction from being planned (any exception) stops the generation before its first image.
    """
    OPEN_SESSIONS.drop_stale()
    if not len(OPEN_SESSIONS):
        host.remove_cfg_callbacks(CFG_HOOKS.on_cfg_denoiser, CFG_HOOKS.on_cfg_after_cfg)
    problems: list[str] = []
    try:
        request = apply_xyz_overrides(GenerationArgs.from_script_args(script_args), p)
    except Exception as error:  # the request's own problem: it loses its own correction only
        problems.append(str(error) if isinstance(error, ValueError) else f"{type(error).__name__}: {error}")
        request = GenerationArgs(enabled=False)
    try:
        enforced = server.enforced_bank_names()
        if enforced:
            host.protect_options_from_api(API_PROTECTED_OPTIONS)
        if not request.enabled and not enforced:
            _report_problems(p, problems)
            return
        make_engine = server.engine_factory(problems)  # reports the reference banks it leaves out
        session = plan_session(request, enforced, server.bank_loader(), make_engine, problems)
    except Exception as error:
        if isinstance(error, EnforcementError):
            problems.append(str(error))
        elif not server_may_enforce():
            problems.append(f"Safe Denoiser not applied ({type(error).__name__}: {error})")
            _report_problems(p, problems)
            return
        else:
            problems.append(f"the enforced correction cannot be planned ({type(error).__name__}: {error}); "
                            "generation stopped")
        _report_problems(p, problems)
        host.abort_generation()
        return
    for problem in session.problems:
        host.log_problem(problem)
    p.extra_generation_params.update(infotext_values(session))
    if session.active:
        OPEN_SESSIONS.begin(p, session)
        host.register_cfg_callbacks(CFG_HOOKS.on_cfg_denoiser, CFG_HOOKS.on_cfg_after_cfg)


def server_may_enforce() -> bool:
    """Whether this server enforces banks; True when that cannot be read (so a failure there fails closed)."""
    try:
        return bool(server.enforced_bank_names())
    except Exception:
        return True


def _report_problems(p, problems: Sequence[str]) -> None:
    for problem in problems:
        host.log_problem(problem)
    if problems:
        p.extra_generation_params[INFOTEXT_ERROR_KEY] = " / ".join(problems)


def discard_unprotected_images(p, pp) -> None:
    """``Script.postprocess_batch_list``: a generation whose enforced correction failed keeps no image.

    The WebUI answers an interrupt by decoding the sampler's last latent anyway (modules/sd_samplers_common.py
    ``launch_sampling``), so stopping the sampling alone would still yield an image; ``pp.images`` is the
    batch's list of images that ``process_images_inner`` goes on to save and return.
    """
    session = getattr(p, SESSION_ATTR, None)
    if session is not None and session.failed:
        pp.images.clear()


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
