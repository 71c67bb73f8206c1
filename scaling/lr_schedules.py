"""Learning-rate schedules as arrays (the LR at every step from 0), for the schedule-aware laws.

The shapes of Luo et al. 2025 (arXiv:2503.12811, Sec. 4 and their released
``src/lr_schedules.py``): a linear warmup from 0 to the peak over ``warmup`` steps (the LR
at step warmup - 1 is the peak), then

* constant: the peak;
* cosine: from the peak to ``final`` by a half cosine over the remaining steps;
* wsd: the peak until ``decay_start``, then to ``final`` at the last step, ``shape``
  "exponential" (geometric interpolation) or "linear" (Hu et al. 2024, WSD);
* two_stage: the peak until ``switch``, then the constant ``second``.

These describe schedules to predict or compare; a run's own schedule comes from its records.

Axis letters: T steps.
"""

from __future__ import annotations

import numpy as np


def _warmup(warmup: int, peak: float) -> np.ndarray:
    return np.linspace(0.0, peak, warmup)


def _check(total: int, warmup: int, peak: float) -> None:
    if not (isinstance(total, (int, np.integer)) and 0 <= warmup < total):
        raise ValueError(f"total={total!r}, warmup={warmup!r}: need integers 0 <= warmup < total")
    if not (np.isfinite(peak) and peak > 0):
        raise ValueError(f"peak={peak!r}: must be a finite number > 0")


def constant(total: int, peak: float, warmup: int = 0) -> np.ndarray:
    """Warmup then the peak LR [total]."""
    _check(total, warmup, peak)
    return np.concatenate([_warmup(warmup, peak), np.full(total - warmup, peak)])


def cosine(total: int, peak: float, final: float, warmup: int = 0) -> np.ndarray:
    """Warmup then a half cosine from ``peak`` to ``final`` [total]."""
    _check(total, warmup, peak)
    s = np.arange(total - warmup)
    decay = final + 0.5 * (peak - final) * (1.0 + np.cos(np.pi * s / (total - warmup)))
    return np.concatenate([_warmup(warmup, peak), decay])


def wsd(total: int, peak: float, final: float, decay_start: int, warmup: int = 0,
        shape: str = "exponential") -> np.ndarray:
    """Warmup, the peak until ``decay_start``, then a decay to ``final`` at step ``total`` [total]."""
    _check(total, warmup, peak)
    if not warmup <= decay_start < total:
        raise ValueError(f"decay_start={decay_start!r}: must be in [warmup, total)")
    p = (np.arange(decay_start, total) - decay_start) / (total - decay_start)
    if shape == "exponential":
        decay = peak ** (1.0 - p) * final ** p
    elif shape == "linear":
        decay = peak * (1.0 - p) + final * p
    else:
        raise ValueError(f"shape={shape!r}: must be 'exponential' or 'linear'")
    return np.concatenate([_warmup(warmup, peak), np.full(decay_start - warmup, peak), decay])


def two_stage(total: int, peak: float, second: float, switch: int, warmup: int = 0) -> np.ndarray:
    """Warmup, the peak until ``switch``, then ``second`` [total]."""
    _check(total, warmup, peak)
    if not warmup <= switch <= total:
        raise ValueError(f"switch={switch!r}: must be in [warmup, total]")
    return np.concatenate([_warmup(warmup, peak), np.full(switch - warmup, peak),
                           np.full(total - switch, second)])
