"""The X/Y/Z plot axes of the extension: each sets a ``p.safe_denoiser_*`` attribute that overrides the
accordion's value for one cell."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from lib_safedenoise.webui.args import GenerationArgs, parse_bank_list, parse_window


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
