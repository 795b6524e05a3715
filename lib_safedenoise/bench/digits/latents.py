"""The digits model's "VAE": an exact, linear, invertible map between pixels and a 4-channel latent.

``encode``: pixels ``[N, 1, H, W]`` in [0, 1] -> [-1, 1] (SD's pixel range) -> bilinear 2x upsampling
(``align_corners=False``) to ``2H x 2W`` -> pixel-unshuffle by 2 -> latents ``[N, 4, H, W]``. Like SD's
latents, the four channels carry different (correlated) views of each position, and the latent
grid has the spatial layout of the image, so any ``H x W`` works (hires, other aspect ratios).

``decode`` is the exact left inverse: pixel-shuffle, then the least-squares inverse of the separable
upsampling, ``X = P_H Y P_W^T`` with ``P = (U^T U)^{-1} U^T`` for the per-axis upsampling matrix ``U``.
``decode(encode(x)) == x`` to float precision; a latent off the encoder's range (any sampled latent)
decodes to the image whose encoding is nearest to it. Output is in [0, 1], unclipped.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

LATENT_CHANNELS = 4
_UPSCALE = 2


@functools.lru_cache(maxsize=32)
def _axis_matrices(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 1-D upsampling matrix ``U`` [2n, n] and its least-squares inverse ``P`` [n, 2n], float64."""
    identity = torch.eye(length, dtype=torch.float64).unsqueeze(1)  # each basis vector as a 1-D signal
    upsample = F.interpolate(identity, scale_factor=_UPSCALE, mode="linear", align_corners=False)
    upsample = upsample.squeeze(1).T.contiguous()
    inverse = torch.linalg.solve(upsample.T @ upsample, upsample.T)
    return upsample, inverse


def encode(pixels: torch.Tensor) -> torch.Tensor:
    """Pixels ``[N, 1, H, W]`` in [0, 1] -> latents ``[N, 4, H, W]``."""
    if pixels.ndim != 4 or pixels.shape[1] != 1:
        raise ValueError(f"digits encode expects pixels [N, 1, H, W], got {tuple(pixels.shape)}")
    height, width = pixels.shape[-2:]
    up_h, _ = _axis_matrices(height)
    up_w, _ = _axis_matrices(width)
    signed = pixels.double() * 2 - 1
    upsampled = up_h.to(pixels.device) @ signed @ up_w.to(pixels.device).T
    return F.pixel_unshuffle(upsampled, _UPSCALE).to(pixels.dtype if pixels.is_floating_point() else torch.float32)


def decode(latents: torch.Tensor) -> torch.Tensor:
    """Latents ``[N, 4, H, W]`` -> pixels ``[N, 1, H, W]`` in [0, 1] (not clipped)."""
    if latents.ndim != 4 or latents.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"digits decode expects latents [N, {LATENT_CHANNELS}, H, W], got {tuple(latents.shape)}")
    height, width = latents.shape[-2:]
    _, inverse_h = _axis_matrices(height)
    _, inverse_w = _axis_matrices(width)
    upsampled = F.pixel_shuffle(latents.double(), _UPSCALE)
    signed = inverse_h.to(latents.device) @ upsampled @ inverse_w.to(latents.device).T
    return ((signed + 1) / 2).to(latents.dtype)
