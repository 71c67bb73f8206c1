"""Refits that reach their own optimum: per-refit starts and a convergence test on the gradient.

A bootstrap refit (:mod:`scaling.bootstrap`) started only from the full-data optimum can stop
short of its resample's optimum: under the Huber likelihood with a small delta
(Besiroglu et al. 2024, arXiv:2404.10102) the full-data scale sigma makes the objective
nearly least-absolute-deviation, and BFGS crawls along its kinks. Here each refit runs from
a few starts (the full-data optimum, the same with sigma reset to the residual spread, which
restarts the continuation in sigma the full fit went through, and the grid starts that
reached the full-data optimum fastest) and keeps the best; it counts as converged when the
scaled gradient there is small:

    g_j = |sum_i d l_i / d theta_j| / sum_i |d l_i / d theta_j|,   converged: max_j g_j <= gtol,

with l_i the i-th point's weighted term of the objective. The ratio is scale-free (a summed
or averaged objective, any sigma, any weights) and measures the share of the data's pull on
each coordinate left unbalanced: 0 at a stationary point, 1 when every point pulls the same
way. A least-absolute-deviation optimum leaves up to p of m kinks unresolved, so the default
tolerance allows that share (:func:`default_gtol`). :func:`refit_warnings` says when the
dropped refits bias the intervals, and names refits on a boundary of the law.

Axis letters: n refits, k starts per refit, m points, p free coordinates.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from scaling.multistart import pad_points, huber, minimize_multistart
from scaling.progress import slow_notice, wanted

INTERPOLATES = 5e-13  # Huber sum per unit weight below this: every residual ~1e-6 or less
GTOL_FLOOR = 1e-3  # scaled-gradient tolerance of a smooth objective (least squares, wide Huber)


def default_gtol(m: int, p: int) -> float:
    """Scaled-gradient tolerance for m points and p free coordinates: the share p/m of the
    pull that a least-absolute-deviation optimum leaves in unresolved kinks, at least
    :data:`GTOL_FLOOR` (at most 0.5: a refit where half the pull is unbalanced is not at an
    optimum)."""
    return float(min(max(GTOL_FLOOR, 1.5 * p / max(m, 1)), 0.5))


@functools.lru_cache(maxsize=32)
def _scaled_gradient_fn(log_form: Callable, free: tuple[int, ...], q: int, objective: str):
    slot_of = {i: j for j, i in enumerate(free)}

    def terms(theta_free, w, base, logx, logy, delta):
        theta = jnp.stack([theta_free[slot_of[i]] if i in slot_of else base[i] for i in range(q)])
        if objective == "huber":
            return w * huber(log_form(theta, logx) - logy, delta)
        log_sigma = theta[-1]
        r = (log_form(theta[:-1], logx) - logy) * jnp.exp(-log_sigma)
        return w * (huber(r, delta) + log_sigma)

    def one(theta_free, w, base, logx, logy, delta):
        jac = jax.jacfwd(terms)(theta_free, w, base, logx, logy, delta)  # [m, p]
        total = jnp.abs(jnp.sum(jac, axis=0))
        pull = jnp.sum(jnp.abs(jac), axis=0)
        ratio = jnp.where(pull > 0, total / jnp.where(pull > 0, pull, 1.0), 0.0)
        return jnp.where(jnp.all(jnp.isfinite(jac)), jnp.max(ratio), jnp.inf)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None, None, None)))


def scaled_gradient(log_form: Callable, theta, logx, logy, weights, *, base, free,
                    huber_delta: float, objective: str = "huber") -> np.ndarray:
    """max_j |sum_i dl_i/dtheta_j| / sum_i |dl_i/dtheta_j| [n] at the free coordinates
    ``theta`` [n, p], with per-refit weights [n, m] (or shared [m]); see the module docstring."""
    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    n = theta.shape[0]
    w = np.asarray(weights, dtype=np.float64)
    w = np.broadcast_to(w, (n, w.shape[-1]))
    # Points padded as the solver pads them (weight 0: their terms and Jacobian rows are 0),
    # so tables of similar size share one compiled program.
    m = w.shape[1]
    m_pad = pad_points(m)
    pad = lambda v: np.concatenate([np.asarray(v, dtype=np.float64),  # noqa: E731
                                    np.zeros((m_pad - m, *np.shape(v)[1:]))])
    # [chunk, m, p] Jacobians at a time (~32 MB), a power of two so that shapes repeat
    chunk = 1 << int(np.log2(max(1, min(256, 4_000_000 // (m_pad * theta.shape[1])))))
    fn = _scaled_gradient_fn(log_form, tuple(int(i) for i in free), len(base), objective)
    out = np.empty(n)
    with jax.enable_x64(True):
        args = (jnp.asarray(base, jnp.float64),
                {k: jnp.asarray(pad(v), jnp.float64) for k, v in logx.items()},
                jnp.asarray(pad(logy), jnp.float64), jnp.asarray(huber_delta, jnp.float64))
        # Fixed chunks (the last padded) keep one compiled shape.
        for lo in range(0, n, chunk):
            hi = min(lo + chunk, n)
            th = np.zeros((chunk, theta.shape[1]))
            ww = np.zeros((chunk, m_pad))
            th[:hi - lo], ww[:hi - lo, :m] = theta[lo:hi], w[lo:hi]
            out[lo:hi] = np.asarray(fn(jnp.asarray(th), jnp.asarray(ww), *args))[:hi - lo]
    return out


GRID_STARTS = 4  # grid starts per refit besides the full-data optimum (tables up to BIG_TABLE)
BIG_TABLE = 1000  # points above which refits start from the full-data optimum only


def refit_starts(result, grid_starts: int | None = None) -> np.ndarray:
    """Starting points [k, p] (free coordinates) of every refit of ``result`` (a FitResult).

    The full-data optimum; for the likelihood the same with log sigma reset to the log spread
    of the full-data residuals (so the refit goes through the continuation in sigma again
    instead of starting at the near-least-absolute-deviation scale); and the ``grid_starts``
    starts of the full fit's grid that reached its best optimum in the fewest iterations
    (each a different basin path). Default ``grid_starts``: :data:`GRID_STARTS` up to
    :data:`BIG_TABLE` points, else 0 (a resample of many points has its optimum within a few
    SDs of the full-data one; the convergence test still checks every refit).
    """
    free = list(result.free)
    m = int((result.weights > 0).sum()) if result.weights is not None else len(result.logy)
    if grid_starts is None:
        grid_starts = GRID_STARTS if m <= BIG_TABLE else 0
    starts = [result.theta[free]]
    if result.objective_kind == "huber_ml":
        spread = float(np.std(result.residuals()))
        if spread > 0:
            reset = result.theta.copy()
            reset[-1] = np.log(spread)
            starts.append(reset[free])
    grid = getattr(result, "grid", None)
    if grid_starts > 0 and grid is not None and result.starts is not None and len(grid) > 1:
        st = result.starts
        at_best = st["converged"].to_numpy() & (
            st["objective"].to_numpy() <= result.objective + 1e-8 * abs(result.objective))
        idx = np.flatnonzero(at_best)
        idx = idx[np.argsort(st["iterations"].to_numpy()[idx], kind="stable")][:grid_starts]
        starts += [grid[i] for i in idx]
    return np.unique(np.asarray(starts, dtype=np.float64), axis=0)


def refit(result, weights: np.ndarray, *, grid_starts: int | None = None, max_iter: int = 500,
          gtol: float | None = None, restarts: int = 1, progress: bool | None = None) -> dict:
    """Refit ``result`` under each row of ``weights`` [n, m] from :func:`refit_starts`.

    Each refit keeps its best start; one not converged (scaled gradient above ``gtol``,
    default :func:`default_gtol`) is restarted from where it stopped (BFGS memory reset) up to
    ``restarts`` times; ``progress``: a line on stderr if the refits take over a few
    seconds. Returns dict with ``theta`` [n, q] (full coordinates), ``value`` [n],
    ``scaled_grad`` [n], ``iters`` [n] (of the kept start), ``status`` [n] (str:
    "converged", "max_iter": stopped at the iteration cap with a large gradient, "stalled":
    stopped earlier with a large gradient, "non_finite"), and ``starts`` (k).
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    n = weights.shape[0]
    spec, free = result.law, tuple(result.free)
    m = len(result.logy) if result.weights is None else int((result.weights > 0).sum())
    gtol = default_gtol(m, len(free)) if gtol is None else gtol
    starts = refit_starts(result, grid_starts)
    k = len(starts)
    kw = dict(base=result.theta, free=free, huber_delta=result.huber_delta, max_iter=max_iter,
              objective=result.objective_kind)
    progress = wanted(progress, n * k * weights.shape[1])
    with slow_notice(f"bootstrap: {n} refits x {k} starts on {weights.shape[1]} rows", progress):
        out = minimize_multistart(spec.log_form, np.tile(starts, (n, 1)), result.logx,
                                  result.logy, weights=np.repeat(weights, k, axis=0), **kw)
    value = out["value"].reshape(n, k)
    best = np.argmin(np.where(np.isfinite(value), value, np.inf), axis=1)
    rows = np.arange(n)
    theta = out["theta"].reshape(n, k, -1)[rows, best]
    value, iters = value[rows, best], out["iters"].reshape(n, k)[rows, best]
    sg_kw = dict(base=result.theta, free=free, huber_delta=result.huber_delta,
                 objective=result.objective_kind)
    sg = scaled_gradient(spec.log_form, theta, result.logx, result.logy, weights, **sg_kw)
    for _ in range(restarts):
        again = np.flatnonzero(np.isfinite(value) & ~(sg <= gtol))
        if again.size == 0:
            break
        o = minimize_multistart(spec.log_form, theta[again], result.logx, result.logy,
                                weights=weights[again], **kw)
        s2 = scaled_gradient(spec.log_form, o["theta"], result.logx, result.logy, weights[again],
                             **sg_kw)
        better = np.isfinite(o["value"]) & (o["value"] <= value[again])
        sel = again[better]
        theta[sel], value[sel], sg[sel] = o["theta"][better], o["value"][better], s2[better]
        iters[sel] = o["iters"][better]
    full = np.tile(result.theta, (n, 1))
    full[:, list(free)] = theta
    finite = np.isfinite(value) & np.all(np.isfinite(theta), axis=1)
    # A Huber sum this close to 0 (every drawn residual below ~1e-6) is at its global
    # minimum: the law interpolates the resample (fewer distinct points than parameters), and
    # the gradient ratio is 0/0 there.
    interpolates = (result.objective_kind == "huber") & (
        value <= INTERPOLATES * weights.sum(axis=1))
    status = np.where(~finite, "non_finite", np.where(
        (sg <= gtol) | interpolates, "converged",
        np.where(iters >= max_iter, "max_iter", "stalled")))
    return {"theta": full, "value": value, "scaled_grad": sg, "iters": iters, "status": status,
            "starts": k, "gtol": gtol}


FAILED_WARN = 0.02  # share of dropped refits worth a warning (they bias the interval)
FAILED_UNRELIABLE = 0.10  # above: the intervals are unreliable


def refit_warnings(boot) -> list[str]:
    """Dropped refits (their share and reasons) and refits on a boundary (their share and the
    intervals without them): one-line messages, empty when there is nothing to report."""
    out = []
    frac = boot.n_failed / boot.n if boot.n else 0.0
    if boot.n_failed and frac > FAILED_WARN:
        reasons = getattr(boot, "failed_reasons", {}) or {}
        why = f" ({', '.join(f'{k}: {v}' for k, v in reasons.items())})" if reasons else ""
        verdict = ("the intervals are unreliable" if frac > FAILED_UNRELIABLE else
                   "dropping them biases the intervals")
        out.append(f"{frac:.1%} of bootstrap refits ({boot.n_failed} of {boot.n}) did not "
                   f"converge{why}: {verdict}")
    deg = getattr(boot, "degenerate", None)
    if deg is not None and len(deg) and deg.any():
        reasons = boot.degenerate_reasons or {}
        iv = boot.intervals_without_degenerate
        named = dict.fromkeys(r.split(" ")[0] for r in reasons)  # the parameters at a boundary
        without = "; ".join(f"{k} [{iv.loc[k, 'lower']:.4g}, {iv.loc[k, 'upper']:.4g}]"
                            for k in named if iv is not None and k in iv.index)
        out.append(f"{np.mean(deg):.1%} of converged bootstrap refits ({int(deg.sum())} of "
                   f"{len(deg)}) land on a boundary of the law "
                   f"({', '.join(f'{k}: {v}' for k, v in reasons.items())}); intervals without "
                   f"them: {without or 'none left'}")
    return out
