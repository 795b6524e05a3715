"""What the extension does for one generation, independent of which WebUI runs it.

The AlwaysOn script (``scripts/safe_denoiser.py``) is glue: it turns its hooks into calls here, and every
WebUI object is read through ``lib_safedenoise.host``. This module owns:

- the settings keys, launch flag and infotext keys (one definition each, shared with the UI and the API);
- the enforcement policy (banks a server operator imposes on every request);
- ``GenerationSession``: the engines of one generation, one per sampling pass, and its report;
- ``CfgHooks``: the two CFG callbacks, which map the WebUI's batch layout onto images and steps;
- the infotext format (writing, and reading back for paste / PNG Info / the API's ``infotext``);
- the XYZ-plot axes.
"""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch

from lib_safedenoise import ENGINE_VERSION, host
from lib_safedenoise.bankfile import BankCompatibilityError
from lib_safedenoise.generation_args import ARG_NAMES, GenerationArgs
from lib_safedenoise.latent_bank import LatentBank

SCRIPT_TITLE = "Safe Denoiser"

# Settings (``shared.opts`` keys); the UI helper registers them in on_ui_settings.
SETTING_BANK_DIR = "safe_denoiser_bank_dir"
SETTING_DEFAULT_ENABLED = "safe_denoiser_default_enabled"
SETTING_DEFAULT_BANKS = "safe_denoiser_default_banks"
SETTING_ENFORCED_BANKS = "safe_denoiser_enforced_banks"
SETTING_HIDE_PREVIEWS = "safe_denoiser_hide_previews_when_enforced"

# The launch flag ``--safe-denoiser-enforce BANK[,BANK]`` (registered by the repository's preload.py, which
# the WebUI loads by path before this package is importable) lands in ``cmd_opts`` under this name.
ENFORCE_CMD_OPT = "safe_denoiser_enforce"

# Options an API client must not change while banks are enforced: our own enforced list, and the two
# options that would disable the extension at the next start.
API_PROTECTED_OPTIONS = (SETTING_ENFORCED_BANKS, SETTING_HIDE_PREVIEWS, "disabled_extensions",
                         "disable_all_extensions")

# Infotext keys: only letters, digits, space, "-", "_" and "/" parse back (infotext_utils.re_param_code).
INFOTEXT_KEY = "Safe Denoiser"
INFOTEXT_FIRED_KEY = "Safe Denoiser fired"
INFOTEXT_ERROR_KEY = "Safe Denoiser error"
INFOTEXT_ENFORCED_KEY = "Safe Denoiser enforced"
# Not in the infotext (added after the images' infotexts are written): the API response's
# ``info.extra_generation_params`` carries the per-image report under this key.
REPORT_KEY = "Safe Denoiser report"

# ``p`` attribute holding the generation's session; the CFG callbacks find it through ``denoiser.p``.
SESSION_ATTR = "safe_denoiser_session"

FIRST_PASS, HIRES_PASS = "first", "hires"


# --------------------------------------------------------------------------- enforcement

def parse_bank_list(value: Any) -> tuple[str, ...]:
    """Bank names from a launch flag / setting: a comma-separated string or a list; blanks dropped."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    names = []
    for item in items:
        name = str(item).strip()
        if name and name not in names:
            names.append(name)
    return tuple(names)


def enforced_bank_names(cmd_value: Any, setting_value: Any) -> tuple[str, ...]:
    """Banks imposed on every generation: the launch flag's and the (API-restricted) setting's, merged."""
    return parse_bank_list(list(parse_bank_list(cmd_value)) + list(parse_bank_list(setting_value)))


def enforced_args(names: Sequence[str]) -> GenerationArgs:
    """Settings an enforced bank runs with: the defaults, whatever the request says.

    Enforced banks run in their own engine, so nothing a request chooses (strength 0, an empty window,
    a huge threshold, another mode) can weaken them.
    """
    return GenerationArgs(enabled=True, banks=tuple(names), strengths=(1.0,))


# --------------------------------------------------------------------------- XYZ axes

@dataclass(frozen=True)
class XyzAxis:
    label: str
    kind: type
    attribute: str  # set on ``p`` by xyz_grid.apply_field; read in ``process``
    choices: Callable[[], list[str]] | None = None


def xyz_axes(mode_names: Callable[[], list[str]], bank_names: Callable[[], list[str]]) -> list[XyzAxis]:
    return [
        XyzAxis("[Safe Denoiser] Strength", float, "safe_denoiser_strength"),
        XyzAxis("[Safe Denoiser] Mode", str, "safe_denoiser_mode", mode_names),
        XyzAxis("[Safe Denoiser] Bandwidth", float, "safe_denoiser_bandwidth"),
        XyzAxis("[Safe Denoiser] Window", str, "safe_denoiser_window"),
        XyzAxis("[Safe Denoiser] Bank", str, "safe_denoiser_bank", bank_names),
    ]


def apply_xyz_overrides(args: GenerationArgs, p: Any) -> GenerationArgs:
    """Args with the XYZ-plot cell's values (``p.safe_denoiser_*``) in place of the accordion's."""
    changes: dict[str, Any] = {}
    if (strength := getattr(p, "safe_denoiser_strength", None)) is not None:
        changes["strengths"] = (float(strength),)
    if (mode := getattr(p, "safe_denoiser_mode", None)) is not None:
        changes["mode"] = str(mode)
    if (bandwidth := getattr(p, "safe_denoiser_bandwidth", None)) is not None:
        changes["bandwidth"] = float(bandwidth)
    if (window := getattr(p, "safe_denoiser_window", None)) is not None:
        changes["window_start"], changes["window_end"] = parse_window(str(window))
    if (bank := getattr(p, "safe_denoiser_bank", None)) is not None:
        changes["banks"] = parse_bank_list(bank)
    if not changes:
        return args
    return GenerationArgs.from_script_args(replace(args, **changes).to_script_args())


def parse_window(text: str) -> tuple[float, float]:
    """``"0-0.25"`` (fractions of the steps run) -> ``(0.0, 0.25)``."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*-\s*([0-9.]+)\s*", text)
    if not match:
        raise ValueError(f"Safe Denoiser window must look like 0-0.25 (start-end fractions), got {text!r}")
    return float(match.group(1)), float(match.group(2))


# --------------------------------------------------------------------------- infotext

def format_number(value: float) -> str:
    return f"{value:g}"


def format_infotext(args: GenerationArgs, banks: Sequence[LatentBank], mode_name: str,
                    reference: LatentBank | None = None) -> str:
    """The "Safe Denoiser" value: banks with short hashes and strengths, concrete mode, engine, window...

    A reference bank the mode contrasted against is recorded as ``reference=name@hash|...`` (it changes
    the result); pasting does not restore it, since reference banks are a property of the server.

    e.g. ``banks=nsfw@1a2b3c4d5e6f*1|cats@0f0e0d0c0b0a*0.5; mode=paper; engine=0.1.0; window=0-0.25;
    bandwidth=auto; threshold=auto``. Fields are ``;``-separated ``name=value`` pairs so a future field is
    ignored by an older reader; bank names never contain ``| @ * ; =`` (``builder.sanitize_name``).
    """
    bank_text = "|".join(f"{bank.name}@{bank.short_hash or '-'}*{format_number(args.strength_of(i))}"
                         for i, bank in enumerate(banks))
    auto = lambda v: "auto" if v <= 0 else format_number(v)  # noqa: E731 - 0 / negative mean "mode default"
    return "; ".join([
        f"banks={bank_text}",
        f"mode={mode_name}",
        f"engine={ENGINE_VERSION}",
        f"window={format_number(args.window_start)}-{format_number(args.window_end)}",
        f"bandwidth={auto(args.bandwidth)}",
        f"threshold={'auto' if args.threshold < 0 else format_number(args.threshold)}",
        *([] if reference is None else [f"reference={reference_text(reference)}"]),
    ])


def reference_text(reference: LatentBank) -> str:
    """``name@hash`` of each bank a (possibly joined, see ``host.reference_bank``) reference bank holds."""
    parts = reference.metadata.get("parts") or [(reference.name, reference.short_hash)]
    return "|".join(f"{name}@{short_hash or '-'}" for name, short_hash in parts)


@dataclass(frozen=True)
class PastedSettings:
    """What an infotext's "Safe Denoiser" value restores; ``hashes`` lets the UI warn about a changed bank."""

    args: GenerationArgs
    hashes: dict[str, str]
    engine: str


def parse_infotext(value: str) -> PastedSettings:
    """Inverse of ``format_infotext``; raises ``ValueError`` on a malformed value."""
    fields_ = {}
    for part in value.split(";"):
        if not part.strip():
            continue
        name, sep, text = part.partition("=")
        if not sep:
            raise ValueError(f"Safe Denoiser infotext: expected name=value, got {part.strip()!r}")
        fields_[name.strip()] = text.strip()
    banks, strengths, hashes = [], [], {}
    for entry in filter(None, fields_.get("banks", "").split("|")):
        name_hash, _, strength = entry.rpartition("*")
        name, _, short_hash = name_hash.rpartition("@")
        if not name:
            raise ValueError(f"Safe Denoiser infotext: bad bank entry {entry!r} (want name@hash*strength)")
        banks.append(name)
        strengths.append(float(strength))
        if short_hash != "-":
            hashes[name] = short_hash
    defaults = GenerationArgs()
    window_start, window_end = parse_window(fields_.get("window", f"{defaults.window_start:g}-{defaults.window_end:g}"))
    auto = lambda text, default: default if text in ("auto", "") else float(text)  # noqa: E731
    args = GenerationArgs(
        enabled=True, banks=tuple(banks), strengths=tuple(strengths), mode=fields_.get("mode", "default"),
        bandwidth=auto(fields_.get("bandwidth", "auto"), 0.0), window_start=window_start,
        window_end=window_end, threshold=auto(fields_.get("threshold", "auto"), -1.0))
    GenerationArgs.from_script_args(args.to_script_args())  # same validation as a request
    return PastedSettings(args, hashes, fields_.get("engine", ""))


def pasted_args(params: dict) -> GenerationArgs | None:
    """The args a parsed infotext restores: off when our key is absent, None when its value is unreadable."""
    if INFOTEXT_KEY not in params:
        return GenerationArgs(enabled=False)
    try:
        return parse_infotext(params[INFOTEXT_KEY]).args
    except ValueError as error:
        host.log_problem(f"cannot restore settings from infotext: {error}")
        return None


class InfotextReader(str):
    """The infotext field of one positional arg: a name *and* a reader of the parsed infotext.

    The WebUI treats a field's target as a reader when it is callable (paste, PNG Info and the API's
    ``infotext`` call it with the parsed dict) and as a name when it is a string (the "Send to" buttons
    copy fields listed by name in ``paste_field_names``, component to component):
    modules/infotext_utils.py ``PasteField``, ``connect_paste``, ``connect_paste_params_buttons`` and
    modules/api/api.py ``apply_infotext``. Being both makes all of these routes restore the accordion.
    The toggle switches off when our key is absent (a missing key otherwise leaves a control unchanged).
    """

    def __new__(cls, arg_name: str):
        reader = super().__new__(cls, f"{INFOTEXT_KEY} {arg_name}")
        reader.arg_name = arg_name
        return reader

    def __call__(self, params: dict) -> Any:
        args = pasted_args(params)
        if args is None:
            return None
        if not args.enabled:
            return False if self.arg_name == "enabled" else None
        return args.to_script_args()[ARG_NAMES.index(self.arg_name)]


INFOTEXT_READERS = tuple(InfotextReader(name) for name in ARG_NAMES)


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


def image_index(p: Any, index: int, all_prompts: Any) -> int:
    """The job-wide image number behind ``create_infotext``'s ``index``.

    ``process_images_inner`` builds each image's infotext with the *batch's* prompts and a batch-local
    index; ``Processed.infotext`` passes the job's prompts and a job-wide index (modules/processing.py).
    """
    return p.iteration * p.batch_size + index if all_prompts is p.prompts else index


# --------------------------------------------------------------------------- one generation

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


@dataclass
class StepRecord:
    """One model call of one image: the pass, the 1-based sampler step, whether any engine fired, and
    the gate signal beta summed over the engines (None outside every window)."""

    pass_name: str
    step: int
    fired: bool
    beta: float | None = None


class GenerationSession:
    """The engines of one generation (one per spec and sampling pass) and the per-image record."""

    def __init__(self, specs: list[EngineSpec], problems: list[str], engine_factory: Callable[..., Any]):
        self.specs = [spec for spec in specs if spec.negations]
        self.problems = list(problems)
        self._engine_factory = engine_factory
        self._engines: dict[tuple[int, str], Any] = {}
        self.records: dict[int, list[StepRecord]] = {}
        self.predictions: dict[str, str] = {}  # pass -> what the WebUI handed over: "x0" or "eps"

    @property
    def active(self) -> bool:
        return bool(self.specs)

    def stop(self, problem: str) -> None:
        """Give up correcting (the generation goes on uncorrected) and say why in the report."""
        self.problems.append(problem)
        self.release()
        self.specs = []

    def engine(self, spec_index: int, pass_name: str):
        key = (spec_index, pass_name)
        if key not in self._engines:
            spec = self.specs[spec_index]
            args = spec.args
            self._engines[key] = self._engine_factory(
                negations=[(n.bank, n.strength) for n in spec.negations], mode=args.mode,
                bandwidth=args.bandwidth if args.bandwidth > 0 else None,
                window=(args.window_start, args.window_end),
                threshold=args.threshold if args.threshold >= 0 else None)
        return self._engines[key]

    def mode_names(self) -> list[str]:
        return [self.engine(i, FIRST_PASS).mode_name for i in range(len(self.specs))]

    def correct(self, denoised: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, *, eps_alphas,
                step: int, steps: int, pass_name: str, image_ids: list[int]) -> torch.Tensor:
        """Run every engine on one CFG result (x0, or eps when ``eps_alphas`` is given) and record it.

        ``step`` is the 0-based sampler step of ``steps`` run in this pass.
        """
        engines = [self.engine(spec_index, pass_name) for spec_index in range(len(self.specs))]
        self.predictions[pass_name] = "x0" if eps_alphas is None else "eps"
        for engine in engines:
            if eps_alphas is None:
                denoised = engine.correct_x0(denoised, x, sigma, step, steps, image_ids=image_ids)
            else:
                denoised = engine.correct_eps(denoised, x, sigma, eps_alphas, step, steps, image_ids=image_ids)
        for image_id in image_ids:
            records = [r for r in (latest_record(engine.report, image_id, step) for engine in engines)
                       if r is not None]
            betas = [r["beta"] for r in records if r["beta"] is not None]
            self.records.setdefault(image_id, []).append(StepRecord(
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
        """JSON-serialisable per-image report for the API response and the status line."""
        return {
            "engine": ENGINE_VERSION,
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


class EnforcementError(RuntimeError):
    """An enforced bank cannot be applied: the generation must not run without it."""


def plan_session(args: GenerationArgs, enforced: Sequence[str], load_bank: Callable[[str], LatentBank],
                 engine_factory: Callable[..., Any]) -> GenerationSession:
    """The session for a request: the request's own banks, then the enforced ones (which get the last word).

    A request bank that cannot be used (missing, damaged, another latent space, a bad mode) is reported
    and skipped, and the generation goes on; an enforced bank that cannot be used raises
    ``EnforcementError`` so the caller stops the generation instead of running it unprotected.
    """
    problems: list[str] = []
    specs: list[EngineSpec] = []
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
            try:
                engine_factory(negations=[(n.bank, n.strength) for n in negations], mode=kept.mode)
                specs.append(EngineSpec(kept, negations))
            except ValueError as error:
                problems.append(str(error))
    if enforced:
        rules = enforced_args(enforced)
        try:
            negations = [Negation(_load_enforced(name, load_bank, problems), rules.strength_of(i))
                         for i, name in enumerate(enforced)]
            engine_factory(negations=[(n.bank, n.strength) for n in negations], mode=rules.mode)
        except Exception as error:
            raise EnforcementError(f"enforced bank cannot be applied, generation stopped: {error}") from error
        specs.append(EngineSpec(rules, negations, enforced=True))
    return GenerationSession(specs, problems, engine_factory)


_enforced_copies: dict[str, LatentBank] = {}


def _load_enforced(name: str, load_bank: Callable[[str], LatentBank], problems: list[str]) -> LatentBank:
    """An enforced bank; if its file was removed or damaged since it was last loaded, the copy in memory.

    A bank of the wrong latent space is never replaced by a copy: that error is raised.
    """
    try:
        bank = load_bank(name)
    except BankCompatibilityError:
        raise
    except Exception as error:
        copy = _enforced_copies.get(name)
        if copy is None:
            raise
        problems.append(f"enforced bank {name!r} cannot be read ({error}); applying the copy loaded earlier")
        return copy
    _enforced_copies[name] = bank
    return bank


def infotext_values(session: GenerationSession) -> dict[str, Any]:
    """``extra_generation_params`` entries of a session (per-image "fired" is computed when each image's
    infotext is written, after its batch has been sampled)."""
    values: dict[str, Any] = {}
    for index, spec in enumerate(session.specs):
        engine = session.engine(index, FIRST_PASS)
        key = INFOTEXT_ENFORCED_KEY if spec.enforced else INFOTEXT_KEY
        values[key] = format_infotext(spec.args, [n.bank for n in spec.negations], engine.mode_name,
                                      getattr(engine, "reference", None))
    values[INFOTEXT_ERROR_KEY] = lambda **_: " / ".join(session.problems) or None  # grows while sampling
    if session.active:
        def fired(p, index=0, all_prompts=None, use_main_prompt=False, **_):
            return None if use_main_prompt else session.fired_text(image_index(p, index, all_prompts))
        values[INFOTEXT_FIRED_KEY] = fired
    return values


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


# --------------------------------------------------------------------------- the CFG callbacks

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


# --------------------------------------------------------------------------- the script's hooks

def before_generation(p) -> None:
    """``Script.before_process``: hide live previews on an enforced server if the operator asked to."""
    if host.enforced_bank_names() and host.opts_value(SETTING_HIDE_PREVIEWS, False):
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
    enforced = host.enforced_bank_names()
    if enforced:
        host.protect_options_from_api(API_PROTECTED_OPTIONS)
    if not request.enabled and not enforced:
        return
    try:
        session = plan_session(request, enforced, host.bank_loader(), host.engine_factory())
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


class ApiOnlyValue(dict):
    """A dict that ``Processed.js()`` serialises like any other but that never enters an infotext:
    ``create_infotext`` calls callable values and leaves out those that return None (modules/processing.py),
    so an infotext rebuilt after the generation (e.g. for a grid) stays short."""

    def __call__(self, **_):
        return None


def protect_enforcement(_demo, app) -> None:
    """``on_app_started``: on an enforced server, API clients may not change the protected options."""
    host.honour_restricted_options_on_api(app)
    if host.enforced_bank_names():
        host.protect_options_from_api(API_PROTECTED_OPTIONS)
_last_report: dict = {}


def remember_report(report: dict) -> None:
    _last_report.clear()
    _last_report.update(report)


def last_report() -> dict:
    """The report of the last finished generation (the accordion's status line and the tab's plot)."""
    return dict(_last_report)
