"""The bank card: ``__metadata__`` keys (``SCHEMA``), their types and meanings, and ``BankMetadata``, the
parsed, validated card. Keys follow the SAI ModelSpec (``modelspec.*``) plus our own under ``sdn_``."""

from __future__ import annotations

import datetime
import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from lib_safedenoise import ENGINE_VERSION
from lib_safedenoise.banks.errors import BankFormatError
from lib_safedenoise.banks.spaces import LATENT_SPACES, LatentSpace
from lib_safedenoise.core.latent_bank import ROLES

FORMAT_VERSION = 1
SHORT_HASH_LENGTH = 12
ARCHITECTURE_SUFFIX = "/safe-denoiser-bank"
IMPLEMENTATION = "sd-webui-safe-denoiser"
ENCODE_MODES = ("mean", "sample")
"""How an encoder turns an image into a latent: the VAE posterior's mean, or a draw from it."""
GENERATED = "generated"
"""``sdn_encode_mode`` of a bank whose latents a model generated (no image was encoded); ``sdn_generation``
records how."""
STORED_ENCODE_MODES = (*ENCODE_MODES, GENERATED)
HASH_RE = re.compile(r"0x[0-9a-f]{64}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Key:
    attr: str
    key: str
    kind: str  # str, int, float, bool, hash, sha256-list, object-list, object-of-objects, string-map, generation
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
    Key("encode_mode", "sdn_encode_mode", "str", True,
        f"one of {STORED_ENCODE_MODES}: the VAE posterior's mean or a sample of it, or ``{GENERATED}``: the "
        "final latents of the model's own samples"),
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
    Key("generation", "sdn_generation", "generation", False,
        "JSON object, for a generated bank: how to make it again. ``prompt``, ``negative_prompt``, ``styles`` "
        "(as asked) and ``prompt_used``/``negative_prompt_used`` (after styles), ``model``, ``model_hash``, "
        "``sampler``, ``scheduler``, ``steps``, ``cfg_scale``, ``unguided_samples`` (the first samples, at CFG 1), "
        "``width``, ``height``, ``batch_size``, ``seed`` (sample i used seed + i), ``samples``, ``host``, and "
        "``enforced``: the banks whose enforced correction ran during the generation (``[]``: none); with "
        "several prompts (one per batch in turn) also ``prompts`` and ``prompts_used``"),
)
_BY_KEY = {k.key: k for k in SCHEMA}

# Limits, checked when metadata is written and when it is read: the header may hold 64 MB, but a card is
# shown in full by the tab and the API, so each field has a size fit for what it is.
TEXT_LIMITS = {"title": 200, "description": 10_000, "author": 200, "license": 200, "usage_hint": 2_000}
"""Card fields: the most characters each may hold."""
MAX_STRING_CHARS = 1_000
"""Any other string field (VAE name and hash, model family, date, ...)."""
MAX_METADATA_KEYS = 128
"""Keys in ``__metadata__``, ours and unknown ones together (``SCHEMA`` has fewer than 40)."""
MAX_EXTRA_KEY_CHARS, MAX_EXTRA_VALUE_CHARS = 128, 65_536
"""An unknown key (kept for other tools) and its value."""
MAX_CATEGORIES, MAX_CATEGORY_CHARS = 1_000, 200
MAX_SETTINGS_MODES, MAX_SETTINGS_PARAMETERS, MAX_SETTINGS_CHARS = 32, 64, 16_384
"""Recommended settings: modes, parameters per mode, and the size of the whole JSON object."""
MAX_MERGED_FROM = 10_000
"""Provenance entries (each append or merge adds one per input bank)."""
MAX_GENERATION_KEYS, MAX_GENERATION_CHARS = 32, 65_536
"""``sdn_generation``: its fields, and the size of the whole JSON object (prompts can be long)."""


def _too_long(what: str, length: int, limit: int, unit: str = "characters") -> BankFormatError:
    return BankFormatError(f"{what} is {length} {unit} long; the limit is {limit} {unit}")


def check_card(card: Mapping[str, Any], *, what: str = "card") -> None:
    """Raise ``BankFormatError`` unless every card field given (``TEXT_LIMITS`` keys) is a string within its
    limit; called on user input before any work starts, and again on every write and read."""
    for name, value in card.items():
        if name not in TEXT_LIMITS or value is None:
            continue
        if not isinstance(value, str):
            raise BankFormatError(f"{what} {name}: expected text, got {type(value).__name__}")
        if len(value) > TEXT_LIMITS[name]:
            raise _too_long(f"{what} {name}", len(value), TEXT_LIMITS[name])


def check_category(name: str) -> None:
    if len(name) > MAX_CATEGORY_CHARS:
        raise _too_long(f"category name {name[:40]!r}...", len(name), MAX_CATEGORY_CHARS)


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
    generation: dict = field(default_factory=dict)
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
    if kind in ("object-of-objects", "string-map", "generation"):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _parse_value(key: Key, text: str) -> Any:
    def fail(why: str):
        return BankFormatError(f"metadata {key.key} = {text[:80]!r}: {why}")

    if key.kind == "str":
        limit = TEXT_LIMITS.get(key.attr, MAX_STRING_CHARS)
        if len(text) > limit:
            raise _too_long(f"metadata {key.key}", len(text), limit)
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
        if not HASH_RE.fullmatch(text):
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
        if len(value) > MAX_MERGED_FROM:
            raise _too_long(f"metadata {key.key}", len(value), MAX_MERGED_FROM, "entries")
        return tuple(value)
    if key.kind == "object-of-objects":
        return validate_settings(value, what=f"metadata {key.key}")
    if key.kind == "generation":
        return validate_generation(value, what=f"metadata {key.key}")
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise fail("expected a JSON object of strings")
    if len(value) > MAX_CATEGORIES:
        raise _too_long(f"metadata {key.key}", len(value), MAX_CATEGORIES, "entries")
    for name in value.values():
        check_category(name)
    return value


def validate_settings(settings: Any, *, what: str = "settings") -> dict[str, dict]:
    """Recommended settings: a JSON object mapping each mode name to an object of that mode's parameters,
    within ``MAX_SETTINGS_MODES``, ``MAX_SETTINGS_PARAMETERS`` per mode and ``MAX_SETTINGS_CHARS`` of JSON."""
    if not isinstance(settings, dict) or not all(isinstance(k, str) and isinstance(v, dict)
                                                 for k, v in settings.items()):
        raise BankFormatError(f"{what}: expected a JSON object mapping mode names to objects, "
                              f"e.g. {{\"paper\": {{\"strength\": 1.0}}}}")
    if len(settings) > MAX_SETTINGS_MODES:
        raise _too_long(what, len(settings), MAX_SETTINGS_MODES, "modes")
    for mode, values in settings.items():
        if len(values) > MAX_SETTINGS_PARAMETERS:
            raise _too_long(f"{what} for mode {mode[:40]!r}", len(values), MAX_SETTINGS_PARAMETERS, "parameters")
    try:
        size = len(json.dumps(settings, separators=(",", ":")))
    except (TypeError, ValueError, RecursionError):
        raise BankFormatError(f"{what}: values must be JSON numbers, strings, booleans, lists or objects") from None
    if size > MAX_SETTINGS_CHARS:
        raise _too_long(f"{what} (as JSON)", size, MAX_SETTINGS_CHARS)
    return settings


def validate_generation(generation: Any, *, what: str = "generation record") -> dict[str, Any]:
    """How a generated bank was made (``sdn_generation``): a JSON object of at most ``MAX_GENERATION_KEYS``
    fields, each a string, number, boolean, null or list of strings, within ``MAX_GENERATION_CHARS`` of JSON."""
    def plain(value: Any) -> bool:
        return value is None or isinstance(value, (str, bool, int)) or (isinstance(value, float)
                                                                        and math.isfinite(value))

    if not isinstance(generation, dict) or not all(
            isinstance(k, str) and (plain(v) or isinstance(v, list) and all(isinstance(i, str) for i in v))
            for k, v in generation.items()):
        raise BankFormatError(f"{what}: expected a JSON object of strings, numbers, booleans or lists of strings")
    if len(generation) > MAX_GENERATION_KEYS:
        raise _too_long(what, len(generation), MAX_GENERATION_KEYS, "fields")
    size = len(json.dumps(generation, separators=(",", ":")))
    if size > MAX_GENERATION_CHARS:
        raise _too_long(f"{what} (as JSON)", size, MAX_GENERATION_CHARS)
    return generation


def parse_metadata(raw: Any) -> BankMetadata:
    """Parse a ``__metadata__`` map; anything malformed raises ``BankFormatError`` naming the key."""
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise BankFormatError("bank metadata must be a map of strings to strings; this is not a "
                              "Safe Denoiser bank")
    if len(raw) > MAX_METADATA_KEYS:
        raise _too_long("bank metadata", len(raw), MAX_METADATA_KEYS, "keys")
    for key, value in raw.items():
        if key not in _BY_KEY and (len(key) > MAX_EXTRA_KEY_CHARS or len(value) > MAX_EXTRA_VALUE_CHARS):
            raise BankFormatError(f"metadata key {key[:40]!r}: unknown keys may have {MAX_EXTRA_KEY_CHARS} "
                                  f"characters and values {MAX_EXTRA_VALUE_CHARS}; this one has {len(key)} and "
                                  f"{len(value)}")
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
    if meta.encode_mode not in STORED_ENCODE_MODES:
        raise BankFormatError(f"metadata sdn_encode_mode = {meta.encode_mode!r}: must be one of "
                              f"{STORED_ENCODE_MODES}")
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
