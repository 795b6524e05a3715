"""The safe denoiser a generation uses: negation banks + a mode, applied to each denoised estimate.

The host calls ``SafeDenoiser.correct_x0`` (k-diffusion samplers: the CFG-combined denoised latent) or
``SafeDenoiser.correct_eps`` (DDIM / PLMS / UniPC: the CFG-combined noise prediction) once per sampler
step, and reads ``SafeDenoiser.report`` afterwards. Every image of a batch is corrected independently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from lib_safedenoise import ENGINE_VERSION
from .kernel import KernelRecord, derived, per_image, reading
from .latent_bank import LatentBank
from .modes import MODES, BankEffect, Step, resolve_mode
from .reference import filtered_reference
from .schedule import in_window, step_progress, validate_window


@dataclass
class StepRecord:
    """What happened to one image at one sampler step.

    ``beta`` (each mode's estimate, whether or not its gate let it act) and ``nearest_distance`` are summed /
    minimised over the negation banks (``None`` outside the window, where nothing is computed); ``banks``
    holds the per-bank values in the order given, each with ``bytes_read`` (what this step's correction of
    the whole batch read of that bank and its pruning index) and ``certified_error`` (this image's bound on
    the weight the bank's pruned kernels skipped, relative to what they kept: ``kernel.KernelPass``);
    ``reference`` the same for the reference bank, when one was read.
    """

    step: int
    fired: bool
    beta: float | None = None
    nearest_distance: float | None = None
    banks: list = field(default_factory=list)
    reference: dict | None = None


def bank_reads(records: list[KernelRecord], view: torch.Tensor, row: int, batch: int) -> dict:
    """The bytes a step's kernels read of one bank view (a one-off calibration included), and image
    ``row``'s largest certified error among the kernels queried with the step's batch."""
    mine = [r for r in records if r.bank == id(view)]
    return {"bytes_read": sum(r.bytes_read for r in mine),
            "certified_error": max((r.certified_error[row] for r in mine if len(r.certified_error) == batch),
                                   default=0.0)}


class CorrectionReport:
    """Per-image records of a generation, keyed by the host's global image index."""

    def __init__(self, mode_name: str, settings: dict):
        self.mode_name = mode_name
        self.settings = settings
        self.images: dict[int, list[StepRecord]] = {}

    def add(self, image_id: int, record: StepRecord) -> None:
        self.images.setdefault(int(image_id), []).append(record)

    def fired_steps(self) -> dict[int, list[int]]:
        """Sampler steps at which each image was corrected."""
        return {image: [r.step for r in records if r.fired] for image, records in self.images.items()}

    def to_dict(self) -> dict:
        """JSON-serialisable: mode, engine version, settings and every record."""
        return {"mode": self.mode_name, "engine_version": ENGINE_VERSION, "settings": self.settings,
                "images": {str(image): [vars(r) for r in records] for image, records in self.images.items()}}


class SafeDenoiser:
    """Corrects denoised estimates away from one or more negation banks.

    ``negations``: ``(bank, strength)`` pairs; each bank corrects with its own strength (0 disables it), in
    ``[0, MODES[mode].max_strength]`` (``modes.MAX_STRENGTH`` except in ``paper`` mode). Their corrections
    add up; the modes see the banks strongest first (``modes.unclaimed_posterior``).
    ``mode``: a name from ``modes.MODES`` or ``"default"``; ``mode_name`` holds the concrete name.
    ``bandwidth``, ``window`` (fractions of the sampling steps, see ``schedule``), ``threshold``: override
    the mode's defaults (``None`` keeps them; see ``modes.Mode`` and each mode's documentation).
    ``reference``: a bank of ordinary images (role ``"reference"``) for modes that use one. Its items that
    the union of the negation banks claims (``reference.claimed``: a leave-one-out kernel posterior at each
    clean item) are dropped once, here, so a reference made of the model's own ordinary samples, which holds
    some of the negated content, can be used as it is; ``reference_claimed`` counts them, ``reference``
    holds what is used (``None`` when every item was claimed: the mode's own background then serves).
    ``options``: the mode's further knobs (``MODES[name].options``), e.g. ``{"gain": 2.0}``.

    Banks are adapted to each call's device, dtype and latent size with ``LatentBank.adapted`` (cached
    until ``release``). Errors are ``ValueError`` with a message naming what is wrong.
    """

    def __init__(self, negations: Sequence[tuple[LatentBank, float]], *, mode: str = "default",
                 bandwidth: float | None = None, window: tuple[float, float] | None = None,
                 threshold: float | None = None, reference: LatentBank | None = None,
                 options: dict | None = None):
        self.mode_name = resolve_mode(mode)
        self.mode = MODES[self.mode_name]
        self.reference_claimed = 0
        self.version = ENGINE_VERSION
        self.settings = self.mode.settings(bandwidth=bandwidth, window=window, threshold=threshold,
                                           options=options)
        validate_window(self.settings.window)
        self.negations = [(bank, float(strength)) for bank, strength in negations]
        if not self.negations:
            raise ValueError("Safe Denoiser needs at least one negation bank")
        for bank, strength in self.negations:
            if not 0 <= strength <= self.mode.max_strength or not math.isfinite(strength):
                raise ValueError(f"bank {bank.name!r}: strength must lie in [0, {self.mode.max_strength:g}] "
                                 f"in mode {self.mode_name!r}, got {strength:g}")
            if bank.channel_normalized and not self.mode.accepts_channel_normalized:
                raise ValueError(f"bank {bank.name!r} holds channel-normalised latents (the released code's "
                                 f"cache format); only the reference modes accept it, not {self.mode_name!r}")
        if reference is not None:
            if self.mode.reference_bank == "unused":
                raise ValueError(f"mode {self.mode_name!r} does not use a reference bank "
                                 f"(given {reference.name!r})")
            if reference.channel_normalized:
                raise ValueError(f"reference bank {reference.name!r} holds channel-normalised latents, "
                                 f"which mode {self.mode_name!r} cannot use")
            # items of the reference that the negation banks claim would be safe estimates of the negated
            # content itself: dropped once, before sampling (``reference.filtered_reference``)
            reference, self.reference_claimed = filtered_reference(
                reference, [bank for bank, strength in self.negations if strength > 0],
                bandwidth=self.settings.bandwidth, prior_odds=float(self.settings.options.get("prior_odds", 1.0)))
        self.reference = reference
        self.report = CorrectionReport(self.mode_name, self.describe())
        self._memories = [{} for _ in self.negations]  # per negation bank: each mode's ``memory``

    def describe(self) -> dict:
        """The concrete mode, engine version and resolved settings (for infotext and reports)."""
        return {"mode": self.mode_name, "engine_version": self.version,
                "bandwidth": self.settings.bandwidth, "window": list(self.settings.window),
                "threshold": self.settings.threshold, "options": dict(self.settings.options),
                "banks": [{"name": bank.name, "strength": strength} for bank, strength in self.negations],
                "reference": None if self.reference is None else self.reference.name}

    def _view(self, bank: LatentBank, like: torch.Tensor, transform) -> torch.Tensor:
        if bank.channels != like.shape[1]:
            raise ValueError(f"bank {bank.name!r} has latents of shape {tuple(bank.latents.shape)} but the "
                             f"generation's latents have shape {tuple(like.shape)}: channel counts differ "
                             f"(a bank from another latent space?)")
        dtype = like.dtype if like.dtype in (torch.float16, torch.bfloat16, torch.float64) else None  # None: the bank's storage dtype
        view = bank.adapted(device=like.device, dtype=dtype, size=tuple(like.shape[-2:]))
        if transform is not None and not bank.channel_normalized:
            view = derived(view, ("transform", transform), lambda: transform(view))
        return view

    def _correct(self, x0_hat: torch.Tensor, x: torch.Tensor, sigma, step: int, total_steps: int,
                 image_ids) -> tuple[torch.Tensor, torch.Tensor | None]:
        if x0_hat.ndim != 4 or x.shape != x0_hat.shape:
            raise ValueError(f"x0_hat {tuple(x0_hat.shape)} and x {tuple(x.shape)} must both be [B, C, H, W] "
                             f"of the same shape")
        batch = x0_hat.shape[0]
        ids = list(range(batch)) if image_ids is None else [int(i) for i in image_ids]
        if len(ids) != batch:
            raise ValueError(f"image_ids has {len(ids)} entries for a batch of {batch}")
        if batch == 0:  # no image to correct (and nothing to record): the empty input itself
            return x0_hat, None
        sigmas = per_image(sigma, batch, x0_hat.device)
        for name, value in (("x0_hat", x0_hat), ("x", x), ("sigma", sigmas)):
            if not torch.isfinite(value).all():
                raise ValueError(f"Safe Denoiser: {name} contains NaN or Inf at step {step}; the sampler "
                                 f"diverged before the correction")
        if not in_window(step, total_steps, self.settings.window):
            for image in ids:
                self.report.add(image, StepRecord(step, False))
            return x0_hat, None

        views = [(self._view(bank, x0_hat, self.mode.bank_transform), strength)
                 for bank, strength in self.negations]
        reference = None if self.reference is None else self._view(self.reference, x0_hat, None)
        inputs = Step(x0_hat.float().flatten(1), x.float().flatten(1), sigmas, tuple(x0_hat.shape),
                      step_progress(step, total_steps), tuple(ids))
        effects: list[BankEffect | None] = [None] * len(views)
        with reading() as reads:
            # stronger banks first: where banks of one concept overlap, they claim the posterior (modes.unclaimed_posterior)
            for index in sorted(range(len(views)), key=lambda i: -views[i][1]):
                (view, strength), memory = views[index], self._memories[index]
                effects[index] = self.mode.correct(inputs, view, strength, self.settings, reference=reference,
                                                   memory=memory)
        fired = torch.stack([e.fired for e in effects]).any(0)
        per_bank = [(bank.name, e.fired.tolist(), e.beta.tolist(), e.nearest_distance.tolist())
                    for (bank, _), e in zip(self.negations, effects)]  # one device sync per bank, not per value
        for row, image in enumerate(ids):
            banks = [{"name": name, "fired": f[row], "beta": b[row], "nearest_distance": d[row],
                      **bank_reads(reads, view, row, batch)} for (name, f, b, d), (view, _) in zip(per_bank, views)]
            used = reference is not None and any(r.bank == id(reference) for r in reads)
            self.report.add(image, StepRecord(step, any(b["fired"] for b in banks), sum(b["beta"] for b in banks),
                                              min(b["nearest_distance"] for b in banks), banks,
                                              {"name": self.reference.name, **bank_reads(reads, reference, row, batch)}
                                              if used else None))
        if not fired.any():
            return x0_hat, fired
        corrected = (inputs.x0_hat + sum(e.delta for e in effects)).reshape(x0_hat.shape)
        if not torch.isfinite(corrected).all():
            raise ValueError(f"Safe Denoiser ({self.mode_name}): the correction is not finite at step {step}; "
                             f"lower the strength or the cap")
        return torch.where(fired[:, None, None, None], corrected.to(x0_hat.dtype), x0_hat), fired

    def correct_x0(self, x0_hat: torch.Tensor, x: torch.Tensor, sigma, step: int, total_steps: int,
                   image_ids=None) -> torch.Tensor:
        """The corrected denoised estimate, same shape, dtype and device as ``x0_hat``.

        ``x0_hat``: the CFG-combined denoised latents ``[B, C, H, W]``; ``x``: the sampler's noisy input
        (k-diffusion VE: ``x = x0 + sigma * eps``); ``sigma``: a float or ``[B]``; ``step`` in
        ``[0, total_steps)`` counts *sampler* steps (both evaluations of a second-order step share one);
        ``image_ids``: the images' global indices in the generation (default ``0..B-1``), which key the
        report. Outside the window, or where nothing fires, ``x0_hat`` itself is returned; images that do
        not fire keep their exact values. An empty batch (``B = 0``) is returned as it is.
        """
        return self._correct(x0_hat, x, sigma, step, total_steps, image_ids)[0]

    def correct_eps(self, eps: torch.Tensor, x: torch.Tensor, timestep, alphas_cumprod: torch.Tensor,
                    step: int, total_steps: int, image_ids=None) -> torch.Tensor:
        """Noise-prediction adapter (DDIM / PLMS / UniPC): ``eps`` and ``x`` are VP,
        ``x = sqrt(a) x0 + sqrt(1 - a) eps`` with ``a = alphas_cumprod[timestep]`` (``timestep`` an
        integer-valued float or ``[B]`` tensor). Converts to ``x0`` and to the VE pair
        ``(x / sqrt(a), sigma = sqrt((1 - a) / a))``, corrects, and converts back. Returns ``eps`` itself
        when nothing fires, and the exact rows of ``eps`` for images that do not fire. A ``timestep``
        outside ``[0, len(alphas_cumprod) - 1]`` is a ``ValueError``; an empty batch returns ``eps``.
        """
        batch = eps.shape[0]
        if batch == 0:
            return eps
        steps = per_image(timestep, batch, alphas_cumprod.device).round()
        if not (torch.isfinite(steps).all() and (steps >= 0).all() and (steps < len(alphas_cumprod)).all()):
            raise ValueError(f"timestep {steps.tolist()} is outside the schedule's 0..{len(alphas_cumprod) - 1}")
        index = steps.long()
        alpha_bar = alphas_cumprod.double()[index].to(eps.device).view(batch, 1, 1, 1)
        signal, noise = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        x0_hat = ((x.double() - noise * eps.double()) / signal).to(eps.dtype)
        x_ve = (x.double() / signal).to(eps.dtype)
        corrected, fired = self._correct(x0_hat, x_ve, (noise / signal).flatten(), step, total_steps, image_ids)
        if corrected is x0_hat:
            return eps
        new_eps = ((x.double() - signal * corrected.double()) / noise).to(eps.dtype)
        return torch.where(fired[:, None, None, None], new_eps, eps)

    def release(self) -> None:
        """Drop every adapted view of the banks (they leave the device); later calls re-adapt."""
        for bank, _ in self.negations:
            bank.release()
        if self.reference is not None:
            self.reference.release()
