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
``read_metadata`` parses the JSON header only. ``load_bank`` checks the header, shapes, dtypes and hash,
then reads the tensors through safetensors' memory-mapped ``safe_open``; results are cached per path and
re-read when the file's size or modification time changes. Legacy torch pickles (``.pt``, the authors'
caches) are converted only with an explicit ``allow_pickle=True``, loaded with ``weights_only=True``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import struct
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch

from lib_safedenoise import ENGINE_VERSION
from lib_safedenoise.latent_bank import ROLES, LatentBank

FORMAT_VERSION = 1
SHORT_HASH_LENGTH = 12
BANK_SUFFIX = ".safetensors"
ARCHITECTURE_SUFFIX = "/safe-denoiser-bank"
IMPLEMENTATION = "sd-webui-safe-denoiser"
ENCODE_MODES = ("mean", "sample")
MAX_HEADER_BYTES = 64 * 1024 * 1024
_CHUNK_BYTES = 8 * 1024 * 1024
_HASH_RE = re.compile(r"0x[0-9a-f]{64}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class BankError(Exception):
    """Anything wrong with a bank, with a message meant for the user."""


class BankFormatError(BankError, ValueError):
    """The file is not a bank this version can read (bad header, keys, shapes or dtypes)."""


class BankIntegrityError(BankError):
    """The tensor bytes do not match ``modelspec.hash_sha256``: the file was altered or damaged."""


class BankCompatibilityError(BankError):
    """The bank was encoded in another latent space than the model's."""


class PickleRefusedError(BankError):
    """A legacy pickle bank was offered without explicit permission to unpickle it."""


# --------------------------------------------------------------------------- latent spaces

@dataclass(frozen=True)
class LatentSpace:
    """A VAE and its output scaling: latents are interchangeable exactly within one space."""

    id: str
    title: str
    channels: int
    scaling_factor: float
    shift_factor: float
    vae: str
    architecture: str
    families: tuple[str, ...]
    native_size: tuple[int, int]


LATENT_SPACES: dict[str, LatentSpace] = {space.id: space for space in (
    LatentSpace("sd1", "SD1/SD2", 4, 0.18215, 0.0, "SD1/SD2 KL-f8 VAE", "stable-diffusion-v1",
                ("sd1", "sd2"), (64, 64)),
    LatentSpace("sdxl", "SDXL", 4, 0.13025, 0.0, "SDXL KL-f8 VAE", "stable-diffusion-xl-v1-base",
                ("sdxl", "ssd"), (128, 128)),
    LatentSpace("sd3", "SD3", 16, 1.5305, 0.0609, "SD3 16-channel VAE", "stable-diffusion-3-medium",
                ("sd3",), (128, 128)),
    LatentSpace("flux", "Flux", 16, 0.3611, 0.1159, "Flux 16-channel VAE", "flux-1-dev",
                ("flux",), (128, 128)),
    LatentSpace("digits", "digits model", 4, 1.0, 0.0, "digits encoder (lib_safedenoise.digits.latents)",
                "safe-denoiser-digits", ("digits",), (8, 8)),
    LatentSpace("test", "test encoder", 4, 1.0, 0.0, "deterministic test encoder (not a VAE)",
                "safe-denoiser-test", ("test",), (8, 8)),
)}


def latent_space(space_id: str) -> LatentSpace:
    try:
        return LATENT_SPACES[space_id]
    except KeyError:
        raise BankCompatibilityError(f"unknown latent space {space_id!r}; known: "
                                     f"{', '.join(LATENT_SPACES)}") from None


def latent_space_for_family(family: str) -> LatentSpace:
    """The latent space of a model family (``sd1``, ``sd2``, ``sdxl``, ``ssd``, ``sd3``, ``flux``, ...)."""
    for space in LATENT_SPACES.values():
        if family.lower() in space.families:
            return space
    raise BankCompatibilityError(f"unknown model family {family!r}; known: "
                                 f"{', '.join(f for s in LATENT_SPACES.values() for f in s.families)}")


# --------------------------------------------------------------------------- metadata schema

@dataclass(frozen=True)
class Key:
    attr: str
    key: str
    kind: str  # str, int, float, bool, hash, sha256-list, object-list, object-of-objects, string-map
    required: bool
    doc: str


SCHEMA: tuple[Key, ...] = (
    Key("sai_model_spec", "modelspec.sai_model_spec", "str", True, "ModelSpec version, always 1.0.0"),
    Key("architecture", "modelspec.architecture", "str", True,
        "``<base architecture>/safe-denoiser-bank``, e.g. ``stable-diffusion-v1/safe-denoiser-bank``"),
    Key("implementation", "modelspec.implementation", "str", True, "the project that wrote the file"),
    Key("title", "modelspec.title", "str", True, "display name"),
    Key("description", "modelspec.description", "str", False, "card: what the bank contains"),
    Key("author", "modelspec.author", "str", False, "card: who built it"),
    Key("date", "modelspec.date", "str", False, "ISO 8601 date-time of the build (UTC)"),
    Key("license", "modelspec.license", "str", False, "card: licence of the bank"),
    Key("usage_hint", "modelspec.usage_hint", "str", False, "card: intended use"),
    Key("hash_sha256", "modelspec.hash_sha256", "hash", True,
        "``0x`` + SHA-256 of the data buffer (all bytes after the JSON header)"),
    Key("format_version", "sdn_format_version", "int", True, f"bank format version (this is {FORMAT_VERSION})"),
    Key("engine_version", "sdn_engine_version", "str", False, "ENGINE_VERSION of the writer"),
    Key("role", "sdn_role", "str", True, f"one of {ROLES}"),
    Key("count", "sdn_count", "int", True, "N, the number of latents"),
    Key("channels", "sdn_latent_channels", "int", True, "C"),
    Key("height", "sdn_latent_height", "int", True, "H"),
    Key("width", "sdn_latent_width", "int", True, "W"),
    Key("latent_space", "sdn_latent_space", "str", True, "id in ``LATENT_SPACES`` (VAE + scaling)"),
    Key("model_family", "sdn_model_family", "str", False, "family of the model whose VAE encoded it"),
    Key("vae_name", "sdn_vae_name", "str", False, "VAE identity: file or model name"),
    Key("vae_hash", "sdn_vae_hash", "str", False, "VAE identity: hash of its weights, as the host reports it"),
    Key("scaling_factor", "sdn_vae_scaling_factor", "float", True, "latent = (vae output - shift) * scale"),
    Key("shift_factor", "sdn_vae_shift_factor", "float", False, "see scaling_factor (0 when absent)"),
    Key("encode_mode", "sdn_encode_mode", "str", True, f"one of {ENCODE_MODES}: posterior mean or a sample"),
    Key("encode_seed", "sdn_encode_seed", "int", False, "seed of a ``sample`` encoding (absent: unknown)"),
    Key("source_resolution", "sdn_source_resolution", "str", False, "``<W>x<H>`` pixels fed to the encoder"),
    Key("resize_policy", "sdn_resize_policy", "str", False, "how sources were fitted to that resolution"),
    Key("channel_normalized", "sdn_channel_normalized", "bool", False,
        "``true``: every latent pixel scaled to a unit channel vector (legacy caches; reference mode only)"),
    Key("source_sha256", "sdn_source_sha256", "sha256-list", False,
        "JSON list, one SHA-256 hex per latent row, of its source (file bytes, or decoded pixels for "
        "in-memory images; \"\" where unknown); provenance without the images"),
    Key("merged_from", "sdn_merged_from", "object-list", False,
        "JSON list of ``{title, hash_sha256, count}`` of banks this one was appended to or merged from"),
    Key("settings", "sdn_settings", "object-of-objects", False,
        "JSON object: mode name -> that mode's recommended parameters"),
    Key("categories", "sdn_categories", "string-map", False, "JSON object: label id (string) -> name"),
)
_BY_KEY = {k.key: k for k in SCHEMA}


@dataclass(frozen=True)
class BankMetadata:
    """The parsed ``__metadata__`` of a bank; ``extra`` keeps keys this version does not know."""

    title: str
    hash_sha256: str
    role: str
    count: int
    channels: int
    height: int
    width: int
    latent_space: str
    scaling_factor: float
    encode_mode: str
    format_version: int = FORMAT_VERSION
    sai_model_spec: str = "1.0.0"
    architecture: str = ""
    implementation: str = IMPLEMENTATION
    description: str = ""
    author: str = ""
    date: str = ""
    license: str = ""
    usage_hint: str = ""
    engine_version: str = ENGINE_VERSION
    model_family: str = ""
    vae_name: str = ""
    vae_hash: str = ""
    shift_factor: float = 0.0
    encode_seed: int | None = None
    source_resolution: str = ""
    resize_policy: str = ""
    channel_normalized: bool = False
    source_sha256: tuple[str, ...] = ()
    merged_from: tuple[dict, ...] = ()
    settings: dict = field(default_factory=dict)
    categories: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @property
    def short_hash(self) -> str:
        return self.hash_sha256[2:2 + SHORT_HASH_LENGTH]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.count, self.channels, self.height, self.width)

    @property
    def card(self) -> dict[str, str]:
        return {"title": self.title, "description": self.description, "author": self.author,
                "license": self.license, "usage_hint": self.usage_hint}

    def describe_space(self) -> str:
        """E.g. ``SDXL latents (4×128×128 from VAE sdxl_vae [0123456789])``."""
        space = LATENT_SPACES.get(self.latent_space)
        vae = self.vae_name or (space.vae if space else "unknown VAE")
        if self.vae_hash:
            vae += f" [{self.vae_hash}]"
        title = space.title if space else f"unknown space {self.latent_space!r}"
        return f"{title} latents ({self.channels}×{self.height}×{self.width} from VAE {vae})"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["short_hash"] = self.short_hash
        return data

    def to_strings(self) -> dict[str, str]:
        """The ``__metadata__`` map: every schema key with a non-empty value, then ``extra``."""
        out = dict(self.extra)
        for key in SCHEMA:
            value = getattr(self, key.attr)
            if value in ("", None, (), {}) or (key.kind == "bool" and not value):
                continue
            out[key.key] = _format_value(key.kind, value)
        return out


def _format_value(kind: str, value: Any) -> str:
    if kind == "bool":
        return "true" if value else "false"
    if kind == "float":
        return repr(float(value))
    if kind in ("sha256-list", "object-list"):
        return json.dumps(list(value), separators=(",", ":"), sort_keys=True)
    if kind in ("object-of-objects", "string-map"):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _parse_value(key: Key, text: str) -> Any:
    def fail(why: str):
        return BankFormatError(f"metadata {key.key} = {text[:80]!r}: {why}")

    if key.kind == "str":
        return text
    if key.kind == "int":
        if not re.fullmatch(r"-?\d{1,18}", text):
            raise fail("expected an integer")
        return int(text)
    if key.kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise fail("expected a number") from None
        if not math.isfinite(value):
            raise fail("expected a finite number")
        return value
    if key.kind == "bool":
        if text not in ("true", "false"):
            raise fail("expected true or false")
        return text == "true"
    if key.kind == "hash":
        if not _HASH_RE.fullmatch(text):
            raise fail("expected 0x followed by 64 lowercase hex digits")
        return text
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise fail("not valid JSON") from None
    if key.kind == "sha256-list":
        if not isinstance(value, list) or not all(isinstance(v, str) and (v == "" or _SHA256_RE.fullmatch(v))
                                                  for v in value):
            raise fail("expected a JSON list of SHA-256 hex strings (\"\" where unknown)")
        return tuple(value)
    if key.kind == "object-list":
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise fail("expected a JSON list of objects")
        return tuple(value)
    if key.kind == "object-of-objects":
        return validate_settings(value, what=f"metadata {key.key}")
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise fail("expected a JSON object of strings")
    return value


def validate_settings(settings: Any, *, what: str = "settings") -> dict[str, dict]:
    """Recommended settings: a JSON object mapping each mode name to an object of that mode's parameters."""
    if not isinstance(settings, dict) or not all(isinstance(k, str) and isinstance(v, dict)
                                                 for k, v in settings.items()):
        raise BankFormatError(f"{what}: expected a JSON object mapping mode names to objects, "
                              f"e.g. {{\"paper\": {{\"strength\": 1.0}}}}")
    return settings


def parse_metadata(raw: Any) -> BankMetadata:
    """Parse a ``__metadata__`` map; anything malformed raises ``BankFormatError`` naming the key."""
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise BankFormatError("bank metadata must be a map of strings to strings; this is not a "
                              "Safe Denoiser bank")
    missing = [k.key for k in SCHEMA if k.required and k.key not in raw]
    if missing:
        raise BankFormatError(f"not a Safe Denoiser bank: metadata lacks {', '.join(missing)}")
    version_key = _BY_KEY["sdn_format_version"]
    version = _parse_value(version_key, raw[version_key.key])
    if version > FORMAT_VERSION or version < 1:
        raise BankFormatError(f"bank format version {version} is not supported (this extension reads "
                              f"1..{FORMAT_VERSION}); update the extension")
    values = {k.attr: _parse_value(k, raw[k.key]) for k in SCHEMA if k.key in raw}
    values["extra"] = {k: v for k, v in raw.items() if k not in _BY_KEY}
    meta = BankMetadata(**values)
    if meta.role not in ROLES:
        raise BankFormatError(f"metadata sdn_role = {meta.role!r}: must be one of {ROLES}")
    if meta.encode_mode not in ENCODE_MODES:
        raise BankFormatError(f"metadata sdn_encode_mode = {meta.encode_mode!r}: must be one of {ENCODE_MODES}")
    if meta.count < 1 or meta.channels < 1 or meta.height < 1 or meta.width < 1:
        raise BankFormatError(f"bank shape {meta.shape} must be positive")
    space = LATENT_SPACES.get(meta.latent_space)
    if space is not None and space.channels != meta.channels:
        raise BankFormatError(f"metadata sdn_latent_channels/sdn_latent_space: {meta.channels}-channel latents "
                              f"cannot be {space.title} latents "
                              f"({space.channels} channels)")
    if meta.source_sha256 and len(meta.source_sha256) != meta.count:
        raise BankFormatError(f"sdn_source_sha256 lists {len(meta.source_sha256)} sources for "
                              f"{meta.count} latents")
    return meta


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def new_metadata(*, title: str, count: int, shape: tuple[int, int, int], space: LatentSpace, **values) -> BankMetadata:
    """Metadata for a bank about to be written (the hash is filled in by the writer)."""
    channels, height, width = shape
    values.setdefault("date", utc_now())
    values.setdefault("architecture", space.architecture + ARCHITECTURE_SUFFIX)
    values.setdefault("scaling_factor", space.scaling_factor)
    values.setdefault("shift_factor", space.shift_factor)
    values.setdefault("role", "negation")
    values.setdefault("encode_mode", "mean")
    return BankMetadata(title=title, hash_sha256="0x" + "0" * 64, count=count, channels=channels,
                        height=height, width=width, latent_space=space.id, **values)


# --------------------------------------------------------------------------- writing

_DTYPE_CODES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32",
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

        return cls(name, _DTYPE_CODES[tensor.dtype], tuple(tensor.shape), chunks)

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


def temporary_path(dest: Path, purpose: str) -> Path:
    """A hidden temp file beside ``dest`` (same filesystem, so ``os.replace`` is atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".{purpose}.tmp", dir=dest.parent)
    os.close(fd)
    return Path(name)


def replace_atomically(tmp: Path, dest: Path) -> None:
    os.replace(tmp, dest)
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bank(path: str | Path, meta: BankMetadata, tensors: list[TensorData], *,
               expected_hash: str | None = None) -> BankMetadata:
    """Atomically write a bank file; returns ``meta`` with the computed hash.

    The data is streamed twice (hash, then write), so it never has to fit in memory. With
    ``expected_hash`` (rewriting an existing bank's metadata) the data must still hash to it.
    """
    dest = Path(path)
    tensors = sorted(tensors, key=lambda t: (-_CODE_ITEMSIZE[t.dtype], t.name))
    digest = hashlib.sha256()
    for tensor in tensors:
        size = 0
        for chunk in tensor.chunks():
            digest.update(chunk)
            size += len(chunk)
        if size != tensor.nbytes:
            raise BankFormatError(f"tensor {tensor.name}: {size} bytes for shape {tensor.shape} {tensor.dtype}")
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
    tmp = temporary_path(dest, "write")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(header_bytes)))
            f.write(header_bytes)
            for tensor in tensors:
                for chunk in tensor.chunks():
                    f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide shared banks from other users
        replace_atomically(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
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


def data_sha256(path: str | Path, data_offset: int, file_size: int) -> str:
    digest = hashlib.sha256()
    for chunk in _read_range(path, data_offset, file_size - data_offset):
        digest.update(chunk)
    return "0x" + digest.hexdigest()


def verify_hash(path: str | Path) -> Header:
    """The bank's checked header, once its tensor bytes are proven to match ``modelspec.hash_sha256``."""
    header = read_header(path)
    actual = data_sha256(path, header.data_offset, header.file_size)
    if actual != header.meta.hash_sha256:
        raise BankIntegrityError(f"bank {Path(path).name}: tensor data does not match its hash "
                                 f"(stored {header.meta.short_hash}, actual "
                                 f"{actual[2:2 + SHORT_HASH_LENGTH]}); the file was altered or damaged")
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
        header = verify_hash(path)
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
            header = verify_hash(key) if verify else read_header(key)
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


# --------------------------------------------------------------------------- legacy pickles

def convert_legacy_pt(src: str | Path, dest: str | Path, *, allow_pickle: bool = False, space_id: str = "sd1",
                      title: str | None = None, role: str = "negation") -> BankMetadata:
    """Convert a torch-pickle bank (the authors' ``repellency_proj_ref.pt``) into a bank file.

    Refused unless ``allow_pickle``: unpickling runs code from the file. Even then only
    ``weights_only`` loading is used. Those caches hold channel-normalised latents (``[N, C, H, W]``
    or flattened ``[N, C*H*W]``), so the result is marked ``channel_normalized`` (reference mode only).
    """
    src = Path(src)
    if not allow_pickle:
        raise PickleRefusedError(f"{src.name} is a torch pickle: loading it can run arbitrary code. Import it "
                                 "only if you trust its source, with --allow-pickle (CLI) or the "
                                 "'allow pickle' checkbox.")
    warnings.warn(f"unpickling {src.name} (weights only); pickle files can be unsafe", stacklevel=2)
    try:
        data = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for bad or unsafe pickles
        raise BankFormatError(f"{src.name}: cannot load as a weights-only torch file ({error})") from None
    if isinstance(data, dict):
        candidates = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if len(candidates) != 1:
            raise BankFormatError(f"{src.name}: expected one tensor, found keys {list(data)[:10]}")
        data = candidates[0]
    if not isinstance(data, torch.Tensor) or not data.is_floating_point() or data.ndim not in (2, 4):
        raise BankFormatError(f"{src.name}: expected a float tensor [N, C, H, W] or [N, C*H*W], "
                              f"got {type(data).__name__} {tuple(getattr(data, 'shape', ()))}")
    space = latent_space(space_id)
    if data.ndim == 2:
        side = math.isqrt(data.shape[1] // space.channels)
        if space.channels * side * side != data.shape[1]:
            raise BankFormatError(f"{src.name}: {data.shape[1]} values per item is not {space.channels}×H×H "
                                  f"for {space.title}; pass the right latent space")
        data = data.reshape(data.shape[0], space.channels, side, side)
    if data.shape[1] != space.channels:
        raise BankFormatError(f"{src.name}: {data.shape[1]} channels, but {space.title} latents have "
                              f"{space.channels}")
    meta = new_metadata(title=title or src.stem, count=data.shape[0], shape=tuple(data.shape[1:]), space=space,
                        role=role, encode_mode="sample", channel_normalized=True,
                        description=f"imported from legacy pickle {src.name}")
    return save_bank(dest, meta, data.float())
