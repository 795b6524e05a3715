"""The noise-prediction network: a small, fully convolutional two-level UNet with timestep and class
conditioning (FiLM in every residual block). Any latent height and width work."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10
CONDITION_WIDTH = NUM_CLASSES + 1  # one-hot over the ten digits plus the null (unconditional) label


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of DDPM timesteps (0..999), as in the original DDPM/SD UNets."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, embed_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(8, channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.film = nn.Linear(embed_dim, 2 * channels_out)
        self.norm2 = nn.GroupNorm(8, channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x, embedding):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(embedding)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class EpsUNet(nn.Module):
    """eps(x_t, t, condition): latents ``[B, C, H, W]``, timesteps ``[B]``, conditions ``[B, 11]``."""

    def __init__(self, channels: int = 4, width: int = 48, embed_dim: int = 128):
        super().__init__()
        self.time_dim = embed_dim // 2
        self.time_mlp = nn.Sequential(nn.Linear(self.time_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
        self.class_embedding = nn.Linear(CONDITION_WIDTH, embed_dim, bias=False)
        self.stem = nn.Conv2d(channels, width, 3, padding=1)
        self.high = nn.ModuleList([ResBlock(width, width, embed_dim), ResBlock(width, width, embed_dim)])
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.low = nn.ModuleList([ResBlock(2 * width, 2 * width, embed_dim), ResBlock(2 * width, 2 * width, embed_dim)])
        self.up = nn.Conv2d(2 * width, width, 3, padding=1)
        self.merge = ResBlock(2 * width, width, embed_dim)
        self.head_norm = nn.GroupNorm(8, width)
        self.head = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        embedding = F.silu(self.time_mlp(timestep_features(t, self.time_dim)) + self.class_embedding(condition))
        h = self.stem(x)
        for block in self.high:
            h = block(h, embedding)
        skip = h
        h = self.down(h)
        for block in self.low:
            h = block(h, embedding)
        h = self.up(F.interpolate(h, size=skip.shape[-2:], mode="nearest"))
        h = self.merge(torch.cat([h, skip], dim=1), embedding)
        return self.head(F.silu(self.head_norm(h)))
