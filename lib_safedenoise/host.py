"""The one place where the extension touches the WebUI (``modules``); every import of it is lazy.

Everything else in ``lib_safedenoise`` is a pure library. Supported hosts: AUTOMATIC1111 v1.10.x and
Forge / reForge (same callback API, different batching). SD.Next no longer calls the CFG callbacks and is
detected so the UI can say plainly that it is unsupported.
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from typing import Any, Callable, Sequence

A1111, FORGE, REFORGE, SDNEXT = "a1111", "forge", "reforge", "sdnext"
SUPPORTED_HOSTS = (A1111, FORGE, REFORGE)
LOG_PREFIX = "[Safe Denoiser]"
BANK_FOLDER_NAME = "safe-denoiser"


@lru_cache(maxsize=1)
def host_kind() -> str:
    """Which WebUI we run in: ``a1111``, ``forge``, ``reforge`` or ``sdnext`` (unsupported).

    Forge ships ``modules_forge`` (forge_version); reForge ships ``modules_forge`` too but keeps the ldm
    ``ldm_patched`` backend; SD.Next has ``modules.scripts_manager`` and no ``modules.sd_samplers_cfg_denoiser``.
    """
    import importlib.util

    def present(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    if present("modules.scripts_manager") and not present("modules.sd_samplers_cfg_denoiser"):
        return SDNEXT
    if present("modules_forge"):
        return REFORGE if present("ldm_patched") else FORGE
    return A1111


def unsupported_host_message() -> str | None:
    """A plain sentence for the UI and log when this WebUI cannot run the extension, else None."""
    if host_kind() == SDNEXT:
        return ("SD.Next is not supported: it no longer calls the CFG denoiser callbacks that Safe Denoiser "
                "corrects the sampling through, so enabling it would have no effect.")
    return None


def log_problem(message: str) -> None:
    print(f"{LOG_PREFIX} {message}", file=sys.stderr)


# --------------------------------------------------------------------------- settings and flags

def opts_value(key: str, default: Any = None) -> Any:
    from modules import shared

    return shared.opts.data.get(key, default) if getattr(shared, "opts", None) is not None else default


def cmd_opt(name: str, default: Any = None) -> Any:
    from modules import shared

    return getattr(shared.cmd_opts, name, default)


def protect_options_from_api(keys: Sequence[str]) -> None:
    """Make ``/sdapi/v1/options`` and ``override_settings`` unable to change ``keys``.

    Both go through ``Options.set(..., is_api=True)``, which refuses options marked ``restrict_api``
    (modules/options.py); the settings page (a local operator) still can.
    """
    from modules import shared

    for key in keys:
        info = shared.opts.data_labels.get(key)
        if info is not None:
            info.restrict_api = True


def hide_live_previews(p) -> None:
    """Turn live previews off for this generation only (they show x0 before our correction).

    Called from ``before_process``: ``process_images`` applies ``p.override_settings`` after it and restores
    the previous values when the generation ends (modules/processing.py).
    """
    p.override_settings["live_previews_enable"] = False


def abort_generation() -> None:
    """Stop the generation before its first batch (fail closed): the WebUI checks this flag per batch."""
    from modules import shared

    shared.state.interrupted = True


def default_bank_dir() -> str:
    """``<models dir>/safe-denoiser``: honours ``--models-dir`` and ``--data-dir``."""
    from modules import paths

    return os.path.join(paths.models_path, BANK_FOLDER_NAME)


def bank_dir() -> str:
    from lib_safedenoise.extension import SETTING_BANK_DIR

    return opts_value(SETTING_BANK_DIR, "") or default_bank_dir()


# --------------------------------------------------------------------------- model

def model_latent_space(sd_model=None) -> str:
    """The latent-space id (``lib_safedenoise.bankfile.LATENT_SPACES``) of the loaded model.

    Read from the family flags ``sd_models.set_model_type`` sets; a model may also name its space
    directly (``latent_space`` attribute: the digits model of the tests does).
    """
    if sd_model is None:
        from modules import shared

        sd_model = shared.sd_model
    explicit = getattr(sd_model, "latent_space", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    if getattr(sd_model, "is_sd3", False):
        return "sd3"
    if getattr(sd_model, "is_flux", False) or getattr(sd_model, "is_flux1", False):
        return "flux"
    if getattr(sd_model, "is_sdxl", False) or getattr(sd_model, "is_ssd", False):
        return "sdxl"
    if getattr(sd_model, "is_sd1", False) or getattr(sd_model, "is_sd2", False):
        return "sd1"
    channels = model_latent_channels(sd_model)
    return "sd1" if channels == 4 else f"unknown-{channels}ch"


def model_latent_channels(sd_model) -> int:
    forge_vae = getattr(getattr(sd_model, "forge_objects", None), "vae", None)
    if forge_vae is not None and getattr(forge_vae, "latent_channels", None):
        return int(forge_vae.latent_channels)
    return int(getattr(sd_model, "latent_channels", 4))


# --------------------------------------------------------------------------- sampling

def eps_alphas_cumprod(denoiser):
    """``alphas_cumprod`` when ``on_cfg_after_cfg`` receives eps (A1111's DDIM/PLMS/UniPC), else None.

    A1111 routes the timestep samplers through ``CFGDenoiserTimesteps`` (modules/sd_samplers_timesteps.py),
    whose model output is a noise prediction and whose "sigma" is the integer timestep. Forge and reForge
    convert DDIM to a real sigma and hand x0 to the callback for every sampler.
    """
    if host_kind() != A1111:
        return None
    from modules.sd_samplers_timesteps import CFGDenoiserTimesteps

    return denoiser.alphas if isinstance(denoiser, CFGDenoiserTimesteps) else None


def register_cfg_callbacks(on_cfg_denoiser: Callable, on_cfg_after_cfg: Callable) -> None:
    """Register both callbacks exactly once (any earlier registration of the same functions is dropped)."""
    from modules import script_callbacks

    remove_cfg_callbacks(on_cfg_denoiser, on_cfg_after_cfg)
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser, name="safe_denoiser")
    script_callbacks.on_cfg_after_cfg(on_cfg_after_cfg, name="safe_denoiser")


def remove_cfg_callbacks(*callbacks: Callable) -> None:
    """Remove only our callbacks (remove_current_script_callbacks would drop every callback of the file)."""
    from modules import script_callbacks

    for callback in callbacks:
        script_callbacks.remove_callbacks_for_function(callback)


def registered_callback_count(callback: Callable) -> int:
    from modules import script_callbacks

    return sum(entry.callback == callback for entries in script_callbacks.callback_map.values()
               for entry in entries)


# --------------------------------------------------------------------------- XYZ plot

def register_xyz_axes(axes) -> None:
    """Append our axes to the built-in X/Y/Z plot script (once), if it is loaded."""
    from modules import scripts

    xyz = next((data.module for data in scripts.scripts_data
                if data.script_class.__module__ in ("xyz_grid.py", "scripts.xyz_grid")), None)
    if xyz is None:
        return
    known = {axis.label for axis in xyz.axis_options}
    for axis in axes:
        if axis.label in known:
            continue
        kwargs = {"choices": axis.choices} if axis.choices is not None else {}
        xyz.axis_options.append(xyz.AxisOption(axis.label, axis.kind, xyz.apply_field(axis.attribute), **kwargs))


# --------------------------------------------------------------------------- banks, engine, enforcement

_stores: dict[str, Any] = {}


def bank_store():
    """The ``BankStore`` of the configured bank folder (one per folder, so its caches are shared)."""
    from lib_safedenoise.bank_store import BankStore

    folder = bank_dir()
    if folder not in _stores:
        _stores[folder] = BankStore(folder)
    return _stores[folder]


def bank_names() -> list[str]:
    return bank_store().names()


def bank_loader() -> Callable[[str], Any]:
    """``name -> LatentBank`` for this generation: checked against the loaded model's latent space."""
    store, space = bank_store(), model_latent_space()
    return lambda name: store.load(name, space_id=space)


def engine_factory() -> Callable[..., Any]:
    from lib_safedenoise.engine import SafeDenoiser

    return SafeDenoiser


def mode_names() -> list[str]:
    from lib_safedenoise import modes

    return list(modes.MODES)


def enforced_bank_names() -> tuple[str, ...]:
    """Banks this server imposes: ``--safe-denoiser-enforce`` plus the API-restricted setting."""
    from lib_safedenoise import extension

    return extension.enforced_bank_names(cmd_opt(extension.ENFORCE_CMD_OPT),
                                         opts_value(extension.SETTING_ENFORCED_BANKS))


def guard_bank_change(name: str) -> None:
    """Raise ``EnforcementError`` if bank ``name`` is enforced (it may not be deleted, renamed or replaced)."""
    from lib_safedenoise import extension
    from lib_safedenoise.builder import sanitize_name

    enforced = {sanitize_name(n) for n in enforced_bank_names()}
    if sanitize_name(name) in enforced:
        raise extension.EnforcementError(f"bank {name!r} is enforced on this server and cannot be deleted, "
                                         "renamed or replaced")


# --- UI, tab, settings and API routes ---
