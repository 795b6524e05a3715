"""Correction modes: how one negation bank turns the model's denoised estimate into a safer one.

Notation (k-diffusion's VE convention): the sampler holds ``x = x0 + sigma * eps``; the model's
CFG-combined denoised estimate is ``x0_hat ~ E_data[x0 | x]``. Theorem 3.2 of Kim et al. writes the
denoiser of the data restricted to the safe part as

    E_safe = E_data + beta* (E_data - E_unsafe),   beta* = Z_u p_u(x) / (Z_s p_s(x)),

with ``p_u``/``p_s`` the unsafe/safe data densities noised to level sigma, and ``beta*`` the posterior
odds that ``x`` came from the unsafe part. With several negation banks ``U_k`` (disjoint unsafe parts)
the same algebra gives ``E_safe = E_data + sum_k beta*_k (E_data - E_k)``: modes act per bank and the
engine adds their corrections.

VP samplers (DDPM/DDIM, ``x_vp = sqrt(a) x0 + sqrt(1 - a) eps`` with ``a = alpha_bar``) map to this
convention by ``x = x_vp / sqrt(a)``, ``sigma = sqrt((1 - a) / a)``, i.e. ``a = 1 / (1 + sigma^2)`` and
``x_vp = x / sqrt(1 + sigma^2)``; ``SafeDenoiser.correct_eps`` does the conversion.

Modes (``MODES``; the alias ``"default"`` resolves to ``DEFAULT_MODE``):

``contrastive`` (default)
    ``beta*`` estimated as a likelihood ratio: the negation bank's smoothed kernel density against a
    safe density, from a reference bank of ordinary images when one is given, else from a Gaussian
    background with the negation bank's per-channel mean and variance. Then Theorem 3.2 with the bank's
    smoothed-kernel denoiser. See ``contrastive_correct``. Why: the paper's ``eta * p_u`` is a raw
    density, which for SD latents spans hundreds of orders of magnitude with sigma, so no single ``eta``
    fits a run; the released code replaces it by a constant. A likelihood ratio is the quantity Theorem
    3.2 asks for, scale-free, near 0 far from the bank and large near it. On the closed-form mixtures of
    ``tests/test_gaussian_mixture.py`` (25% of the data unsafe) it leaves 2-3.5% unsafe samples while
    keeping every safe mode's share within 0.03 of its true 1/6 (64-D, with or without a reference bank).
``paper``
    Theorem 3.2 as the paper's practical algorithm states it: kernel at the noisy ``x`` with bandwidth
    sigma, ``beta = eta * (1/M) sum_n N(x; x_n, sigma^2 I)``, optional density gate. See ``paper_correct``.
``reference``, ``reference-memorization``, ``reference-copro``
    The authors' released code (MingyuKim87/Safe_Denoiser), with its per-task settings for nudity/COCO,
    memorisation and CoPro. See ``reference_correct``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .kernel import CHUNK_BYTES, KernelPass, derived, item_sq_norms, kernel_pass, log_density


@dataclass
class BankEffect:
    """One bank's correction of a batch: ``delta [B, D]`` (added to ``x0_hat``), and per image whether it
    fired, its ``beta`` (the mode's estimate, reported whether or not the gate let it act; see each mode
    for its meaning) and the distance from the kernel's query to the nearest bank item."""

    delta: torch.Tensor
    fired: torch.Tensor
    beta: torch.Tensor
    nearest_distance: torch.Tensor


@dataclass
class Step:
    """The inputs of one correction, float32: ``x0_hat``, ``x`` as ``[B, D]``; ``sigma`` as ``[B]``."""

    x0_hat: torch.Tensor
    x: torch.Tensor
    sigma: torch.Tensor
    shape: tuple
    scratch: dict = field(default_factory=dict)  # per-call values shared by banks (e.g. the safe density)


@dataclass(frozen=True)
class Settings:
    """A mode's resolved parameters (defaults overridden by the caller)."""

    bandwidth: float | None
    window: tuple[float, float]
    threshold: float | None
    options: dict


@dataclass(frozen=True)
class Mode:
    """A correction mode and its documented parameters.

    ``bandwidth``/``threshold``/``window`` are the defaults of the three common knobs (``None`` where the
    mode derives the value itself; the window is in fractions of the sampling steps, see ``schedule``).
    ``options`` holds the other knobs with their defaults and ``option_docs`` their meaning.
    ``reference_bank`` is ``"unused"`` or ``"optional"``; ``accepts_channel_normalized`` tells whether a
    bank cached channel-normalised (``LatentBank.channel_normalized``) may be used; ``bank_transform``
    is applied (once per adapted view) to banks not already in the form the mode's kernel expects.
    """

    name: str
    summary: str
    correct: Callable[..., BankEffect]
    window: tuple[float, float]
    bandwidth: float | None = None
    threshold: float | None = None
    bandwidth_doc: str = ""
    threshold_doc: str = ""
    options: dict = field(default_factory=dict)
    option_docs: dict = field(default_factory=dict)
    reference_bank: str = "unused"
    accepts_channel_normalized: bool = False
    bank_transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def settings(self, *, bandwidth=None, window=None, threshold=None, options=None) -> Settings:
        unknown = set(options or {}) - set(self.options)
        if unknown:
            raise ValueError(f"mode {self.name!r} has no option(s) {sorted(unknown)}; "
                             f"its options are {sorted(self.options)}")
        return Settings(self.bandwidth if bandwidth is None else float(bandwidth),
                        self.window if window is None else tuple(window),
                        self.threshold if threshold is None else float(threshold),
                        {**self.options, **(options or {})})


# ---- statistics of a bank ------------------------------------------------------------------------------

def item_spread_sq(view: torch.Tensor, sample: int = 64) -> float:
    """Per-element variance ``s^2`` of the bank's items around their own location.

    Estimated as the median, over up to ``sample`` evenly spaced items, of the squared distance to the
    nearest other item divided by ``2 D`` (two independent draws from ``N(mu, s^2 I)`` lie ``2 s^2 D``
    apart). It turns the delta-mixture into a smoothed kernel density ``N(x_n, s^2 I)`` that generalises
    beyond a small bank. One chunked pass over the bank, no copy of it. A single item has no spread: 0.
    """
    count = view.shape[0]
    if count < 2:
        return 0.0
    picks = torch.linspace(0, count - 1, min(sample, count), device=view.device).round().long().unique()
    items = view.reshape(count, -1)
    queries = items[picks].float()
    query_sq, norms = queries.square().sum(1, keepdim=True), item_sq_norms(view)
    nearest = torch.full((len(picks),), math.inf, device=view.device)
    rows = max(1, CHUNK_BYTES // (4 * items.shape[1]))
    for start in range(0, count, rows):
        sq = torch.addmm(query_sq + norms[start:start + rows], queries, items[start:start + rows].float().T,
                         alpha=-2).clamp_(min=0)
        own = (picks >= start) & (picks < start + rows)
        sq[own.nonzero().squeeze(1), picks[own] - start] = math.inf
        nearest = torch.minimum(nearest, sq.amin(1))
    return float(nearest.median()) / (2 * items.shape[1])


def channel_moments(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance of a bank, pooled over items and positions: ``[C]`` each."""
    flat = view.float().transpose(0, 1).reshape(view.shape[1], -1)
    return flat.mean(1), flat.var(1, unbiased=False)


def channel_normalized(latents: torch.Tensor) -> torch.Tensor:
    """Every spatial position scaled to a unit channel vector (the released code's ``project()``)."""
    return latents / latents.float().norm(dim=1, keepdim=True).to(latents.dtype)


# ---- paper ---------------------------------------------------------------------------------------------

def paper_correct(step: Step, bank: torch.Tensor, strength: float, settings: Settings) -> BankEffect:
    """Theorem 3.2 with the paper's practical estimates (Eqs. 6-7 of the paper).

    Kernel at the noisy ``x`` with the schedule's bandwidth sigma (or the fixed ``bandwidth`` if given):
    ``E_u = sum_n softmax_n(-|x - x_n|^2 / (2 sigma^2)) x_n`` and the density
    ``p = (1/M) sum_n N(x; x_n, sigma^2 I)``; ``beta = eta * p`` with ``eta`` the bank strength, computed in
    the log domain. The gate (paper's ``beta_t``) is on ``log p``: with a ``threshold`` the correction
    fires only where ``log p >= threshold`` (and ``beta`` is not 0 after underflow). Result ``x0_hat + beta (x0_hat - E_u)``; reported ``beta`` is
    that ``eta * p``. For SD latents ``p`` spans hundreds of orders of magnitude, so ``eta`` is
    impractical to tune there; this mode is exact for the theory and meant for study and tests.
    """
    bandwidth = step.sigma if settings.bandwidth is None else settings.bandwidth
    stats = kernel_pass(step.x.reshape(step.shape), bandwidth, bank)
    log_p = log_density(stats, bandwidth, bank.shape[0], step.x.shape[1])
    beta = torch.exp(log_p + math.log(strength)) if strength > 0 else torch.zeros_like(log_p)
    fired = beta > 0  # not when eta * p underflowed: nothing to apply
    if settings.threshold is not None:
        fired &= log_p >= settings.threshold
    applied = torch.where(fired, beta, torch.zeros_like(beta))
    return BankEffect(applied[:, None] * (step.x0_hat - stats.mean), fired, beta, stats.min_sq_distance.sqrt())


# ---- reference (released code) -------------------------------------------------------------------------

RELEASED_EPSILON = 1e-8
SD1_BETAS = (0.00085, 0.012)  # SD-v1 "scaled_linear" DDPM schedule, 1000 steps


def sd1_alpha_bar(timestep: int) -> float:
    """``alpha_bar_t`` of SD-v1's DDPM schedule (betas from 0.00085 to 0.012, scaled linear, T = 1000)."""
    betas = torch.linspace(SD1_BETAS[0] ** 0.5, SD1_BETAS[1] ** 0.5, 1000, dtype=torch.float64).square()
    return float(torch.cumprod(1 - betas, 0)[timestep])


def released_weight_sum(queries: torch.Tensor, bank: torch.Tensor, bandwidth: float) -> KernelPass:
    """The released kernel: ``w_n = exp(-|q - x_n| / (2 h^2))`` with the distance *not* squared."""
    return kernel_pass(queries, bandwidth, bank, squared=False)


def released_threshold(noisy: torch.Tensor, bank: torch.Tensor, bandwidth: float, quantile: float = 0.0) -> float:
    """The released gate threshold: the ``quantile`` (default 0: the minimum) over noisy bank items of
    ``sum_n exp(-|x~_i - x_n| / (2 h^2)) + 1e-8``."""
    sums = [released_weight_sum(noisy[i:i + 64], bank, bandwidth).log_weight_sum.double().exp()
            for i in range(0, noisy.shape[0], 64)]
    return float(torch.quantile(torch.cat(sums) + RELEASED_EPSILON, quantile))


def released_calibration_noise(bank: torch.Tensor, seed: int = 42) -> torch.Tensor:
    """The bank noised to DDPM timestep 1 of SD-v1 (the last of 50 "leading" steps), as the released
    code does before calibrating: ``sqrt(a_1) x + sqrt(1 - a_1) eps``. It draws ``eps`` from a CUDA
    generator seeded 42; we use a CPU generator seeded 42, so the noise differs. The threshold is a
    minimum over items at noise level 0.041, which the particular draw barely moves."""
    alpha_bar = sd1_alpha_bar(1)
    generator = torch.Generator().manual_seed(seed)
    eps = torch.randn(bank.shape, generator=generator).to(bank.device)
    return alpha_bar ** 0.5 * bank.float() + (1 - alpha_bar) ** 0.5 * eps


def reference_correct(step: Step, bank: torch.Tensor, strength: float, settings: Settings) -> BankEffect:
    """The released code's correction (``kernel_fast`` in ``repellency_methods_threshold.py``).

    The kernel is evaluated at ``x0_hat`` (raw, not normalised) against the channel-normalised bank (the
    engine normalises a bank not stored so, per spatial position across channels) with the *unsquared*
    distance and the fixed ``bandwidth``: ``w_n = exp(-|x0_hat - x_n| / (2 h^2))``,
    ``E_u = sum_n w_n x_n / (sum_n w_n + 1e-8)``, and the result is ``x0_hat - scale * strength * E_u``
    wherever the gate ``sum_n w_n + 1e-8 > threshold - margin`` opens. Reported ``beta`` is that gated
    quantity ``sum_n w_n + 1e-8``. With no ``threshold`` the code's calibration runs
    (``released_threshold`` on ``released_calibration_noise``), once per adapted bank.

    Batches: the released code reads the gate with ``.item()``, which fails for more than one image; we
    gate and correct every image on its own, exactly as running it with batch 1 per image.

    Sampler: the released SD-v1 loop re-noises the corrected ``x0`` with fresh noise and takes a DDPM
    step with the *old* noise prediction, which over-noises corrected steps (a DDPM artefact). Here the
    corrected ``x0`` simply replaces the model's denoised output and any k-diffusion sampler steps from
    it (for Euler: ``d = (x - x0_safe) / sigma``), which is what the re-noising approximates without its
    extra noise. The window ``t in [780, 1000]`` of 50 DDPM steps is the first 11 steps: ``(0, 0.22)``.
    """
    options = settings.options
    if settings.threshold is None:
        threshold = derived(bank, ("released_threshold", settings.bandwidth), lambda: released_threshold(
            released_calibration_noise(bank), bank, settings.bandwidth))
    else:
        threshold = settings.threshold
    stats = released_weight_sum(step.x0_hat.reshape(step.shape), bank, settings.bandwidth)
    weight_sum = stats.log_weight_sum.exp()
    denominator = weight_sum + RELEASED_EPSILON
    fired = (denominator > threshold - options["margin"]) & (strength > 0)
    unsafe = stats.mean * (weight_sum / denominator)[:, None]
    delta = torch.where(fired[:, None], -options["scale"] * strength * unsafe, torch.zeros_like(unsafe))
    return BankEffect(delta, fired, denominator, stats.min_sq_distance.sqrt())


# ---- contrastive ---------------------------------------------------------------------------------------

def gaussian_log_density(x: torch.Tensor, shape: tuple, mean: torch.Tensor, var: torch.Tensor,
                         sigma: torch.Tensor) -> torch.Tensor:
    """``log N(x; mean_c, (var_c + sigma^2) I)`` with per-channel ``mean``/``var``, per image: ``[B]``."""
    channels = shape[1]
    x = x.reshape(x.shape[0], channels, -1)
    total_var = var[None, :] + sigma[:, None].square()  # [B, C]
    per_channel = ((x - mean[None, :, None]).square().sum(2) / total_var
                   + x.shape[2] * torch.log(2 * math.pi * total_var))
    return -0.5 * per_channel.sum(1)


def smoothed_kernel(step: Step, bank: torch.Tensor, spread_sq: float):
    """Log density and denoiser of the smoothed kernel density ``(1/M) sum_n N(x_n, s^2 I)`` noised to
    sigma: bandwidth ``h^2 = sigma^2 + s^2``; the denoiser of each component is
    ``x_n + (s^2 / h^2)(x - x_n)`` (the Gaussian posterior mean), mixed with the kernel weights."""
    h_sq = step.sigma.square() + spread_sq
    stats = kernel_pass(step.x.reshape(step.shape), h_sq.sqrt(), bank)
    log_p = log_density(stats, h_sq.sqrt(), bank.shape[0], step.x.shape[1])
    pull = (spread_sq / h_sq)[:, None]
    return log_p, (1 - pull) * stats.mean + pull * step.x, stats


def contrastive_correct(step: Step, bank: torch.Tensor, strength: float, settings: Settings,
                        reference: torch.Tensor | None = None) -> BankEffect:
    """Theorem 3.2 with the posterior odds estimated as a likelihood ratio.

    Unsafe density: the negation bank's smoothed kernel density at the noisy ``x``, bandwidth
    ``sqrt(sigma^2 + s^2)`` with ``s`` the items' spread (``bandwidth`` if given, else estimated from the
    bank by ``item_spread_sq``). Safe density: the reference bank's smoothed kernel density at the same
    ``x`` when a reference bank is given (the same estimator on both sides, so its biases cancel);
    otherwise a Gaussian background ``N(mu_c, (v_c + sigma^2) I)`` with the negation bank's per-channel
    mean and variance (no extra input needed, works in any latent space; coarser, as the safe data are
    modelled by one broad Gaussian). Then

        log beta* = log(prior_odds) + (log p_u - log p_s) / temperature,
        beta = min(strength * beta*, cap),   result x0_hat + beta (x0_hat - E_u)   where beta >= threshold.

    ``E_u`` is the smoothed kernel's denoiser. Options: ``prior_odds`` (``Z_u / Z_s``), ``temperature``
    (> 1 damps over-confident log ratios in high dimension), ``cap`` (largest ``beta``: the exact
    ``beta*`` grows without bound inside the unsafe region and ``E_safe = (E_data - pi E_u)/(1 - pi)``
    amplifies errors there). ``threshold`` is the smallest ``beta`` that acts (below it nothing fires).
    """
    options = settings.options
    spread = settings.bandwidth ** 2 if settings.bandwidth is not None else derived(
        bank, ("spread",), lambda: item_spread_sq(bank))
    log_u, unsafe, stats = smoothed_kernel(step, bank, spread)
    if reference is not None:  # one safe density for every negation bank of this step
        if "log_safe" not in step.scratch:
            ref_spread = settings.bandwidth ** 2 if settings.bandwidth is not None else derived(
                reference, ("spread",), lambda: item_spread_sq(reference))
            step.scratch["log_safe"] = smoothed_kernel(step, reference, ref_spread)[0]
        log_safe = step.scratch["log_safe"]
    else:
        mean, var = derived(bank, ("moments",), lambda: channel_moments(bank))
        log_safe = gaussian_log_density(step.x, step.shape, mean, var, step.sigma)
    log_odds = math.log(options["prior_odds"]) + (log_u - log_safe) / options["temperature"]
    if strength > 0:
        beta = torch.exp(torch.clamp(log_odds + math.log(strength), max=math.log(options["cap"])))
    else:
        beta = torch.zeros_like(log_odds)
    fired = (beta >= (settings.threshold or 0.0)) & (beta > 0)
    applied = torch.where(fired, beta, torch.zeros_like(beta))
    return BankEffect(applied[:, None] * (step.x0_hat - unsafe), fired, beta, stats.min_sq_distance.sqrt())


# ---- posterior (default) -------------------------------------------------------------------------------

def gaussian_denoiser(x: torch.Tensor, shape: tuple, mean: torch.Tensor, var: torch.Tensor,
                      sigma: torch.Tensor) -> torch.Tensor:
    """Denoiser of the Gaussian ``N(mean_c, var_c I)`` noised to sigma (its posterior mean), ``[B, D]``:
    ``mean_c + var_c / (var_c + sigma^2) (x - mean_c)``."""
    channels = shape[1]
    x = x.reshape(x.shape[0], channels, -1)
    shrink = (var[None, :] / (var[None, :] + sigma[:, None].square()))[:, :, None]
    return (mean[None, :, None] + shrink * (x - mean[None, :, None])).reshape(x.shape[0], -1)


def posterior_correct(step: Step, bank: torch.Tensor, strength: float, settings: Settings,
                      reference: torch.Tensor | None = None) -> BankEffect:
    """Swap the unsafe part of the denoiser for a safe estimate, weighted by the posterior of unsafe.

    The data denoiser is the posterior mixture of its two parts, ``E_data = pi E_u + (1 - pi) E_s`` with
    ``pi = beta* / (1 + beta*)`` the posterior probability of the unsafe part (Theorem 3.2 solves this for
    ``E_s``). Solving it is ill-conditioned where ``pi -> 1``: when a prompt asks for the negated concept
    itself, the conditional data are all unsafe, ``E_data ~ E_u`` and ``E_data + beta* (E_data - E_u)``
    pushes along a vanishing direction (at low noise it only moves away from the nearest bank item,
    giving new instances of the concept). This mode instead replaces the unsafe component by a safe
    kernel estimate ``E_s^ref``:

        x0_safe = x0_hat + gain * strength * pi * (E_s^ref - E_u)

    With ``gain = 1`` this is exactly ``(1 - pi) E_s + pi E_s^ref``: the true safe denoiser where the
    posterior says safe, the reference estimate where it says unsafe. ``gain > 1`` over-corrects, which
    a conditional model needs since it pulls back towards the concept at every later step.

    ``E_u``: the negation bank's smoothed-kernel denoiser at ``x`` (``smoothed_kernel``; items' spread
    ``bandwidth`` or estimated). ``E_s^ref``: the reference bank's smoothed-kernel denoiser when one is
    given, else the denoiser of a Gaussian background with the negation bank's per-channel moments
    (coarse: it knows nothing of what else exists, so it negates weakly; give a reference bank).

    ``pi`` is judged on the model's prediction ``x0_hat`` rather than on the noisy ``x``: a conditional
    model keeps predicting the concept while the noisy ``x`` drifts between the two parts, and a posterior
    read at ``x`` then lets it return. ``x0_hat`` is uncertain by about the posterior spread of a Gaussian
    data model, ``tau^2 = v sigma^2 / (v + sigma^2)`` (``v``: the bank's mean per-element variance times
    ``prediction_spread``), so both densities are the smoothed kernels (or the Gaussian background)
    noised to ``tau`` at ``x0_hat``:
    ``log(pi / (1 - pi)) = log(prior_odds) + (log p_u - log p_s) / temperature``. Without ``tau`` the
    blurry early predictions of thin classes look like fat ones (collateral damage); a larger
    ``prediction_spread`` protects other classes, a smaller one catches specific images and rare
    unconditional draws earlier (see the efficacy benchmark). Reported ``beta`` is ``pi``; the
    correction fires where ``pi >= threshold``.
    """
    options = settings.options
    spread = settings.bandwidth ** 2 if settings.bandwidth is not None else derived(
        bank, ("spread",), lambda: item_spread_sq(bank))
    _, unsafe, stats = smoothed_kernel(step, bank, spread)
    mean, var = derived(bank, ("moments",), lambda: channel_moments(bank))
    data_var = float(var.mean()) * options["prediction_spread"]
    tau = (data_var * step.sigma.square() / (data_var + step.sigma.square())).sqrt()
    prediction = Step(step.x0_hat, step.x0_hat, tau, step.shape)
    log_u = smoothed_kernel(prediction, bank, spread)[0]
    if reference is not None:
        ref_spread = settings.bandwidth ** 2 if settings.bandwidth is not None else derived(
            reference, ("spread",), lambda: item_spread_sq(reference))
        if "safe_denoiser" not in step.scratch:  # one per step whatever the number of negation banks
            step.scratch["safe_denoiser"] = smoothed_kernel(step, reference, ref_spread)[1]
        safe = step.scratch["safe_denoiser"]
        log_s = smoothed_kernel(prediction, reference, ref_spread)[0]
    else:
        safe = gaussian_denoiser(step.x, step.shape, mean, var, step.sigma)
        log_s = gaussian_log_density(step.x0_hat, step.shape, mean, var, tau)
    pi = torch.sigmoid(math.log(options["prior_odds"]) + (log_u - log_s) / options["temperature"])
    fired = (pi >= (settings.threshold or 0.0)) & (pi > 0) & (strength > 0)
    weight = torch.where(fired, options["gain"] * strength * pi, torch.zeros_like(pi))
    return BankEffect(weight[:, None] * (safe - unsafe), fired, pi, stats.min_sq_distance.sqrt())


# ---- registry ------------------------------------------------------------------------------------------

_REFERENCE_DOCS = dict(
    bandwidth_doc="fixed kernel bandwidth sigma of the released code (not the schedule's sigma)",
    threshold_doc="gate threshold on sum_n w_n + 1e-8 before the margin; None: calibrated as the code does",
    option_docs={"scale": "released config key `scale`: the correction is x0_hat - scale * strength * E_u",
                 "margin": "the gate opens when sum_n w_n + 1e-8 > threshold - margin"},
    accepts_channel_normalized=True,
    bank_transform=channel_normalized,
)

MODES: dict[str, Mode] = {mode.name: mode for mode in (
    Mode("posterior", "the unsafe part of the denoiser swapped for a reference-bank (or Gaussian "
         "background) estimate, weighted by the posterior of unsafe read at the prediction",
         posterior_correct, window=(0.0, 1.0), threshold=1e-3,
         bandwidth_doc="items' spread s (per-element std) of the smoothed kernels; None: estimated from "
                       "each bank's nearest-neighbour distances",
         threshold_doc="smallest posterior probability of unsafe that acts",
         options={"gain": 5.0, "prior_odds": 1.0, "temperature": 1.0, "prediction_spread": 1.0},
         option_docs={"gain": "multiplies the swap pi (E_s - E_u); 1 = the exact mixture identity",
                      "prior_odds": "Z_u / Z_s, prior odds of the unsafe part",
                      "temperature": "divides the log likelihood ratio (1 = exact)",
                      "prediction_spread": "scales the data variance v in the prediction's uncertainty "
                                           "tau^2 = v sigma^2 / (v + sigma^2)"},
         reference_bank="optional"),
    Mode("contrastive", "posterior odds of Theorem 3.2 as a likelihood ratio against a reference bank "
         "or a Gaussian background", contrastive_correct, window=(0.0, 0.5), threshold=1e-3,
         bandwidth_doc="items' spread s (per-element std) of the smoothed kernel; None: estimated from "
                       "each bank's nearest-neighbour distances",
         threshold_doc="smallest beta that acts",
         options={"prior_odds": 1.0, "temperature": 1.0, "cap": 4.0},
         option_docs={"prior_odds": "Z_u / Z_s, prior odds of the unsafe part",
                      "temperature": "divides the log likelihood ratio (1 = exact)",
                      "cap": "largest beta applied"},
         reference_bank="optional"),
    Mode("paper", "Theorem 3.2 with the paper's kernel density at the noisy latent",
         paper_correct, window=(0.0, 0.22),
         bandwidth_doc="None: the schedule's sigma (the paper); a number fixes it",
         threshold_doc="gate on log of the kernel density (nats); None: no gate"),
    Mode("reference", "the released code, nudity/COCO settings (scale 0.33, sigma 3.15, margin 1.6, "
         "calibrated gate)", reference_correct, window=(0.0, 0.22), bandwidth=3.15,
         options={"scale": 0.33, "margin": 1.6}, **_REFERENCE_DOCS),
    Mode("reference-memorization", "the released code, memorisation settings (scale 0.69, sigma 13.15, "
         "always on, first 12 of 50 steps)", reference_correct, window=(0.0, 0.23), bandwidth=13.15,
         threshold=1e-9, options={"scale": 0.69, "margin": 0.0}, **_REFERENCE_DOCS),
    Mode("reference-copro", "the released code, CoPro settings (scale 0.03, sigma 1.0, no gate, "
         "t in [800, 1000])", reference_correct, window=(0.0, 0.19), bandwidth=1.0,
         threshold=0.0, options={"scale": 0.03, "margin": 0.0}, **_REFERENCE_DOCS),  # sum w + 1e-8 > 0: no gate
)}

DEFAULT_MODE = "posterior"


def resolve_mode(name: str) -> str:
    """The concrete mode name: ``"default"`` becomes ``DEFAULT_MODE``; an unknown name is a ``ValueError``."""
    if name == "default":
        return DEFAULT_MODE
    if name not in MODES:
        raise ValueError(f"unknown Safe Denoiser mode {name!r}; valid modes: default, {', '.join(MODES)}")
    return name
