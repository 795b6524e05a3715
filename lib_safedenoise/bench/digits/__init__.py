"""A small latent diffusion model of real handwritten digits, built to test the safe denoiser honestly.

It exercises the same code paths as Stable Diffusion 1.x (4-channel latents, eps prediction on SD's
schedule, the real k-diffusion samplers under a WebUI-shaped CFG wrapper) at a size a CPU trains in
minutes. See ``data`` (the split), ``latents`` (the exact encoder), ``model`` (the ``sd_model``
lookalike), ``sampling``, ``evaluator`` and ``train``.
"""

from .checkpoints import load_evaluator, load_memorizer, load_model, load_pen_evaluator, load_surrogate
from .data import all_digits, digit_split, memorizer_subset, near_duplicate_distance, pixel_distances, subset
from .evaluator import DigitClassifier, frechet_distance, frechet_from_moments
from .latents import decode, encode
from .model import DigitsLatentDiffusion, parse_label
from .sampling import SAMPLERS, sample, sample_conditioned
from .surrogate import SurrogateClassifier

__all__ = [
    "DigitClassifier", "DigitsLatentDiffusion", "SAMPLERS", "SurrogateClassifier", "all_digits", "decode",
    "digit_split", "encode", "frechet_distance", "frechet_from_moments", "load_evaluator", "load_memorizer",
    "load_model", "load_pen_evaluator", "load_surrogate", "memorizer_subset", "near_duplicate_distance", "parse_label",
    "pixel_distances", "sample", "sample_conditioned", "subset",
]
