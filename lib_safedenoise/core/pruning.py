"""Certified pruning of the kernel sums: which bank items can be skipped, and by how much that can err.

A Gaussian kernel sum ``S = sum_n exp(score_n)`` with ``score_n = -dist_n / (2 h^2)`` over a large bank is
dominated, in latent dimension, by a few items. Skipping item ``n`` is safe when an *upper* bound
``u_n >= score_n`` is far below the sum of the items kept: if ``K`` is the skipped set, ``T`` the kept one,

    rho = sum_{n in K} exp(u_n) / sum_{n in T} exp(score_n)   >=   S_K / S_T,

then the kept log-sum-exp is below the true one by ``log(1 + S_K / S_T) <= rho``, and the kept weighted
mean ``m_T`` differs from the full one ``m`` by ``S_K / (S_K + S_T) |m_K - m_T| <= rho max_{n in K}
|x_n - m_T| <= rho (max_{n in K} |x_n| + |m_T|)`` (the item norms are stored). Upper bounds on the score
are lower bounds on the squared distance, from two summaries kept with the bank (``PruningIndex``):

* **Pooled bound** (block means): for a block of ``s`` values, ``sum_i (a_i - b_i)^2 >= s (mean(a) -
  mean(b))^2`` (Jensen), so ``|q - x_n|^2 >= s |pool(q) - pool(x_n)|^2`` over 4x4 spatial blocks. Tight
  where latents are smooth within a block; at high noise the query's noise averages out in the pooled copy
  and the bound falls far below the true distance.
* **Cluster bound** (centroid and residual norm): ``|q - x_n| >= |q - c_j| - |x_n - c_j|`` for the
  centroid ``c_j`` of ``x_n``'s cluster. Tight where clusters are small against their separation; at high
  noise ``q - c_j`` is nearly orthogonal to ``x_n - c_j``, which no bound built without reading the item
  can see (Cauchy-Schwarz is then loose by the whole residual norm), so it certifies nothing either.

Where neither certifies a small kept set, the kernel runs the full pass and says so (``bound = "full"``);
it also does whenever pruning cannot pay (more than ``1 / PAY_SHARE`` of the bank kept), e.g. for the
released code's flat kernel, whose weights barely vary across the bank.

Floating point: bounds are computed in float32 from ``|a|^2 + |b|^2 - 2 a.b``, whose rounding error is a
small multiple of ``6e-8 (|a|^2 + |b|^2)``; every bound is lowered by ``FLOAT_SLACK`` times the squared
norms of the query and the item (the true squared norms bound the pooled ones), so a rounding error cannot
make an item look farther than it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .chunks import Widener, float_chunks

DEFAULT_TOLERANCE = 1e-4
"""Default bound on ``rho``, the skipped items' weight relative to the kept ones: the log-sum-exp of the
kernel is exact to ``1e-4`` nats, the kernel mean to ``1e-4`` times the largest skipped item's distance."""

FLOAT_SLACK = 1e-6
"""Every squared-distance bound is lowered by this fraction of the query's plus the item's squared norm:
about 16 float32 rounding steps, above the error of the products that form it."""

BLOCK = 4
"""Pooled blocks are ``BLOCK x BLOCK`` positions of one channel: the float32 pooled copy is 1/16 of the
values, 4/16 = 25% of a float32 bank's bytes, 12.5% of a float16 bank's."""

CLUSTER_SIZE = 32
"""Items per cluster on average: the centroids (in the bank's dtype) add 1/32 of the bank, so with the
pooled copy the index adds at most 12.5% + 3.1% + 16 bytes per item of a float16 bank, which leaves room
within 1.2 times the bank for the kernels' working memory (clusters of 16 took the index to 18.8%)."""

CLUSTER_BLOCK = 8
"""The clustering runs on ``CLUSTER_BLOCK x CLUSTER_BLOCK`` block means (1/64 of the values): it only
chooses which items share a centroid, which the bound holds for whatever the choice."""

CENTROID_SWEEPS = 8
"""The centroids' float32 sums are formed for 1/8 of the clusters per sweep over the bank: 1/128 of a float16
bank's bytes at a time instead of 1/16 (seven more reads of the bank while the index is built)."""

KMEANS_ROUNDS = 2
"""Lloyd rounds of the clustering (on the pooled copy): more rounds tighten the bounds, never loosen the
certificate (every bound holds for any centroid)."""

MIN_ITEMS = 50_000
"""Banks smaller than this are always read in full: below this size the failed attempts and the gathering
of survivors outweigh what pruning saves (``python -m lib_safedenoise.bench speed --scaling``;
README "Big banks")."""

SEEDS = 8
"""Per query, the items with the largest score bounds are scored exactly first; their log-sum-exp is a
lower bound on the kept sum, against which the rest is pruned."""

PAY_SHARE = 16
"""Pruning is used when it keeps at most ``1 / PAY_SHARE`` of the bank (a kept item is gathered, about
three reads of it on CPU); beyond that the full pass is as cheap, and the gathered rows would take more
than the 20% of memory an index may add."""


def poolable(shape: tuple, block: int) -> bool:
    """Whether latents of ``shape`` (``[..., H, W]``) split into ``block x block`` blocks."""
    return shape[-2] % block == 0 and shape[-1] % block == 0


def pooled(latents: torch.Tensor, block: int = BLOCK, out: torch.Tensor | None = None) -> torch.Tensor | None:
    """Float32 ``block x block`` block means of ``[N, C, H, W]`` latents, flattened: ``[N, D / block^2]``
    (written into ``out``, a contiguous tensor of that shape, when given: sweeps over a bank then allocate
    nothing per chunk); ``None`` when ``H`` or ``W`` is not a multiple of ``block``."""
    if not poolable(latents.shape, block):
        return None
    count, channels, height, width = latents.shape
    blocks = latents.float().reshape(count, channels, height // block, block, width // block, block)
    if out is None:
        return blocks.mean((3, 5)).flatten(1)
    torch.mean(blocks, (3, 5), out=out.view(count, channels, height // block, width // block))
    return out


@dataclass
class PruningIndex:
    """What a bank keeps to bound its items' distances without reading them (all on the compute device).

    ``sq_norms [M]``: the items' squared norms (float32); ``pooled [M, D/16]`` float32 block means (or
    ``None``) with ``pooled_sq`` their squared norms; ``centroids [K, D]`` in the bank's dtype (the bound uses
    exactly these stored values), ``centroid_sq [K]``; ``assignment [M]`` each item's cluster;
    ``residual [M]`` the float32 distance ``|x_n - c_j|`` to its centroid. ``failed`` maps a kernel kind
    (squared or not) and a kind of query (``kernel_pass``'s ``query``) to the smallest bandwidth at which
    pruning did not pay: wider kernels prune less, so passes of that kind at that bandwidth or wider go
    straight to the full pass (a choice of speed only, never of correctness; ``to`` starts it afresh for each
    generation, whose noise levels fall). Kinds of query are kept apart because where they lie differs: an
    average of reference items is about equally far from every cluster at any bandwidth, while the noisy
    latent of a sampling that heads for a banked item is certified once the noise falls.
    """

    sq_norms: torch.Tensor
    pooled: torch.Tensor | None
    pooled_sq: torch.Tensor | None
    centroids: torch.Tensor
    centroid_sq: torch.Tensor
    assignment: torch.Tensor
    residual: torch.Tensor
    failed: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.sq_norms.shape[0]

    def to(self, device) -> PruningIndex:
        """The index on ``device`` with nothing ``failed`` yet (tensors already there are shared)."""
        return PruningIndex(*(None if t is None else t.to(device) for t in (
            self.sq_norms, self.pooled, self.pooled_sq, self.centroids, self.centroid_sq, self.assignment,
            self.residual)))

    def nbytes(self) -> int:
        """Memory the index adds beside the bank."""
        tensors = (self.pooled, self.pooled_sq, self.centroids, self.centroid_sq, self.assignment, self.residual)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def cluster_bytes(self) -> int:
        """Bytes read by one cluster bound: the centroids and the per-item cluster data."""
        return (self.centroids.numel() * self.centroids.element_size()
                + self.count * (self.assignment.element_size() + 4 + 4))

    def pooled_bytes(self) -> int:
        """Bytes read by one pooled bound (0 without a pooled copy)."""
        return 0 if self.pooled is None else self.pooled.numel() * 4

    def cluster_lower_bound(self, queries: torch.Tensor, query_sq: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` lower bounds on ``|q_b - x_n|^2`` from ``|q - c_j| - |x_n - c_j|``."""
        rows = max(1, (4 << 20) // (4 * queries.shape[1]))  # widened chunks of centroids stay in cache
        sq = torch.cat([torch.addmm(norms[None], queries, part.T, alpha=-2) for (_, part), norms
                        in zip(float_chunks(self.centroids, rows), self.centroid_sq.split(rows))], 1)
        sq.add_(query_sq[:, None])
        sq.sub_(FLOAT_SLACK * (query_sq[:, None] + self.centroid_sq[None])).clamp_(min=0)
        to_centroid = sq.sqrt_()[:, self.assignment]  # [B, M]
        # the residual norm rounds like the distances: raise it by the slack on the item's scale
        residual = self.residual + math.sqrt(FLOAT_SLACK) * self.sq_norms.sqrt()
        return (to_centroid - residual[None]).clamp_(min=0).square_()

    def pooled_lower_bound(self, queries: torch.Tensor, query_sq: torch.Tensor, shape: tuple) -> torch.Tensor:
        """``[B, M]`` lower bounds on ``|q_b - x_n|^2`` from the block means (Jensen per block)."""
        pooled_queries = pooled(queries.reshape(queries.shape[0], *shape))
        sq = torch.addmm(self.pooled_sq[None], pooled_queries, self.pooled.T, alpha=-2)
        sq.add_(pooled_queries.square().sum(1, keepdim=True)).mul_(BLOCK * BLOCK)
        return sq.sub_(FLOAT_SLACK * (query_sq[:, None] + self.sq_norms[None])).clamp_(min=0)


def build_index(count: int, rows, shape: tuple, dtype: torch.dtype, device, chunk_rows: int) -> PruningIndex:
    """The index of a bank of ``count`` items of ``shape`` (``[C, H, W]``) stored in ``dtype``.

    ``rows(start, stop)`` returns items ``start:stop`` on ``device`` (the bank may live elsewhere). Three
    chunked passes over the bank: norms and pooled copy; centroids (the mean of each cluster's members);
    residual norms against the centroids as stored. The clustering runs on ``CLUSTER_BLOCK`` block means
    (or on the items themselves when they are too small to pool), from evenly spaced items, ``KMEANS_ROUNDS``
    rounds (a cluster merging two groups only loosens its members' bounds).
    """
    width = math.prod(shape)
    starts = range(0, count, chunk_rows)
    coarse = poolable(shape, CLUSTER_BLOCK)
    # filled in place: concatenating per-chunk pieces would hold every summary twice at the peak
    sq_norms = torch.empty(count, device=device)
    pooled_items = torch.empty(count, width // BLOCK ** 2, device=device) if poolable(shape, BLOCK) else None
    space = torch.empty(count, width // CLUSTER_BLOCK ** 2 if coarse else width, device=device)
    widen = Widener()
    for start in starts:
        chunk = widen(rows(start, start + chunk_rows))
        stop = start + chunk.shape[0]
        sq_norms[start:stop] = torch.linalg.vector_norm(chunk.flatten(1), dim=1).square()
        if pooled_items is not None:
            pooled(chunk, out=pooled_items[start:stop])
        if coarse:
            pooled(chunk, CLUSTER_BLOCK, out=space[start:stop])
        else:
            space[start:stop] = chunk.flatten(1)
    clusters = max(1, count // CLUSTER_SIZE)
    centres = space[torch.linspace(0, count - 1, clusters, device=space.device).round().long()].clone()
    assignment = torch.empty(count, dtype=torch.long, device=device)
    scores = torch.empty(min(count, 1024), clusters, device=device)  # reused: no heap left holding each part's
    for _ in range(KMEANS_ROUNDS + 1):
        centre_sq = centres.square().sum(1)[None]
        for start, part in zip(range(0, count, 1024), space.split(1024)):
            part_scores = torch.addmm(centre_sq, part, centres.T, alpha=-2, out=scores[:part.shape[0]])
            torch.argmin(part_scores, 1, out=assignment[start:start + part.shape[0]])
        sums = torch.zeros_like(centres).index_add_(0, assignment, space)
        sizes = torch.bincount(assignment, minlength=clusters).to(space.dtype)
        filled = sizes > 0
        centres[filled] = sums[filled] / sizes[filled, None]
    del space
    sizes = torch.bincount(assignment, minlength=clusters).clamp_(min=1).float()
    centroids = torch.empty(clusters, width, dtype=dtype, device=device)
    # float32 sums for a group of clusters at a time, one sweep per group, so they stay a small part of the bank
    group = max(1, clusters // CENTROID_SWEEPS)
    totals = torch.empty(min(group, clusters) + 1, width, device=device)  # the last row takes the other groups
    for first in range(0, clusters, group):
        last = min(clusters, first + group)
        totals.zero_()
        for start, members in zip(starts, assignment.split(chunk_rows)):
            inside = (members >= first) & (members < last)
            if bool(inside.any()):
                slots = torch.where(inside, members - first, totals.shape[0] - 1)
                totals.index_add_(0, slots, widen(rows(start, start + chunk_rows)).flatten(1))
        centroids[first:last] = totals[:last - first] / sizes[first:last, None]
    del totals
    centroid_sq = torch.cat([torch.linalg.vector_norm(part, dim=1).square()
                             for _, part in float_chunks(centroids, chunk_rows)])
    # each chunk's centroids as stored, gathered and widened into buffers (no float copy of all centroids)
    rows_at_most = min(chunk_rows, count)
    gathered = torch.empty(rows_at_most, width, dtype=dtype, device=device)
    offsets, residuals = torch.empty(rows_at_most, width, device=device), []
    for start, members in zip(starts, assignment.split(chunk_rows)):
        own = torch.index_select(centroids, 0, members, out=gathered[:len(members)])
        offset = offsets[:len(members)].copy_(own).sub_(widen(rows(start, start + chunk_rows)).flatten(1))
        residuals.append(torch.linalg.vector_norm(offset, dim=1))
    return PruningIndex(sq_norms, pooled_items,
                        None if pooled_items is None else torch.linalg.vector_norm(pooled_items, dim=1).square(),
                        centroids, centroid_sq, assignment, torch.cat(residuals))


def skippable(upper: torch.Tensor, floor: torch.Tensor, tolerance: float) -> torch.Tensor:
    """``[B, M]`` mask of items that may be skipped for each query: the largest set, taken from the smallest
    score bounds ``upper [B, M]`` up and never splitting equal bounds, whose bounds' log-sum-exp stays at
    most ``floor [B] + log(tolerance)``, ``floor`` a lower bound on the kept items' log-sum-exp."""
    ordered, _ = upper.sort(1)
    within = torch.logcumsumexp(ordered, 1) <= (floor + math.log(tolerance))[:, None]  # a prefix of each row
    # the smallest bound that cannot be skipped; items tied with it are kept too, so equal items share a fate
    first_kept = ordered.gather(1, within.sum(1, keepdim=True).clamp_(max=upper.shape[1] - 1))
    first_kept[within.all(1)] = math.inf
    return upper < first_kept
