"""Which items of a reference bank the negation banks claim, so that a reference nobody curated can be used.

The reference-bank modes (``posterior``, ``contrastive``) take the reference bank as a sample of the *safe*
data: its smoothed-kernel denoiser is the safe estimate ``E_s`` and its density the safe side of the
posterior odds. A reference made of the model's own ordinary samples (empty or generic prompts) holds some
of the negated concept itself (as often as the model draws it unprompted); each such item is a safe estimate
of the concept, next to the negation bank's items, which pulls the posterior of a nearby draw towards "safe"
and lets it through. ``claimed`` finds those items with the same kernel estimates the modes use, read at
the clean items themselves (noise level 0):

    log(pi_r / (1 - pi_r)) = log(prior_odds) + log p_u(r) - log p_s^{-r}(r),

    p_u(r)      = (1 / N)         sum_n        N(r; u_n, s^2 I)     (the union of the negation banks),
    p_s^{-r}(r) = (1 / (|S| - 1)) sum_{m in S, m != r} N(r; r_m, s^2 I)   (the rest of the reference S),

with ``s^2`` the reference's items' spread (``modes.item_spread_sq``, or the caller's fixed bandwidth
squared), the spread the posterior mode gives both densities; the Gaussians' normalisers cancel. The left-out
item ``r`` is what makes this a test of ``r``: with it, every item would have at least its own kernel at
distance 0 on the safe side. Items with ``pi_r > 1/2`` are claimed.

Then again with ``S`` the items not yet claimed: concept items in the reference support each other on the
safe side (a cluster of them makes ``p_s^{-r}`` large), and once the clear cases are dropped the borderline
ones lose that support. Rounds repeat until nothing new is claimed or ``rounds`` is reached; an item once
claimed stays claimed, and the safe side never includes a claimed item.

The union of the negation banks is one density (the ``N`` items of every bank pooled): a reference item is
claimed when it looks more like any negated content than like the ordinary rest.
"""

from __future__ import annotations

import math
import weakref
from typing import Sequence

import torch

from .chunks import Widener, float_chunks
from .kernel import CHUNK_BYTES
from .latent_bank import LatentBank, resize_latents
from .modes import item_spread_sq

CLAIM_ROUNDS = 3
"""Most rounds of ``claimed`` (the first, then re-judging with the claimed items dropped)."""


def _log_kernel_sums(queries: torch.Tensor, items: torch.Tensor, scale: float, *, leave_out_self: bool = False,
                     dropped: torch.Tensor | None = None) -> torch.Tensor:
    """``log sum_m exp(scale * |q_i - x_m|^2)`` per query row, float64 ``[Q]``, chunked over both sides.

    ``queries [Q, C, H, W]`` and ``items [M, C, H', W']`` in any float dtype; items are resized to the queries'
    latent size and both are widened to float32 a chunk at a time. ``leave_out_self``: the queries are the
    items themselves and the pair ``(i, i)`` is left out; ``dropped``: ``[M]`` bool, items left out of every
    sum. A row with nothing left sums to ``-inf``.
    """
    size = tuple(queries.shape[-2:])
    total = torch.full((queries.shape[0],), -math.inf, dtype=torch.float64)
    # rows per block on either side: a block of float32 rows and a block of float64 scores each within CHUNK_BYTES
    rows = max(64, min(CHUNK_BYTES // (4 * max(1, queries[0].numel())), math.isqrt(CHUNK_BYTES // 8)))
    widen_items = Widener()
    for first, block in float_chunks(queries.detach().cpu().flatten(1), rows):
        block_sq = torch.linalg.vector_norm(block, dim=1, keepdim=True).square()
        for start in range(0, items.shape[0], rows):  # resized chunk by chunk (a no-op at the same size)
            chunk = widen_items(resize_latents(items[start:start + rows].detach().cpu(), size).flatten(1))
            sq = torch.addmm(block_sq + torch.linalg.vector_norm(chunk, dim=1).square()[None], block, chunk.T,
                             alpha=-2).clamp_(min=0)
            scores = (scale * sq).double()
            if dropped is not None:
                scores[:, dropped[start:start + rows]] = -math.inf
            if leave_out_self:
                own = torch.arange(first, first + block.shape[0])
                inside = (own >= start) & (own < start + chunk.shape[0])
                scores[inside.nonzero().squeeze(1), own[inside] - start] = -math.inf
            total[first:first + rows] = torch.logaddexp(total[first:first + rows], torch.logsumexp(scores, dim=1))
    return total


def claimed(reference: torch.Tensor, negations: Sequence[torch.Tensor], *, spread_sq: float,
            prior_odds: float = 1.0, rounds: int = CLAIM_ROUNDS) -> torch.Tensor:
    """``[R]`` bool: the reference items the negation banks claim (see the module docstring).

    ``reference``: ``[R, C, H, W]`` latents; ``negations``: one or more ``[N_k, C, H', W']`` tensors of the
    same channel count (resized to the reference's latent size, cover then centre-crop, as banks are adapted);
    ``spread_sq``: the kernels' per-element variance ``s^2`` (> 0); ``prior_odds``: ``Z_u / Z_s`` (> 0);
    ``rounds`` >= 1. Distances in float32 on CPU (sums in float64), each chunk widened on its own, so no float
    copy of a bank is made: one chunked pass over each negation bank, and one over the reference per round.
    An item with no other unclaimed item left to weigh it against (a one-item reference, or the last one) is
    kept: without a safe side there is no odds.
    """
    if reference.ndim != 4 or reference.shape[0] == 0:
        raise ValueError(f"reference latents must be [R, C, H, W] with R >= 1, got {tuple(reference.shape)}")
    if not negations:
        raise ValueError("claimed needs at least one negation bank")
    for bank in negations:
        if bank.ndim != 4 or bank.shape[0] == 0 or bank.shape[1] != reference.shape[1]:
            raise ValueError(f"negation latents {tuple(bank.shape)} do not match the reference's "
                             f"{tuple(reference.shape)} (need [N, C, H, W] with the same channel count C)")
    if not (math.isfinite(spread_sq) and spread_sq > 0):
        raise ValueError(f"spread_sq must be a finite number > 0, got {spread_sq!r}")
    if not (math.isfinite(prior_odds) and prior_odds > 0):
        raise ValueError(f"prior_odds must be a finite number > 0, got {prior_odds!r}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    count = reference.shape[0]
    taken = torch.zeros(count, dtype=torch.bool)
    if count < 2:
        return taken
    scale = -0.5 / spread_sq
    log_u = torch.stack([_log_kernel_sums(reference, bank, scale) for bank in negations]).logsumexp(0) \
        - math.log(sum(bank.shape[0] for bank in negations))
    for _ in range(rounds):
        rest = ~taken
        others = int(rest.sum()) - 1  # |S| - 1: the rest of S for each item of S (claimed ones are not re-judged)
        if others < 1:
            break
        log_s = _log_kernel_sums(reference, reference, scale, leave_out_self=True, dropped=taken) - math.log(others)
        now = rest & (math.log(prior_odds) + log_u - log_s > 0)
        if not now.any():
            break
        taken |= now
    return taken


_SAME = object()  # cache marker: nothing claimed, the reference itself
CONTENT_CACHE = 8
"""Claim masks kept for banks known by the hash of their data (the oldest is dropped first)."""
_by_content: dict[tuple, torch.Tensor] = {}
_filtered: "weakref.WeakKeyDictionary[LatentBank, tuple]" = weakref.WeakKeyDictionary()


def filtered_reference(reference: LatentBank, negations: Sequence[LatentBank], *, bandwidth: float | None,
                       prior_odds: float) -> tuple[LatentBank | None, int]:
    """``reference`` without the items ``negations`` claim (``claimed``), and how many were dropped.

    ``bandwidth``: the mode's fixed items' spread (``s``), or ``None`` for the reference's own
    (``modes.item_spread_sq``). Returns ``reference`` itself when nothing is claimed, ``None`` when every item
    is (the reference is then the negated content itself, with nothing safe left to contrast against), else
    a new bank of the kept items with the same name, space and metadata plus ``"claimed"``, the count dropped.
    Negation banks of another channel count are left out of the union (the engine refuses them at the first
    step anyway). The result is cached per reference bank (the last set of negation banks and settings it was
    filtered for) and, for banks read from files (``metadata["hash_sha256"]``, the hash of their data), per
    content (``CONTENT_CACHE`` entries): the WebUI loads banks afresh for each generation, and a combination
    already filtered is not filtered again.
    """
    usable = [bank for bank in negations if bank.channels == reference.channels and not bank.channel_normalized]
    if not usable:
        return reference, 0
    key = (reference.version, bandwidth, prior_odds, tuple((bank.version, bank.count) for bank in usable))
    cached = _filtered.get(reference)
    if cached is None or cached[0] != key or not all(ref() is bank for ref, bank in zip(cached[1], usable)):
        banks = (reference, *usable)  # the hash is of the data as read: only for banks not edited since
        hashes = [bank.metadata.get("hash_sha256") if bank.version == 0 else None for bank in banks]
        content = (tuple(hashes), tuple(bank.latents.shape for bank in banks), bandwidth, prior_odds) \
            if all(hashes) else None
        mask = _by_content.get(content) if content is not None else None
        if mask is None:
            spread = bandwidth ** 2 if bandwidth is not None else item_spread_sq(reference.latents)
            # a one-item (or all-duplicate) reference has no spread: nothing to weigh
            mask = torch.zeros(reference.count, dtype=torch.bool) if spread <= 0 else claimed(
                reference.latents, [bank.latents for bank in usable], spread_sq=spread, prior_odds=prior_odds)
            if content is not None:
                _by_content[content] = mask
                while len(_by_content) > CONTENT_CACHE:
                    _by_content.pop(next(iter(_by_content)))
        kept, dropped = _SAME, int(mask.sum())
        if dropped == reference.count:
            kept = None
        elif dropped:
            kept = LatentBank(reference.name, reference.latents[~mask], role=reference.role,
                              latent_space=reference.latent_space, short_hash=reference.short_hash,
                              metadata={**reference.metadata, "claimed": dropped})
        # the cache's value must not hold ``reference`` itself (it would keep its own weak key alive)
        cached = _filtered[reference] = (key, tuple(weakref.ref(bank) for bank in usable), kept, dropped)
    kept, dropped = cached[2], cached[3]
    return (reference if kept is _SAME else kept), dropped
