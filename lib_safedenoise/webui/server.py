"""What this server has, read through the host adapter: its bank folder and store, its reference bank, its
enforced banks, and the engine factory a generation uses. Policy lives here; ``host`` only reads the WebUI."""

from __future__ import annotations

from typing import Any, Callable

import torch

from lib_safedenoise.banks.builder import sanitize_name
from lib_safedenoise.banks.errors import BankError
from lib_safedenoise.banks.store import BankStore
from lib_safedenoise.core.engine import SafeDenoiser
from lib_safedenoise.core.latent_bank import LatentBank, resize_latents
from lib_safedenoise.core.modes import MODES, takes_reference
from lib_safedenoise.webui import host
from lib_safedenoise.webui.enforcement import EnforcementError, merge_enforced_names
from lib_safedenoise.webui.keys import ENFORCE_CMD_OPT, SETTING_BANK_DIR, SETTING_ENFORCED_BANKS


def bank_dir() -> str:
    """The bank folder: the setting, else ``<models dir>/safe-denoiser``."""
    return host.opts_value(SETTING_BANK_DIR, "") or host.default_bank_dir()


_stores: dict[str, Any] = {}


def bank_store():
    """The ``BankStore`` of the configured bank folder (one per folder, so its caches are shared)."""
    folder = bank_dir()
    if folder not in _stores:
        _stores[folder] = BankStore(folder)
    return _stores[folder]


def bank_names() -> list[str]:
    return bank_store().names()


def bank_loader() -> Callable[[str], Any]:
    """``name -> LatentBank`` for this generation: checked against the loaded model's latent space."""
    store, space = bank_store(), host.model_latent_space()
    return lambda name: store.load(name, space_id=space)


def reference_bank():
    """The ordinary images the default mode contrasts against: every bank of role ``reference`` in the
    bank folder that fits the loaded model, joined at the first one's latent size; None when there is none."""
    store, space = bank_store(), host.model_latent_space()
    banks = [store.load(entry.name, space_id=space) for entry in store.list(space_id=space)
             if entry.meta is not None and entry.meta.role == "reference" and entry.compatible]
    if len(banks) < 2:
        return banks[0] if banks else None
    size = banks[0].size
    return LatentBank("+".join(bank.name for bank in banks), role="reference", latent_space=space,
                      latents=torch.cat([resize_latents(bank.latents, size) for bank in banks]),
                      metadata={"parts": [(bank.name, bank.short_hash) for bank in banks]})


def engine_factory() -> Callable[..., Any]:
    """``SafeDenoiser`` with this server's reference bank handed to the modes that contrast against one."""
    reference = reference_bank()

    def make(negations, *, mode: str = "default", **settings):
        return SafeDenoiser(negations, mode=mode, reference=reference if takes_reference(mode) else None,
                            **settings)

    return make


def mode_names() -> list[str]:
    return list(MODES)


def enforced_bank_names() -> tuple[str, ...]:
    """Banks this server imposes: ``--safe-denoiser-enforce`` plus the API-restricted setting."""
    return merge_enforced_names(host.cmd_opt(ENFORCE_CMD_OPT), host.opts_value(SETTING_ENFORCED_BANKS))


def guard_bank_change(name: str) -> None:
    """Raise ``EnforcementError`` if bank ``name`` is enforced (it may not be deleted, renamed or replaced)."""
    enforced = {sanitize_name(n) for n in enforced_bank_names()}
    if sanitize_name(name) in enforced:
        raise EnforcementError(f"bank {name!r} is enforced on this server and cannot be deleted, "
                                         "renamed or replaced")


def webui_vae_encoder():
    """An encoder for the loaded model; raises ``BankError`` when no model is loaded."""
    model = host.loaded_model()
    if model is None:
        raise BankError("no checkpoint is loaded: load one (top of the page) to encode images with its VAE")
    return host.WebuiVaeEncoder(model)
