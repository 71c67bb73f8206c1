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
