"""The real ``k_diffusion`` samplers, wherever they come from.

Inside the WebUI, ``k_diffusion`` is the WebUI's own copy and imports normally. Outside it, the PyPI
package is installed without its dependencies (see ``.ci/setup``): its ``__init__`` imports clip,
kornia, wandb and more that sampling never uses, so we register the package by its path and import
only the submodules we need. Nothing here replaces k-diffusion code; it only skips an import.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def _ensure_package() -> None:
    if "k_diffusion" in sys.modules:
        return
    try:
        importlib.import_module("k_diffusion")
        return
    except ImportError:
        spec = importlib.util.find_spec("k_diffusion")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                "k_diffusion is not installed: run `bash .ci/setup` (it installs the PyPI "
                "k-diffusion with --no-deps plus what k_diffusion.sampling imports)"
            ) from None
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["k_diffusion"] = package


def sampling() -> types.ModuleType:
    """``k_diffusion.sampling``: sample_euler, sample_dpmpp_2m, sample_heun, ..."""
    _ensure_package()
    return importlib.import_module("k_diffusion.sampling")


def external() -> types.ModuleType:
    """``k_diffusion.external``: CompVisDenoiser and the discrete-schedule wrappers."""
    _ensure_package()
    return importlib.import_module("k_diffusion.external")
