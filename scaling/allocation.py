"""Compute-optimal allocation of a FLOP budget between parameters and tokens.

Hoffmann et al. 2022 (arXiv:2203.15556), Eq. (3)-(4): minimise L(N, D) subject to
FLOPs(N, D) = C. For C = 6ND and the Chinchilla form the optimum is closed-form; for a
user-given FLOPs-per-token function f(N) (so D = C / f(N), e.g. counting attention FLOPs)
the optimum is found numerically along log N.

Shapes: C is any shape ``*s``; N_opt, D_opt have the shape of C.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize_scalar


def chinchilla_allocation(C, A, B, alpha, beta):
    """(N_opt, D_opt) for C = 6ND under L = E + A/N^alpha + B/D^beta (Hoffmann Eq. (4)).

    N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = G^-1 (C/6)^(alpha/(alpha+beta)),
    G = (alpha A / (beta B))^(1/(alpha+beta)).

    Args:
      C: FLOP budgets, shape ``*s``.
    Returns:
      (N_opt, D_opt), each of shape ``*s``.
    """
    C = np.asarray(C, dtype=float)
    G = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
    N_opt = G * (C / 6.0) ** (beta / (alpha + beta))
    D_opt = (C / 6.0) ** (alpha / (alpha + beta)) / G
    return N_opt, D_opt


def compute_optimal_allocation(
    C,
    loss_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
    flops_per_token: Callable[[np.ndarray], np.ndarray] = lambda N: 6.0 * N,
    n_bounds: tuple[float, float] = (1e3, 1e16),
    grid_size: int = 2001,
):
    """(N_opt, D_opt) minimising loss_fn(N, D) subject to flops_per_token(N) * D = C.

    A log-spaced grid over ``n_bounds`` brackets the minimum of each budget, then Brent's
    method refines it in log N. ``loss_fn`` and ``flops_per_token`` must be elementwise.

    Args:
      C: FLOP budgets, shape ``*s``.
      loss_fn: (N [k], D [k]) -> loss [k], e.g. ``lambda N, D: laws.chinchilla(N, D, **p)``.
      flops_per_token: N [k] -> training FLOPs per token [k] (default 6N).
      n_bounds: search range of N.
    Returns:
      (N_opt, D_opt), each of shape ``*s``.
    """
    C = np.asarray(C, dtype=float)
    if not (0 < n_bounds[0] < n_bounds[1]):
        raise ValueError(f"n_bounds={n_bounds!r}: need 0 < low < high")
    log_n = np.linspace(np.log(n_bounds[0]), np.log(n_bounds[1]), grid_size)
    out_n = np.empty(C.size)
    for i, c in enumerate(C.ravel()):
        def objective(ln, c=c):
            n = np.exp(ln)
            return loss_fn(n, c / flops_per_token(n))

        values = np.asarray(objective(log_n), dtype=float)
        values = np.where(np.isfinite(values), values, np.inf)
        j = int(np.argmin(values))
        lo, hi = log_n[max(j - 1, 0)], log_n[min(j + 1, grid_size - 1)]
        res = minimize_scalar(lambda x: float(objective(np.array(x))), bounds=(lo, hi),
                              method="bounded", options={"xatol": 1e-10})
        out_n[i] = np.exp(res.x)
    N_opt = out_n.reshape(C.shape)
    return N_opt, C / np.asarray(flops_per_token(N_opt), dtype=float)


def chinchilla_allocation_for_flops(
    C,
    A,
    B,
    alpha,
    beta,
    flops_per_token: Callable[[np.ndarray], np.ndarray],
    *,
    decades: float = 3.0,
    points: int = 601,
):
    """Vectorised (N_opt, D_opt) of the Chinchilla law under FLOPs = flops_per_token(N) * D.

    The same constrained minimum as :func:`compute_optimal_allocation` (Hoffmann Eq. (3)
    with D = C / f(N)), for arrays of budgets and of law parameters at once (a bootstrap
    band: parameters [n, 1] against budgets [1, g]). Along log N, a grid of ``points``
    spanning ``decades`` either side of the C = 6ND optimum brackets the minimum of
    A N^-alpha + B D^-beta (E does not move it), a 100x finer grid between the best point's
    neighbours and a parabola through the finest best point and its neighbours refine it. ``f`` must be elementwise. Where the minimum lies on the
    grid's edge (f far from 6N, or a degenerate fit with alpha or beta near 0), that entry
    is solved by :func:`compute_optimal_allocation` instead (Brent's method over a wide
    bracket), so every entry is the constrained minimum.

    Args:
      C: budgets; A, B, alpha, beta: law parameters; all broadcast to a shape ``*s``.
      flops_per_token: N [*s, m] -> training FLOPs per token [*s, m].
    Returns:
      (N_opt, D_opt), each of shape ``*s``.
    """
    C, A, B, alpha, beta = np.broadcast_arrays(*(np.asarray(x, float) for x in (C, A, B, alpha, beta)))
    n0, _ = chinchilla_allocation(C, A, B, alpha, beta)

    def best_on(log_n):
        """Index of the smallest objective along the last axis of log N [*s, m], and whether it is finite."""
        n = np.exp(log_n)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            d = C[..., None] / np.asarray(flops_per_token(n), float)
            obj = A[..., None] * n ** -alpha[..., None] + B[..., None] * d ** -beta[..., None]
        obj = np.where(np.isfinite(obj), obj, np.inf)
        j = np.argmin(obj, axis=-1)
        return j, obj, np.isfinite(np.take_along_axis(obj, j[..., None], -1)[..., 0])

    # coarse grid around the 6ND optimum, then a fine grid over the coarse best's neighbours
    # (f interpolated along a ladder has kinks; a parabola alone would be off by up to a step)
    step = 2.0 * decades * np.log(10.0) / (points - 1)
    coarse = np.log(n0)[..., None] + step * (np.arange(points) - (points - 1) // 2)  # [*s, m]
    j, _, finite = best_on(coarse)
    at_edge = finite & ((j == 0) | (j == points - 1))
    centre = np.take_along_axis(coarse, j[..., None], -1)  # [*s, 1]
    fine_step = 2.0 * step / 200
    fine = centre + fine_step * (np.arange(201) - 100)  # [*s, 201]
    j, obj, _ = best_on(fine)
    j = np.clip(j, 1, 199)
    y0, y1, y2 = (np.take_along_axis(obj, (j + o)[..., None], -1)[..., 0] for o in (-1, 0, 1))
    denom = y0 - 2.0 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(denom > 0, 0.5 * (y0 - y2) / denom, 0.0)
    ln_opt = np.take_along_axis(fine, j[..., None], -1)[..., 0] + np.clip(shift, -1.0, 1.0) * fine_step
    n_opt = np.where(finite, np.exp(ln_opt), np.nan)
    for i in zip(*np.nonzero(at_edge)):  # rare: outside the grid, solve this entry by itself
        loss = lambda n, d, i=i: A[i] * n ** -alpha[i] + B[i] * d ** -beta[i]
        n_opt[i] = compute_optimal_allocation(C[i], loss, flops_per_token, n_bounds=(1.0, 1e30))[0]
    return n_opt, C / np.asarray(flops_per_token(n_opt), float)
