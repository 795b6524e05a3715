"""The committed checkpoints (safetensors only) and their loaders.

Each file stores the network's state dict and string metadata: ``kind``, the architecture numbers, the
training seed and iterations, and the fingerprint of the data split it was trained with; loading checks
that fingerprint against the split recomputed now, so a changed split can never mix training and
evaluation digits unnoticed.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save

from lib_safedenoise.banks.fileformat import write_atomically

from .data import digit_split
from .evaluator import DigitClassifier
from .model import DigitsLatentDiffusion
from .surrogate import SurrogateClassifier
from .network import EpsUNet

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FILES = {"denoiser": "denoiser.safetensors", "memorizer": "memorizer.safetensors",
         "evaluator": "evaluator.safetensors", "surrogate": "surrogate.safetensors",
         "pen_evaluator": "pen_evaluator.safetensors"}


def save_checkpoint(module: torch.nn.Module, path: Path, metadata: dict) -> None:
    """Write atomically (``fileformat.write_atomically``): a crash mid-write leaves the previous file intact."""
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}
    write_atomically(path, save(tensors, metadata={key: str(value) for key, value in metadata.items()}))


def read_metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def _load(path: Path, kind: str) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind} checkpoint at {path}; run `python -m lib_safedenoise.bench.digits.train`")
    metadata = read_metadata(path)
    if metadata.get("kind") != kind:
        raise ValueError(f"{path} holds a {metadata.get('kind')!r} checkpoint, not a {kind!r} one")
    expected = digit_split(int(metadata["split_seed"])).fingerprint()
    if metadata.get("split") != expected:
        raise ValueError(f"{path} was trained on data split {metadata.get('split')}, but the split is now "
                         f"{expected}: retrain with `python -m lib_safedenoise.bench.digits.train`")
    return load_file(str(path)), metadata


def load_diffusion(path: Path, kind: str = "denoiser") -> DigitsLatentDiffusion:
    tensors, metadata = _load(path, kind)
    model = DigitsLatentDiffusion(EpsUNet(**json.loads(metadata["architecture"])), metadata)
    model.load_state_dict(tensors)  # keys "model.*", as an SD checkpoint's "model.diffusion_model.*"
    return model.eval().requires_grad_(False)


def load_classifier(path: Path, kind: str = "evaluator") -> DigitClassifier | SurrogateClassifier:
    tensors, metadata = _load(path, kind)
    classifier = SurrogateClassifier() if kind == "surrogate" else DigitClassifier()
    classifier.load_state_dict(tensors)
    classifier.metadata = metadata
    return classifier.eval().requires_grad_(False)


@functools.lru_cache(maxsize=None)
def load_model() -> DigitsLatentDiffusion:
    """The committed class-conditional digits model (cached; treat as read-only)."""
    return load_diffusion(WEIGHTS_DIR / FILES["denoiser"], "denoiser")


@functools.lru_cache(maxsize=None)
def load_memorizer() -> DigitsLatentDiffusion:
    """The committed model trained on 20 digits until it reproduces them (cached)."""
    return load_diffusion(WEIGHTS_DIR / FILES["memorizer"], "memorizer")


@functools.lru_cache(maxsize=None)
def load_evaluator() -> DigitClassifier:
    """The committed evaluator classifier (cached)."""
    return load_classifier(WEIGHTS_DIR / FILES["evaluator"])


@functools.lru_cache(maxsize=None)
def load_pen_evaluator() -> DigitClassifier:
    """The committed judge that reads bold and saturated digits (cached; see
    ``evaluator.train_pen_robust_classifier``)."""
    return load_classifier(WEIGHTS_DIR / FILES["pen_evaluator"], "pen_evaluator")


@functools.lru_cache(maxsize=None)
def load_surrogate() -> SurrogateClassifier:
    """The committed attacker's classifier (cached; see ``surrogate``)."""
    return load_classifier(WEIGHTS_DIR / FILES["surrogate"], "surrogate")
