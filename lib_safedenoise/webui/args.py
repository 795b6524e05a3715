"""Per-generation settings and their fixed, versioned positional form.

The WebUI hands an AlwaysOn script its UI values as positional arguments, and API clients send the same
list in ``alwayson_scripts["Safe Denoiser"]["args"]``. That list is a public interface: its order never
changes, and later versions only append. ``ARG_NAMES[i]`` is the meaning of position ``i``:

====  ==============  =========================================================================
 pos  name            value
====  ==============  =========================================================================
  0   enabled         bool
  1   banks           list of bank names (a single name string is accepted too)
  2   strengths       one number per bank, as a list or a comma-separated string ("1, 0.5");
                      missing entries are 1.0, a single number applies to every bank
  3   mode            a concrete mode name or "default" (resolved to a concrete name when used)
  4   bandwidth       kernel bandwidth; 0 means the mode's own default
  5   window_start    fraction of the sampling steps actually run where correction starts (0 = first step)
  6   window_end      fraction where it ends (1 = last step)
  7   threshold       gate threshold; a negative value means the mode's own default / calibration
====  ==============  =========================================================================

Fewer arguments than this are filled with the defaults below (older clients keep working).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Sequence

ARGS_VERSION = 1
ARG_NAMES = ("enabled", "banks", "strengths", "mode", "bandwidth", "window_start", "window_end", "threshold")


@dataclass(frozen=True)
class GenerationArgs:
    enabled: bool = False
    banks: tuple[str, ...] = ()
    strengths: tuple[float, ...] = ()
    mode: str = "default"
    bandwidth: float = 0.0
    window_start: float = 0.0
    window_end: float = 1.0  # the default mode corrects at every step (measured: bench efficacy)
    threshold: float = -1.0

    def strength_of(self, index: int) -> float:
        """Strength of ``banks[index]``: its own entry, else the single shared one, else 1.0."""
        if index < len(self.strengths):
            return self.strengths[index]
        return self.strengths[0] if len(self.strengths) == 1 else 1.0

    def to_script_args(self) -> list[Any]:
        return [self.enabled, list(self.banks), ", ".join(f"{s:g}" for s in self.strengths), self.mode,
                self.bandwidth, self.window_start, self.window_end, self.threshold]

    @classmethod
    def from_script_args(cls, args: Sequence[Any]) -> "GenerationArgs":
        """Parse the positional list (UI or API); raises ``ValueError`` naming the bad argument."""
        if len(args) > len(ARG_NAMES):
            raise ValueError(f"Safe Denoiser takes at most {len(ARG_NAMES)} arguments {ARG_NAMES}, "
                             f"got {len(args)}")
        defaults = cls()
        values = {f.name: getattr(defaults, f.name) for f in fields(cls)}
        for name, value in zip(ARG_NAMES, args):
            values[name] = _PARSERS[name](name, value)
        if not 0.0 <= values["window_start"] <= values["window_end"] <= 1.0:
            raise ValueError("Safe Denoiser: need 0 <= window_start <= window_end <= 1, got "
                             f"{values['window_start']} and {values['window_end']}")
        return cls(**values)


def _parse_bool(name: str, value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (bool, int)) and not isinstance(value, float):
        return bool(value)
    raise ValueError(f"Safe Denoiser argument {name!r} must be true or false, got {value!r}")


def _parse_number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Safe Denoiser argument {name!r} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"Safe Denoiser argument {name!r} must be finite, got {value!r}")
    return number


def _parse_banks(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"Safe Denoiser argument {name!r} must be a list of bank names, got {value!r}")
    return tuple(v.strip() for v in items if v.strip())


def _parse_strengths(name: str, value: Any) -> tuple[float, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return tuple(_parse_number(name, v) for v in value)


def _parse_mode(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"Safe Denoiser argument {name!r} must be a mode name, got {value!r}")
    return value.strip()


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


def parse_window(text: str) -> tuple[float, float]:
    """``"0-0.25"`` (fractions of the steps run) -> ``(0.0, 0.25)``."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*-\s*([0-9.]+)\s*", text)
    if not match:
        raise ValueError(f"Safe Denoiser window must look like 0-0.25 (start-end fractions), got {text!r}")
    return float(match.group(1)), float(match.group(2))


_PARSERS = {
    "enabled": _parse_bool,
    "banks": _parse_banks,
    "strengths": _parse_strengths,
    "mode": _parse_mode,
    "bandwidth": _parse_number,
    "window_start": _parse_number,
    "window_end": _parse_number,
    "threshold": _parse_number,
}
