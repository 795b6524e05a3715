"""The correction window, in its one public unit: the fraction of the sampling steps actually run.

Step ``i`` of a run of ``N`` sampler steps sits at progress ``i / (N - 1)`` (0 = first step, 1 = last;
a one-step run is at 0). A window ``(a, b)`` holds step ``i`` exactly when ``a <= i / (N - 1) <= b``.
The UI, infotext, XYZ plots, the API and bank settings all use this unit; a mode that thinks in sigmas or
timesteps translates internally. Steps are *sampler* steps: a second-order sampler evaluates the model
twice per step, and both evaluations belong to the same step (see ``SamplerSteps``).

The released code corrects at DDPM timesteps ``t in [780, 1000]`` of 1000, which with 50 "leading"
steps (981, 961, ..., 1) are the first 11 steps: indices 0..10, progress up to 10/49 = 0.204. The window
``(0, 0.22)`` selects the same 11 of 50 steps.
"""

from __future__ import annotations

_SLACK = 1e-9  # i / (N - 1) is a rounded float; a boundary given as a decimal fraction must still count


def validate_window(window) -> tuple[float, float]:
    """``(start, end)`` as floats with ``0 <= start <= end <= 1``, else ``ValueError``."""
    try:
        start, end = (float(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"a window is a pair (start, end) of step fractions, got {window!r}") from None
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"a window needs 0 <= start <= end <= 1 (fractions of the sampling steps), "
                         f"got ({start}, {end})")
    return start, end


def step_progress(step: int, total_steps: int) -> float:
    """Progress of sampler step ``step`` of ``total_steps``: ``step / (total_steps - 1)``, 0 for one step."""
    if total_steps < 1 or not 0 <= step < total_steps:
        raise ValueError(f"step {step} is outside a run of {total_steps} sampler steps")
    return step / (total_steps - 1) if total_steps > 1 else 0.0


def in_window(step: int, total_steps: int, window: tuple[float, float]) -> bool:
    """Whether sampler step ``step`` of ``total_steps`` lies in ``window`` (inclusive at both ends)."""
    progress = step_progress(step, total_steps)
    return window[0] - _SLACK <= progress <= window[1] + _SLACK


def window_steps(total_steps: int, window: tuple[float, float]) -> list[int]:
    """The sampler steps of a ``total_steps`` run inside ``window``."""
    return [i for i in range(total_steps) if in_window(i, total_steps, window)]


class SamplerSteps:
    """Maps successive model evaluations to sampler steps.

    k-diffusion's second-order samplers (Heun, DPM2, DPM++ 2S a, DPM++ SDE) evaluate the model twice per
    step (Heun and DPM2 only once on their final step, which has no successor), first-order and
    multistep samplers (Euler, DPM++ 2M, ...) once. ``evaluations_per_step`` is that count; the
    evaluation with index ``k`` (from 0) belongs to step ``k // evaluations_per_step``.
    """

    def __init__(self, evaluations_per_step: int = 1):
        if evaluations_per_step < 1:
            raise ValueError(f"evaluations_per_step must be >= 1, got {evaluations_per_step}")
        self.evaluations_per_step = evaluations_per_step
        self.evaluations = 0

    def next_step(self) -> int:
        """The sampler step of the evaluation about to happen (advances the count)."""
        step = self.evaluations // self.evaluations_per_step
        self.evaluations += 1
        return step
