"""``DigitsLatentDiffusion``: the digits denoiser dressed as the WebUI's ``sd_model`` (CompVis
``ldm.models.diffusion.ddpm.LatentDiffusion``), so the real ``k_diffusion.external.CompVisDenoiser``
wraps it and a WebUI host stub drives it exactly as it drives Stable Diffusion 1.x.

What it shares with SD: eps prediction on SD's discrete scaled-linear schedule (1000 steps, betas from
0.00085 to 0.012), a 4-channel latent (``latents.py``), ``apply_model(x, t, cond)`` with ``cond`` either
the tensor from ``get_learned_conditioning`` or the ``{"c_crossattn": [tensor]}`` dict, and first-stage
encode/decode between latents and [-1, 1] pixels. What differs: the "prompt" is a digit class.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from ...core.modes import sd1_alphas_cumprod
from . import latents
from .network import CONDITION_WIDTH, NUM_CLASSES, EpsUNet

TIMESTEPS = 1000
_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_DIGIT_TOKEN = re.compile(r"\b(\d|" + "|".join(_DIGIT_NAMES) + r")\b", re.IGNORECASE)


def parse_label(label) -> int | None:
    """A class index 0..9, or None for the unconditional (null) label.

    Accepts an int, a prompt string holding exactly one digit or digit name ("7", "a seven", "digit 7"),
    and None or a blank string for "no label" (what an empty prompt or negative prompt means).
    """
    if label is None:
        return None
    if isinstance(label, (int, torch.Tensor)) and not isinstance(label, bool):
        value = int(label)
        if not 0 <= value < NUM_CLASSES:
            raise ValueError(f"digit label must be 0..9, got {value}")
        return value
    if isinstance(label, str):
        if not label.strip():
            return None
        tokens = {token.lower() for token in _DIGIT_TOKEN.findall(label)}
        values = {int(t) if t.isdigit() else _DIGIT_NAMES.index(t) for t in tokens}
        if len(values) != 1:
            raise ValueError(f"a digits prompt must name exactly one digit 0-9 (or be empty), got {label!r}")
        return values.pop()
    raise TypeError(f"digit label must be an int, a string or None, got {type(label).__name__}")


class DigitsLatentDiffusion(nn.Module):
    """The class-conditional digits denoiser in the shape of a CompVis ``LatentDiffusion``."""

    parameterization = "eps"
    latent_channels = latents.LATENT_CHANNELS
    num_timesteps = TIMESTEPS
    conditioning_key = "crossattn"

    def __init__(self, network: EpsUNet | None = None, metadata: dict | None = None):
        super().__init__()
        self.model = network if network is not None else EpsUNet(channels=latents.LATENT_CHANNELS)
        self.register_buffer("alphas_cumprod", sd1_alphas_cumprod().float(), persistent=False)
        self.metadata = dict(metadata or {})

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def get_learned_conditioning(self, labels: Sequence) -> torch.Tensor:
        """Conditioning ``[B, 1, 11]`` (one "token": one-hot over ten digits and the null label)."""
        if isinstance(labels, (str, int)) or labels is None:
            labels = [labels]
        indices = [NUM_CLASSES if value is None else value for value in map(parse_label, labels)]
        one_hot = torch.nn.functional.one_hot(torch.tensor(indices, dtype=torch.long), CONDITION_WIDTH)
        return one_hot.to(device=self.device, dtype=self.dtype).unsqueeze(1)

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond, **kwargs) -> torch.Tensor:
        """eps at noisy latents ``x_noisy`` and (possibly fractional) DDPM timesteps ``t``."""
        if isinstance(cond, dict):
            cond = cond["c_crossattn"][0]
        if cond.shape[0] != x_noisy.shape[0]:
            raise ValueError(f"conditioning has {cond.shape[0]} rows for a batch of {x_noisy.shape[0]}")
        t = t.to(x_noisy.device).float().expand(x_noisy.shape[0]) if t.ndim == 0 else t.to(x_noisy.device)
        return self.model(x_noisy, t, cond.reshape(cond.shape[0], -1).to(x_noisy.dtype))

    def encode_first_stage(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[N, 1, H, W]`` in [-1, 1] -> latents (exact and deterministic: no posterior to sample)."""
        return latents.encode((pixels + 1) / 2)

    def get_first_stage_encoding(self, encoded: torch.Tensor) -> torch.Tensor:
        return encoded

    def decode_first_stage(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``[N, 4, H, W]`` -> pixels ``[N, 1, H, W]`` in [-1, 1] (unclipped, like SD's VAE decoder)."""
        return latents.decode(z) * 2 - 1
