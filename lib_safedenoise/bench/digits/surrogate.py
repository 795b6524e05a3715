"""The attacker's classifier: what an adversarial condition is optimised against, never what judges it.

Optimising against the judge finds adversarial examples of the judge (images it calls K that no person
would). So the attack (``lib_safedenoise.bench.attack``) maximises this classifier's log-probability of
the negated class, while success is counted by the evaluator and a nearest-neighbour judge. It differs from
the evaluator (``evaluator.DigitClassifier``) in everything an adversarial example could share: its
architecture (a fully connected network on the 64 pixels, no convolutions), its data (the diffusion model's
``train`` split, which an attacker of a released model has; the evaluator's split stays unseen) and its
seed. Trained by ``python -m lib_safedenoise.bench.digits.train --only surrogate``.
"""

from __future__ import annotations

import torch
from torch import nn

from .evaluator import fit_classifier
from .network import NUM_CLASSES

HIDDEN = 128


class SurrogateClassifier(nn.Module):
    """Pixels ``[N, 1, 8, 8]`` in [0, 1] -> logits ``[N, 10]``: two hidden layers of ``HIDDEN`` units
    (differentiable in the pixels; the caller clamps them as the judges do)."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN),
                                    nn.GELU(), nn.Linear(HIDDEN, NUM_CLASSES))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.layers(pixels * 2 - 1)


def train_surrogate(pixels: torch.Tensor, labels: torch.Tensor, *, seed: int, iterations: int = 2000,
                    batch: int = 128) -> SurrogateClassifier:
    """Deterministic training with one-pixel shifts as augmentation (the caller fixes threads and
    determinism flags); label smoothing keeps its log-probabilities finite and informative."""
    return fit_classifier(SurrogateClassifier, pixels, labels, seed=seed, iterations=iterations, batch=batch,
                          lr=3e-3, weight_decay=1e-2, label_smoothing=0.05)
