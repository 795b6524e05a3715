"""The infotext format: the extension's keys as written into each image's parameters, and read back by
paste, PNG Info and the API's ``infotext``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from lib_safedenoise import ENGINE_VERSION
from lib_safedenoise.core.latent_bank import LatentBank
from lib_safedenoise.webui import host
from lib_safedenoise.webui.args import ARG_NAMES, SETTINGS, GenerationArgs, parse_window
from lib_safedenoise.webui.session import GenerationSession
from lib_safedenoise.webui.keys import (FIRST_PASS, INFOTEXT_ERROR_KEY, INFOTEXT_FIRED_KEY,
                                        INFOTEXT_KEY)


def format_number(value: float) -> str:
    return f"{value:g}"


def format_infotext(args: GenerationArgs, banks: Sequence[LatentBank], mode_name: str,
                    reference: LatentBank | None = None) -> str:
    """The "Safe Denoiser" value: banks with short hashes and strengths, concrete mode, engine, window...

    A reference bank the mode contrasted against is recorded as ``reference=name@hash|...`` (it changes
    the result); pasting does not restore it, since reference banks are a property of the server.

    e.g. ``banks=nsfw@1a2b3c4d5e6f*1|cats@0f0e0d0c0b0a*0.5; mode=paper; engine=0.1.0; window=0-0.25;
    bandwidth=auto; threshold=auto``. Fields are ``;``-separated ``name=value`` pairs so a future field is
    ignored by an older reader; bank names never contain ``, | @ * ; =`` (``builder.sanitize_name``).
    """
    bank_text = "|".join(f"{bank.name}@{bank.short_hash or '-'}*{format_number(args.strength_of(i))}"
                         for i, bank in enumerate(banks))
    auto = lambda v: "auto" if v is None else format_number(v)  # noqa: E731 - None: the mode's own
    return "; ".join([
        f"banks={bank_text}",
        f"mode={mode_name}",
        f"engine={ENGINE_VERSION}",
        f"window={format_number(args.window_start)}-{format_number(args.window_end)}",
        f"bandwidth={auto(args.chosen_bandwidth)}",
        f"threshold={auto(args.chosen_threshold)}",
        *([] if reference is None else [f"reference={reference_text(reference)}"]),
    ])


def reference_text(reference: LatentBank) -> str:
    """``name@hash`` of each bank a (possibly joined, see ``server.reference_bank``) reference bank holds."""
    parts = reference.metadata.get("parts") or [(reference.name, reference.short_hash)]
    return "|".join(f"{name}@{short_hash or '-'}" for name, short_hash in parts)


@dataclass(frozen=True)
class PastedSettings:
    """What an infotext's "Safe Denoiser" value restores; ``hashes`` lets the UI warn about a changed bank."""

    args: GenerationArgs
    hashes: dict[str, str]
    engine: str


def parse_infotext(value: str) -> PastedSettings:
    """Inverse of ``format_infotext``; raises ``ValueError`` on a malformed value.

    Each ``name=value`` field becomes the ``GenerationArgs`` fields it records (``args.setting``'s
    ``infotext`` key), parsed once by their own parsers as the args are built: ``banks`` gives the banks and
    their strengths, ``window`` both window fields, and a field written as ``auto`` takes its default.
    """
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
        if not name or "," in name:  # no bank name holds a comma (builder.sanitize_name)
            raise ValueError(f"Safe Denoiser infotext: bad bank entry {entry!r} (want name@hash*strength)")
        banks.append(name)
        strengths.append(strength)
        if short_hash != "-":
            hashes[name] = short_hash
    values = {"enabled": True, "banks": tuple(banks), "strengths": tuple(strengths)}
    if "window" in fields_:
        values["window_start"], values["window_end"] = parse_window(fields_["window"])
    for name, spec in SETTINGS.items():  # the fields recorded under their own name, as written
        written = fields_.get(name, "auto")
        if name not in values and spec.metadata["infotext"] == name and written not in ("auto", ""):
            values[name] = written
    return PastedSettings(GenerationArgs(**values), hashes, fields_.get("engine", ""))


_last_paste: tuple[dict, str, GenerationArgs | None] | None = None


def pasted_args(params: dict) -> GenerationArgs | None:
    """The args a parsed infotext restores: off when our key is absent, None when its value is unreadable.

    Paste, PNG Info and the API's ``infotext`` call every field's reader with the same ``params`` dict, so
    the value is parsed (and an unreadable one reported) once per ``params`` and shared by the readers.
    """
    global _last_paste
    if INFOTEXT_KEY not in params:
        return GenerationArgs(enabled=False)
    value = params[INFOTEXT_KEY]
    last = _last_paste
    if last is not None and last[0] is params and last[1] == value:
        return last[2]
    try:
        args = parse_infotext(value).args
    except ValueError as error:
        host.log_problem(f"cannot restore settings from infotext: {error}")
        args = None
    _last_paste = (params, value, args)
    return args


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


def image_index(p: Any, index: int, all_prompts: Any) -> int:
    """The job-wide image number behind ``create_infotext``'s ``index``.

    ``process_images_inner`` builds each image's infotext with the *batch's* prompts and a batch-local
    index; ``Processed.infotext`` passes the job's prompts and a job-wide index (modules/processing.py).
    """
    return p.iteration * p.batch_size + index if all_prompts is p.prompts else index


def infotext_values(session: GenerationSession) -> dict[str, Any]:
    """``extra_generation_params`` entries of a session (per-image "fired" is computed when each image's
    infotext is written, after its batch has been sampled)."""
    values: dict[str, Any] = {}
    for index, spec in enumerate(session.specs):
        engine = session.engine(index, FIRST_PASS)
        values[spec.infotext_key] = format_infotext(spec.args, [n.bank for n in spec.negations], engine.mode_name,
                                      getattr(engine, "reference", None))
    values[INFOTEXT_ERROR_KEY] = lambda **_: " / ".join(session.problems) or None  # grows while sampling
    if session.active:
        def fired(p, index=0, all_prompts=None, use_main_prompt=False, **_):
            return None if use_main_prompt else session.fired_text(image_index(p, index, all_prompts))
        values[INFOTEXT_FIRED_KEY] = fired
    return values


class ApiOnlyValue(dict):
    """A dict that ``Processed.js()`` serialises like any other but that never enters an infotext:
    ``create_infotext`` calls callable values and leaves out those that return None (modules/processing.py),
    so an infotext rebuilt after the generation (e.g. for a grid) stays short."""

    def __call__(self, **_):
        return None
