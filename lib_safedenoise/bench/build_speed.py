"""How fast a bank builds: images per second of a complete ``banks.builder.build_bank`` run (read PNG, hash,
convert, resize, encode, write) with the deterministic test encoder. The speed benchmark reports it as its
``bank_build`` section (``python -m lib_safedenoise.bench speed``)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lib_safedenoise.banks.builder import build_bank
from lib_safedenoise.banks.encoders import TestEncoder


def measure_build_throughput(*, images: int = 64, side: int = 96, resolution: int = 64,
                             batch_size: int = 16) -> dict[str, Any]:
    """Build a bank of ``images`` synthetic ``side`` x ``side`` PNGs (smooth colour ramps plus noise, fixed
    seed) at ``resolution`` and report images per second with the build's settings."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="sdn-bank-bench-") as folder:
        grid = np.linspace(0, 255, side, dtype=np.float32)
        for i in range(images):
            base = (grid[None, :, None] * rng.random(3) + grid[:, None, None] * rng.random(3)) / 2
            noise = rng.normal(0, 12, (side, side, 3))
            Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(Path(folder, f"{i:05d}.png"))
        encoder = TestEncoder(resolution)
        started = time.perf_counter()
        report = build_bank(folder, encoder, Path(folder, "bench.safetensors"), batch_size=batch_size)
        seconds = time.perf_counter() - started
    return {"images": report.bank_count, "seconds": seconds,
            "images_per_second": report.bank_count / seconds, "encoder": encoder.vae_name,
            "source_size": f"{side}x{side}", "resolution": f"{resolution}x{resolution}", "batch_size": batch_size}
