"""Per-generation settings: one validated, immutable value, and its fixed, versioned positional form.

The WebUI hands an AlwaysOn script its UI values as positional arguments, and API clients send the same
list in ``alwayson_scripts["Safe Denoiser"]["args"]``. That list is a public interface: its order never
changes, and later versions only append. ``ARG_NAMES[i]`` is the meaning of position ``i``:

====  ==============  =========================================================================
 pos  name            value
====  ==============  =========================================================================
  0   enabled         bool
  1   banks           list of bank names, or one string; a comma separates names in either
  2   strengths       one number per bank in [0, MAX_STRENGTH], as a list or a comma-separated string
                      ("1, 0.5"); missing entries are 1.0, a single number applies to every bank
  3   mode            a concrete mode name or "default" (resolved to a concrete name when used)
  4   bandwidth       kernel bandwidth, >= 0; 0 means the mode's own default
  5   window_start    fraction of the sampling steps actually run where correction starts (0 = first step)
  6   window_end      fraction where it ends (1 = last step)
  7   threshold       gate threshold; a negative value means the mode's own default / calibration
====  ==============  =========================================================================

Fewer arguments than this are filled with the defaults below (older clients keep working).

Every field of ``GenerationArgs`` is defined once, by ``setting``: its default, its parser (from any raw
form: a UI control's value, an API argument, an infotext or XYZ-plot string), the bounds of its numbers,
the UI control's range and the key of the infotext value that records it. Constructing a
``GenerationArgs`` (directly, by ``from_script_args`` or by ``dataclasses.replace``) runs those parsers, so
every value that exists is valid, and each source (positional args, infotext, XYZ cell, setting) is parsed
exactly once, where it enters.
"""

from __future__ import annotations

import math
import re
from dataclasses import Field, dataclass, field, fields
from typing import Any, Callable, Sequence

from lib_safedenoise.core.modes import MAX_STRENGTH

ARGS_VERSION = 1


def parse_bool(value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (bool, int)) and not isinstance(value, float):
        return bool(value)
    raise ValueError(f"must be true or false, got {value!r}")


def parse_number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"must be finite, got {value!r}")
    return number


def parse_numbers(value: Any) -> tuple[float, ...]:
    """A list of numbers, a single number, or a comma-separated string of them ("1, 0.5")."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return tuple(parse_number(v) for v in value)


def parse_bank_list(value: Any) -> tuple[str, ...]:
    """Bank names from any source: one string or a list of strings, each comma-separated; blanks dropped.

    The one bank-list parser (positional args, XYZ cells, the launch flag, settings). A comma always
    separates names: ``builder.sanitize_name`` turns it into ``_``, so no bank name contains one.
    Duplicates are kept (the positional list pairs ``banks[i]`` with ``strengths[i]``).
    """
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"must be a list of bank names, got {value!r}")
    return tuple(name.strip() for item in items for name in item.split(",") if name.strip())


def parse_mode(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a mode name, got {value!r}")
    return value.strip()


def parse_window(text: str) -> tuple[float, float]:
    """``"0-0.25"`` (fractions of the steps run; the XYZ cell and infotext form) -> ``(0.0, 0.25)``."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*-\s*([0-9.]+)\s*", text)
    if not match:
        raise ValueError(f"Safe Denoiser window must look like 0-0.25 (start-end fractions), got {text!r}")
    return float(match.group(1)), float(match.group(2))


def format_strengths(strengths: Sequence[float]) -> str:
    """The ``strengths`` argument's string form, as the UI's hidden textbox holds it: ``"1, 0.5"``."""
    return ", ".join(f"{s:g}" for s in strengths)


def setting(default: Any, parse: Callable[[Any], Any], *, bounds: tuple[float, float] | None = None,
            step: float | None = None, infotext: str | None = None) -> Any:
    """One field of ``GenerationArgs``, defined once.

    ``parse`` turns any raw form into the field's type or raises ``ValueError`` saying what it must be;
    ``bounds`` (inclusive) hold for the value, or for each number of a tuple, and are the UI control's
    range (``control_range``); ``step`` is its slider's step; ``infotext`` is the key within the
    "Safe Denoiser" infotext value that records the field (``infotext.format_infotext``).
    """
    return field(default=default,
                 metadata={"parse": parse, "bounds": bounds, "step": step, "infotext": infotext})


@dataclass(frozen=True)
class GenerationArgs:
    """One generation's settings, parsed and validated on construction (see the module docstring)."""

    enabled: bool = setting(False, parse_bool)
    banks: tuple[str, ...] = setting((), parse_bank_list, infotext="banks")
    strengths: tuple[float, ...] = setting((), parse_numbers, bounds=(0.0, MAX_STRENGTH), step=0.05,
                                           infotext="banks")
    mode: str = setting("default", parse_mode, infotext="mode")
    bandwidth: float = setting(0.0, parse_number, bounds=(0.0, math.inf), infotext="bandwidth")
    window_start: float = setting(0.0, parse_number, bounds=(0.0, 1.0), step=0.01, infotext="window")
    # the default mode corrects at every step (measured: bench efficacy)
    window_end: float = setting(1.0, parse_number, bounds=(0.0, 1.0), step=0.01, infotext="window")
    threshold: float = setting(-1.0, parse_number, infotext="threshold")

    def __post_init__(self):
        for spec in fields(self):
            object.__setattr__(self, spec.name, _parsed(spec, getattr(self, spec.name)))
        if self.window_start > self.window_end:
            raise ValueError("Safe Denoiser: need 0 <= window_start <= window_end <= 1, got "
                             f"{self.window_start} and {self.window_end}")

    def strength_of(self, index: int) -> float:
        """Strength of ``banks[index]``: its own entry, else the single shared one, else 1.0."""
        if index < len(self.strengths):
            return self.strengths[index]
        return self.strengths[0] if len(self.strengths) == 1 else 1.0

    @property
    def chosen_bandwidth(self) -> float | None:
        """The bandwidth asked for, or None for the mode's own (the control's 0)."""
        return self.bandwidth if self.bandwidth > 0 else None

    @property
    def chosen_threshold(self) -> float | None:
        """The gate threshold asked for, or None for the mode's own or its calibration (a negative value)."""
        return self.threshold if self.threshold >= 0 else None

    def to_script_args(self) -> list[Any]:
        """The positional form (the accordion's control values): strengths as their string."""
        return [self.enabled, list(self.banks), format_strengths(self.strengths), self.mode,
                self.bandwidth, self.window_start, self.window_end, self.threshold]

    @classmethod
    def from_script_args(cls, args: Sequence[Any]) -> "GenerationArgs":
        """Parse the positional list (UI or API); raises ``ValueError`` naming the bad argument."""
        if len(args) > len(ARG_NAMES):
            raise ValueError(f"Safe Denoiser takes at most {len(ARG_NAMES)} arguments {ARG_NAMES}, "
                             f"got {len(args)}")
        return cls(**dict(zip(ARG_NAMES, args)))


def _parsed(spec: Field, value: Any) -> Any:
    """``value`` through the field's parser and bounds; ``ValueError`` naming the field."""
    try:
        parsed = spec.metadata["parse"](value)
    except ValueError as error:
        raise ValueError(f"Safe Denoiser argument {spec.name!r} {error}") from None
    bounds = spec.metadata["bounds"]
    if bounds is not None:
        for number in parsed if isinstance(parsed, tuple) else (parsed,):
            if not bounds[0] <= number <= bounds[1]:
                raise ValueError(f"Safe Denoiser argument {spec.name!r} must lie in [{bounds[0]:g}, "
                                 f"{bounds[1]:g}], got {number:g}")
    return parsed


SETTINGS: dict[str, Field] = {spec.name: spec for spec in fields(GenerationArgs)}
ARG_NAMES = tuple(SETTINGS)


def parse_setting(name: str, value: Any) -> Any:
    """One field's value from a raw form, validated as ``GenerationArgs`` validates it."""
    return _parsed(SETTINGS[name], value)


def control_range(name: str) -> dict[str, float]:
    """Keyword arguments ``minimum``/``maximum``/``step`` of the UI control of field ``name``: its finite
    bounds and its slider step, those it has."""
    spec = SETTINGS[name]
    lower, upper = spec.metadata["bounds"] or (-math.inf, math.inf)
    limits = {"minimum": lower, "maximum": upper, "step": spec.metadata["step"]}
    return {key: value for key, value in limits.items() if value is not None and math.isfinite(value)}
