"""A folder of banks (and settings-only presets), as the WebUI script, tab and API routes see it.

Bank names are file stems (``<folder>/<name>.safetensors``), sanitised by ``builder.sanitize_name`` so a
name can never leave the folder; a name that cannot be used raises ``BankNameError`` (bad input). Opening a
store removes the temporary files that killed builds and imports left in its folder
(``fileformat.remove_stale_temporaries``). Every method is thread-safe: writes are atomic renames and the
mutating operations share one lock. ``load`` returns a cached ``LatentBank`` that is re-read when the file
changes on disk. No WebUI imports: the host passes the model's latent space id where compatibility
matters.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from lib_safedenoise.banks import builder, fileformat, legacy, metadata, presets
from lib_safedenoise.banks.errors import BankCompatibilityError, BankError, BankExistsError, BankNameError
from lib_safedenoise.banks.fileformat import BANK_SUFFIX
from lib_safedenoise.banks.metadata import BankMetadata
from lib_safedenoise.banks.builder import BuildReport, sanitize_name
from lib_safedenoise.banks.encoders import Encoder
from lib_safedenoise.core.latent_bank import LatentBank


@dataclass(frozen=True)
class BankEntry:
    """One file of the store, as listed: readable banks carry ``meta``; broken ones a ``problem``."""

    name: str
    path: Path
    size_bytes: int
    meta: BankMetadata | None
    problem: str = ""
    compatible: bool | None = None
    compatibility: str = ""

    def as_dict(self) -> dict[str, Any]:
        meta = self.meta
        return {"name": self.name, "size_bytes": self.size_bytes, "problem": self.problem,
                "compatible": self.compatible, "compatibility": self.compatibility,
                **({"title": meta.title, "role": meta.role, "count": meta.count,
                    "latent_space": meta.latent_space, "latent_shape": list(meta.shape[1:]),
                    "short_hash": meta.short_hash, "channel_normalized": meta.channel_normalized,
                    "card": meta.card, "settings": meta.settings, "categories": meta.categories}
                   if meta else {})}


MAX_FILE_NAME_BYTES = 255
"""The file-system limit on one file name, in UTF-8 bytes."""


def upload_file_name(file_name: str) -> str:
    """The base name of an uploaded file (its folders dropped), or ``BankNameError`` when there is none
    (``""``, ``"."``, ``".."``, a name ending in a separator) or it cannot be a file name (a NUL
    character, more than ``MAX_FILE_NAME_BYTES``)."""
    base = re.split(r"[/\\]", str(file_name))[-1].strip()
    if base in ("", ".", ".."):
        raise BankNameError(f"file name {file_name!r} names no file; give the uploaded file's own name, e.g. "
                            "mine.safetensors or mine.preset.json")
    if "\0" in base or len(base.encode("utf-8", "surrogatepass")) > MAX_FILE_NAME_BYTES:
        raise BankNameError(f"file name {base[:40]!r}... cannot be a file name (a NUL character, or more than "
                            f"{MAX_FILE_NAME_BYTES} bytes in UTF-8)")
    return base


class BankStore:
    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._lock = threading.RLock()
        self._headers: dict[Path, tuple[tuple[int, int], BankMetadata | None, str]] = {}
        self._building: set[str] = set()
        fileformat.remove_stale_temporaries(self.folder)

    def path_of(self, name: str) -> Path:
        return self.folder / (sanitize_name(name) + BANK_SUFFIX)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name[:-len(BANK_SUFFIX)] for p in self.folder.glob("*" + BANK_SUFFIX)
                      if p.is_file() and not p.name.startswith("."))

    def _existing(self, name: str) -> Path:
        path = self.path_of(name)
        if not path.is_file():
            known = ", ".join(self.names()) or "none"
            raise BankError(f"no bank named {name!r} in {self.folder.name} (banks: {known})")
        return path

    def _header(self, path: Path) -> tuple[BankMetadata | None, str]:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._headers.get(path)
        if cached and cached[0] == stamp:
            return cached[1], cached[2]
        try:
            meta, problem = fileformat.read_metadata(path), ""
        except BankError as error:
            meta, problem = None, str(error)
        with self._lock:
            self._headers[path] = (stamp, meta, problem)
        return meta, problem

    def entry(self, name: str, *, space_id: str | None = None) -> BankEntry:
        path = self._existing(name)
        meta, problem = self._header(path)
        compatible, note = None, ""
        if meta is not None and space_id is not None:
            try:
                fileformat.check_compatibility(meta, space_id, name=name)
                compatible = True
            except BankCompatibilityError as error:
                compatible, note = False, str(error)
        return BankEntry(name, path, path.stat().st_size, meta, problem, compatible, note)

    def list(self, *, space_id: str | None = None) -> list[BankEntry]:
        """Every bank with its card, size and latent space; ``compatible`` is set when ``space_id`` is given."""
        entries = []
        for name in self.names():
            try:
                entries.append(self.entry(name, space_id=space_id))
            except (BankError, OSError):
                continue  # removed while listing
        return entries

    def load(self, name: str, *, space_id: str | None = None) -> LatentBank:
        return fileformat.load_bank(self._existing(name), name=sanitize_name(name), space_id=space_id)

    def inspect(self, name: str) -> dict[str, Any]:
        entry = self.entry(name)
        data = entry.as_dict()
        if entry.meta is not None:
            data["metadata"] = entry.meta.as_dict()
        return data

    def verify(self, name: str, *, space_id: str | None = None) -> fileformat.Verification:
        return fileformat.verify_bank(self._existing(name), space_id=space_id)

    def find_by_hash(self, hash_or_prefix: str) -> str | None:
        """The bank whose ``modelspec.hash_sha256`` is, or starts with, the given hash (``0x`` optional)."""
        wanted = hash_or_prefix.lower().removeprefix("0x")
        if len(wanted) < 8:
            raise BankError(f"hash {hash_or_prefix!r} is too short to identify a bank (need 8+ hex digits)")
        for entry in self.list():
            if entry.meta and entry.meta.hash_sha256[2:].startswith(wanted):
                return entry.name
        return None

    def rename(self, old: str, new: str) -> str:
        with self._lock:
            source, target = self._existing(old), self.path_of(new)
            if target.exists():
                raise BankError(f"a bank named {sanitize_name(new)!r} already exists")
            os.replace(source, target)
            fileformat.invalidate(source)
            return sanitize_name(new)

    def delete(self, name: str) -> None:
        with self._lock:
            path = self._existing(name)
            path.unlink()
            fileformat.invalidate(path)

    def _claim(self, name: str, overwrite: bool) -> Path:
        target = self.path_of(name)
        if target.exists() and not overwrite:
            raise BankExistsError(f"a bank named {sanitize_name(name)!r} already exists")
        return target

    def import_file(self, source: str | os.PathLike, *, name: str | None = None, overwrite: bool = False,
                    allow_pickle: bool = False, space_id: str = "sd1") -> str:
        """Copy a bank (or bank preset) into the store after verifying it (format, hash, finite values);
        torch pickles (``legacy.is_torch_pickle``, whatever their suffix) are converted only with
        ``allow_pickle`` (``space_id`` says which VAE made them)."""
        source = Path(source)
        stem = name or legacy.stem_of(source.name)
        with self._lock:
            target = self._claim(stem, overwrite)
            if legacy.is_torch_pickle(source):
                legacy.convert_legacy_pt(source, target, allow_pickle=allow_pickle, space_id=space_id,
                                         title=sanitize_name(stem))
            else:
                fileformat.verify_file(source)

                def copy(out) -> None:
                    with open(source, "rb") as f:
                        shutil.copyfileobj(f, out)

                fileformat.write_atomically(target, copy, purpose="import", check=fileformat.verify_file)
                fileformat.invalidate(target)
            return sanitize_name(stem)

    def export(self, name: str, dest: str | os.PathLike, *, settings_only: bool = False,
               settings: dict | None = None, card: dict | None = None) -> Path:
        return presets.export_preset(self._existing(name), dest, settings_only=settings_only, settings=settings,
                                     card=card)

    def save_settings(self, name: str, settings: dict | None = None, **card: str) -> BankMetadata:
        """Store recommended settings and/or card fields in the bank itself (the hash is unchanged)."""
        with self._lock:
            changes = {"settings": metadata.validate_settings(settings)} if settings is not None else {}
            return fileformat.rewrite_metadata(self._existing(name), **changes,
                                             **{k: v for k, v in card.items() if k in presets.CARD_FIELDS})

    def read_preset(self, path: str | os.PathLike) -> presets.Preset:
        """A preset's card and settings for the UI to show; a settings-only preset notes a missing bank."""
        preset = presets.read_preset(path)
        if preset.kind == "settings" and self.find_by_hash(preset.bank_hash) is None:
            preset.problems.append(f"its bank {preset.bank_short_hash} is not in this bank folder")
        return preset

    def install_preset(self, path: str | os.PathLike, *, name: str | None = None, overwrite: bool = False) -> str:
        """Install a preset read (and shown) before: a bank preset is imported; a settings-only preset
        writes its settings and card into the bank it names. Returns the bank's name."""
        preset = presets.read_preset(path)
        if preset.kind == "bank":
            return self.import_file(path, name=name, overwrite=overwrite)
        bank = self.find_by_hash(preset.bank_hash)
        if bank is None:
            raise BankError(f"preset {preset.title!r} needs bank {preset.bank_short_hash}, which is not in "
                            f"{self.folder.name}")
        self.save_settings(bank, preset.settings, **{k: v for k, v in preset.card.items() if v})
        return bank

    @contextmanager
    def building(self, name: str, *, overwrite: bool = False, append: bool = False) -> Iterator[Path]:
        """Reserve bank ``name`` for a write that takes a while; yields its path. Refused before any work
        when it is already being built, or exists and neither ``overwrite`` nor ``append`` is given."""
        clean = sanitize_name(name)
        with self._lock:
            if clean in self._building:
                raise BankError(f"bank {clean!r} is already being built")
            if not append:
                self._claim(clean, overwrite)
            self._building.add(clean)
        try:
            yield self.path_of(clean)
        finally:
            with self._lock:
                self._building.discard(clean)

    def build(self, inputs: Any, encoder: Encoder, name: str, *, append: bool = False, overwrite: bool = False,
              **options: Any) -> BuildReport:
        """Build (or append to) bank ``name``; see ``builder.build_bank`` for ``options``."""
        with self.building(name, overwrite=overwrite, append=append) as path:
            return builder.build_bank(inputs, encoder, path, append=append, overwrite=overwrite, **options)

    def merge(self, names: Iterable[str], into: str, *, overwrite: bool = False, **options: Any) -> BankMetadata:
        with self._lock:
            paths = [self._existing(n) for n in names]
            target = self.path_of(into)
            if target.exists() and not overwrite and target not in paths:
                raise BankExistsError(f"a bank named {sanitize_name(into)!r} already exists")
            return builder.merge_banks(paths, target, overwrite=True, **options)
