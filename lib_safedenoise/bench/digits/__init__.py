"""A small latent diffusion model of real handwritten digits, built to test the safe denoiser honestly.

It exercises the same code paths as Stable Diffusion 1.x (4-channel latents, eps prediction on SD's
schedule, the real k-diffusion samplers under a WebUI-shaped CFG wrapper) at a size a CPU trains in
minutes. See ``data`` (the split), ``latents`` (the exact encoder), ``model`` (the ``sd_model``
lookalike), ``sampling``, ``evaluator`` and ``train``.
"""

from .checkpoints import load_evaluator, load_memorizer, load_model
from .data import all_digits, digit_split, memorizer_subset, near_duplicate_distance, pixel_distances, subset
from .evaluator import DigitClassifier, frechet_distance
from .latents import decode, encode
from .model import DigitsLatentDiffusion, parse_label, sd_alphas_cumprod
from .sampling import SAMPLERS, sample

__all__ = [
    "DigitClassifier", "DigitsLatentDiffusion", "SAMPLERS", "all_digits", "decode", "digit_split", "encode",
    "frechet_distance", "load_evaluator", "load_memorizer", "load_model", "memorizer_subset",
    "near_duplicate_distance", "parse_label", "pixel_distances", "sample", "sd_alphas_cumprod", "subset",
]
