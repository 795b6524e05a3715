"""Real test images on disk: scikit-image's bundled photographs, scikit-learn's digits, and broken files.

``write_photos`` / ``write_digits`` / ``write_broken`` return ``{name: path}`` so tests can assert per file.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata
from sklearn.datasets import load_digits


def write_photos(folder: Path) -> dict[str, Path]:
    """Photographs in several formats, sizes and modes (RGB, RGBA, palette, greyscale, 16-bit, CMYK)."""
    folder.mkdir(parents=True, exist_ok=True)
    astronaut = Image.fromarray(skdata.astronaut())
    coffee = Image.fromarray(skdata.coffee())
    chelsea = Image.fromarray(skdata.chelsea())
    camera = Image.fromarray(skdata.camera())
    rocket = Image.fromarray(skdata.rocket())
    rgba = coffee.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(coffee.size))
    camera16 = Image.fromarray(skdata.camera().astype(np.uint16) * 257)
    images = {
        "astronaut.png": (astronaut, {}),
        "coffee.jpg": (coffee, {"quality": 90}),
        "chelsea.webp": (chelsea, {"quality": 80}),
        "rocket_small.jpg": (rocket.resize((213, 120)), {}),
        "coffee_rgba.png": (rgba, {}),
        "chelsea_palette.png": (chelsea.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), {}),
        "camera_grey.png": (camera, {}),
        "camera_16bit.png": (camera16, {}),
        "astronaut_cmyk.jpg": (astronaut.resize((256, 256)).convert("CMYK"), {}),
    }
    paths = {}
    for name, (image, options) in images.items():
        paths[name] = folder / name
        image.save(paths[name], **options)
    return paths


def write_exif_rotated(path: Path) -> tuple[Path, Image.Image]:
    """A wide JPEG whose EXIF says "rotate 90° clockwise" (orientation 6); returns it and the upright image."""
    stored = Image.fromarray(skdata.chelsea()).resize((120, 60))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif.tobytes(), quality=95)
    return path, stored.transpose(Image.Transpose.ROTATE_270)


def write_digits(folder: Path, count: int = 20) -> dict[str, Path]:
    """scikit-learn digits (8x8, 0..16 ink) as greyscale PNGs, bright ink on black, some upscaled."""
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    paths = {}
    for i in range(count):
        image = Image.fromarray((digits.images[i] * 255 / 16).round().astype(np.uint8), "L")
        if i % 3 == 1:
            image = image.resize((32, 32), Image.Resampling.NEAREST)
        name = f"digit_{i:03d}_{digits.target[i]}.png"
        paths[name] = folder / name
        image.save(paths[name])
    return paths


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_broken(folder: Path) -> dict[str, tuple[Path, str]]:
    """Broken files, each with the problem status the builder must report."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(jpeg, "JPEG", quality=90)
    bomb_header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", bomb_header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + _png_chunk(b"IEND", b""))
    files = {
        "truncated.jpg": (jpeg.getvalue()[: len(jpeg.getvalue()) // 3], "truncated"),
        "empty.png": (b"", "zero-byte"),
        "notes.png": (b"these are my notes, not a picture\n" * 20, "not-an-image"),
        "bomb.png": (bomb, "decompression-bomb"),
    }
    out = {}
    for name, (payload, status) in files.items():
        (folder / name).write_bytes(payload)
        out[name] = (folder / name, status)
    return out
