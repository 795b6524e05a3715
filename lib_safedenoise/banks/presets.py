"""Shareable presets: recommended settings per mode plus a card (description, licence, intended use).

A preset is either

* a **bank preset**: an ordinary bank file whose metadata carries ``sdn_settings`` and the card
  (``modelspec.description``, ``modelspec.license``, ``modelspec.usage_hint``, ...), or
* a **settings-only preset**: a small JSON file (``<name>.preset.json``) naming its bank by hash, for
  sharing settings without sharing any latents::

      {"safe_denoiser_preset": 1,
       "title": "...",
       "card": {"description": "...", "author": "...", "license": "...", "usage_hint": "..."},
       "bank": {"hash_sha256": "0x<64 hex>", "title": "...", "latent_space": "sd1", "count": 515},
       "settings": {"<mode>": {"<that mode's parameter>": <value>, ...}, ...}}

Reading a preset (``read_preset``) changes nothing: the UI shows the returned card first, and only then
installs or applies it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib_safedenoise.banks import fileformat, metadata
from lib_safedenoise.banks.errors import BankFormatError
from lib_safedenoise.banks.metadata import SHORT_HASH_LENGTH

PRESET_VERSION = 1
PRESET_SUFFIX = ".preset.json"
CARD_FIELDS = ("description", "author", "license", "usage_hint")
MAX_PRESET_BYTES = 1 << 20


class PresetError(BankFormatError):
    """A settings-only preset file that cannot be used."""


@dataclass(frozen=True)
class Preset:
    kind: str  # "bank" or "settings"
    title: str
    card: dict[str, str]
    settings: dict[str, dict]
    bank_hash: str
    latent_space: str
    bank_count: int
    path: str
    problems: list[str] = field(default_factory=list)

    @property
    def bank_short_hash(self) -> str:
        return self.bank_hash[2:2 + SHORT_HASH_LENGTH]

    def settings_for(self, mode: str) -> dict[str, Any]:
        return dict(self.settings.get(mode, {}))

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "card": self.card, "settings": self.settings,
                "bank_hash": self.bank_hash, "bank_short_hash": self.bank_short_hash,
                "latent_space": self.latent_space, "bank_count": self.bank_count, "path": self.path,
                "problems": self.problems}


def _card(values: Any, where: str) -> dict[str, str]:
    if not isinstance(values, dict) or not all(k in CARD_FIELDS and isinstance(v, str) for k, v in values.items()):
        raise PresetError(f"{where}: card must be an object with string fields among {CARD_FIELDS}")
    try:
        metadata.check_card(values, what=f"{where}: card")
    except BankFormatError as error:
        raise PresetError(str(error)) from None
    return {k: values.get(k, "") for k in CARD_FIELDS}


def parse_settings_preset(text: str, *, where: str = "preset") -> Preset:
    """Parse a settings-only preset's JSON; any malformation raises ``PresetError``."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise PresetError(f"{where}: not valid JSON") from None
    if not isinstance(data, dict) or data.get("safe_denoiser_preset") != PRESET_VERSION:
        raise PresetError(f"{where}: not a Safe Denoiser preset (expected \"safe_denoiser_preset\": "
                          f"{PRESET_VERSION})")
    bank = data.get("bank")
    if not isinstance(bank, dict) or not isinstance(bank.get("hash_sha256"), str) \
            or not metadata.HASH_RE.fullmatch(bank["hash_sha256"]):
        raise PresetError(f"{where}: \"bank\" must name its bank by \"hash_sha256\": \"0x<64 hex digits>\"")
    title, space, count = data.get("title", ""), bank.get("latent_space", ""), bank.get("count", 0)
    if not isinstance(title, str) or not isinstance(space, str) or not isinstance(count, int):
        raise PresetError(f"{where}: title and bank.latent_space must be strings, bank.count an integer")
    if len(title) > metadata.TEXT_LIMITS["title"] or len(space) > metadata.MAX_STRING_CHARS:
        raise PresetError(f"{where}: title may have {metadata.TEXT_LIMITS['title']} characters and "
                          f"bank.latent_space {metadata.MAX_STRING_CHARS}")
    try:
        settings = metadata.validate_settings(data.get("settings", {}), what=f"{where}: settings")
    except BankFormatError as error:
        raise PresetError(str(error)) from None
    return Preset("settings", title, _card(data.get("card", {}), where), settings, bank["hash_sha256"], space,
                  count, where)


def read_preset(path: str | os.PathLike) -> Preset:
    """The preset (bank file or ``.preset.json``) at ``path``, with its card; nothing is enabled or copied.

    A bank preset is fully verified (format and hash); a failure is raised, not returned.
    """
    path = Path(path)
    if path.name.endswith(".json"):
        if path.stat().st_size > MAX_PRESET_BYTES:
            raise PresetError(f"{path.name}: larger than {MAX_PRESET_BYTES} bytes; not a settings preset")
        return parse_settings_preset(path.read_text(encoding="utf-8", errors="replace"), where=path.name)
    meta = fileformat.verify_file(path).meta
    return Preset("bank", meta.title, {k: getattr(meta, k) for k in CARD_FIELDS}, meta.settings,
                  meta.hash_sha256, meta.latent_space, meta.count, str(path))


def export_preset(bank_path: str | os.PathLike, dest: str | os.PathLike, *, settings_only: bool = False,
                  settings: dict | None = None, card: dict | None = None, title: str | None = None) -> Path:
    """Write one file: a bank preset (the bank with ``settings``/``card`` in its metadata) or, with
    ``settings_only``, a ``.preset.json`` naming the bank by hash. Unset values come from the bank."""
    meta = fileformat.verify_file(bank_path).meta
    new_settings = metadata.validate_settings(settings) if settings is not None else meta.settings
    _card(card or {}, "card")
    new_card = {k: getattr(meta, k) for k in CARD_FIELDS} | dict(card or {})
    dest = Path(dest)
    if not settings_only:
        fileformat.rewrite_metadata(bank_path, dest, settings=new_settings, title=title or meta.title, **new_card)
        return dest
    if not dest.name.endswith(".json"):
        dest = dest.with_name(dest.name + PRESET_SUFFIX)
    document = {"safe_denoiser_preset": PRESET_VERSION, "title": title or meta.title, "card": new_card,
                "bank": {"hash_sha256": meta.hash_sha256, "title": meta.title, "latent_space": meta.latent_space,
                         "count": meta.count},
                "settings": new_settings}
    return fileformat.write_atomically(dest, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode(),
                                       purpose="preset")


def card_text(preset: Preset) -> str:
    """The card as plain text, for the UI to show before a preset is installed or applied."""
    lines = [f"{preset.title}  ({'bank' if preset.kind == 'bank' else 'settings for bank'} "
             f"{preset.bank_short_hash}, {preset.bank_count} images, latent space {preset.latent_space or '?'})"]
    lines += [f"{name.replace('_', ' ')}: {value}" for name, value in preset.card.items() if value]
    if preset.settings:
        lines.append("settings: " + json.dumps(preset.settings, sort_keys=True))
    lines += [f"problem: {p}" for p in preset.problems]
    return "\n".join(lines)

