"""The loss-minimising learning-rate schedule of a fitted multi-power law.

Luo et al. 2025 (arXiv:2503.12811), Sec. 5: minimise the predicted final loss L(T) over
schedules that keep the warmup and then never increase, eta_t = max(eta_peak - sum_{tau<=t}
delta_tau, eta_min) with every delta_tau in [0, eta_peak]; projected Adam on delta from the
constant schedule (delta = 0), as the authors' released ``src/optimization.py`` (Adam step
5e-9 in units of a 3e-4 peak; 2,000 steps here, 10,000 there). Here L(T) is the law exactly (every step's
drop, the warmup's rises included, as the fit), evaluated in float64 by JAX.

L(T) is not convex in delta, and projected Adam is local: under a fit whose drop term rewards
only large drops (a large gamma: G grows with eta_k^-gamma), the constant schedule is a local
minimum where every small decrement costs more LR area than it gains, although the law itself
predicts a WSD cooldown lower (seen on the CPU-scale study's smoke fits). So the optimiser
also starts from the cosine and WSD comparison schedules, and keeps the start whose result
has the lowest predicted final loss: the "optimal" schedule is never predicted worse than
the schedules it is compared with (``OptimalSchedule.start`` says which start won). Adam's
fixed step does not lower L(T) at every step, so each start keeps its best iterate.

Axis letters: T steps, W warmup steps.
"""

from __future__ import annotations

import functools
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
      start: the optimiser's start whose result is "optimal": "constant" (the authors'),
        "cosine" or "wsd".
    """

    schedules: dict[str, np.ndarray]
    final_loss: dict[str, float]
    peak: float
    warmup: int
    final: float
    start: str = "constant"


def _schedule(delta, head, peak, floor):
    """LRs [T]: the warmup ``head``, then ``peak`` minus the running sum of the decrements
    ``delta`` [T - warmup] (clipped at 0), never below ``floor``."""
    eta = jnp.maximum(peak - jnp.cumsum(jnp.clip(delta, 0.0, None)), floor)
    return jnp.concatenate([head, eta])


@functools.lru_cache(maxsize=8)
def _optimizer(opt_steps: int):
    """Jitted projected Adam on the decrements: (delta0 [T - W], params, head [W], peak, floor,
    lr) -> the best delta seen. One compiled program per ``opt_steps`` and shapes, not one per
    call (the law's parameters and the LRs are arguments)."""

    def run(d0, p, head, peak, floor, lr):
        value_and_grad = jax.value_and_grad(
            lambda delta: final_loss(p, _schedule(delta, head, peak, floor)))

        def step(i, c):
            delta, m, v, best, best_f = c
            f, g = value_and_grad(delta)
            # Adam's fixed step does not decrease L(T) monotonically: keep the best iterate seen
            better = f < best_f
            best, best_f = jnp.where(better, delta, best), jnp.where(better, f, best_f)
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            t = i + 1
            delta = delta - lr * (m / (1 - 0.9 ** t)) / (jnp.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
            delta = jnp.clip(delta, 0.0, peak)
            # once the LR reaches the floor, further decrements do nothing: drop them
            delta = jnp.where(peak - jnp.cumsum(delta) <= floor, 0.0, delta)
            return delta, m, v, best, best_f

        z = jnp.zeros_like(d0)
        delta, _, _, best, best_f = jax.lax.fori_loop(0, opt_steps, step, (d0, z, z, d0, jnp.inf))
        last = final_loss(p, _schedule(delta, head, peak, floor))
        return jnp.where(last < best_f, delta, best)

    return jax.jit(run)


def optimize_schedule(params: dict, steps: int, peak: float, warmup: int = 0,
                      final: float | None = None, opt_steps: int = OPT_STEPS,
                      wsd_fraction: float = 0.2, head=None) -> OptimalSchedule:
    """The non-increasing schedule (after warmup) of ``steps`` steps minimising L(steps - 1).

    Args:
      params: a multi-power law's parameters (L0, A, alpha, B, C, beta, gamma), LR units as
        ``peak``; steps: the budget T; peak: the peak LR; warmup: linear warmup steps.
      final: final LR of the cosine and WSD comparisons (default 0.1 peak).
      opt_steps: projected-Adam steps; wsd_fraction: the WSD comparison's (exponential)
        decay share of the steps.
      head: the warmup's LRs [warmup] of every schedule (default: linear from 0 to ``peak``,
        the authors'); pass the trainer's own (scalelab's lm warms up as peak (t + 1) / warmup)
        so the optimised schedule is optimised for the warmup it will be trained with.
    """
    if not (isinstance(steps, (int, np.integer)) and 2 <= warmup + 2 <= steps):
        raise ValueError(f"steps={steps!r}: need an integer > warmup + 1 = {warmup + 1}")
    final = 0.1 * peak if final is None else final
    scale = peak / REFERENCE_PEAK
    head = np.linspace(0.0, peak, warmup) if head is None else np.asarray(head, np.float64)
    if head.shape != (warmup,):
        raise ValueError(f"head of shape {head.shape}: need the {warmup} warmup LRs")
    with jax.enable_x64(True):
        p = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
        head_j = jnp.asarray(head)
        bounds = (jnp.asarray(peak, jnp.float64), jnp.asarray(OPT_MIN_LR * scale, jnp.float64))

        def schedule(delta):
            return _schedule(delta, head_j, *bounds)

        optimizer = _optimizer(int(opt_steps))
        lr = jnp.asarray(OPT_LR * scale, jnp.float64)
        z = jnp.zeros(steps - warmup)

        def run(d0):
            return optimizer(d0, p, head_j, *bounds, lr)

        schedules = {"cosine": lr_schedules.cosine(steps, peak, final, warmup),
                     "wsd": lr_schedules.wsd(steps, peak, final,
                                             max(warmup, steps - int(round(wsd_fraction * steps))), warmup)}
        for eta in schedules.values():
            eta[:warmup] = head
        results = {}
        for name, eta0 in (("constant", None), *schedules.items()):
            # delta of a comparison schedule: its decrements after the warmup (eta_W = peak - delta_W)
            d0 = z if eta0 is None else jnp.asarray(-np.diff(eta0[warmup:], prepend=peak))
            cand = np.asarray(schedule(run(d0)))
            results[name] = (float(final_loss(p, jnp.asarray(cand))), cand)
        start = min(results, key=lambda k: results[k][0])  # the first (constant) on ties
        schedules = {"optimal": results[start][1], **schedules}
        losses = {k: float(final_loss(p, jnp.asarray(v))) for k, v in schedules.items()}
    return OptimalSchedule(schedules=schedules, final_loss=losses, peak=peak, warmup=warmup, final=final,
                           start=start)
