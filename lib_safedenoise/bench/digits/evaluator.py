"""The independent judge: a small CNN digit classifier trained only on the ``evaluator`` split, and the
Fréchet distance in its penultimate feature space (the FID recipe with this network in place of
Inception)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .network import NUM_CLASSES

FEATURE_DIM = 64


class DigitClassifier(nn.Module):
    """Pixels ``[N, 1, H, W]`` in [0, 1] -> logits ``[N, 10]``; ``features`` gives the penultimate layer."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.embed = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.classify = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[-2:] != (8, 8):
            pixels = F.interpolate(pixels, size=(8, 8), mode="area")
        h = F.relu(self.conv1(pixels.clamp(0, 1) * 2 - 1))
        h = F.max_pool2d(F.relu(self.conv3(F.relu(self.conv2(h)))), 2)
        return F.relu(self.embed(h.flatten(1)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(pixels))

    @torch.no_grad()
    def judge(self, pixels: torch.Tensor, batch: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predicted class, top-class probability and features of each image."""
        predictions, confidences, features = [], [], []
        for chunk in pixels.split(batch):
            feature = self.features(chunk.float())
            probabilities = self.classify(feature).softmax(dim=1)
            confidence, prediction = probabilities.max(dim=1)
            predictions.append(prediction)
            confidences.append(confidence)
            features.append(feature)
        return torch.cat(predictions), torch.cat(confidences), torch.cat(features)


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N, D]`` (the FID formula)."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets [N>=2, D] of equal D, got {a.shape} and {b.shape}")
    return frechet_from_moments(a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False))


def frechet_from_moments(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet distance between ``N(mean_a, cov_a)`` and ``N(mean_b, cov_b)`` (float64 arrays)."""
    # tr sqrt(A B) = tr sqrt(A^1/2 B A^1/2), a symmetric PSD form that stays exact when a feature never
    # fires (ReLU features make singular covariances, where a general sqrtm is unstable)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    trace_root = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(min=0)).sum()
    distance = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    return float(max(distance, 0.0))


def all_shifts(pixels: torch.Tensor) -> torch.Tensor:
    """``[9, N, 1, 8, 8]``: every image moved by -1, 0 or +1 pixel on each axis (zero fill), because
    handwriting is never exactly centred."""
    padded = F.pad(pixels, (1, 1, 1, 1))
    return torch.stack([padded[..., dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)])


def heavier_pen(pixels: torch.Tensor, gain: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """The digits as written with a heavier pen: each image's ink scaled by ``1 + 2 gain`` and saturated at 1
    (faint edge pixels turn solid), and its strokes widened by ``0.8 spread`` of their 3x3 maximum (ink
    bleeding into the neighbouring pixels). ``gain``, ``spread``: ``[N]`` in [0, 1]; 0 and 0 is the image."""
    scaled = pixels * (1 + 2 * gain.view(-1, 1, 1, 1))
    widened = 0.8 * spread.view(-1, 1, 1, 1) * F.max_pool2d(pixels, 3, stride=1, padding=1)
    return torch.maximum(scaled, widened).clamp(0, 1)


def random_heavier_pen(pixels: torch.Tensor, generator: torch.Generator, share: float = 0.7) -> torch.Tensor:
    """``heavier_pen`` with uniform random gain and spread on a random ``share`` of the images."""
    drawn = torch.rand(len(pixels), 2, generator=generator)
    drawn = drawn * (torch.rand(len(pixels), 1, generator=generator) < share)
    return heavier_pen(pixels, drawn[:, 0], drawn[:, 1])


def fit_classifier(make: Callable[[], nn.Module], pixels: torch.Tensor, labels: torch.Tensor, *, seed: int,
                   iterations: int, batch: int, lr: float, weight_decay: float, label_smoothing: float = 0.0,
                   augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> nn.Module:
    """Train ``make()`` (built after seeding torch with ``seed``) by AdamW with a one-cycle schedule peaking
    at ``lr`` on random one-pixel shifts of random images (``all_shifts``), each batch then passed through
    ``augment`` if given, deterministically (the caller fixes threads and determinism flags); returned in
    eval mode."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    classifier = make()
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=iterations)
    shifts = all_shifts(pixels)
    for _ in range(iterations):
        index = torch.randint(0, len(pixels), (batch,), generator=generator)
        shift = torch.randint(0, len(shifts), (batch,), generator=generator)
        images = shifts[shift, index]
        if augment is not None:
            images = augment(images, generator)
        loss = F.cross_entropy(classifier(images), labels[index], label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return classifier.eval()


def train_classifier(pixels: torch.Tensor, labels: torch.Tensor, *, seed: int, iterations: int = 1500,
                     batch: int = 128) -> DigitClassifier:
    """The evaluator's training (``fit_classifier``, peak learning rate 2e-3, weight decay 1e-3)."""
    return fit_classifier(DigitClassifier, pixels, labels, seed=seed, iterations=iterations, batch=batch,
                          lr=2e-3, weight_decay=1e-3)


def train_pen_robust_classifier(pixels: torch.Tensor, labels: torch.Tensor, *, seed: int, iterations: int = 3000,
                                batch: int = 128) -> DigitClassifier:
    """The evaluator's network and training, with 70% of the images redrawn with a heavier pen
    (``random_heavier_pen``): a judge that still reads a digit whose strokes are bold or saturated."""
    return fit_classifier(DigitClassifier, pixels, labels, seed=seed, iterations=iterations, batch=batch,
                          lr=2e-3, weight_decay=1e-3, augment=random_heavier_pen)
