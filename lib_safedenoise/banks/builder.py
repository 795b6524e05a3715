"""Build banks from images: stream, encode, report every file, write atomically.

Inputs: a folder (optionally recursive), a list of files, in-memory ``PIL.Image`` objects, or
``(name, bytes)`` pairs (uploads). Images are decoded one at a time and encoded in batches, so memory
stays bounded by one batch plus a spill file on disk; nothing but latents is ever written, and never
previews of the content.

Image policy
------------
1. EXIF orientation is applied.
2. 16-bit greyscale is scaled to 8 bits; transparency (RGBA, LA, palette with transparency) is
   composited over white, as the WebUI flattens images; CMYK, palette and greyscale are converted to
   RGB (or to greyscale for single-channel encoders).
3. Resize policy ``cover-centre-crop``: scale uniformly (Lanczos) until the image covers the encoder's
   resolution, then cut the centre. No distortion; only borders are lost for other aspect ratios.
4. Pixels are mapped to [-1, 1] for the encoder.

A file that cannot be used is reported with one of ``PROBLEMS`` and skipped; the build goes on. Files in
a folder without an image extension are reported as ``ignored``. Duplicates (same SHA-256 of the file
bytes, or of the decoded pixels for in-memory images) are kept once.

Every entry of a chosen folder is reported except hidden ones (names starting with ``.``) and
sub-folders. Symbolic links: a broken one is ``unreadable``; one to a device, pipe or socket is
``unreadable`` and never opened (reading ``/dev/zero`` would never end); one to a folder is ``ignored``
(not followed: it could loop); one to a file is followed, and when that file lies outside the chosen
folder the report says so and names it, since the user chose the folder, not the link's target.

Names
-----
``sanitize_name`` turns a name into a file stem or refuses it with ``BankNameError``; see there.
A build first removes the temporary files that killed builds left beside its bank
(``fileformat.remove_stale_temporaries``).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import stat
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from lib_safedenoise.banks import fileformat, metadata, spaces
from lib_safedenoise.banks.errors import BankError, BankExistsError, BankNameError
from lib_safedenoise.banks.fileformat import TensorData
from lib_safedenoise.banks.metadata import BankMetadata
from lib_safedenoise.banks.encoders import Encoder

RESIZE_POLICY = "cover-centre-crop"
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default limit
PROBLEMS = ("unreadable", "truncated", "zero-byte", "not-an-image", "decompression-bomb", "duplicate")
_RESERVED_NAMES = {"con", "prn", "aux", "nul",
                   *(f"{device}{digit}" for device in ("com", "lpt") for digit in "0123456789\u00b9\u00b2\u00b3")}
"""Windows device names (case-insensitive, with or without an extension): ``COM1``..``COM9`` and
``LPT1``..``LPT9``, their ``0`` forms, and the superscript-digit forms ``COM¹ COM² COM³ LPT¹ LPT² LPT³``,
which Windows also maps to devices."""
MAX_NAME_BYTES = 150
"""Longest bank name, in UTF-8 bytes. File systems limit a file name to 255 bytes (eCryptfs to 143); the
hidden temporary files written beside a bank add about 55 bytes to its name."""

Source = Union[str, os.PathLike, Image.Image, "tuple[str, bytes]"]
Progress = Callable[[int, int, str], None]


class BuildCancelled(BankError):
    def __init__(self, report: "BuildReport"):
        super().__init__(f"build cancelled after {report.count('added')} images; nothing was written")
        self.report = report


class EmptyBuildError(BankError):
    def __init__(self, report: "BuildReport"):
        counts = ", ".join(f"{n} {status}" for status, n in report.counts().items()) or "no inputs"
        super().__init__(f"no usable images ({counts}); nothing was written")
        self.report = report


@dataclass
class FileResult:
    source: str
    status: str  # "added", "ignored" or one of PROBLEMS
    detail: str = ""
    sha256: str = ""


@dataclass
class BuildReport:
    files: list[FileResult] = field(default_factory=list)
    path: str = ""
    bank_count: int = 0
    short_hash: str = ""
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(f.status == status for f in self.files)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            out[f.status] = out.get(f.status, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "bank_count": self.bank_count, "short_hash": self.short_hash,
                "seconds": round(self.seconds, 3), "counts": self.counts(),
                "files": [asdict(f) for f in self.files]}


def sanitize_name(name: str) -> str:
    """A bank name safe as a file name everywhere, or ``BankNameError`` saying why there is none.

    Kept: letters, digits, ``_ - . + ( )`` and spaces; anything else (path separators, the list and
    infotext separators ``, | ; = @ *``) becomes ``_``. Leading/trailing dots and spaces are dropped, so a
    name never leaves the folder nor hides. Refused: names with nothing left, Windows device names
    (``_RESERVED_NAMES``), and names longer than ``MAX_NAME_BYTES`` UTF-8 bytes (never cut short: two
    long names must not end up as one file).
    """
    stem = str(name).strip()
    if stem.lower().endswith(fileformat.BANK_SUFFIX):
        stem = stem[:-len(fileformat.BANK_SUFFIX)]
    stem = re.sub(r"[^\w\-. ()+]", "_", stem).strip(" .")
    if not stem or set(stem) <= {"_"}:
        raise BankNameError(f"bank name {name!r} has no usable characters; use letters, digits, spaces or "
                            "_ - . + ( )")
    device = stem.split(".")[0].strip().lower()
    if device in _RESERVED_NAMES:
        raise BankNameError(f"bank name {name!r} is reserved on Windows ({device.upper()} is a device name "
                            "there, with or without an extension); choose another name")
    size = len(stem.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise BankNameError(f"bank name {str(name)[:24]!r}... is too long: {size} bytes in UTF-8 "
                            f"({len(stem)} characters), the limit is {MAX_NAME_BYTES} bytes (about "
                            f"{MAX_NAME_BYTES // 3} characters of CJK text); choose a shorter name")
    return stem


# --------------------------------------------------------------------------- reading images

class _Problem(Exception):
    def __init__(self, status: str, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def image_extensions() -> set[str]:
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def expand_sources(inputs: Source | Iterable[Source], *,
                   recursive: bool = False) -> list[tuple[Source, Path | None]]:
    """``(source, folder it was found in, or None)`` pairs: a folder becomes its sorted entries (every
    non-hidden entry that is not a sub-folder, links and special files included, so each is reported)."""
    if isinstance(inputs, (str, os.PathLike, Image.Image, tuple)):
        inputs = [inputs]
    out: list[tuple[Source, Path | None]] = []
    for item in inputs:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            folder = Path(item)
            out.extend((path, folder) for path in sorted(_folder_entries(folder, recursive)))
        else:
            out.append((item, None))
    return out


def _folder_entries(folder: Path, recursive: bool) -> Iterator[Path]:
    """Non-hidden entries under ``folder`` that are not real sub-folders (``os.walk`` lists links to
    folders among the folders and, without ``followlinks``, never descends into them)."""
    for root, folders, files in os.walk(folder):
        yield from (Path(root, name) for name in files if not name.startswith("."))
        yield from (Path(root, name) for name in folders if not name.startswith(".") and Path(root, name).is_symlink())
        folders[:] = [name for name in folders if recursive and not name.startswith(".")]


def _check_path(path: Path, folder: Path | None) -> str:
    """Raise ``_Problem`` for a broken link or anything but a regular file (never opened: a device or pipe
    could block or never end); return a note for a link leading outside ``folder``."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if path.is_symlink():
            raise _Problem("unreadable", f"broken symbolic link: its target {os.readlink(path)} does not "
                                         "exist") from None
        raise _Problem("unreadable", "no such file") from None
    except OSError as error:
        raise _Problem("unreadable", error.strerror or str(error)) from None
    if stat.S_ISDIR(mode):
        raise _Problem("ignored", "symbolic link to a folder; not followed")
    if not stat.S_ISREG(mode):
        kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a named pipe" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "special")
        link = " (through a symbolic link)" if path.is_symlink() else ""
        raise _Problem("unreadable", f"not a regular file: {kind}{link}; not read")
    if folder is not None and path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(folder.resolve()):
            return f"symbolic link to {target}, outside the chosen folder; followed"
    return ""


def _label(source: Source, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, tuple):
        return str(source[0])
    return f"<image {index}>"


def read_image(source: Source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, str]:
    """Decode one source; returns the image (EXIF orientation applied) and its SHA-256.

    Raises ``_Problem`` with a status from ``PROBLEMS``.
    """
    if isinstance(source, Image.Image):
        digest = hashlib.sha256(f"{source.mode}{source.size}".encode() + source.tobytes()).hexdigest()
        return _upright(source.copy()), digest
    if isinstance(source, tuple):
        data = bytes(source[1])
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as error:
            raise _Problem("unreadable", error.strerror or str(error)) from None
    if not data:
        raise _Problem("zero-byte", "empty file")
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise _Problem("decompression-bomb", str(error)) from None
    except UnidentifiedImageError:
        raise _Problem("not-an-image", "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise _Problem("unreadable", f"cannot open: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise _Problem("decompression-bomb", f"{width}x{height} pixels exceeds the limit of {max_pixels}")
    try:
        image.load()
    except OSError as error:
        status = "truncated" if "truncated" in str(error).lower() else "unreadable"
        raise _Problem(status, f"cannot decode: {error}") from None
    except (SyntaxError, ValueError, EOFError) as error:
        raise _Problem("unreadable", f"cannot decode: {error}") from None
    return _upright(image), digest


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, TypeError, KeyError):
        return image  # a malformed EXIF block: keep the stored orientation rather than drop the image


def to_pixels(image: Image.Image, resolution: tuple[int, int], pixel_channels: int) -> np.ndarray:
    """``[P, H, W]`` float32 in [-1, 1] following the module's image policy."""
    if image.mode.startswith("I") or image.mode == "F":  # 16-bit greyscale ("I" is how PNG decodes it)
        values = np.asarray(image, dtype=np.float64) / (1.0 if image.mode == "F" else 257.0)
        image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info) \
            or (image.mode in ("RGB", "L") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert("L" if pixel_channels == 1 else "RGB")
    height, width = resolution
    image = ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


# --------------------------------------------------------------------------- building

def build_bank(inputs: Source | Iterable[Source], encoder: Encoder, dest: str | os.PathLike, *,
               title: str | None = None, role: str = "negation", recursive: bool = False,
               append: bool = False, overwrite: bool = False, batch_size: int = 16,
               dtype: torch.dtype = torch.float16,
               description: str = "", author: str = "", license: str = "", usage_hint: str = "",
               settings: dict | None = None, category: str | None = None, model_family: str | None = None,
               progress: Progress | None = None, cancel: Any = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> BuildReport:
    """Encode ``inputs`` into the bank file ``dest``: created, extended with ``append``, or replaced only
    with ``overwrite`` (an existing ``dest`` otherwise raises ``BankExistsError`` before any work).

    ``progress(done, total, label)`` is called after each source; ``cancel`` is anything with
    ``is_set()`` (a ``threading.Event``). A cancelled or failed build raises and leaves ``dest`` as it was;
    an empty one raises ``EmptyBuildError`` carrying the per-file report.
    """
    started = time.perf_counter()
    dest = Path(dest)
    dest = dest.with_name(sanitize_name(dest.name) + fileformat.BANK_SUFFIX)
    if dest.exists() and not (append or overwrite):
        raise BankExistsError(f"{dest} already exists; pass --overwrite to replace it or --append to add to it "
                              "(nothing was changed)")
    metadata.check_card({"title": title, "description": description, "author": author, "license": license,
                         "usage_hint": usage_hint})
    if category is not None:
        metadata.check_category(category)
    if settings is not None:
        metadata.validate_settings(settings)
    fileformat.remove_stale_temporaries(dest.parent)
    space = spaces.latent_space(encoder.latent_space)
    existing = dest.is_file() and append
    seen: set[str] = set()
    if existing:
        prior = fileformat.read_metadata(dest)
        if prior.latent_space != space.id or prior.channel_normalized:
            raise BankError(f"cannot append to {dest.name}: it holds {prior.describe_space()}"
                            f"{' (channel-normalised)' if prior.channel_normalized else ''}, the encoder makes "
                            f"{space.title} latents")
        seen, role = {h for h in prior.source_sha256 if h}, prior.role
    sources = expand_sources(inputs, recursive=recursive)
    extensions = image_extensions()
    report = BuildReport(path=str(dest))
    spill = fileformat.temporary_path(dest, "latents")
    hashes: list[str] = []
    shape: tuple[int, ...] = ()
    batch: list[np.ndarray] = []

    def flush() -> None:
        nonlocal shape
        if not batch:
            return
        with torch.no_grad():
            latents = encoder(torch.from_numpy(np.stack(batch)))
        expected = (len(batch), encoder.channels)
        if latents.ndim != 4 or tuple(latents.shape[:2]) != expected or (shape and latents.shape[1:] != shape):
            raise BankError(f"encoder returned shape {tuple(latents.shape)}, expected [{len(batch)}, "
                            f"{encoder.channels}, H, W] consistently")
        if not torch.isfinite(latents).all():
            raise BankError("encoder returned NaN or Inf latents")
        shape = latents.shape[1:]
        tensor = latents.detach().to("cpu", dtype).contiguous()
        out.write((tensor.view(torch.int16) if dtype == torch.bfloat16 else tensor).numpy().tobytes())
        batch.clear()

    try:
        with open(spill, "wb") as out:
            for index, (source, folder) in enumerate(sources):
                if cancel is not None and cancel.is_set():
                    raise BuildCancelled(report)
                label = _label(source, index)
                report.files.append(_take(source, label, folder, extensions, encoder, seen, hashes, batch,
                                          max_pixels))
                if len(batch) >= batch_size:
                    flush()
                if progress is not None:
                    progress(index + 1, len(sources), label)
            if cancel is not None and cancel.is_set():
                raise BuildCancelled(report)
            flush()
        if not hashes:
            raise EmptyBuildError(report)
        meta = metadata.new_metadata(
            title=title or dest.stem, count=len(hashes), shape=tuple(shape), space=space, role=role,
            description=description, author=author, license=license, usage_hint=usage_hint,
            settings=settings or {}, model_family=model_family or encoder.family, vae_name=encoder.vae_name,
            vae_hash=encoder.vae_hash, encode_mode=encoder.encode_mode, encode_seed=encoder.seed,
            source_resolution=f"{encoder.resolution[1]}x{encoder.resolution[0]}", resize_policy=RESIZE_POLICY,
            source_sha256=tuple(hashes), categories={"0": category} if category else {})
        latents = TensorData.from_file("latents", fileformat.DTYPE_CODES[dtype], (len(hashes), *shape), spill)
        extra = [TensorData.of("labels", torch.zeros(len(hashes), dtype=torch.long))] if category else []
        if existing:
            fresh = fileformat.temporary_path(dest, "added")
            try:
                fileformat.write_bank(fresh, replace(meta, title=f"{len(hashes)} images added {meta.date}"),
                                    [latents, *extra])
                meta = merge_banks([dest, fresh], dest, title=title, settings=settings, overwrite=True)
            finally:
                fresh.unlink(missing_ok=True)
        else:
            meta = fileformat.write_bank(dest, meta, [latents, *extra])
    finally:
        spill.unlink(missing_ok=True)
    report.bank_count, report.short_hash = meta.count, meta.short_hash
    report.seconds = time.perf_counter() - started
    return report


def _take(source: Source, label: str, folder: Path | None, extensions: set[str], encoder: Encoder,
          seen: set[str], hashes: list[str], batch: list[np.ndarray], max_pixels: int) -> FileResult:
    """One source's report line; a usable image's pixels join ``batch``."""
    note = ""
    try:
        if isinstance(source, (str, os.PathLike)):
            note = _check_path(Path(source), folder)
            if folder is not None and Path(source).suffix.lower() not in extensions:
                return FileResult(label, "ignored", "; ".join(filter(None, ["not an image file extension", note])))
        image, digest = read_image(source, max_pixels=max_pixels)
        if digest in seen:
            return FileResult(label, "duplicate", "; ".join(filter(None, ["same content as an earlier image",
                                                                          note])), digest)
        pixels = to_pixels(image, encoder.resolution, encoder.pixel_channels)
    except _Problem as problem:
        return FileResult(label, problem.status, "; ".join(filter(None, [problem.detail, note])))
    except (OSError, ValueError) as error:  # a decoder failing during conversion or resize
        return FileResult(label, "unreadable", f"cannot convert: {error}")
    seen.add(digest)
    hashes.append(digest)
    batch.append(pixels)
    return FileResult(label, "added", note, digest)


# --------------------------------------------------------------------------- generated latents

UNGUIDED_SHARE = 0.5
"""Share of a bank made from a prompt that is sampled at CFG 1 (the model's plain conditional draws), the rest
at the requested CFG. Guided samples alone cover only the concept's strongly guided, typical look: the model's
unprompted draws of it (from empty or other prompts) then lie nearer ordinary images than any banked one, so
the correction lets them through and the reference filter (``core.reference``) does not claim them from a
reference of the model's own samples (``docs/modes.md``)."""


def unguided_samples(samples: int, share: float) -> int:
    """How many of ``samples`` (the first ones) a bank made from a prompt draws at CFG 1 for ``share``."""
    return round(samples * share)

def write_generated_bank(latents: torch.Tensor, dest: str | os.PathLike, *, space: spaces.LatentSpace,
                         generation: dict, role: str = "negation", overwrite: bool = False,
                         title: str | None = None, description: str = "", author: str = "", license: str = "",
                         usage_hint: str = "", model_family: str = "", vae_name: str = "", vae_hash: str = "",
                         dtype: torch.dtype = torch.float16) -> BuildReport:
    """Write ``latents`` ``[N, C, H, W]``, the final latents of a model's own samples, as the bank ``dest``.

    No image was encoded, so the card says ``encode_mode = generated`` and ``generation`` (validated by
    ``metadata.validate_generation``) records how to make the same latents again; the VAE fields name the VAE
    that decodes them. An existing ``dest`` is replaced only with ``overwrite`` (``BankExistsError``
    otherwise); the write is atomic, and non-finite latents are refused with nothing written.
    """
    started = time.perf_counter()
    dest = Path(dest)
    dest = dest.with_name(sanitize_name(dest.name) + fileformat.BANK_SUFFIX)
    if dest.exists() and not overwrite:
        raise BankExistsError(f"{dest.name} already exists; ask to replace it (nothing was changed)")
    metadata.check_card({"title": title, "description": description, "author": author, "license": license,
                         "usage_hint": usage_hint})
    metadata.validate_generation(generation)
    if latents.ndim != 4 or latents.shape[0] < 1 or latents.shape[1] != space.channels:
        raise BankError(f"generated latents have shape {tuple(latents.shape)}; expected [N, {space.channels}, H, W] "
                        f"{space.title} latents with N >= 1")
    if not torch.isfinite(latents).all():
        raise BankError("the generated latents hold NaN or Inf values; nothing was written")
    meta = metadata.new_metadata(
        title=title or dest.stem, count=latents.shape[0], shape=tuple(latents.shape[1:]), space=space, role=role,
        description=description, author=author, license=license, usage_hint=usage_hint,
        model_family=model_family, vae_name=vae_name, vae_hash=vae_hash, encode_mode=metadata.GENERATED,
        generation=generation)
    meta = fileformat.write_bank(dest, meta, [TensorData.of("latents", latents.detach().to("cpu", dtype))])
    return BuildReport(path=str(dest), bank_count=meta.count, short_hash=meta.short_hash,
                       seconds=time.perf_counter() - started)


# --------------------------------------------------------------------------- merging

def merge_banks(paths: Sequence[str | os.PathLike], dest: str | os.PathLike, *, title: str | None = None,
                settings: dict | None = None, overwrite: bool = False) -> BankMetadata:
    """Concatenate banks of one latent space into ``dest``, dropping rows whose source hash repeats.

    An existing ``dest`` is replaced only with ``overwrite`` (``BankExistsError`` otherwise). Every input
    is verified first (hash and values), so a damaged bank or one with NaN/Inf latents never gains a
    fresh, valid hash by being merged.

    The card, settings and encoder details come from the first bank; ``sdn_merged_from`` records every
    input, ``sdn_source_sha256`` every kept row. Labels are unified by category name (-1 where absent),
    weights default to 1.0.
    """
    if not paths:
        raise BankError("nothing to merge")
    if Path(dest).exists() and not overwrite:
        raise BankExistsError(f"{dest} already exists; pass --overwrite to replace it (nothing was changed)")
    if title is not None:
        metadata.check_card({"title": title})
    headers = [fileformat.verify_file(p) for p in paths]
    first = headers[0].meta
    for path, header in zip(paths, headers):
        meta = header.meta
        if (meta.latent_space, meta.shape[1:], meta.channel_normalized, meta.role) != \
                (first.latent_space, first.shape[1:], first.channel_normalized, first.role):
            raise BankError(f"cannot merge {Path(path).name} ({meta.role}, {meta.describe_space()}"
                            f"{', channel-normalised' if meta.channel_normalized else ''}) with "
                            f"{Path(paths[0]).name} ({first.role}, {first.describe_space()}"
                            f"{', channel-normalised' if first.channel_normalized else ''})")
    seen: set[str] = set()
    keep: list[np.ndarray] = []
    hashes: list[str] = []
    for header in headers:
        rows = header.meta.source_sha256 or ("",) * header.meta.count
        mask = np.array([not (h and h in seen) for h in rows], dtype=bool)
        seen.update(h for h in rows if h)
        hashes.extend(h for h, k in zip(rows, mask) if k)
        keep.append(mask)
    count = len(hashes)
    out_dtype = headers[0].tensors["latents"]["dtype"]
    torch_dtype = {v: k for k, v in fileformat.DTYPE_CODES.items()}[out_dtype]
    categories: dict[str, str] = {}
    has_labels = any("labels" in h.tensors for h in headers)
    has_weights = any("weights" in h.tensors for h in headers)
    for header in headers:
        for name in header.meta.categories.values():
            if name not in categories.values():
                categories[str(len(categories))] = name
    ids = {name: int(key) for key, name in categories.items()}

    def rows_of(tensor_name: str, convert: Callable[[torch.Tensor, BankMetadata], torch.Tensor],
                missing: Callable[[int], torch.Tensor]) -> Callable[[], Iterator[bytes]]:
        def chunks() -> Iterator[bytes]:
            from safetensors import safe_open

            for path, header, mask in zip(paths, headers, keep):
                if tensor_name not in header.tensors:
                    part = missing(int(mask.sum()))
                    yield from TensorData.of(tensor_name, part).chunks()
                    continue
                with safe_open(str(path), framework="pt") as f:
                    view = f.get_slice(tensor_name)
                    step = max(1, (8 << 20) // max(1, math.prod(header.meta.shape[1:]) * 4))
                    for start in range(0, header.meta.count, step):
                        block = view[start:start + step][torch.from_numpy(mask[start:start + step])]
                        if len(block):
                            yield from TensorData.of(tensor_name, convert(block, header.meta)).chunks()
        return chunks

    tensors = [TensorData("latents", out_dtype, (count, *first.shape[1:]),
                          rows_of("latents", lambda t, m: t.to(torch_dtype), lambda n: torch.zeros(0)))]
    if has_labels:
        def relabel(labels: torch.Tensor, meta: BankMetadata) -> torch.Tensor:
            table = {int(k): ids[v] for k, v in meta.categories.items()}
            return torch.tensor([table.get(int(v), -1) for v in labels], dtype=torch.long)
        tensors.append(TensorData("labels", "I64", (count,),
                                  rows_of("labels", relabel, lambda n: torch.full((n,), -1, dtype=torch.long))))
    if has_weights:
        tensors.append(TensorData("weights", "F32", (count,),
                                  rows_of("weights", lambda t, m: t.float(), lambda n: torch.ones(n))))
    merged_from = tuple(entry for header in headers for entry in
                        (*header.meta.merged_from, {"title": header.meta.title, "hash_sha256":
                                                    header.meta.hash_sha256, "count": header.meta.count}))
    meta = replace(first, title=title or first.title, count=count, source_sha256=tuple(hashes),
                   merged_from=merged_from, categories=categories,
                   # a generation record describes every row only if every input was made the same way
                   generation=first.generation if all(h.meta.generation == first.generation for h in headers)
                   else {},
                   settings=metadata.validate_settings(settings) if settings is not None else first.settings,
                   date=metadata.utc_now())
    if not any(hashes):
        meta = replace(meta, source_sha256=())
    return fileformat.write_bank(dest, meta, tensors)

