"""Gaussian-kernel estimators over a latent bank, exact and chunked.

Every quantity the modes need comes from two sweeps over the bank in chunks of rows, never a
``B x M x D`` tensor. The first forms all query-to-item distances with one matrix product per chunk (the
items' squared norms are computed once per bank tensor); the log-sum-exp over the ``B x M`` scores is then
exact, with one shift by the true maximum, even when squared distances reach 10^5 or more (SD latents have
D = 16,384 to 262,144 values, where a plain ``exp`` underflows to 0 for every item). The second sweep forms
the weighted sum of the items. In high dimension the kernel is so peaked that only a few items carry any
weight: on CPU the second sweep then reads just those (``NEGLIGIBLE_LOG_WEIGHT``), and the whole estimate
costs about one read of the bank. A flat kernel (the released code's unsquared distance with its wide fixed
bandwidth) needs both sweeps in full: two reads.

Why not one fused flash-attention-style sweep (running log-sum-exp, the weighted sum while the chunk is in
cache)? Measured on a 2-core Xeon with 1 thread: for batch 1 the two sweeps are faster (1.6-1.9x the time
of one read against 1.9-2.3x), because a fused sweep pays a rescale of the ``B x D`` accumulator and a dozen
small operations per chunk; for batch 4 neither reaches 2x (the library's matrix products with 4 rows run
at 1.1-1.5x the time of a plain read each, and a fused sweep with cache-resident chunks pays the per-chunk
overhead instead). ``python -m lib_safedenoise.bench speed`` prints the ratios.

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
"""Float32 bytes of bank rows per chunk (a float16 bank's chunk is widened to this): large enough that the
per-chunk calls cost nothing, small enough that the widened copy stays in cache (measured best of
1-64 MB on a 2-core Xeon, within noise of 64 MB)."""

MIN_CHUNK_ROWS = 8
"""Lower bound on rows per chunk, so the largest latents (1 MB per item) still make one product per 8 items."""

NEGLIGIBLE_LOG_WEIGHT = 40.0
"""Items whose weight is below ``exp(-40)`` of the largest change the weighted sum by less than
``M * 4e-18`` relative: far below float32 resolution, so on CPU the weighted sum skips them."""

SPARSE_SHARE = 4
"""The weighted sum gathers the items that matter when they are at most ``1 / SPARSE_SHARE`` of the bank
(a gathered row costs about three reads: copy out, copy in, product); otherwise it sweeps every chunk. On
GPUs the selection would need a device sync, so they always sweep."""


@dataclass
class KernelPass:
    """What one kernel pass over a bank yields, per query image (all float32).

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
    """The Gaussian kernel ``w_n = exp(-dist_n / (2 h^2))`` of every query against ``bank``, in two chunked
    sweeps (see the module docstring).

    ``x [B, C, H, W]`` are the queries (any float dtype), ``bandwidth`` ``h`` is a float or ``[B]``,
    ``bank [M, C, H, W]`` any float dtype. ``dist_n`` is the squared Euclidean distance, or with
    ``squared=False`` the plain distance (the released code's kernel).
    """
    check_compatible(x, bank)
    batch, count = x.shape[0], bank.shape[0]
    queries = x.reshape(batch, -1).float()
    items = bank.reshape(count, -1)
    rows = chunk_rows or max(MIN_CHUNK_ROWS, CHUNK_BYTES // (4 * queries.shape[1]))
    starts = range(0, count, rows)
    products = [torch.addmm(norms, queries, items[start:start + rows].float().T, alpha=-2)
                for start, norms in zip(starts, item_sq_norms(bank).split(rows))]
    sq = torch.cat(products, 1).add_(queries.square().sum(1, keepdim=True)).clamp_(min=0)
    score = (sq if squared else sq.sqrt()) * (-0.5 / per_image(bandwidth, batch, x.device).square())[:, None]
    top = score.amax(1)
    weights = torch.exp(score - top[:, None])
    total = weights.sum(1)
    kept = None
    if x.device.type == "cpu":  # on a GPU the selection would cost a device sync
        kept = (score > top[:, None] - NEGLIGIBLE_LOG_WEIGHT).any(0).nonzero().squeeze(1)
    if kept is not None and kept.numel() * SPARSE_SHARE <= count:
        weighted = weights[:, kept] @ items.index_select(0, kept).float()
    else:
        weighted = torch.zeros_like(queries)
        for start in starts:
            weighted.addmm_(weights[:, start:start + rows], items[start:start + rows].float())
    return KernelPass(weighted / total[:, None], top + total.log(), sq.amin(1))


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
