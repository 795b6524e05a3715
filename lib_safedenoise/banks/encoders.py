"""Encoders that turn images into bank latents.

The builder accepts any callable that follows ``Encoder``: it takes a float batch ``[N, P, H, W]`` with
values in **[-1, 1]** (``P = pixel_channels``: 3 for RGB, 1 for greyscale; ``(H, W) = resolution``) and
returns the scaled latents ``[N, channels, h, w]`` of its ``latent_space``. In the WebUI the host wraps
the loaded model's VAE in this protocol; outside it, ``resolve_encoder`` gives the digits model's encoder,
a deterministic test encoder, or a diffusers-format VAE the user already has.

``encode_mode`` is ``mean`` (the posterior mean: the same image always gives the same latent) or
``sample`` (a draw from the posterior, as the authors' code does; reproducible from ``seed`` for the same
files in the same order and batch size).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from lib_safedenoise.banks.errors import BankError
from lib_safedenoise.banks.spaces import LATENT_SPACES, latent_space


class EncoderUnavailableError(BankError):
    """An encoder that needs something missing (an optional package, the digits model)."""


@runtime_checkable
class Encoder(Protocol):
    resolution: tuple[int, int]
    latent_space: str
    family: str
    channels: int
    pixel_channels: int
    encode_mode: str
    seed: int | None
    vae_name: str
    vae_hash: str

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...


class TestEncoder:
    """Deterministic stand-in for a VAE: average-pool by ``downscale``, then a fixed 1x1 channel mix.

    Cheap and exact, for tests and the build-throughput benchmark. Its latents are labelled with
    ``latent_space`` (default: the ``test`` space, which no real model uses).
    """

    __test__ = False  # not a pytest class
    encode_mode = "mean"
    seed = None
    vae_hash = ""

    def __init__(self, resolution: int = 64, *, downscale: int = 8, latent_space: str = "test",
                 pixel_channels: int = 3):
        space = LATENT_SPACES[latent_space]
        self.resolution = (resolution, resolution)
        self.latent_space = space.id
        self.family = space.families[0]
        self.channels = space.channels
        self.pixel_channels = pixel_channels
        self.downscale = downscale
        self.vae_name = f"test-encoder-{pixel_channels}x{downscale}"
        self.mix = torch.randn(space.channels, pixel_channels, 1, 1, generator=torch.Generator().manual_seed(0))

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.avg_pool2d(pixels.float(), self.downscale), self.mix)


class DiffusersVAEEncoder:
    """A diffusers ``AutoencoderKL`` (folder or single file); its latent space is recognised from its config."""

    pixel_channels = 3

    def __init__(self, path: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 encode_mode: str = "mean", seed: int = 0, resolution: int | None = None):
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise EncoderUnavailableError("building with a VAE needs the optional package 'diffusers' "
                                          "(pip install diffusers); or build the bank in the WebUI tab") from None
        path = Path(path)
        if path.is_dir():
            folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
            vae = AutoencoderKL.from_pretrained(str(folder), torch_dtype=dtype)
            weights = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
        elif path.is_file():
            vae = AutoencoderKL.from_single_file(str(path), torch_dtype=dtype)
            weights = [path]
        else:
            raise EncoderUnavailableError(f"no VAE at {path}")
        self.vae = vae.to(device).eval()
        config = vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        matches = [s for s in LATENT_SPACES.values()
                   if s.channels == config.latent_channels and abs(s.scaling_factor - config.scaling_factor) < 1e-4
                   and abs(s.shift_factor - shift) < 1e-4]
        if len(matches) != 1:
            raise EncoderUnavailableError(f"VAE {path.name}: {config.latent_channels} channels, scaling "
                                          f"{config.scaling_factor}, shift {shift} match no known latent space")
        space = matches[0]
        if encode_mode not in ("mean", "sample"):
            raise ValueError(f"encode_mode must be 'mean' or 'sample', not {encode_mode!r}")
        side = resolution or space.native_size[0] * 8
        self.resolution = (side, side)
        self.latent_space, self.family, self.channels = space.id, space.families[0], space.channels
        self.scaling_factor, self.shift_factor = config.scaling_factor, shift
        self.encode_mode, self.seed = encode_mode, seed if encode_mode == "sample" else None
        self.vae_name = path.name
        self.vae_hash = file_sha256(weights[0])[:10] if weights else ""
        self.device, self.dtype = device, dtype
        self.generator = torch.Generator(device).manual_seed(seed)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        latents = posterior.mean if self.encode_mode == "mean" else posterior.sample(self.generator)
        return ((latents - self.shift_factor) * self.scaling_factor).float().cpu()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


NAMED_ENCODERS: dict[str, Callable[[], Encoder]] = {"test": TestEncoder}


def register_encoder(name: str, factory: Callable[[], Encoder]) -> None:
    """Make ``resolve_encoder(name)`` build an encoder with ``factory`` (the benchmark registers ``digits``)."""
    NAMED_ENCODERS[name] = factory


def resolve_encoder(spec: str, **options) -> Encoder:
    """A registered name (``NAMED_ENCODERS``) or a path to a diffusers-format VAE (``options`` go to its loader)."""
    if spec in NAMED_ENCODERS:
        return NAMED_ENCODERS[spec]()
    if not Path(spec).exists():
        raise EncoderUnavailableError(f"encoder {spec!r} is neither one of {', '.join(sorted(NAMED_ENCODERS))} "
                                      "nor an existing VAE folder or file")
    return DiffusersVAEEncoder(spec, **options)


def describe(encoder: Encoder) -> str:
    space = latent_space(encoder.latent_space)
    return (f"{encoder.vae_name} -> {space.title} latents {encoder.channels}ch from "
            f"{encoder.resolution[1]}x{encoder.resolution[0]} pixels, {encoder.encode_mode}")
