"""Learning-rate schedules as multipliers of the peak learning rate, by step.

* cosine: linear warmup then half-cosine to ``min_ratio`` (Loshchilov & Hutter 2017; the
  Chinchilla recipe matches the cosine length to the run, Hoffmann et al. 2022 Sec. 3).
* constant: linear warmup then 1.
* wsd: Warmup-Stable-Decay (Hu et al. 2024, MiniCPM, arXiv 2404.06395, Sec. 4): warmup,
  a constant stable phase, then a decay to ``min_ratio`` starting at ``decay_start`` (or
  over the last ``decay_fraction`` of the run). Because the stable phase does not depend
  on the run length, a decay branch can start from any stable-phase checkpoint. Decay shape
  "step" drops straight to ``min_ratio``: a two-stage schedule (Luo et al. 2025,
  arXiv:2503.12811, Sec. 4).
* table: warmup, then the multiplier interpolated linearly between ``knots`` (step, multiplier),
  held flat outside them: an arbitrary schedule in a few numbers (an optimised one).

Steps count from 0; the multiplier at step s applies to the update made at step s.
"""

from __future__ import annotations

import math

from lm.model.config import ScheduleConfig


def warmup_steps(cfg: ScheduleConfig, total_steps: int) -> int:
    """Absolute warmup length (``warmup_steps`` or a fraction of the run, at least 1 step)."""
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return max(1, round(cfg.warmup_fraction * total_steps))


def decay_start(cfg: ScheduleConfig, total_steps: int) -> int:
    """First step of the WSD decay phase."""
    if cfg.decay_start is not None:
        return cfg.decay_start
    return total_steps - round(cfg.decay_fraction * total_steps)


def _decay(shape: str, progress: float, floor: float) -> float:
    """Decay from 1 (progress 0) to ``floor`` (progress 1)."""
    if shape == "linear":
        return 1.0 - (1.0 - floor) * progress
    if shape == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "sqrt":
        return 1.0 - (1.0 - floor) * math.sqrt(progress)
    if shape == "exponential":
        return max(floor, 1e-12) ** progress
    if shape == "step":
        return floor
    raise ValueError(f"decay_shape={shape!r}: allowed values are linear, cosine, sqrt, exponential, step")


def interpolate(knots, step: int) -> float:
    """The piecewise-linear function through ``knots`` ((step, value), ...) at ``step``, flat outside."""
    if step <= knots[0][0]:
        return float(knots[0][1])
    for (s0, v0), (s1, v1) in zip(knots, knots[1:]):
        if step <= s1:
            return float(v0 + (v1 - v0) * (step - s0) / (s1 - s0))
    return float(knots[-1][1])


def lr_multiplier(cfg: ScheduleConfig, step: int, total_steps: int) -> float:
    """Multiplier of the peak learning rate at ``step`` of a ``total_steps``-step run."""
    warm = warmup_steps(cfg, total_steps)
    if step < warm:
        return (step + 1) / warm
    if cfg.kind == "constant":
        return 1.0
    if cfg.kind == "table":
        return interpolate(cfg.knots, step)
    if cfg.kind == "cosine":
        span = max(1, total_steps - warm)
        return _decay("cosine", min(1.0, (step - warm + 1) / span), cfg.min_ratio)
    start = decay_start(cfg, total_steps)
    if step < start:
        return 1.0
    span = max(1, total_steps - start)
    return _decay(cfg.decay_shape, min(1.0, (step - start + 1) / span), cfg.min_ratio)
