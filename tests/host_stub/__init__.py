"""A stand-in for the WebUI's ``modules`` package, for tests only (the WebUI is absent in CI).

Each module reproduces the names, fields, call order and quirks of AUTOMATIC1111 v1.10.1 (commit
82a973c0) that the extension relies on, and cites the real file it follows. It drives the real
k-diffusion samplers; the "checkpoint" is the digits model of the efficacy benchmark. ``configure``
switches between the A1111 layout and Forge's (un-batched x in on_cfg_denoiser, no on_cfg_denoised,
x0 handed to on_cfg_after_cfg for every sampler including DDIM, the checkpoint loaded on the first
generation), each time as a freshly started server.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path

STUB_ROOT = Path(__file__).resolve().parent


def install() -> None:
    """Make ``import modules`` resolve to this stub."""
    if str(STUB_ROOT) not in sys.path:
        sys.path.insert(0, str(STUB_ROOT))
    loaded = sys.modules.get("modules")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(STUB_ROOT)):
        raise RuntimeError("a different `modules` package is already imported")


def configure(*, forge: bool) -> None:
    """Behave as A1111 (``forge=False``) or as Forge; also what ``lib_safedenoise.webui.host`` detects."""
    install()
    from modules import sd_models, shared

    shared.forge = forge
    sd_models.reset(forge=forge)
    if forge:
        package = types.ModuleType("modules_forge")
        package.__spec__ = importlib.machinery.ModuleSpec("modules_forge", None, is_package=True)
        sys.modules["modules_forge"] = package
    else:
        sys.modules.pop("modules_forge", None)
    from lib_safedenoise.webui import host

    host.host_kind.cache_clear()
