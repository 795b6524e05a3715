"""Latent spaces: a VAE and its output scaling. A bank works only in the space it was encoded in;
compatibility compares space ids, never model families or channel counts (SD1 and SD2 share one VAE; SD3
and Flux both have 16 channels but differ)."""

from __future__ import annotations

from dataclasses import dataclass

from lib_safedenoise.banks.errors import BankCompatibilityError


@dataclass(frozen=True)
class LatentSpace:
    """A VAE and its output scaling: latents are interchangeable exactly within one space."""

    id: str
    title: str
    channels: int
    scaling_factor: float
    shift_factor: float
    vae: str
    architecture: str
    families: tuple[str, ...]
    native_size: tuple[int, int]


LATENT_SPACES: dict[str, LatentSpace] = {space.id: space for space in (
    LatentSpace("sd1", "SD1/SD2", 4, 0.18215, 0.0, "SD1/SD2 KL-f8 VAE", "stable-diffusion-v1",
                ("sd1", "sd2"), (64, 64)),
    LatentSpace("sdxl", "SDXL", 4, 0.13025, 0.0, "SDXL KL-f8 VAE", "stable-diffusion-xl-v1-base",
                ("sdxl", "ssd"), (128, 128)),
    LatentSpace("sd3", "SD3", 16, 1.5305, 0.0609, "SD3 16-channel VAE", "stable-diffusion-3-medium",
                ("sd3",), (128, 128)),
    LatentSpace("flux", "Flux", 16, 0.3611, 0.1159, "Flux 16-channel VAE", "flux-1-dev",
                ("flux",), (128, 128)),
    LatentSpace("digits", "digits model", 4, 1.0, 0.0, "digits encoder (lib_safedenoise.bench.digits.latents)",
                "safe-denoiser-digits", ("digits",), (8, 8)),
    LatentSpace("test", "test encoder", 4, 1.0, 0.0, "deterministic test encoder (not a VAE)",
                "safe-denoiser-test", ("test",), (8, 8)),
)}


def latent_space(space_id: str) -> LatentSpace:
    try:
        return LATENT_SPACES[space_id]
    except KeyError:
        raise BankCompatibilityError(f"unknown latent space {space_id!r}; known: "
                                     f"{', '.join(LATENT_SPACES)}") from None


def latent_space_for_family(family: str) -> LatentSpace:
    """The latent space of a model family (``sd1``, ``sd2``, ``sdxl``, ``ssd``, ``sd3``, ``flux``, ...)."""
    for space in LATENT_SPACES.values():
        if family.lower() in space.families:
            return space
    raise BankCompatibilityError(f"unknown model family {family!r}; known: "
                                 f"{', '.join(f for s in LATENT_SPACES.values() for f in s.families)}")
