"""The loss-minimising learning-rate schedule of a fitted multi-power law.

Luo et al. 2025 (arXiv:2503.12811), Sec. 5: minimise the predicted final loss L(T) over
schedules that keep the warmup and then never increase, eta_t = max(eta_peak - sum_{tau<=t}
delta_tau, eta_min) with every delta_tau in [0, eta_peak]; projected Adam on delta from the
constant schedule (delta = 0), as the authors' released ``src/optimization.py`` (Adam step
5e-9 in units of a 3e-4 peak; 2,000 steps here, 10,000 there). Here L(T) is the law exactly (every step's
drop, the warmup's rises included, as the fit), evaluated in float64 by JAX.

Axis letters: T steps, W warmup steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from scaling import lr_schedules

OPT_LR = 5e-9  # the authors' Adam step on delta, for a peak LR of 3e-4 (scaled with the peak)
OPT_STEPS = 2_000  # the authors run 10,000; on their 25M fit the final loss moves < 1e-4 after 2,000
OPT_MIN_LR = 1e-10  # the authors' floor, for a peak of 3e-4 (scaled with the peak)
REFERENCE_PEAK = 3e-4


def final_loss(params: dict, eta) -> jnp.ndarray:
    """Multi-power law loss after the last step of ``eta`` [T] (JAX; exact O(T) sum; float64
    under ``jax.enable_x64``)."""
    area = jnp.cumsum(eta)
    drop = eta[:-1] - eta[1:]  # d_k, k = 1..T-1
    gap = area[-1] - area[:-1]  # S_k(T-1) = S(T-1) - S(k-1)
    g = 1.0 - (params["C"] * eta[1:] ** (-params["gamma"]) * gap + 1.0) ** (-params["beta"])
    return params["L0"] + params["A"] * area[-1] ** (-params["alpha"]) - params["B"] * jnp.sum(drop * g)


@dataclass(frozen=True)
class OptimalSchedule:
    """The optimised schedule and the schedules it is compared with.

    Attributes:
      schedules: {name: LR at every step [T]}: "optimal", "cosine", "wsd".
      final_loss: {name: predicted final loss}.
      peak, warmup, final: the peak LR, warmup steps, and the comparisons' final LR.
    """

    schedules: dict[str, np.ndarray]
    final_loss: dict[str, float]
    peak: float
    warmup: int
    final: float


def optimize_schedule(params: dict, steps: int, peak: float, warmup: int = 0,
                      final: float | None = None, opt_steps: int = OPT_STEPS,
                      wsd_fraction: float = 0.2) -> OptimalSchedule:
    """The non-increasing schedule (after warmup) of ``steps`` steps minimising L(steps - 1).

    Args:
      params: a multi-power law's parameters (L0, A, alpha, B, C, beta, gamma), LR units as
        ``peak``; steps: the budget T; peak: the peak LR; warmup: linear warmup steps.
      final: final LR of the cosine and WSD comparisons (default 0.1 peak).
      opt_steps: projected-Adam steps; wsd_fraction: the WSD comparison's (exponential)
        decay share of the steps.
    """
    if not (isinstance(steps, (int, np.integer)) and 2 <= warmup + 2 <= steps):
        raise ValueError(f"steps={steps!r}: need an integer > warmup + 1 = {warmup + 1}")
    final = 0.1 * peak if final is None else final
    scale = peak / REFERENCE_PEAK
    head = np.linspace(0.0, peak, warmup)
    with jax.enable_x64(True):
        p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
        head_j = jnp.asarray(head)

        def schedule(delta):
            eta = jnp.maximum(peak - jnp.cumsum(jnp.clip(delta, 0.0, None)), OPT_MIN_LR * scale)
            return jnp.concatenate([head_j, eta])

        grad = jax.grad(lambda delta: final_loss(p, schedule(delta)))
        lr = OPT_LR * scale

        def step(i, c):
            delta, m, v = c
            g = grad(delta)
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            t = i + 1
            delta = delta - lr * (m / (1 - 0.9 ** t)) / (jnp.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
            delta = jnp.clip(delta, 0.0, peak)
            # once the LR reaches the floor, further decrements do nothing: drop them
            delta = jnp.where(peak - jnp.cumsum(delta) <= OPT_MIN_LR * scale, 0.0, delta)
            return delta, m, v

        z = jnp.zeros(steps - warmup)
        delta, _, _ = jax.jit(lambda c: jax.lax.fori_loop(0, opt_steps, step, c))((z, z, z))
        best = np.asarray(schedule(delta))
        schedules = {"optimal": best,
                     "cosine": lr_schedules.cosine(steps, peak, final, warmup),
                     "wsd": lr_schedules.wsd(steps, peak, final,
                                             max(warmup, steps - int(round(wsd_fraction * steps))), warmup)}
        losses = {k: float(final_loss(p, jnp.asarray(v))) for k, v in schedules.items()}
    return OptimalSchedule(schedules=schedules, final_loss=losses, peak=peak, warmup=warmup, final=final)
