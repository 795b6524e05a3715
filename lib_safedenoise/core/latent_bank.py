"""A negation (or reference) bank as tensors, adapted on demand to each generation.

A bank is encoded once, at one latent size, in one latent space. A generation may run at any device,
dtype and latent size, so the bank is *adapted*: moved, cast, and resized. Resizing is "cover then
centre-crop": scale uniformly (bilinear, antialiased when shrinking) until the bank covers the target,
then cut the centre. Uniform scaling keeps shapes undistorted for every aspect ratio; the crop drops only
borders, where composition matters least. Each adapted view is cached until the bank is edited.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

ROLES = ("negation", "reference")


def resize_latents(latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Cover-then-centre-crop resize of ``[M, C, H, W]`` latents to ``size = (H', W')``."""
    height, width = latents.shape[-2:]
    target_h, target_w = size
    if (height, width) == (target_h, target_w):
        return latents
    scale = max(target_h / height, target_w / width)
    cover_h, cover_w = max(target_h, math.ceil(height * scale)), max(target_w, math.ceil(width * scale))
    resized = F.interpolate(latents.float(), size=(cover_h, cover_w), mode="bilinear",
                            align_corners=False, antialias=scale < 1)
    top, left = (cover_h - target_h) // 2, (cover_w - target_w) // 2
    return resized[..., top:top + target_h, left:left + target_w].to(latents.dtype)


@dataclass(eq=False)
class LatentBank:
    """Latents ``[M, C, H, W]`` of one image set, with what is needed to use them safely.

    ``latent_space`` names the VAE and scaling the latents come from (banks are compatible with a model
    exactly when this matches). ``channel_normalized`` marks latents whose every spatial position was
    scaled to a unit channel vector, as the authors' released code caches them: only the ``reference``
    mode, which reproduces that code, may use such a bank.
    """

    name: str
    latents: torch.Tensor
    role: str = "negation"
    latent_space: str = ""
    channel_normalized: bool = False
    short_hash: str = ""
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._views: dict[tuple, torch.Tensor] = {}
        self.version = 0
        self._validate(self.latents)
        if self.role not in ROLES:
            raise ValueError(f"bank {self.name!r}: role must be one of {ROLES}, not {self.role!r}")

    def _validate(self, latents: torch.Tensor) -> None:
        if latents.ndim != 4 or latents.shape[0] == 0:
            raise ValueError(f"bank {self.name!r}: latents must be [M, C, H, W] with M >= 1, "
                             f"got shape {tuple(latents.shape)}")
        if not latents.is_floating_point():
            raise ValueError(f"bank {self.name!r}: latents must be floating point, got {latents.dtype}")
        if not torch.isfinite(latents).all():
            raise ValueError(f"bank {self.name!r}: latents contain NaN or Inf")

    @property
    def count(self) -> int:
        return self.latents.shape[0]

    @property
    def channels(self) -> int:
        return self.latents.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.latents.shape[-2:])

    def replace(self, latents: torch.Tensor) -> None:
        """Swap in new latents; every adapted view is dropped."""
        self._validate(latents)
        with self._lock:
            self.latents = latents
            self._views.clear()
            self.version += 1

    def adapted(self, *, device, dtype: torch.dtype, size: tuple[int, int]) -> torch.Tensor:
        """The bank on ``device`` in ``dtype`` at latent ``size`` (cached)."""
        key = (str(torch.device(device)), dtype, tuple(size))
        with self._lock:
            view = self._views.get(key)
            if view is None:
                view = resize_latents(self.latents, tuple(size)).to(device=device, dtype=dtype).contiguous()
                self._views[key] = view
            return view

    def release(self) -> None:
        """Free every adapted view (called when a generation ends, so banks leave the GPU)."""
        with self._lock:
            self._views.clear()
