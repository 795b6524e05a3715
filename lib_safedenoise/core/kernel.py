"""Gaussian-kernel estimators over a latent bank: exact, chunked, and pruned with a certified error.

Every quantity the modes need comes from two sweeps over the bank in chunks of rows, never a
``B x M x D`` tensor. The first forms all query-to-item distances with one matrix product per chunk (the
items' squared norms are computed once per bank tensor); the log-sum-exp over the ``B x M`` scores is then
exact, with one shift by the true maximum, even when squared distances reach 10^5 or more (SD latents have
D = 16,384 to 262,144 values, where a plain ``exp`` underflows to 0 for every item). The second sweep forms
the weighted sum of the items. In high dimension the kernel is so peaked that only a few items carry any
weight: on CPU (or for a bank held in CPU memory) the second sweep then reads just those
(``NEGLIGIBLE_LOG_WEIGHT``), and the whole estimate costs about one read of the bank. A flat kernel (the
released code's unsquared distance with its wide fixed bandwidth) needs both sweeps in full: two reads.
A fused one-sweep (flash-attention-style) variant was measured slower on CPU: it pays a rescale of the
``B x D`` accumulator and a dozen small operations per chunk (``python -m lib_safedenoise.bench speed``).

Large banks (``pruning.MIN_ITEMS`` items or more) are first bounded from a small index kept with the bank
(``pruning.PruningIndex``: block means, clusters, norms); only the items the bounds cannot rule out are
scored exactly, and the neglected weight is certified (``KernelPass.certified_error``); where the bounds
certify nothing the full pass runs (``KernelPass.bound``). ``pruning(tolerance)`` sets the tolerance
(``None``: always the full pass); ``reading()`` collects what each pass read.

Banks may be float16/bfloat16; each chunk is widened to float32 before use (into one reused buffer, see
``chunks``), so all accumulation is float32. Squared distances use ``|q|^2 + |x_n|^2 - 2 q.x_n`` (clamped
at 0), as ``torch.cdist`` does for large inputs: their absolute error is about 1e-7 of the squared norms.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from . import pruning as prune
from .chunks import Widener, float_chunks
from .latent_bank import HostedBank, LatentBank, lasting_store

CHUNK_BYTES = 16 << 20
"""Float32 bytes of bank rows per chunk on the CPU (a float16 bank's chunk is widened to this): large enough
that the per-chunk calls cost nothing, small enough that the widened copy stays in cache."""

DEVICE_CHUNK_BYTES = 256 << 20
"""The same on a GPU, where each chunk costs kernel launches and host work rather than cache misses: a few
large products per sweep (``bench speed --device cuda``; the chunk sizes compared in README "On a GPU"),
with a widened copy small beside a generation's own memory."""

MIN_CHUNK_ROWS = 8
"""Lower bound on rows per chunk, so the largest latents (1 MB per item) still make one product per 8 items."""

NEGLIGIBLE_LOG_WEIGHT = 40.0
"""Items whose weight is below ``exp(-40)`` of the largest change the weighted sum by less than
``M * 4e-18`` relative: far below float32 resolution, so on CPU the weighted sum skips them."""

SPARSE_SHARE = 4
"""The weighted sum gathers the items that matter when they are at most ``1 / SPARSE_SHARE`` of the bank
(a gathered row costs about three reads: copy out, copy in, product); otherwise it sweeps every chunk. On
GPUs the selection would need a device sync, so they always sweep (except for a bank held in CPU memory,
where a sweep would fetch it all)."""


@dataclass
class KernelPass:
    """What one kernel pass over a bank yields, per query image (all float32).

    ``mean``: ``[B, D]`` kernel-weighted mean of the items, ``sum_n w_n x_n / sum_n w_n``.
    ``log_weight_sum``: ``[B]``, ``log sum_n w_n`` with ``w_n = exp(-dist_n / (2 h^2))``.
    ``min_sq_distance``: ``[B]``, squared Euclidean distance to the nearest item scored exactly (with
    pruning, the nearest item is among them whenever ``kept * certified_error < 1``: a skipped item weighs
    at most ``certified_error`` times the kept total, so it cannot outweigh each of ``kept`` items).
    ``certified_error``: ``[B]``, the bound ``rho`` on the skipped items' weight relative to the kept ones
    (0 for the full pass): ``log_weight_sum`` is low by at most ``rho``. ``denoiser_error``: ``[B]``, a bound
    on ``|mean - exact mean|``. ``bound``: ``"full"``, ``"cluster"`` or ``"pooled+cluster"`` (which
    bounds certified the skipped items). ``kept``: items scored exactly. ``bytes_read``: bytes of the bank
    and its index read.
    """

    mean: torch.Tensor
    log_weight_sum: torch.Tensor
    min_sq_distance: torch.Tensor
    certified_error: torch.Tensor | None = None
    denoiser_error: torch.Tensor | None = None
    bound: str = "full"
    kept: int = 0
    bytes_read: int = 0


@dataclass
class KernelRecord:
    """One kernel pass as ``reading()`` collects it: the bank tensor's id and size, and what the pass read
    and certified (``certified_error``/``denoiser_error`` as per-image lists)."""

    bank: int
    count: int
    bound: str
    kept: int
    bytes_read: int
    certified_error: list = field(default_factory=list)
    denoiser_error: list = field(default_factory=list)


_tolerance: contextvars.ContextVar[float | None] = contextvars.ContextVar("tolerance", default=prune.DEFAULT_TOLERANCE)
_min_items: contextvars.ContextVar[int] = contextvars.ContextVar("min_items", default=prune.MIN_ITEMS)
_ledger: contextvars.ContextVar[list | None] = contextvars.ContextVar("ledger", default=None)


@contextlib.contextmanager
def pruning(tolerance: float | None, *, min_items: int | None = None):
    """Within the block, kernel passes prune with ``tolerance`` (the bound on ``rho``), or never with ``None``,
    banks of ``min_items`` items or more (``None``: keep the current size, by default ``pruning.MIN_ITEMS``)."""
    if tolerance is not None and not 0 < tolerance < 1:
        raise ValueError(f"pruning tolerance must be in (0, 1) or None, got {tolerance}")
    if min_items is not None and min_items < 1:
        raise ValueError(f"pruning min_items must be >= 1, got {min_items}")
    token = _tolerance.set(tolerance)
    size_token = _min_items.set(_min_items.get() if min_items is None else min_items)
    try:
        yield
    finally:
        _min_items.reset(size_token)
        _tolerance.reset(token)


@contextlib.contextmanager
def reading():
    """Collect a ``KernelRecord`` for every kernel pass run within the block (yields the list)."""
    records: list[KernelRecord] = []
    token = _ledger.set(records)
    try:
        yield records
    finally:
        _ledger.reset(token)


_derived: dict[int, dict] = {}  # by id of a live tensor; tensors compare elementwise, so no WeakKeyDictionary


def derived(tensor: torch.Tensor, key: tuple, compute: Callable[[], Any]):
    """``compute()`` once per bank tensor and ``key``, until the tensor is freed or changed in place.

    Adapted bank views (``LatentBank.adapted``) live until the bank is edited or released, so values
    derived from a bank (its items' norms, a calibrated threshold, its pruning index, ...) are computed
    once per generation and freed with the view.
    """
    cache = _derived.get(id(tensor))
    if cache is None:
        cache = _derived[id(tensor)] = {}
        weakref.finalize(tensor, _derived.pop, id(tensor), None)
    key = (tensor._version, *key)  # in-place edits bump the version
    if key not in cache:
        for stale in [known for known in cache if known[0] != tensor._version]:  # values of the data before an edit
            del cache[stale]
        cache[key] = compute()
    return cache[key]


def item_sq_norms(bank: torch.Tensor) -> torch.Tensor:
    """Squared norms of a bank's items in float32, ``[M]`` (cached per bank tensor)."""
    return derived(bank, ("sq_norms",), lambda: torch.cat([
        torch.linalg.vector_norm(chunk, dim=1).square()
        for _, chunk in float_chunks(bank.reshape(bank.shape[0], -1), 256)]))


def per_image(value, batch: int, device) -> torch.Tensor:
    """A float or a ``[B]`` tensor as a float32 ``[B]`` tensor on ``device``."""
    tensor = torch.as_tensor(value, dtype=torch.float32, device=device).flatten()
    if tensor.numel() == 1:
        return tensor.expand(batch)
    if tensor.numel() != batch:
        raise ValueError(f"expected a scalar or {batch} per-image values, got shape {tuple(tensor.shape)}")
    return tensor


def check_compatible(x: torch.Tensor, bank) -> None:
    """Raise ``ValueError`` naming both shapes unless ``x [B,C,H,W]`` and ``bank [M,C,H,W]`` match."""
    if x.ndim != 4 or len(bank.shape) != 4 or x.shape[1:] != bank.shape[1:]:
        raise ValueError(f"latents of shape {tuple(x.shape)} do not match bank items of shape "
                         f"{tuple(bank.shape)}: channels, height and width must agree")


class _Rows:
    """Rows of a bank as float-widenable ``[n, D]`` tensors on the compute device, counting bytes read.

    For a tensor on the compute device rows are views; for a ``HostedBank`` they are fetched from its
    storage (chunk by chunk, or just the rows asked for)."""

    def __init__(self, bank, device):
        self.hosted = isinstance(bank, HostedBank)
        self.storage = bank.items if self.hosted else bank
        self.items = self.storage.reshape(self.storage.shape[0], -1)
        self.device = device
        self.row_bytes = self.items.shape[1] * self.items.element_size()
        self.bytes_read = 0

    def rows(self, start: int, stop: int) -> torch.Tensor:
        part = self.items[start:stop]
        self.bytes_read += part.shape[0] * self.row_bytes
        return part.to(self.device, non_blocking=True) if self.hosted else part

    def take(self, index: torch.Tensor) -> torch.Tensor:
        self.bytes_read += index.numel() * self.row_bytes
        return self.items.index_select(0, index.to(self.items.device)).to(self.device, non_blocking=True)


def chunk_bytes(device: torch.device) -> int:
    """Float32 bytes per chunk of a sweep on ``device`` (``CHUNK_BYTES`` or ``DEVICE_CHUNK_BYTES``)."""
    return CHUNK_BYTES if device.type == "cpu" else DEVICE_CHUNK_BYTES


def _exact(queries, rows: _Rows, count: int, norms, scale, squared: bool, chunk: int, sparse: bool):
    """The two sweeps over ``count`` rows of ``rows``: ``(mean, log_weight_sum, min_sq)``; ``scale [B]`` is
    ``-1 / (2 h^2)``."""
    starts = range(0, count, chunk)
    widen = Widener()
    products = [torch.addmm(part_norms, queries, widen(rows.rows(start, start + chunk)).T, alpha=-2)
                for start, part_norms in zip(starts, norms.split(chunk))]
    sq = torch.cat(products, 1).add_(queries.square().sum(1, keepdim=True)).clamp_(min=0)
    score = (sq if squared else sq.sqrt()) * scale[:, None]
    top = score.amax(1)
    weights = torch.exp(score - top[:, None])
    total = weights.sum(1)
    kept = (score > top[:, None] - NEGLIGIBLE_LOG_WEIGHT).any(0).nonzero().squeeze(1) if sparse else None
    if kept is not None and kept.numel() * SPARSE_SHARE <= count:
        weighted = weights[:, kept] @ rows.take(kept).float()
    else:
        weighted = torch.zeros_like(queries)
        for start in starts:
            weighted.addmm_(weights[:, start:start + chunk], widen(rows.rows(start, start + chunk)))
    return weighted / total[:, None], top + total.log(), sq.amin(1)


def pruning_index(bank, device, chunk_rows: int | None = None) -> prune.PruningIndex:
    """The bank's ``pruning.PruningIndex`` on ``device``: built once per bank (a CPU copy outlives the
    generation in the bank's ``lasting_store``), moved to ``device`` once per adapted view."""
    rows = _Rows(bank, device)
    chunk = chunk_rows or max(MIN_CHUNK_ROWS, chunk_bytes(torch.device(device)) // (4 * rows.items.shape[1]))

    def build() -> prune.PruningIndex:
        store = lasting_store(rows.storage)
        if store is not None and "pruning_index" in store:
            return store["pruning_index"].to(device)
        index = prune.build_index(
            rows.items.shape[0], lambda start, stop: rows.rows(start, stop).reshape(-1, *rows.storage.shape[1:]),
            tuple(rows.storage.shape[1:]), rows.storage.dtype, device, chunk)
        if store is not None:
            store["pruning_index"] = index.to("cpu")
        return index

    return derived(rows.storage, ("pruning_index", str(device)), build)


def _direct_sq(queries, items, chunk: int) -> torch.Tensor:
    """``[B, n]`` squared distances from the differences themselves (no cancellation of ``|q|^2 + |x|^2``:
    relative error about 1e-7 of the distance, not of the norms), for the few rows pruning keeps."""
    rows = max(1, chunk // max(1, queries.shape[0]))
    differences = torch.empty(queries.shape[0], min(rows, items.shape[0]), queries.shape[1], device=queries.device)
    return torch.cat([torch.sub(queries[:, None], part[None], out=differences[:, :part.shape[0]]).square_().sum(2)
                      for part in items.split(rows)], 1)


def _pruned(queries, rows: _Rows, index: prune.PruningIndex, scale, squared: bool, chunk: int,
            tolerance: float, shape: tuple):
    """The kernel on the items the bounds cannot skip, or ``None`` when that would keep more than
    ``1 / pruning.PAY_SHARE`` of the bank (the caller then runs the full pass); second: the bytes a failed
    attempt read. See ``pruning``."""
    count = index.count
    query_sq = queries.square().sum(1)

    def scores(sq):  # scores from squared distances (or their lower bounds: upper bounds on the scores)
        return (sq if squared else sq.sqrt()) * scale[:, None]

    read = index.cluster_bytes()
    lower = index.cluster_lower_bound(queries, query_sq)
    bound = "cluster"
    seeds = scores(lower).topk(min(prune.SEEDS, count), 1).indices.flatten().unique()
    floor = scores(_direct_sq(queries, rows.take(seeds), chunk)).logsumexp(1)
    is_seed = torch.zeros(count, dtype=torch.bool, device=queries.device)
    is_seed[seeds] = True

    def keep_mask(upper):
        skip = prune.skippable(upper.masked_fill(is_seed, -math.inf), floor, tolerance) & ~is_seed
        return ~skip.all(0)

    keep = keep_mask(scores(lower))
    kept_count = int(keep.sum())
    # the pooled bound (a read of 1/8 of a float16 bank) is tried only where the cluster bound alone nearly
    # paid: where it keeps more than half the bank (high noise) the pooled one certifies nothing either
    if count < kept_count * 4 * prune.PAY_SHARE and kept_count * 2 <= count and index.pooled is not None:
        lower = torch.maximum(lower, index.pooled_lower_bound(queries, query_sq, shape))
        read += index.pooled_bytes()
        bound = "pooled+cluster"
        keep = keep_mask(scores(lower))
    kept = keep.nonzero().squeeze(1)
    if kept.numel() * prune.PAY_SHARE > count:
        return None, read + rows.bytes_read
    survivors = rows.take(kept)
    sq = _direct_sq(queries, survivors, chunk)
    score = scores(sq)
    log_sum = score.logsumexp(1)
    mean = torch.softmax(score, 1) @ survivors.float()
    skipped = ~keep
    if bool(skipped.any()):
        rho = torch.exp(scores(lower[:, skipped]).logsumexp(1) - log_sum)
        farthest = index.sq_norms[skipped].amax().sqrt()
    else:
        rho, farthest = torch.zeros_like(log_sum), torch.zeros((), device=queries.device)
    error = rho * (farthest + mean.norm(dim=1))
    # read: the index, the seeds and survivors gathered from the bank, the gathered copy (swept twice)
    return KernelPass(mean, log_sum, sq.amin(1), rho, error, bound, kept.numel(),
                      read + rows.bytes_read + 2 * kept.numel() * rows.row_bytes), 0


def pruning_tolerance() -> float | None:
    """The bound on ``rho`` that kernel passes prune with here (``pruning``); ``None``: pruning is off."""
    return _tolerance.get()


def _prunes(count: int) -> bool:
    """Whether a bank of ``count`` items is pruned here (``pruning``'s tolerance and size)."""
    return _tolerance.get() is not None and count >= _min_items.get()


def _record(record: KernelRecord) -> None:
    """Hand one pass's record to the enclosing ``reading()`` block, if any."""
    ledger = _ledger.get()
    if ledger is not None:
        ledger.append(record)


def kernel_pass(x: torch.Tensor, bandwidth, bank, *, squared: bool = True, query: str = "noisy",
                chunk_rows: int | None = None) -> KernelPass:
    """The Gaussian kernel ``w_n = exp(-dist_n / (2 h^2))`` of every query against ``bank``: pruned with a
    certified error when the bank is large and the bounds allow, else two chunked sweeps (see the module
    docstring and ``pruning``).

    ``x [B, C, H, W]`` are the queries (any float dtype), ``bandwidth`` ``h`` is a float or ``[B]``,
    ``bank [M, C, H, W]`` any float dtype, on ``x``'s device or a ``HostedBank`` (rows fetched on demand).
    ``dist_n`` is the squared Euclidean distance, or with ``squared=False`` the plain distance (the released
    code's kernel). ``query`` names what the queries are (the noisy latent, or a clean estimate such as a
    prediction): where pruning did not pay is remembered per kind of query (``PruningIndex.failed``).
    """
    check_compatible(x, bank)
    batch, count = x.shape[0], bank.shape[0]
    queries = x.reshape(batch, -1).float()
    rows = _Rows(bank, x.device)
    chunk = chunk_rows or max(MIN_CHUNK_ROWS, chunk_bytes(x.device) // (4 * queries.shape[1]))
    scale = -0.5 / per_image(bandwidth, batch, x.device).square()
    result, wasted = None, 0
    if _prunes(count):
        index = pruning_index(bank, x.device, chunk_rows)
        narrowest = float(per_image(bandwidth, batch, x.device).amin())
        if narrowest < index.failed.get((squared, query), math.inf):
            result, wasted = _pruned(queries, rows, index, scale, squared, chunk, _tolerance.get(),
                                     tuple(x.shape[1:]))
            if result is None:
                index.failed[(squared, query)] = narrowest
    if result is None:
        rows.bytes_read = 0
        norms = item_sq_norms(rows.storage).to(x.device)
        mean, log_sum, min_sq = _exact(queries, rows, count, norms, scale, squared, chunk,
                                       sparse=x.device.type == "cpu" or rows.hosted)
        zero = torch.zeros_like(log_sum)
        result = KernelPass(mean, log_sum, min_sq, zero, zero, "full", count, wasted + rows.bytes_read)
    _record(KernelRecord(id(rows.storage), count, result.bound, result.kept, result.bytes_read,
                         result.certified_error.tolist(), result.denoiser_error.tolist()))
    return result


def log_weight_ceiling(x: torch.Tensor, bandwidth, bank) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Upper bounds on ``kernel_pass(x, bandwidth, bank).log_weight_sum`` (squared distances) and lower bounds
    on its ``min_sq_distance``, ``[B]`` each, from the bank's pruning index alone (its cluster bound: one read
    of the centroids); ``None`` where the bank is not pruned (fewer than ``min_items`` items, or pruning off),
    so callers fall back to ``kernel_pass``. Lets a caller rule a bank out without reading it."""
    check_compatible(x, bank)
    batch, count = x.shape[0], bank.shape[0]
    if not _prunes(count):
        return None
    index = pruning_index(bank, x.device)
    queries = x.reshape(batch, -1).float()
    lower = index.cluster_lower_bound(queries, queries.square().sum(1))
    scale = -0.5 / per_image(bandwidth, batch, x.device).square()
    ceiling = (lower * scale[:, None]).logsumexp(1)
    zero = [0.0] * batch
    _record(KernelRecord(id(_Rows(bank, x.device).storage), count, "ceiling", 0, index.cluster_bytes(), zero, zero))
    return ceiling, lower.amin(1)


def bank_tensor(bank, like: torch.Tensor):
    """A ``[M, C, H, W]`` tensor or ``HostedBank`` as is; a ``LatentBank`` adapted to ``like``'s device and
    latent size, in its storage dtype."""
    if isinstance(bank, LatentBank):
        return bank.adapted(device=like.device, size=tuple(like.shape[-2:]))
    return bank


def unsafe_denoiser(x: torch.Tensor, sigma, bank) -> torch.Tensor:
    """The bank's empirical denoiser ``sum_n softmax_n(-|x - x_n|^2 / (2 sigma^2)) x_n``, ``[B, C, H, W]``.

    Per image of ``x [B, C, H, W]`` independently; ``sigma`` a float or ``[B]``; ``bank`` a
    ``[M, C, H, W]`` tensor (any float dtype) or a ``LatentBank``; result in ``x.dtype``.
    """
    return kernel_pass(x, sigma, bank_tensor(bank, x)).mean.reshape(x.shape).to(x.dtype)


def log_density(log_weight_sum: torch.Tensor, bandwidth, count: int, width: int) -> torch.Tensor:
    """``log((1/M) sum_n N(x; x_n, h^2 I))`` from a squared-distance pass's ``log_weight_sum`` (or a bound on
    it) with bandwidth ``h``."""
    h = per_image(bandwidth, log_weight_sum.shape[0], log_weight_sum.device)
    return log_weight_sum - math.log(count) - 0.5 * width * torch.log(2 * math.pi * h.square())


def log_kernel_density(x: torch.Tensor, sigma, bank) -> torch.Tensor:
    """``log((1/M) sum_n N(x; x_n, sigma^2 I))`` per image of ``x [B, C, H, W]``: ``[B]`` float32.

    ``bank`` as for ``unsafe_denoiser``."""
    bank = bank_tensor(bank, x)
    stats = kernel_pass(x, sigma, bank)
    return log_density(stats.log_weight_sum, sigma, bank.shape[0], x[0].numel())
