"""The digits model's encoder as a bank ``Encoder``, registered as ``digits`` for the CLI and the builder."""

from __future__ import annotations

import torch

from lib_safedenoise.banks.encoders import register_encoder
from lib_safedenoise.banks.spaces import LATENT_SPACES
from lib_safedenoise.bench.digits.latents import encode


class DigitsEncoder:
    """The efficacy benchmark's digits model encoder (``lib_safedenoise.bench.digits.latents.encode``, [0,1] input)."""

    resolution = (8, 8)
    latent_space = "digits"
    family = "digits"
    channels = LATENT_SPACES["digits"].channels
    pixel_channels = 1
    encode_mode = "mean"
    seed = None
    vae_name = "lib_safedenoise.bench.digits.latents"
    vae_hash = ""

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode((pixels.float() + 1) / 2)


register_encoder("digits", DigitsEncoder)
