"""The real handwritten digits (scikit-learn's bundled copy of the UCI set: 1,797 images, 8x8, values 0..16).

One fixed, stratified split keeps three roles apart: the diffusion model trains on ``train``; negation
banks and every evaluation reference come from ``heldout``; the evaluator classifier trains on
``evaluator``. The split is recomputed from ``SPLIT_SEED`` (no file to go stale) and its fingerprint is
stored in every checkpoint, so a changed split is detected rather than silently mixing roles.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

SPLIT_SEED = 20250211
SPLIT_FRACTIONS = {"train": 0.4, "heldout": 0.3, "evaluator": 0.3}
MEMORIZER_IMAGES_PER_CLASS = 2


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Every digit: pixels ``[1797, 1, 8, 8]`` in [0, 1] and labels ``[1797]``."""
    images, labels = _digits()
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


@dataclass(frozen=True)
class DigitSplit:
    train: np.ndarray
    heldout: np.ndarray
    evaluator: np.ndarray

    def fingerprint(self) -> str:
        """SHA-256 (first 16 hex digits) of the three sorted index lists."""
        digest = hashlib.sha256()
        for part in (self.train, self.heldout, self.evaluator):
            digest.update(np.sort(part).astype(np.int64).tobytes() + b"|")
        return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def digit_split(seed: int = SPLIT_SEED) -> DigitSplit:
    """Disjoint, stratified train / held-out / evaluator index sets covering all digits."""
    from sklearn.model_selection import train_test_split

    _, labels = _digits()
    indices = np.arange(len(labels))
    train, rest = train_test_split(indices, train_size=SPLIT_FRACTIONS["train"], stratify=labels,
                                   random_state=seed)
    heldout_share = SPLIT_FRACTIONS["heldout"] / (SPLIT_FRACTIONS["heldout"] + SPLIT_FRACTIONS["evaluator"])
    heldout, evaluator = train_test_split(rest, train_size=heldout_share, stratify=labels[rest],
                                          random_state=seed)
    return DigitSplit(np.sort(train), np.sort(heldout), np.sort(evaluator))


def subset(part: str, *, digit: int | None = None, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels and labels of one part of the split (``train``, ``heldout``, ``evaluator``), optionally one class."""
    if part not in SPLIT_FRACTIONS:
        raise ValueError(f"unknown split part {part!r}; expected one of {', '.join(SPLIT_FRACTIONS)}")
    pixels, labels = all_digits()
    index = torch.from_numpy(getattr(digit_split(seed), part))
    if digit is not None:
        index = index[labels[index] == digit]
    return pixels[index], labels[index]


def memorizer_subset(seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny training set of the memorising model: the first two training digits of every class."""
    pixels, labels = subset("train", seed=seed)
    chosen = torch.cat([torch.nonzero(labels == digit).flatten()[:MEMORIZER_IMAGES_PER_CLASS]
                        for digit in range(10)])
    return pixels[chosen], labels[chosen]


def pixel_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``[len(a), len(b)]`` between digit images in [0, 1] pixel units."""
    return torch.cdist(a.flatten(1).double(), b.flatten(1).double()).float()


@functools.lru_cache(maxsize=1)
def near_duplicate_distance() -> float:
    """A sample is a near-duplicate of a digit when closer than this (Euclidean, [0, 1] pixels, 64 values).

    Defined from the data: a quarter of the 1st percentile of the distances from each real digit to its
    nearest *distinct* real digit. Two different people's digits essentially never come this close, while a
    model that reproduces a training image lands well inside it.
    """
    pixels, _ = all_digits()
    distances = pixel_distances(pixels, pixels)
    distances[distances == 0] = float("inf")  # the image itself and exact duplicates in the data
    nearest = distances.min(dim=1).values
    return float(torch.quantile(nearest, 0.01)) / 4
