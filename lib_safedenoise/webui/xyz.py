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
    field: str  # the ``GenerationArgs`` field a cell replaces; "window" sets window_start and window_end
    choices: Callable[[], list[str]] | None = None


def xyz_axes(mode_names: Callable[[], list[str]] | None = None,
             bank_names: Callable[[], list[str]] | None = None) -> list[XyzAxis]:
    """The axes, with the dropdown choices of Mode and Bank when their listers are given."""
    return [
        XyzAxis("[Safe Denoiser] Strength", float, "safe_denoiser_strength", "strengths"),
        XyzAxis("[Safe Denoiser] Mode", str, "safe_denoiser_mode", "mode", mode_names),
        XyzAxis("[Safe Denoiser] Bandwidth", float, "safe_denoiser_bandwidth", "bandwidth"),
        XyzAxis("[Safe Denoiser] Window", str, "safe_denoiser_window", "window"),
        XyzAxis("[Safe Denoiser] Bank", str, "safe_denoiser_bank", "banks", bank_names),
    ]


def apply_xyz_overrides(args: GenerationArgs, p: Any) -> GenerationArgs:
    """Args with the XYZ-plot cell's values (``p.safe_denoiser_*``) in place of the accordion's.

    Each cell value is parsed once, by the field's own parser as ``GenerationArgs`` is rebuilt with it
    (a Strength cell is one number for every bank; a Bank cell may name several, comma-separated); a
    bad cell is a ``ValueError`` naming the field.
    """
    changes: dict[str, Any] = {}
    for axis in xyz_axes():
        if (value := getattr(p, axis.attribute, None)) is None:
            continue
        if axis.field == "window":
            changes["window_start"], changes["window_end"] = parse_window(str(value))
        else:
            changes[axis.field] = value
    return replace(args, **changes) if changes else args
