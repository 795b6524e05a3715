"""One generation: its engines (one per bank spec and sampling pass), its per-image record and report, and
the sessions open at a time."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch

from lib_safedenoise import ENGINE_VERSION
from lib_safedenoise.core.latent_bank import LatentBank
from lib_safedenoise.webui.args import GenerationArgs
from lib_safedenoise.webui.enforcement import EnforcementError, enforced_args, load_enforced
from lib_safedenoise.webui.keys import (FIRST_PASS, HIRES_PASS, INFOTEXT_ENFORCED_KEY, INFOTEXT_KEY,
                                        SESSION_ATTR)


def format_steps(steps: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3 7"`` (1-based sampling steps)."""
    runs, start = [], None
    for step in sorted(set(steps)):
        if start is not None and step == end + 1:
            end = step
            continue
        if start is not None:
            runs.append(str(start) if start == end else f"{start}-{end}")
        start = end = step
    if start is not None:
        runs.append(str(start) if start == end else f"{start}-{end}")
    return " ".join(runs) if runs else "none"


def parse_steps(text: str) -> list[int]:
    steps = []
    for run in text.split():
        if run == "none":
            continue
        first, _, last = run.partition("-")
        steps.extend(range(int(first), int(last or first) + 1))
    return steps


@dataclass
class Negation:
    bank: LatentBank
    strength: float


@dataclass
class EngineSpec:
    """One engine's configuration: the request's banks, or the enforced ones."""

    args: GenerationArgs
    negations: list[Negation]
    enforced: bool = False

    @property
    def infotext_key(self) -> str:
        return INFOTEXT_ENFORCED_KEY if self.enforced else INFOTEXT_KEY

    def describe(self) -> str:
        banks = ", ".join(n.bank.name for n in self.negations)
        return f"the enforced correction (banks {banks})" if self.enforced else f"the correction of bank(s) {banks}"


def build_engine(engine_factory: Callable[..., Any], spec: EngineSpec):
    """The engine of ``spec``: its banks and strengths, mode, bandwidth, window and threshold."""
    args = spec.args
    return engine_factory(negations=[(n.bank, n.strength) for n in spec.negations], mode=args.mode,
                          bandwidth=args.chosen_bandwidth, window=(args.window_start, args.window_end),
                          threshold=args.chosen_threshold)


@dataclass
class GenerationStep:
    """One model call of one image in a generation, over every engine (an engine's own per-step record is
    ``core.engine.StepRecord``): the pass, the 1-based sampler step, whether any engine fired, and the gate
    signal beta summed over the engines (None outside every window)."""

    pass_name: str
    step: int
    fired: bool
    beta: float | None = None


class GenerationSession:
    """The engines of one generation (one per spec and sampling pass) and the per-image record.

    Failure policy (``correct``): an engine of the request that raises (any ``Exception``) or returns a
    non-finite result is dropped for the rest of the generation, alone, and the step goes on with the
    other engines; the enforced engine failing stops every correction, sets ``failed`` and raises
    ``EnforcementError``: the caller must then stop the generation and discard its images.
    ``first_pass_engines`` (spec index -> engine) are engines already built for the first pass (by
    ``plan_session``, which builds each one once); the others are built on first use.
    """

    def __init__(self, specs: list[EngineSpec], problems: list[str], engine_factory: Callable[..., Any],
                 first_pass_engines: dict[int, Any] | None = None):
        self._engines: dict[tuple[int, str], Any] = {  # keyed by id(spec): specs may be dropped
            (id(specs[index]), FIRST_PASS): engine for index, engine in (first_pass_engines or {}).items()}
        self.specs = [spec for spec in specs if spec.negations]
        self.problems = list(problems)
        self.failed: str | None = None  # why the enforced correction could not run, if it could not
        self._engine_factory = engine_factory
        self.records: dict[int, list[GenerationStep]] = {}
        self.predictions: dict[str, str] = {}  # pass -> what the WebUI handed over: "x0" or "eps"

    @property
    def active(self) -> bool:
        return bool(self.specs)

    @property
    def enforced(self) -> bool:
        return any(spec.enforced for spec in self.specs)

    def drop(self, spec: EngineSpec, problem: str) -> None:
        """Stop one request correction for the rest of the generation (the others go on) and say why."""
        self.problems.append(problem)
        self.specs = [s for s in self.specs if s is not spec]
        for key in [key for key in self._engines if key[0] == id(spec)]:
            self._engines.pop(key).release()

    def fail(self, problem: str) -> None:
        """The enforced correction cannot run: no correction runs any more and the images must be discarded."""
        self.failed = problem
        self.stop(problem)

    def stop(self, problem: str) -> None:
        """Give up every correction and say why in the report (on an enforced session, use ``fail``)."""
        self.problems.append(problem)
        self.release()
        self.specs = []

    def engine(self, spec_index: int, pass_name: str):
        return self._engine_of(self.specs[spec_index], pass_name)

    def _engine_of(self, spec: EngineSpec, pass_name: str):
        key = (id(spec), pass_name)
        if key not in self._engines:
            self._engines[key] = build_engine(self._engine_factory, spec)
        return self._engines[key]

    def mode_names(self) -> list[str]:
        return [self.engine(i, FIRST_PASS).mode_name for i in range(len(self.specs))]

    def correct(self, denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, *, eps_alphas,
                step: int, steps: int, pass_name: str, image_ids: list[int]) -> torch.Tensor:
        """Run every engine on one CFG result (x0, or eps when ``eps_alphas`` is given) and record it.

        ``step`` is the 0-based sampler step of ``steps`` run in this pass. Request engines run first, the
        enforced one last (it gets the last word); see the class docstring for what a failure does.
        """
        self.predictions[pass_name] = "x0" if eps_alphas is None else "eps"
        engines = []
        for spec in list(self.specs):
            try:
                engine = self._engine_of(spec, pass_name)
                if eps_alphas is None:
                    corrected = engine.correct_x0(denoised, x, sigma, step, steps, image_ids=image_ids)
                else:
                    corrected = engine.correct_eps(denoised, x, sigma, eps_alphas, step, steps,
                                                   image_ids=image_ids)
                if corrected.shape != denoised.shape or not torch.isfinite(corrected).all():
                    raise ValueError(f"its result is not a finite tensor of shape {tuple(denoised.shape)}")
            except Exception as error:  # whatever the type: the policy below decides, not the exception
                where = f"{'hires pass ' if pass_name == HIRES_PASS else ''}step {step + 1}"
                reason = f"{type(error).__name__}: {error}"
                if spec.enforced:
                    problem = (f"{spec.describe()} failed at {where} ({reason}); the generation was stopped "
                               f"and its images discarded")
                    self.fail(problem)
                    raise EnforcementError(problem) from error
                self.drop(spec, f"{spec.describe()} stopped at {where} for the rest of this generation "
                                f"({reason})")
                continue
            denoised = corrected
            engines.append(engine)
        for image_id in image_ids:
            records = [r for r in (latest_record(engine.report, image_id, step) for engine in engines)
                       if r is not None]
            betas = [r["beta"] for r in records if r["beta"] is not None]
            self.records.setdefault(image_id, []).append(GenerationStep(
                pass_name, step + 1, any(r["fired"] for r in records), sum(betas) if betas else None))
        return denoised

    def fired_text(self, image_id: int) -> str | None:
        """The "Safe Denoiser fired" value of one image, e.g. ``"2-5"`` or ``"1-3, hires 1"``."""
        records = self.records.get(image_id)
        if records is None:
            return None
        parts = []
        for pass_name in (FIRST_PASS, HIRES_PASS):
            in_pass = [r for r in records if r.pass_name == pass_name]
            if not in_pass:
                continue
            steps = format_steps([r.step for r in in_pass if r.fired])
            parts.append(steps if pass_name == FIRST_PASS else f"hires {steps}")
        return ", ".join(parts)

    def report(self) -> dict:
        """JSON-serialisable per-image report for the API response and the status line: the corrections
        that ran to the end (a dropped one is only named in ``problems``), and ``failed``, why the enforced
        correction could not run (then no image was kept), or None."""
        return {
            "engine": ENGINE_VERSION,
            "failed": self.failed,
            "corrections": [
                {"enforced": spec.enforced, "mode": mode_name,
                 "window": [spec.args.window_start, spec.args.window_end],
                 "banks": [{"name": n.bank.name, "short_hash": n.bank.short_hash, "strength": n.strength}
                           for n in spec.negations]}
                for spec, mode_name in zip(self.specs, self.mode_names())],
            "problems": list(self.problems),
            "prediction": dict(self.predictions),
            "images": {
                str(image_id): {
                    "fired": self.fired_text(image_id),
                    "steps": [{"pass": r.pass_name, "step": r.step, "fired": r.fired, "beta": r.beta}
                              for r in records],
                }
                for image_id, records in sorted(self.records.items())
            },
        }

    def release(self) -> None:
        """Drop every device copy of the banks (they live on the GPU only during the generation)."""
        for engine in self._engines.values():
            engine.release()
        for spec in self.specs:
            for negation in spec.negations:
                negation.bank.release()


def latest_record(report: Any, image_id: int, step: int) -> dict | None:
    """The engine's record (``engine.CorrectionReport``) of ``image_id`` at sampler ``step``, as a dict."""
    for record in reversed(report.images.get(image_id, [])):
        if record.step == step:
            return vars(record)
    return None


def plan_session(args: GenerationArgs, enforced: Sequence[str], load_bank: Callable[[str], LatentBank],
                 engine_factory: Callable[..., Any], problems: Sequence[str] = ()) -> GenerationSession:
    """The session for a request: the request's own banks, then the enforced ones (which get the last word).

    Each spec's first-pass engine is built here, once, and handed to the session. A request bank or
    engine that cannot be used (missing, damaged, another latent space, a bad mode or setting: any
    exception) is reported and skipped, and the generation goes on; an enforced bank or engine that cannot
    be used raises ``EnforcementError`` so the caller stops the generation instead of running it
    unprotected. ``problems``: what was already found wrong (a bad request argument), reported first.
    """
    problems = list(problems)
    specs: list[EngineSpec] = []
    engines: dict[int, Any] = {}
    if args.enabled and args.banks:
        negations = []
        for i, name in enumerate(args.banks):
            try:
                negations.append(Negation(load_bank(name), args.strength_of(i)))
            except Exception as error:  # BankError, OSError: reported, the rest of the request still runs
                problems.append(str(error))
        kept = replace(args, banks=tuple(n.bank.name for n in negations),
                       strengths=tuple(n.strength for n in negations))
        if negations:
            spec = EngineSpec(kept, negations)
            try:
                engines[len(specs)] = build_engine(engine_factory, spec)
                specs.append(spec)
            except Exception as error:
                problems.append(str(error))
    if enforced:
        rules = enforced_args(enforced)
        try:
            spec = EngineSpec(rules, [Negation(load_enforced(name, load_bank, problems), rules.strength_of(i))
                                      for i, name in enumerate(enforced)], enforced=True)
            engines[len(specs)] = build_engine(engine_factory, spec)
        except Exception as error:
            raise EnforcementError(f"enforced bank cannot be applied, generation stopped: {error}") from error
        specs.append(spec)
    return GenerationSession(specs, problems, engine_factory, first_pass_engines=engines)


class OpenSessions:
    """Sessions whose generation has started and not reached ``postprocess``.

    A generation that raised never reaches ``postprocess``; its session is recognised as stale when its
    ``p`` is no longer referenced by any frame on the call stack (a generation nested in another, such as
    an ADetailer pass, still has the outer ``p`` on the stack, so the outer session stays open).
    """

    def __init__(self):
        self._open: list[tuple[Any, GenerationSession]] = []

    def begin(self, p: Any, session: GenerationSession) -> None:
        self.drop_stale()
        self._open.append((p, session))
        setattr(p, SESSION_ATTR, session)

    def end(self, p: Any) -> GenerationSession | None:
        """Close ``p``'s session (if any) and return it."""
        session = getattr(p, SESSION_ATTR, None)
        self._open = [(q, s) for q, s in self._open if q is not p]
        if session is not None:
            session.release()
            delattr(p, SESSION_ATTR)
        return session

    def drop_stale(self) -> None:
        on_stack = _ids_on_call_stack()
        live = []
        for p, session in self._open:
            if id(p) in on_stack:
                live.append((p, session))
            else:
                session.release()
        self._open = live

    def __len__(self) -> int:
        return len(self._open)


def _ids_on_call_stack() -> set[int]:
    """Ids of the local variables of every frame that called the caller."""
    ids = set()
    frame = sys._getframe(2)
    while frame is not None:
        ids.update(id(value) for value in frame.f_locals.values())
        frame = frame.f_back
    return ids


_last_report: dict = {}


def remember_report(report: dict) -> None:
    _last_report.clear()
    _last_report.update(report)


def last_report() -> dict:
    """The report of the last finished generation (the accordion's status line and the tab's plot)."""
    return dict(_last_report)
