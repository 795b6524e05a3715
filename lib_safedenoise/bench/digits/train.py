"""Train the digits checkpoints: ``python -m lib_safedenoise.bench.digits.train [--out DIR] [--seed S]
[--only denoiser|memorizer|evaluator ...] [--iterations N]``.

Deterministic: fixed seeds, one thread, ``torch.use_deterministic_algorithms``. The defaults are what
produced the committed files in ``lib_safedenoise/digits/weights``. Each checkpoint trains on one core;
to use two, run ``--only denoiser`` and ``--only evaluator memorizer`` as two processes (the committed
files took 692 s and 267 + 397 s that way on a shared two-core machine at load 6-8; each file's
``train_seconds`` metadata records its time).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import latents
from .checkpoints import FILES, WEIGHTS_DIR, save_checkpoint
from .data import SPLIT_SEED, digit_split, memorizer_subset, subset
from .evaluator import train_classifier, train_pen_robust_classifier
from .surrogate import train_surrogate
from .model import DigitsLatentDiffusion
from .network import NUM_CLASSES, EpsUNet

ARCHITECTURE = {"channels": latents.LATENT_CHANNELS, "width": 32, "embed_dim": 128}
DENOISER_ITERATIONS = 1500
MEMORIZER_ITERATIONS = 2000
EVALUATOR_ITERATIONS = 1500
SURROGATE_ITERATIONS = 2000
PEN_EVALUATOR_ITERATIONS = 3000
SURROGATE_SEED_OFFSET = 1  # the surrogate never shares the evaluator's seed
PEN_EVALUATOR_SEED_OFFSET = 2  # nor the pen-robust judge: three classifiers, three seeds
LABEL_DROPOUT = 0.1
THREADS = 1  # also the fastest on a busy machine; more threads change float sums, hence weights


def deterministic(threads: int = THREADS) -> None:
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    # filling every new tensor with NaN (the deterministic mode's default) guards CUDA reads of
    # uninitialised memory; on this CPU-only path it only costs a sixth of the training time
    torch.utils.deterministic.fill_uninitialized_memory = False


def train_denoiser(pixels: torch.Tensor, labels: torch.Tensor, *, seed: int, iterations: int,
                   batch: int = 128, lr: float = 2e-3, ema_decay: float = 0.999) -> DigitsLatentDiffusion:
    """eps-prediction on SD's schedule with 10% of labels dropped to the null label (for CFG).

    Returns the exponential moving average of the weights, which samples far better than the last iterate
    of so short a run.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsLatentDiffusion(EpsUNet(**ARCHITECTURE))
    average = copy.deepcopy(model).requires_grad_(False)
    clean = latents.encode(pixels)
    alphas_cumprod = model.alphas_cumprod
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=iterations, pct_start=0.05)
    for iteration in range(iterations):
        index = torch.randint(0, len(clean), (batch,), generator=generator)
        t = torch.randint(0, len(alphas_cumprod), (batch,), generator=generator)
        noise = torch.randn(clean[index].shape, generator=generator)
        a = alphas_cumprod[t][:, None, None, None]
        noisy = a.sqrt() * clean[index] + (1 - a).sqrt() * noise
        dropped = torch.rand(batch, generator=generator) < LABEL_DROPOUT
        condition = F.one_hot(torch.where(dropped, NUM_CLASSES, labels[index]), NUM_CLASSES + 1).float()
        loss = F.mse_loss(model.apply_model(noisy, t, condition), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        decay = min(ema_decay, (1 + iteration) / (10 + iteration))  # forget the random initialisation fast
        with torch.no_grad():
            for kept, live in zip(average.parameters(), model.parameters()):
                kept.lerp_(live, 1 - decay)
    return average.eval()


def _metadata(kind: str, seed: int, iterations: int, seconds: float, **extra) -> dict:
    return {"kind": kind, "seed": seed, "iterations": iterations, "split_seed": SPLIT_SEED,
            "split": digit_split(SPLIT_SEED).fingerprint(), "train_seconds": f"{seconds:.1f}",
            "threads": torch.get_num_threads(), "torch": torch.__version__, **extra}


def train_all(out: Path, *, seed: int, only: list[str], iterations: dict[str, int], log=print) -> dict[str, Path]:
    """Train the asked checkpoints into ``out``; returns their paths."""
    deterministic()
    written = {}
    for kind in only:
        start = time.perf_counter()
        kind_seed = seed + {"surrogate": SURROGATE_SEED_OFFSET, "pen_evaluator": PEN_EVALUATOR_SEED_OFFSET}.get(kind, 0)
        if kind == "evaluator":
            module = train_classifier(*subset("evaluator"), seed=seed, iterations=iterations[kind])
            extra = {}
        elif kind == "pen_evaluator":
            module = train_pen_robust_classifier(*subset("evaluator"), seed=kind_seed, iterations=iterations[kind])
            extra = {"trained_on": "evaluator"}
        elif kind == "surrogate":
            module = train_surrogate(*subset("train"), seed=kind_seed, iterations=iterations[kind])
            extra = {"trained_on": "train"}
        else:
            pixels, labels = subset("train") if kind == "denoiser" else memorizer_subset()
            module = train_denoiser(pixels, labels, seed=seed, iterations=iterations[kind],
                                    batch=128 if kind == "denoiser" else 40)
            extra = {"architecture": json.dumps(ARCHITECTURE), "training_images": len(pixels)}
        seconds = time.perf_counter() - start
        path = Path(out) / FILES[kind]
        save_checkpoint(module, path, _metadata(kind, kind_seed, iterations[kind], seconds, **extra))
        log(f"{kind}: {iterations[kind]} iterations in {seconds:.1f} s -> {path}")
        written[kind] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib_safedenoise.bench.digits.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: the committed weights)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=list(FILES), default=list(FILES),
                        help="which checkpoints to train (default: all)")
    parser.add_argument("--memorizer", action="store_const", dest="only", const=["memorizer"],
                        help="shorthand for --only memorizer")
    parser.add_argument("--iterations", type=int, help="override the iteration count (for quick trials)")
    args = parser.parse_args(argv)
    defaults = {"denoiser": DENOISER_ITERATIONS, "memorizer": MEMORIZER_ITERATIONS, "evaluator": EVALUATOR_ITERATIONS,
                "surrogate": SURROGATE_ITERATIONS, "pen_evaluator": PEN_EVALUATOR_ITERATIONS}
    iterations = {kind: args.iterations or count for kind, count in defaults.items()}
    train_all(args.out, seed=args.seed, only=args.only, iterations=iterations)
    return 0


if __name__ == "__main__":
    sys.exit(main())
