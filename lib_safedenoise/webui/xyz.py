"""The X/Y/Z plot axes of the extension: each sets a ``p.safe_denoiser_*`` attribute that overrides the
accordion's value for one cell."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from lib_safedenoise.webui.args import GenerationArgs, parse_window


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
    """Args with the XYZ-plot cell's values (``p.safe_denoiser_*``) in place of the accordion's.

    Each cell value is parsed once, by the field's own parser as ``GenerationArgs`` is rebuilt with it
    (a Strength cell is one number for every bank; a Bank cell may name several, comma-separated); a
    bad cell is a ``ValueError`` naming the field.
    """
    changes: dict[str, Any] = {}
    for name, attribute in (("strengths", "safe_denoiser_strength"), ("mode", "safe_denoiser_mode"),
                            ("bandwidth", "safe_denoiser_bandwidth"), ("banks", "safe_denoiser_bank")):
        if (value := getattr(p, attribute, None)) is not None:
            changes[name] = value
    if (window := getattr(p, "safe_denoiser_window", None)) is not None:
        changes["window_start"], changes["window_end"] = parse_window(str(window))
    return replace(args, **changes) if changes else args
