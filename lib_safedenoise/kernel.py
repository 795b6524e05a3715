"""Gaussian-kernel estimators over a latent bank, exact and streaming.

Every quantity the modes need comes from one pass over the bank, in the style of flash attention: the
bank is read in chunks of rows; per chunk we form the query-to-item distances with one matrix product,
fold them into a running log-sum-exp, and add the rescaled weighted items to a running sum with a second
product while the chunk is still in cache (on CPU only over the items whose weight is not negligible,
see ``NEGLIGIBLE_LOG_WEIGHT``). The items' squared norms are computed once per bank tensor. Nothing of size ``B x M x D`` ever exists, the bank is read
from memory once, and the log-sum-exp stays exact when squared distances reach 10^5 or more (SD latents
have D = 16,384 to 262,144 values, where a plain ``exp`` underflows to 0 for every item).

Banks may be float16/bfloat16; each chunk is widened to float32 before use, so all accumulation is
float32. Squared distances use ``|q|^2 + |x_n|^2 - 2 q.x_n`` (clamped at 0), as ``torch.cdist`` does for
large inputs: their absolute error is about 1e-7 of the squared norms.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .latent_bank import LatentBank

CHUNK_BYTES = 16 << 20
"""Float32 bytes of bank rows per chunk: large enough to amortise the per-chunk work, small enough that
the second product finds the chunk in the last-level cache (measured best of 1-32 MB on a 2-core Xeon)."""

MIN_CHUNK_ROWS = 8
"""Lower bound on rows per chunk, so the per-chunk rescale of the ``B x D`` accumulator stays cheap."""

NEGLIGIBLE_LOG_WEIGHT = 40.0
"""Items whose weight is below ``exp(-40)`` of the running maximum (so also of the final one) change the
weighted sum by less than ``M * 4e-18`` relative: far below float32 resolution. On CPU, where the second
read of a chunk costs as much as the first, the weighted sum skips them; in high dimension the kernel is
so peaked that usually only a few items per chunk remain, and the pass costs about one read of the bank.
(On GPUs the selection would need a device sync per chunk, so every item is summed.)"""


@dataclass
class KernelPass:
    """What one streaming pass over a bank yields, per query image (all float32).

    ``mean``: ``[B, D]`` kernel-weighted mean of the items, ``sum_n w_n x_n / sum_n w_n``.
    ``log_weight_sum``: ``[B]``, ``log sum_n w_n`` with ``w_n = exp(-dist_n / (2 h^2))``.
    ``min_sq_distance``: ``[B]``, squared Euclidean distance to the nearest item.
    """

    mean: torch.Tensor
    log_weight_sum: torch.Tensor
    min_sq_distance: torch.Tensor


_derived: dict[int, dict] = {}  # by id of a live tensor; tensors compare elementwise, so no WeakKeyDictionary


def derived(tensor: torch.Tensor, key: tuple, compute: Callable[[], Any]):
    """``compute()`` once per bank tensor and ``key``, until the tensor is freed or changed in place.

    Adapted bank views (``LatentBank.adapted``) live until the bank is edited or released, so values
    derived from a bank (its items' norms, a calibrated threshold, ...) are computed once per generation.
    """
    cache = _derived.get(id(tensor))
    if cache is None:
        cache = _derived[id(tensor)] = {}
        weakref.finalize(tensor, _derived.pop, id(tensor), None)
    key = (tensor._version, *key)  # in-place edits bump the version
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def item_sq_norms(bank: torch.Tensor) -> torch.Tensor:
    """Squared norms of a bank's items in float32, ``[M]`` (cached per bank tensor)."""
    return derived(bank, ("sq_norms",), lambda: torch.cat([
        torch.linalg.vector_norm(chunk.float(), dim=1).square()
        for chunk in bank.reshape(bank.shape[0], -1).split(256)]))


def per_image(value, batch: int, device) -> torch.Tensor:
    """A float or a ``[B]`` tensor as a float32 ``[B]`` tensor on ``device``."""
    tensor = torch.as_tensor(value, dtype=torch.float32, device=device).flatten()
    if tensor.numel() == 1:
        return tensor.expand(batch)
    if tensor.numel() != batch:
        raise ValueError(f"expected a scalar or {batch} per-image values, got shape {tuple(tensor.shape)}")
    return tensor


def check_compatible(x: torch.Tensor, bank: torch.Tensor) -> None:
    """Raise ``ValueError`` naming both shapes unless ``x [B,C,H,W]`` and ``bank [M,C,H,W]`` match."""
    if x.ndim != 4 or bank.ndim != 4 or x.shape[1:] != bank.shape[1:]:
        raise ValueError(f"latents of shape {tuple(x.shape)} do not match bank items of shape "
                         f"{tuple(bank.shape)}: channels, height and width must agree")


def kernel_pass(x: torch.Tensor, bandwidth, bank: torch.Tensor, *, squared: bool = True,
                chunk_rows: int | None = None) -> KernelPass:
    """One fused streaming pass of the Gaussian kernel ``w_n = exp(-dist_n / (2 h^2))`` over ``bank``.

    ``x [B, C, H, W]`` are the queries (any float dtype), ``bandwidth`` ``h`` is a float or ``[B]``,
    ``bank [M, C, H, W]`` any float dtype. ``dist_n`` is the squared Euclidean distance, or with
    ``squared=False`` the plain distance (the released code's kernel).
    """
    check_compatible(x, bank)
    batch, count = x.shape[0], bank.shape[0]
    queries = x.reshape(batch, -1).float()
    items = bank.reshape(count, -1)
    width = queries.shape[1]
    inv_two_h2 = 0.5 / per_image(bandwidth, batch, x.device).square()
    query_sq = queries.square().sum(1, keepdim=True)
    norms = item_sq_norms(bank)
    rows = chunk_rows or max(MIN_CHUNK_ROWS, CHUNK_BYTES // (4 * width))
    skip_negligible = x.device.type == "cpu"

    run_max = torch.full((batch,), -math.inf, device=x.device)
    run_sum = torch.zeros(batch, device=x.device)
    weighted = torch.zeros(batch, width, device=x.device)
    min_sq = torch.full((batch,), math.inf, device=x.device)
    for start in range(0, count, rows):
        chunk = items[start:start + rows].float()
        sq = torch.addmm(query_sq + norms[start:start + rows], queries, chunk.T, alpha=-2).clamp_(min=0)
        min_sq = torch.minimum(min_sq, sq.amin(1))
        score = -(sq if squared else sq.sqrt()) * inv_two_h2[:, None]
        new_max = torch.maximum(run_max, score.amax(1))
        rescale = torch.exp(run_max - new_max)
        weights = torch.exp(score - new_max[:, None])
        run_sum = run_sum * rescale + weights.sum(1)
        if skip_negligible:
            kept = (score > new_max[:, None] - NEGLIGIBLE_LOG_WEIGHT).any(0).nonzero().squeeze(1)
            if kept.numel() < chunk.shape[0]:
                weights, chunk = weights[:, kept], chunk.index_select(0, kept)
        weighted = torch.addmm(weighted * rescale[:, None], weights, chunk)
        run_max = new_max
    return KernelPass(weighted / run_sum[:, None], run_max + run_sum.log(), min_sq)


def bank_tensor(bank, like: torch.Tensor) -> torch.Tensor:
    """A ``[M, C, H, W]`` tensor as is; a ``LatentBank`` adapted to ``like``'s device and latent size."""
    if isinstance(bank, LatentBank):
        return bank.adapted(device=like.device, dtype=bank.latents.dtype, size=tuple(like.shape[-2:]))
    return bank


def unsafe_denoiser(x: torch.Tensor, sigma, bank) -> torch.Tensor:
    """The bank's empirical denoiser ``sum_n softmax_n(-|x - x_n|^2 / (2 sigma^2)) x_n``, ``[B, C, H, W]``.

    Per image of ``x [B, C, H, W]`` independently; ``sigma`` a float or ``[B]``; ``bank`` a
    ``[M, C, H, W]`` tensor (any float dtype) or a ``LatentBank``; result in ``x.dtype``.
    """
    return kernel_pass(x, sigma, bank_tensor(bank, x)).mean.reshape(x.shape).to(x.dtype)


def log_density(stats: KernelPass, bandwidth, count: int, width: int) -> torch.Tensor:
    """``log((1/M) sum_n N(x; x_n, h^2 I))`` from a squared-distance pass with bandwidth ``h``."""
    h = per_image(bandwidth, stats.log_weight_sum.shape[0], stats.log_weight_sum.device)
    return stats.log_weight_sum - math.log(count) - 0.5 * width * torch.log(2 * math.pi * h.square())


def log_kernel_density(x: torch.Tensor, sigma, bank) -> torch.Tensor:
    """``log((1/M) sum_n N(x; x_n, sigma^2 I))`` per image of ``x [B, C, H, W]``: ``[B]`` float32.

    ``bank`` as for ``unsafe_denoiser``."""
    bank = bank_tensor(bank, x)
    stats = kernel_pass(x, sigma, bank)
    return log_density(stats, sigma, bank.shape[0], x[0].numel())
