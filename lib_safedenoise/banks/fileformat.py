"""The bank file: one ``.safetensors`` file per negation/reference bank, and its loader and verifier.

Layout (plain safetensors, readable by any safetensors tool)
------------------------------------------------------------
Tensors:

==========  =======================  ==============================================================
name        dtype, shape             meaning
==========  =======================  ==============================================================
latents     F16 (or BF16/F32),       the encoder's scaled latents, one per source image, exactly as
            ``[N, C, H, W]``         the model's sampler sees them (not normalised)
weights     F32 ``[N]``, optional    per-item weight (1.0 when absent)
labels      I64 ``[N]``, optional    per-item category id, a key of ``sdn_categories`` (-1 = none)
==========  =======================  ==============================================================

``__metadata__`` (every value is a string; see ``SCHEMA`` below for each key's type and meaning).
Keys follow the SAI ModelSpec (``modelspec.*``) so model managers show title, author, licence and hash,
plus our own keys under the ``sdn_`` prefix (in the style of kohya's ``ss_``).

Hash
----
``modelspec.hash_sha256`` is ``0x`` + the lowercase hex SHA-256 of the *data buffer*: every byte of the
file after the 8-byte header length and the JSON header, to the end of the file. It covers all tensors
and none of the metadata, so editing the card or settings keeps the hash (the same rule as ModelSpec and
kohya's "addnet" hash). The short hash shown in infotext is its first ``SHORT_HASH_LENGTH`` hex digits.

Compatibility
-------------
A bank works only in the latent space it was encoded in: the VAE (its weights) and the scaling applied
to its output. ``LATENT_SPACES`` lists the known spaces; compatibility compares space ids, never model
families or channel counts (SD1 and SD2 share one VAE; SD3 and Flux both have 16 channels but differ).

Loading
-------
``read_metadata`` parses the JSON header only. ``load_bank`` checks the header, shapes, dtypes, hash and
values, then reads the tensors through safetensors' memory-mapped ``safe_open``; results are cached per path
and re-read when the file's size or modification time changes. Torch pickles are converted by ``legacy``,
only with explicit permission.

Values
------
Latents and weights must be finite. One gate (``_ValueGate``) enforces it on every write, every
verification (import, merge, append, presets) and every load for generation; a bank holding NaN or Inf
raises ``BankValuesError`` naming the bank and the rows.

Writes
------
``write_atomically`` is the project's one write-then-rename helper. Its hidden temporary files name their
host and process, so ``remove_stale_temporaries`` can delete those of killed writers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import socket
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import numpy as np
import torch

from lib_safedenoise import ENGINE_VERSION
from lib_safedenoise.banks.errors import (BankCompatibilityError, BankError, BankFormatError, BankIntegrityError,
                                          BankValuesError)
from lib_safedenoise.banks.metadata import SHORT_HASH_LENGTH, BankMetadata, parse_metadata
from lib_safedenoise.banks.spaces import latent_space
from lib_safedenoise.core.latent_bank import LatentBank

BANK_SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 64 * 1024 * 1024
_CHUNK_BYTES = 8 * 1024 * 1024


# --------------------------------------------------------------------------- writing

DTYPE_CODES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
                torch.int64: "I64", torch.int32: "I32"}
_CODE_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "I64": 8, "I32": 4}
LATENT_DTYPES = ("F16", "BF16", "F32")


@dataclass(frozen=True)
class TensorData:
    """One tensor to write: its layout and a factory of its raw little-endian bytes (read twice)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: Callable[[], Iterable[bytes]]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _CODE_ITEMSIZE[self.dtype]

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> "TensorData":
        tensor = tensor.detach().cpu().contiguous()
        rows = max(1, _CHUNK_BYTES // max(1, tensor[:1].numel() * tensor.element_size()))

        def chunks() -> Iterator[bytes]:
            for start in range(0, tensor.shape[0], rows):
                part = tensor[start:start + rows]
                yield (part.view(torch.int16) if part.dtype == torch.bfloat16 else part).numpy().tobytes()

        return cls(name, DTYPE_CODES[tensor.dtype], tuple(tensor.shape), chunks)

    @classmethod
    def from_file(cls, name: str, dtype: str, shape: tuple[int, ...], path: str | Path, offset: int = 0) -> "TensorData":
        def chunks() -> Iterator[bytes]:
            yield from _read_range(path, offset, math.prod(shape) * _CODE_ITEMSIZE[dtype])

        return cls(name, dtype, tuple(shape), chunks)


def _read_range(path: str | Path, offset: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(offset)
        while length > 0:
            chunk = f.read(min(_CHUNK_BYTES, length))
            if not chunk:
                raise BankFormatError(f"{Path(path).name}: file ends early")
            length -= len(chunk)
            yield chunk


STALE_TEMPORARY_SECONDS = 24 * 3600
"""A temporary file whose writer cannot be identified as gone (another machine sharing the folder, or a
name from an older version) is removed only once untouched for this long: far longer than any write,
since a running build's spill file grows at every batch and its final write takes minutes at most."""

_HOST_TAG = hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_TEMPORARY_RE = re.compile(r"\.(?P<dest>.+?(?:\.safetensors|\.json))\.(?:(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.)?"
                           r"[a-z0-9_]+\.(?P<purpose>[a-z]+)\.tmp")


def temporary_path(dest: Path, purpose: str) -> Path:
    """A hidden, empty temp file beside ``dest`` (same file system, so ``os.replace`` is atomic).

    Named ``.<dest name>.<host>-<pid>.<random>.<purpose>.tmp``: the host tag and process id tell
    ``remove_stale_temporaries`` whether its writer is still running.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.{_HOST_TAG}-{os.getpid()}.", suffix=f".{purpose}.tmp",
                                dir=dest.parent)
    os.close(fd)
    return Path(name)


def _writer_gone(pid: int) -> bool:
    if os.name == "nt":
        return False  # os.kill(pid, 0) would send CTRL_C_EVENT there; the age rule applies instead
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):
        return False  # alive under another user (or unknowable): keep its file
    return False


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files of writes that were killed (SIGKILL, SIGTERM, power loss) in ``folder``.

    Only names made by ``temporary_path`` are considered, never a bank. One is removed when its writer
    ran on this host and that process no longer exists, or, whatever its writer, when it has not been
    modified for ``STALE_TEMPORARY_SECONDS``. A reused process id only keeps a file longer. Returns the
    removed paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = _TEMPORARY_RE.fullmatch(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            ours = match["host"] == _HOST_TAG and int(match["pid"]) != os.getpid()  # (never this process's)
            if (ours and _writer_gone(int(match["pid"]))) \
                    or now - entry.stat(follow_symlinks=False).st_mtime > STALE_TEMPORARY_SECONDS:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # removed meanwhile, or not ours to remove
    return removed


def write_atomically(dest: str | Path, content: bytes | Callable[[BinaryIO], Any], *, purpose: str = "write",
                     check: Callable[[Path], Any] | None = None) -> Path:
    """Write ``dest`` so that readers see the old file or the complete new one, never a part.

    ``content`` is the bytes, or a callback writing into the binary file it is given. The data goes to a
    hidden temporary file beside ``dest``, is flushed to disk, optionally checked (``check(temporary)``
    raises to abort), made readable by everyone who can read the folder (``0644``), and renamed over
    ``dest``; the folder entry is then synced. On any failure ``dest`` is unchanged and the temporary
    file removed. This is the project's one write-then-rename helper.
    """
    dest = Path(dest)
    tmp = temporary_path(dest, purpose)
    try:
        with open(tmp, "wb") as f:
            if isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide shared banks from other users
        os.replace(tmp, dest)
        if hasattr(os, "O_DIRECTORY"):
            fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


_EXPONENT_BITS = {"F16": (np.dtype("<u2"), 0x7C00), "BF16": (np.dtype("<u2"), 0x7F80),
                  "F32": (np.dtype("<u4"), 0x7F800000)}
CHECKED_TENSORS = ("latents", "weights")
"""The float tensors the value gate checks: a NaN or infinity in either poisons every corrected step."""


class _ValueGate:
    """The one value check of banks: every float of ``CHECKED_TENSORS`` must be finite.

    Fed the raw little-endian bytes of one tensor in order (any split at element boundaries); an IEEE
    value is NaN or infinite exactly when all its exponent bits are set. Used on every write
    (``write_bank``), every verification (``verify_file``: import, merge, append, presets) and every
    load for generation (``load_bank``).
    """

    def __init__(self, bank: str, tensor: str, dtype: str, shape: tuple[int, ...]):
        self.bank, self.tensor, self.shape = bank, tensor, tuple(shape)
        self.bits = _EXPONENT_BITS.get(dtype) if tensor in CHECKED_TENSORS else None
        self.row_size = max(1, math.prod(self.shape[1:]))
        self.seen = 0
        self.bad_rows: list[int] = []

    def feed(self, chunk: bytes) -> None:
        if self.bits is None:
            return
        kind, mask = self.bits
        values = np.frombuffer(chunk, dtype=kind)
        bad = np.flatnonzero((values & kind.type(mask)) == mask)
        for row in np.unique((bad + self.seen) // self.row_size).tolist():
            if not self.bad_rows or row > self.bad_rows[-1]:  # a row split across two chunks counts once
                self.bad_rows.append(row)
        self.seen += values.size

    def close(self) -> None:
        if self.bad_rows:
            shown = ", ".join(map(str, self.bad_rows[:8])) + (", ..." if len(self.bad_rows) > 8 else "")
            rows = self.shape[0] if self.shape else 1
            raise BankValuesError(f"bank {self.bank}: {len(self.bad_rows)} of its {rows} {self.tensor} rows "
                                  f"hold NaN or infinite values (rows {shown}); such a bank would corrupt every "
                                  "corrected step, so it is refused. Rebuild it from its images.")


def check_finite(values: torch.Tensor, *, bank: str, tensor: str = "latents") -> None:
    """Raise ``BankValuesError`` naming ``bank`` unless every value of the in-memory tensor is finite."""
    if torch.isfinite(values).all():
        return
    gate = _ValueGate(bank, tensor, "F32", tuple(values.shape))
    gate.feed(values.detach().float().cpu().contiguous().numpy().tobytes())
    gate.close()


def write_bank(path: str | Path, meta: BankMetadata, tensors: list[TensorData], *,
               expected_hash: str | None = None) -> BankMetadata:
    """Atomically write a bank file; returns ``meta`` with the computed hash.

    The data is streamed twice (hash and value check, then write), so it never has to fit in memory.
    Latents or weights holding NaN/Inf raise ``BankValuesError`` and nothing is written. With
    ``expected_hash`` (rewriting an existing bank's metadata) the data must still hash to it.
    """
    dest = Path(path)
    tensors = sorted(tensors, key=lambda t: (-_CODE_ITEMSIZE[t.dtype], t.name))
    digest = hashlib.sha256()
    for tensor in tensors:
        size = 0
        gate = _ValueGate(dest.name, tensor.name, tensor.dtype, tensor.shape)
        for chunk in tensor.chunks():
            digest.update(chunk)
            gate.feed(chunk)
            size += len(chunk)
        if size != tensor.nbytes:
            raise BankFormatError(f"tensor {tensor.name}: {size} bytes for shape {tensor.shape} {tensor.dtype}")
        gate.close()
    meta = replace(meta, hash_sha256="0x" + digest.hexdigest(), engine_version=ENGINE_VERSION)
    if expected_hash is not None and meta.hash_sha256 != expected_hash:
        raise BankIntegrityError(f"bank {meta.title!r}: tensor data does not match its hash "
                                 f"{expected_hash[:2 + SHORT_HASH_LENGTH]}; the file is damaged or altered")
    parse_metadata(meta.to_strings())
    header: dict[str, Any] = {"__metadata__": meta.to_strings()}
    offset = 0
    for tensor in tensors:
        header[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape),
                               "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    header_bytes += b" " * (-len(header_bytes) % 8)

    def content(f: BinaryIO) -> None:
        f.write(struct.pack("<Q", len(header_bytes)))
        f.write(header_bytes)
        for tensor in tensors:
            for chunk in tensor.chunks():
                f.write(chunk)

    write_atomically(dest, content)
    invalidate(dest)
    return meta


def save_bank(path: str | Path, meta: BankMetadata, latents: torch.Tensor, *,
              weights: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> BankMetadata:
    """Write in-memory tensors as a bank (latents are stored in their dtype; cast to float16 first for the default)."""
    tensors = [TensorData.of("latents", latents)]
    if weights is not None:
        tensors.append(TensorData.of("weights", weights.float()))
    if labels is not None:
        tensors.append(TensorData.of("labels", labels.long()))
    if tuple(latents.shape) != meta.shape:
        raise BankFormatError(f"latents shape {tuple(latents.shape)} does not match metadata {meta.shape}")
    return write_bank(path, meta, tensors)


# --------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class Header:
    meta: BankMetadata
    tensors: dict[str, dict]
    data_offset: int
    file_size: int


def read_raw_header(path: str | Path) -> tuple[dict, int, int]:
    """The JSON header of a safetensors file, its data offset and the file size."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise BankFormatError(f"{path.name}: too short to be a safetensors file ({size} bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise BankFormatError(f"{path.name}: not a safetensors file (header length {length} "
                                      f"does not fit a {size}-byte file)")
            text = f.read(length)
    except OSError as error:
        raise BankError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BankFormatError(f"{path.name}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise BankFormatError(f"{path.name}: not a safetensors file (header is not a JSON object)")
    return header, 8 + length, size


def read_header(path: str | Path) -> Header:
    """Parse and check a bank's header: metadata, tensor names, dtypes, shapes and offsets."""
    path = Path(path)
    raw, data_offset, size = read_raw_header(path)
    try:
        meta = parse_metadata(raw.get("__metadata__"))
    except BankFormatError as error:
        raise BankFormatError(f"{path.name}: {error}") from None
    tensors = {name: info for name, info in raw.items() if name != "__metadata__"}
    _check_tensors(path.name, meta, tensors, size - data_offset)
    return Header(meta, tensors, data_offset, size)


def _check_tensors(name: str, meta: BankMetadata, tensors: dict, data_size: int) -> None:
    spans = []
    for tensor_name, info in tensors.items():
        if not (isinstance(info, dict) and info.get("dtype") in _CODE_ITEMSIZE and isinstance(info.get("shape"), list)
                and all(isinstance(d, int) and d >= 0 for d in info["shape"])
                and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
                and all(isinstance(o, int) for o in info["data_offsets"])):
            raise BankFormatError(f"{name}: tensor {tensor_name!r} has an unsupported description {str(info)[:120]}")
        start, end = info["data_offsets"]
        if end - start != math.prod(info["shape"]) * _CODE_ITEMSIZE[info["dtype"]]:
            raise BankFormatError(f"{name}: tensor {tensor_name!r} byte range does not match its shape")
        spans.append((start, end))
    position = 0
    for start, end in sorted(spans):
        if start != position:
            raise BankFormatError(f"{name}: tensor data has gaps or overlaps")
        position = end
    if position != data_size:
        raise BankFormatError(f"{name}: file holds {data_size} data bytes, tensors describe {position} "
                              "(truncated or padded file)")
    latents = tensors.get("latents")
    if latents is None:
        raise BankFormatError(f"{name}: no 'latents' tensor")
    if latents["dtype"] not in LATENT_DTYPES:
        raise BankFormatError(f"{name}: latents must be one of {LATENT_DTYPES}, not {latents['dtype']}")
    if tuple(latents["shape"]) != meta.shape:
        raise BankFormatError(f"{name}: latents have shape {tuple(latents['shape'])}, metadata says {meta.shape}")
    for extra, dtypes in (("weights", ("F32", "F16")), ("labels", ("I64", "I32"))):
        info = tensors.get(extra)
        if info is not None and (info["dtype"] not in dtypes or info["shape"] != [meta.count]):
            raise BankFormatError(f"{name}: {extra} must be {'/'.join(dtypes)} [{meta.count}], "
                                  f"got {info['dtype']} {info['shape']}")


def read_metadata(path: str | Path) -> BankMetadata:
    return read_header(path).meta


def verify_file(path: str | Path) -> Header:
    """The bank's checked header, once its tensor bytes are proven to match ``modelspec.hash_sha256`` and
    its latents and weights to be finite (the value gate, in the same single pass over the data)."""
    path = Path(path)
    header = read_header(path)
    digest = hashlib.sha256()
    gates = []
    for name, info in sorted(header.tensors.items(), key=lambda item: item[1]["data_offsets"][0]):
        start, end = info["data_offsets"]  # contiguous in this order (read_header checks), so this is
        gates.append(_ValueGate(path.name, name, info["dtype"], tuple(info["shape"])))  # the data buffer
        for chunk in _read_range(path, header.data_offset + start, end - start):
            digest.update(chunk)
            gates[-1].feed(chunk)
    actual = "0x" + digest.hexdigest()
    if actual != header.meta.hash_sha256:
        raise BankIntegrityError(f"bank {path.name}: tensor data does not match its hash "
                                 f"(stored {header.meta.short_hash}, actual "
                                 f"{actual[2:2 + SHORT_HASH_LENGTH]}); the file was altered or damaged")
    for gate in gates:
        gate.close()
    return header


def check_compatibility(meta: BankMetadata, space_id: str, *, name: str | None = None,
                        model_label: str | None = None, vae_hash: str = "") -> list[str]:
    """Raise ``BankCompatibilityError`` unless the bank is in latent space ``space_id``; return warnings."""
    model_space = latent_space(space_id)
    label = model_label or model_space.title
    bank_name = name or meta.title
    if meta.latent_space != model_space.id:
        uses = "" if label == model_space.title else f", which uses {model_space.title} latents"
        raise BankCompatibilityError(f"bank {bank_name!r} was built for {meta.describe_space()}; the loaded "
                                     f"model is {label}{uses}. Rebuild the bank with this model's VAE.")
    warnings_ = []
    if meta.vae_hash and vae_hash and meta.vae_hash != vae_hash:
        warnings_.append(f"bank {bank_name!r} was encoded with VAE {meta.vae_name or ''} [{meta.vae_hash}], the "
                         f"model uses [{vae_hash}]; both are {model_space.title} VAEs, so it still applies")
    return warnings_


@dataclass(frozen=True)
class Verification:
    ok: bool
    problems: list[str]
    warnings: list[str]
    meta: BankMetadata | None

    def as_dict(self) -> dict:
        return {"ok": self.ok, "problems": self.problems, "warnings": self.warnings,
                "short_hash": self.meta.short_hash if self.meta else None}


def verify_bank(path: str | Path, *, space_id: str | None = None, vae_hash: str = "") -> Verification:
    """Check everything (format, shapes, dtypes, hash, values, and the latent space if given) without raising."""
    meta = None
    try:
        header = verify_file(path)
        meta = header.meta
        bank = _materialise(Path(path), header, Path(path).stem)
        notes = check_compatibility(meta, space_id, name=bank.name, vae_hash=vae_hash) if space_id else []
    except (BankError, ValueError) as error:
        return Verification(False, [str(error)], [], meta)
    return Verification(True, [], notes, meta)


def _materialise(path: Path, header: Header, name: str) -> LatentBank:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        latents = f.get_tensor("latents")
    check_finite(latents, bank=path.name)
    meta = header.meta
    return LatentBank(name=name, latents=latents, role=meta.role, latent_space=meta.latent_space,
                      channel_normalized=meta.channel_normalized, short_hash=meta.short_hash,
                      metadata=meta.as_dict())


def read_extra_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The optional per-item tensors (``weights``, ``labels``) present in a bank."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {name: f.get_tensor(name) for name in ("weights", "labels") if name in f.keys()}


_cache: dict[Path, tuple[tuple[int, int], LatentBank, BankMetadata]] = {}
_cache_lock = threading.Lock()


def _stamp(path: Path) -> tuple[int, int, int]:
    """Identity of the file's current version: every atomic replace brings a new inode."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


REREAD_SECONDS = 5.0
"""How long a load keeps re-reading a bank that is being rewritten (each rewrite is atomic and quick)."""


def invalidate(path: str | Path) -> None:
    with _cache_lock:
        _cache.pop(Path(path).resolve(), None)


def load_bank(path: str | Path, *, name: str | None = None, space_id: str | None = None,
              verify: bool = True) -> LatentBank:
    """The bank at ``path`` as a ``LatentBank`` (cached; re-read when the file changes on disk).

    Raises ``BankFormatError``/``BankIntegrityError`` for a bad file and ``BankCompatibilityError`` when
    ``space_id`` is given and differs from the bank's latent space.
    """
    path = Path(path)
    if not path.is_file():
        raise BankError(f"bank file not found: {path}")
    key = path.resolve()
    deadline = time.monotonic() + REREAD_SECONDS
    while True:  # a file replaced while being read is read again, so header and tensors agree
        stamp = _stamp(key)
        with _cache_lock:
            cached = _cache.get(key)
        if cached is not None and cached[0] == stamp and cached[1].name == (name or path.stem):
            _, bank, meta = cached
            break
        try:
            header = verify_file(key) if verify else read_header(key)
            bank, meta = _materialise(key, header, name or path.stem), header.meta
        except (BankError, ValueError):
            if _stamp(key) == stamp:  # the file itself is bad, not replaced halfway through the read
                raise
        else:
            if _stamp(key) == stamp:
                with _cache_lock:
                    _cache[key] = (stamp, bank, meta)
                break
        if time.monotonic() > deadline:
            raise BankError(f"bank {path.name} kept changing while being read for {REREAD_SECONDS:g} s; "
                            "try again")
        time.sleep(0.01)
    if space_id is not None:
        check_compatibility(meta, space_id, name=bank.name)
    return bank


def rewrite_metadata(path: str | Path, dest: str | Path | None = None, **changes) -> BankMetadata:
    """Copy a bank with changed metadata fields (card, settings, ...); the tensor data and hash stay."""
    header = read_header(path)
    meta = replace(header.meta, **changes)
    tensors = [TensorData.from_file(name, info["dtype"], tuple(info["shape"]), path,
                                    header.data_offset + info["data_offsets"][0])
               for name, info in header.tensors.items()]
    return write_bank(dest or path, meta, tensors, expected_hash=header.meta.hash_sha256)
