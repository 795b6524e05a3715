"""Judges of generated digits beside the evaluator classifier: a nearest-neighbour judge, a realism
number that looks at pixels, and the spread of classes that replacements fall into.

``NearestNeighbourJudge``: the class of the nearest training digit in pixel space. It has no weights to
fool: an image is called K only if it is closer to some real K than to every other real digit, so an
adversarial pattern that a classifier reads as K while it looks like nothing does not pass it.

``class_matched_frechet``: the Fréchet distance, in pixel space (what the eye sees, not a classifier's
features, which call a blotchy half-formed digit a confident 5), between the samples and the real digits of
the classes the evaluator judges them to be: the real side is the mixture of the held-out digits of each
class weighted by the share of samples judged that class (its mean and covariance exactly, from all
held-out digits). A defended model asked for K draws other classes; this scores them against the real
digits of those classes. It compares distributions: the judged classes set only the real side's mixture,
so samples that are all judged one class are measured against that class alone. The distance shrinks with more samples (its covariance term is biased), so only
numbers from equally many samples compare.

``nearest_distances``: each sample's pixel distance to the nearest of a set of real digits. The realism
number alone rewards copying (a perturbed stored digit is as real as any), so the benchmark also reads how
near the samples sit to the digits the model was trained on (which the hand-made reference is made of),
against the undefended model's own samples.
"""

from __future__ import annotations

import numpy as np
import torch

from lib_safedenoise.bench import digits


class NearestNeighbourJudge:
    """1-nearest-neighbour classifier over the ``train`` split's digits (Euclidean, [0, 1] pixels)."""

    def __init__(self, part: str = "train"):
        self.pixels, self.labels = digits.subset(part)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Predicted class ``[N]`` of images ``[N, 1, 8, 8]`` (clamped to [0, 1] first)."""
        distances = digits.pixel_distances(pixels.detach().clamp(0, 1), self.pixels)
        return self.labels[distances.argmin(dim=1)]


def class_matched_frechet(pixels: torch.Tensor, predictions: torch.Tensor, real_pixels: torch.Tensor,
                          real_labels: torch.Tensor) -> float:
    """Pixel-space Fréchet distance of ``pixels`` (``[N, 1, 8, 8]``, N >= 2) to the class mixture of real
    digits with the class shares of ``predictions`` (see the module docstring)."""
    if len(pixels) < 2:
        raise ValueError(f"need at least 2 samples for a Fréchet distance, got {len(pixels)}")
    samples = pixels.detach().clamp(0, 1).flatten(1).double().numpy()
    real = real_pixels.flatten(1).double().numpy()
    labels = real_labels.numpy()
    shares = np.bincount(predictions.numpy(), minlength=10) / len(predictions)
    mean = np.zeros(real.shape[1])
    second = np.zeros((real.shape[1], real.shape[1]))
    for digit in np.flatnonzero(shares):
        members = real[labels == digit]
        mean += shares[digit] * members.mean(axis=0)
        second += shares[digit] * (members.T @ members) / len(members)
    covariance = second - np.outer(mean, mean)
    return digits.frechet_from_moments(samples.mean(axis=0), np.cov(samples, rowvar=False), mean, covariance)


def class_spread(predictions: torch.Tensor, negate: int) -> dict:
    """Where the samples not judged ``negate`` went: ``counts`` per class (ten entries, ``negate``'s is 0)
    and ``top_share``, the largest class's share of them (None when there are none)."""
    replaced = predictions[predictions != negate]
    counts = torch.bincount(replaced, minlength=10).tolist()
    return {"counts": counts, "top_share": max(counts) / len(replaced) if len(replaced) else None}


def nearest_distances(pixels: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Euclidean distance ``[N]`` of each image ``[N, 1, 8, 8]`` (clamped to [0, 1]) to its nearest item."""
    return digits.pixel_distances(pixels.detach().clamp(0, 1), items).min(dim=1).values
