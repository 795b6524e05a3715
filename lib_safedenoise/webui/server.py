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


def reference_bank(problems: list[str] | None = None) -> LatentBank | None:
    """The ordinary images the default mode contrasts against: every bank of role ``reference`` in the
    bank folder that fits the loaded model, joined at the first one's latent size; None when there is none.

    A reference bank is optional to every correction, so one that cannot be used (unreadable, damaged,
    non-finite latents, channel-normalised, or the folder itself unreadable) never raises: it is left out
    and the reason added to ``problems``. The join is cached by the parts' content hashes, so a bank
    folder whose reference banks have not changed is not joined again for each generation.
    """
    problems = [] if problems is None else problems
    try:
        store, space = bank_store(), host.model_latent_space()
        entries = [entry for entry in store.list(space_id=space)
                   if entry.meta is not None and entry.meta.role == "reference" and entry.compatible]
    except Exception as error:  # the folder itself (e.g. removed, no permission): no reference bank
        problems.append(f"reference banks not read ({type(error).__name__}: {error}); corrections run without one")
        return None
    banks = []
    for entry in entries:
        try:
            bank = store.load(entry.name, space_id=space)
            if bank.channel_normalized:
                raise ValueError("it holds channel-normalised latents (the released code's cache format), "
                                 "which the reference modes' kernels cannot use")
        except Exception as error:  # unreadable, damaged, NaN/Inf: BankError, ValueError, OSError, ...
            problems.append(f"reference bank {entry.name!r} skipped: {error}")
            continue
        banks.append(bank)
    if len(banks) < 2:
        return banks[0] if banks else None
    key = (space, tuple((bank.name, bank.metadata.get("hash_sha256") or bank.short_hash) for bank in banks))
    if key not in _joined_references:
        size = banks[0].size
        _joined_references.clear()  # only the current join is worth keeping
        _joined_references[key] = LatentBank(
            "+".join(bank.name for bank in banks), role="reference", latent_space=space,
            latents=torch.cat([resize_latents(bank.latents, size) for bank in banks]),
            metadata={"parts": [(bank.name, bank.short_hash) for bank in banks]})
    return _joined_references[key]


_joined_references: dict[tuple, LatentBank] = {}


def engine_factory(problems: list[str] | None = None) -> Callable[..., Any]:
    """``SafeDenoiser`` with this server's reference bank handed to the modes that contrast against one;
    reference banks left out are reported in ``problems`` (see ``reference_bank``)."""
    reference = reference_bank(problems)

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
    """Raise ``EnforcementError`` if bank ``name`` is enforced (it may not be deleted, renamed or replaced).

    Names are compared case-folded, whatever this server's file system does: on a case-insensitive one
    ``GUARDED`` opens the file of the enforced ``guarded``. Callers check this before looking the bank up, so
    an enforced name is refused whether or not its file exists.
    """
    def file_key(bank: str) -> str:  # a name that does not sanitise is compared as given
        try:
            return sanitize_name(bank).casefold()
        except BankError:
            return str(bank).strip().casefold()

    if file_key(name) in {file_key(n) for n in enforced_bank_names()}:
        raise EnforcementError(f"bank {name!r} is enforced on this server and cannot be deleted, "
                                         "renamed or replaced")


def webui_vae_encoder():
    """An encoder for the model a generation would use now (``host.ready_model``: on Forge, which loads the
    checkpoint lazily, this loads it); raises ``BankError`` when there is none. Call under the queue lock."""
    model = host.ready_model()
    if model is None:
        raise BankError("no checkpoint is loaded: load one (top of the page) to encode images with its VAE")
    return host.WebuiVaeEncoder(model)
