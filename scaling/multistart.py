"""Vectorised multistart BFGS on a weighted sum of Huber losses of log-loss residuals.

The objective of Hoffmann et al. 2022 (arXiv:2203.15556), Eq. (2)/Appendix D.2:

    f(theta) = sum_i w_i Huber_delta(log Lhat(theta; x_i) - log L_i),

summed (not averaged) over points, minimised in float64 by BFGS with a dense inverse Hessian
(the laws have at most 8 coordinates; Nocedal & Wright 2006, Eq. (6.17); Armijo
backtracking with quadratic interpolation) from many starts at once: a fixed block of rows
advances together, one objective-and-gradient evaluation per row per loop step
(``jax.vmap`` over rows), inside one ``lax.while_loop`` in one ``jax.jit``; a row whose
start has finished takes the next pending start (a work queue), so converged starts cost
nothing and no row waits for another's line search. A full step taken where the curvature
is not positive (a plateau, e.g. a term whose coefficient has underflowed, or a stretch where
every residual is beyond delta and f is linear, so the gradient changes only by rounding)
lengthens the next steps fourfold, so such starts cross it instead of crawling to the
iteration cap. Weights w let the bootstrap refit every resample in the same batch. The
compiled solver is cached per law form and padded size, and the starts are split over two
chunks solved concurrently (XLA runs one program on one core at a time). Float64 is enabled only
inside :func:`minimize_multistart` (``jax.enable_x64``), never globally. The likelihood
variant ``objective="huber_ml"`` (Besiroglu et al. 2024, arXiv:2404.10102) adds a free
scale: see :func:`minimize_multistart`.

Stopping (per start): max |grad| <= gtol; or a relative decrease of f below ftol over the
last ``window`` accepted steps (scale-free, unlike an absolute tolerance on an averaged
loss, the pitfall Besiroglu et al. 2024, arXiv:2404.10102, found in the original fit); or
two failed line searches in a row; or ``max_iter`` steps (reported as not converged).

Axis letters: s starts, p free coordinates, q all coordinates, m data points.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np




def huber(r, delta):
    """Huber loss: r^2/2 for |r| <= delta, else delta (|r| - delta/2) (Huber 1964)."""
    abs_r = jnp.abs(r)
    return jnp.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))


def _bfgs_update(h, s, y, keep):
    """BFGS update of the inverse Hessians h [b,p,p] by the pairs s, y [b,p] where ``keep`` [b].

    Nocedal & Wright 2006, Eq. (6.17): H+ = (I - rho s y^T) H (I - rho y s^T) + rho s s^T,
    rho = 1 / y^T s. Before a row's first update H is rescaled to (s^T y / y^T y) I
    (Eq. (6.20)); ``keep`` must imply s^T y > 0 (curvature condition).
    """
    sy = jnp.sum(s * y, axis=-1)
    rho = 1.0 / jnp.where(keep, sy, 1.0)
    hy = jnp.einsum("bij,bj->bi", h, y)
    yhy = jnp.sum(y * hy, axis=-1)
    # (I - r s y^T) H (I - r y s^T) = H - r (s hy^T + hy s^T) + r^2 (y^T H y) s s^T
    ss = s[:, :, None] * s[:, None, :]
    upd = (h - rho[:, None, None] * (s[:, :, None] * hy[:, None, :] + hy[:, :, None] * s[:, None, :])
           + (rho * rho * yhy + rho)[:, None, None] * ss)
    return jnp.where(keep[:, None, None], upd, h)


@functools.lru_cache(maxsize=64)
def huber_log_normaliser(delta: float) -> float:
    """log Z of the density exp(-Huber_delta(x)) / Z: Z = sqrt(2 pi) erf(delta/sqrt 2) + 2 e^(-delta^2/2) / delta."""
    from math import erf, exp, log, pi, sqrt

    return log(sqrt(2.0 * pi) * erf(delta / sqrt(2.0)) + 2.0 * exp(-0.5 * delta * delta) / delta)


@functools.lru_cache(maxsize=64)
def _solver(log_form: Callable, free: tuple[int, ...], q: int, slots: int, window: int,
            objective_kind: str = "huber", shared_weights: bool = False):
    """A jitted (theta0 [s,p], w [s,m] (or [1,m] with ``shared_weights``), base [q], logx,
    logy [m], delta, gtol, ftol, max_iter, n_real) solver; only the first ``n_real`` starts are
    run (the rest is padding). Cached: one compiled program per law form and padded shape.

    Work queue: ``slots`` rows advance together, each by exactly one objective evaluation per
    loop step (a row is either trying a step of its line search or evaluating a new start),
    so no row waits for another's backtracking. When a row's start converges (or stalls, or
    hits ``max_iter``) its result is written out and the row takes the next pending start:
    the cost is the total number of evaluations, not the slowest start times the start count.
    """
    slot_of = {i: j for j, i in enumerate(free)}
    c1 = 1e-4  # Armijo constant
    max_trials = 20  # backtracking steps before a line search counts as failed

    def objective(theta_free, w, base, logx, logy, delta):
        # Static slices, not a scatter: under vmap and grad a scatter became serial loops.
        theta = jnp.stack([theta_free[slot_of[i]] if i in slot_of else base[i] for i in range(q)])
        if objective_kind == "huber":
            r = log_form(theta, logx) - logy
            return jnp.sum(w * huber(r, delta))
        # Negative log-likelihood of r ~ exp(-Huber_delta(r / sigma)) / (sigma Z(delta)),
        # sigma = exp(theta[-1]) free (Besiroglu et al. 2024); Z is a constant (added outside).
        log_sigma = theta[-1]
        r = (log_form(theta[:-1], logx) - logy) * jnp.exp(-log_sigma)
        return jnp.sum(w * (huber(r, delta) + log_sigma))

    value_and_grad = jax.vmap(jax.value_and_grad(objective),
                              in_axes=(0, None if shared_weights else 0, None, None, None, None))

    def solve(theta0, w_all, base, logx, logy, delta, gtol, ftol, max_iter, n_real):
        n_starts, p = theta0.shape
        b = slots
        dtype = theta0.dtype
        eye = jnp.eye(p, dtype=dtype)

        def assign(c, free_rows):
            """Give each free row (bool [b]) the next pending start (or none: idx = -1)."""
            rank = jnp.cumsum(free_rows, dtype=jnp.int32) - 1
            new_idx = jnp.where(free_rows, c["next"] + rank, c["idx"])
            new_idx = jnp.where(free_rows & (new_idx >= n_real), -1, new_idx)
            take = free_rows & (new_idx >= 0)
            safe = jnp.clip(new_idx, 0, n_starts - 1)
            c = dict(c)
            c["idx"] = new_idx
            c["x"] = jnp.where(take[:, None], theta0[safe], c["x"])
            if not shared_weights:
                c["w"] = jnp.where(take[:, None], w_all[safe], c["w"])
            c["fresh"] = jnp.where(free_rows, take, c["fresh"])
            for key in ("k", "stall", "fails", "trials"):
                c[key] = jnp.where(free_rows, 0, c[key])
            c["in_ls"] = jnp.where(free_rows, False, c["in_ls"])
            c["h"] = jnp.where(free_rows[:, None, None], eye, c["h"])
            c["scaled"] = jnp.where(free_rows, False, c["scaled"])
            c["next"] = c["next"] + jnp.sum(free_rows, dtype=jnp.int32)
            return c

        def body(c):
            active = c["idx"] >= 0
            x, f, g, fresh, k = c["x"], c["f"], c["g"], c["fresh"], c["k"]
            # Rows not inside a line search start one along a new BFGS direction.
            d_new = -jnp.einsum("bij,bj->bi", c["h"], g)
            slope_new = jnp.sum(g * d_new, axis=-1)
            bad = ~(slope_new < 0) | ~jnp.all(jnp.isfinite(d_new), axis=-1)
            gnorm = jnp.sqrt(jnp.sum(g * g, axis=-1))
            # Steepest descent (unit length) where d is not a finite descent direction.
            d_new = jnp.where(bad[:, None], -g / jnp.maximum(gnorm, 1e-300)[:, None], d_new)
            new_ls = ~c["in_ls"]
            d = jnp.where(new_ls[:, None], d_new, c["d"])
            d = jnp.where(fresh[:, None], 0.0, d)  # a fresh row evaluates its start
            t = jnp.where(new_ls, 1.0, c["t"])
            slope = jnp.sum(g * d, axis=-1)

            x_try = x + t[:, None] * d
            f_try, g_try = value_and_grad(x_try, w_all[0] if shared_weights else c["w"], base, logx,
                                          logy, delta)
            finite_try = jnp.isfinite(f_try) & jnp.all(jnp.isfinite(g_try), axis=-1)
            armijo = finite_try & (f_try <= f + c1 * t * slope)
            acc = active & (fresh | armijo)
            moved = acc & ~fresh
            trials = jnp.where(acc | new_ls, 0, c["trials"]) + (active & ~acc).astype(jnp.int32)
            ls_failed = active & ~acc & (trials >= max_trials)
            # Backtrack by quadratic interpolation, safeguarded to [0.1 t, 0.5 t].
            denom = 2.0 * (f_try - f - slope * t)
            t_q = jnp.where(finite_try & (denom > 0),
                            -slope * t * t / jnp.where(denom > 0, denom, 1.0), 0.5 * t)
            t_next = jnp.clip(t_q, 0.1 * t, 0.5 * t)

            x_new = jnp.where(acc[:, None], x_try, x)
            f_new = jnp.where(acc, f_try, f)
            g_new = jnp.where(acc[:, None], g_try, g)
            s_new, y_new = x_new - x, g_new - g
            sy = jnp.sum(s_new * y_new, axis=-1)
            yy = jnp.sum(y_new * y_new, axis=-1)
            # A gradient change below 1e-10 of the gradient is rounding, not curvature (a region
            # where f is linear, e.g. every residual beyond delta): s^T y / y^T y would scale H
            # by ~1e30 and each line search would then backtrack 20 times to fail.
            gg = jnp.maximum(jnp.sum(g * g, axis=-1), jnp.sum(g_new * g_new, axis=-1))
            keep = moved & (sy > 1e-12 * yy) & (sy > 0) & (yy > 1e-20 * gg)
            # First pair of a row: H0 = (s^T y / y^T y) I (Nocedal & Wright Eq. (6.20)).
            first = keep & ~c["scaled"]
            h = jnp.where(first[:, None, None],
                          (sy / jnp.where(first, yy, 1.0))[:, None, None] * eye, c["h"])
            h = _bfgs_update(h, s_new, y_new, keep)
            # A full step without positive curvature (a plateau or a saddle, where BFGS keeps
            # its old scale and would crawl): lengthen the next trial steps.
            h = jnp.where((moved & ~keep & (t == 1.0))[:, None, None], 4.0 * h, h)
            # A failed line search resets H (the next step is steepest descent); a second
            # failure in a row ends the start.
            h = jnp.where(ls_failed[:, None, None], eye, h)
            scaled = (c["scaled"] | keep) & ~ls_failed
            fails = jnp.where(ls_failed, c["fails"] + 1, jnp.where(moved, 0, c["fails"]))
            # Three accepted steps in a row lowering f by under 1e-15 relative: at a minimum.
            tiny = moved & (f - f_new <= 1e-15 * jnp.abs(f_new))
            stall = jnp.where(tiny, c["stall"] + 1, jnp.where(moved, 0, c["stall"]))
            # Relative decrease over the last ``window`` accepted steps below ftol: converged
            # (scale-free, so a summed or an averaged objective stops at the same point).
            slot_f = k % window
            f_old = jnp.take_along_axis(c["f_hist"], slot_f[:, None], axis=1)[:, 0]
            slow = moved & (k >= window) & (f_old - f_new <= ftol * jnp.abs(f_new))
            f_hist = jnp.where((jnp.arange(window)[None, :] == slot_f[:, None]) & moved[:, None],
                               f_new[:, None], c["f_hist"])
            k_new = jnp.where(moved, k + 1, k)
            finite = jnp.isfinite(f_new) & jnp.all(jnp.isfinite(g_new), axis=-1)
            gmax = jnp.max(jnp.abs(g_new), axis=-1)
            done = active & (
                ~finite | (acc & (gmax <= gtol)) | (fails >= 2) | (stall >= 3) | slow
                | (k_new >= max_iter))
            out_i = jnp.where(done, c["idx"], n_starts)  # index n_starts: dropped
            c = {**c, "x": x_new, "f": f_new, "g": g_new, "h": h, "scaled": scaled,
                 "k": k_new, "stall": stall, "fails": fails, "f_hist": f_hist,
                 "trials": jnp.where(ls_failed, 0, trials),
                 "in_ls": active & ~acc & ~ls_failed, "d": d, "t": t_next,
                 "fresh": jnp.zeros_like(fresh), "evals": c["evals"] + jnp.sum(active, dtype=jnp.int32),
                 "steps": c["steps"] + 1,
                 "out_x": c["out_x"].at[out_i].set(x_new, mode="drop"),
                 "out_f": c["out_f"].at[out_i].set(f_new, mode="drop"),
                 "out_g": c["out_g"].at[out_i].set(gmax, mode="drop"),
                 "out_k": c["out_k"].at[out_i].set(k_new, mode="drop")}
            return assign(c, done | ~active)

        m = w_all.shape[1]
        zeros_i = jnp.zeros((b,), jnp.int32)
        c0 = {
            "idx": jnp.full((b,), -1, jnp.int32), "next": jnp.asarray(0, jnp.int32),
            "x": jnp.zeros((b, p), dtype), "w": jnp.zeros((1 if shared_weights else b, m), dtype),
            "f": jnp.zeros((b,), dtype), "g": jnp.zeros((b, p), dtype),
            "d": jnp.zeros((b, p), dtype), "t": jnp.ones((b,), dtype),
            "fresh": jnp.zeros((b,), bool), "in_ls": jnp.zeros((b,), bool),
            "k": zeros_i, "stall": zeros_i, "fails": zeros_i, "trials": zeros_i,
            "f_hist": jnp.zeros((b, window), dtype),
            "h": jnp.broadcast_to(eye, (b, p, p)), "scaled": jnp.zeros((b,), bool),
            "evals": jnp.asarray(0, jnp.int32), "steps": jnp.asarray(0, jnp.int32),
            "out_x": theta0, "out_f": jnp.full((n_starts,), jnp.nan, dtype),
            "out_g": jnp.full((n_starts,), jnp.nan, dtype),
            "out_k": jnp.zeros((n_starts,), jnp.int32),
        }
        c0 = assign(c0, jnp.ones((b,), bool))
        c = jax.lax.while_loop(lambda c: jnp.any(c["idx"] >= 0), body, c0)
        return c["out_x"], c["out_f"], c["out_g"], c["out_k"], c["evals"], c["steps"]

    return jax.jit(solve)


def minimize_multistart(
    log_form: Callable,
    theta0,
    logx: dict[str, np.ndarray],
    logy,
    *,
    weights=None,
    base=None,
    free: tuple[int, ...] | None = None,
    huber_delta: float = 1e-3,
    gtol: float = 1e-12,
    ftol: float = 1e-10,
    window: int = 10,
    max_iter: int = 500,
    slots: int = 64,
    objective: str = "huber",
    threads: int | None = None,
):
    """Minimise the summed Huber objective (or the Huber likelihood) from every start at once.

    Args:
      log_form: (theta [q], logx {var: [m]}) -> log predicted loss [m] (JAX, traceable).
      theta0: starting points of the free coordinates, [s, p].
      logx: log of each table variable, {var: [m]} (or [m, ...]: padded along the first axis).
      logy: log of the observed losses, [m].
      weights: point weights shared by all starts [m], per-start weights [s, m] (bootstrap
        counts), or None (all ones).
      base: full coordinate vector [q] whose ``free`` entries are replaced by the optimiser
        (the others stay fixed); default zeros with every coordinate free.
      free: indices of the free coordinates in ``base`` (length p).
      huber_delta: Huber delta (Hoffmann et al. 2022: 1e-3).
      gtol: stop a start when max |grad| <= gtol.
      ftol, window: stop a start when f fell by at most ftol |f| over the last ``window``
        iterations (scale-free: the same stopping point for a summed or averaged objective).
      max_iter: BFGS iteration cap per start.
      slots: rows iterated at once (the work-queue width). Narrow (64, not 256) keeps the
        [rows, points] intermediates in cache and shortens the queue's tail (rows idle while
        the slowest starts finish): see ``python -m experiments.bench_fit``.
      threads: chunks of starts solved concurrently (default: the CPU count, at most 2).
      objective: "huber" (sum of w Huber_delta(r)) or "huber_ml" (negative log-likelihood
        of r ~ exp(-Huber_delta(r / sigma)) / (sigma Z), with log sigma the LAST coordinate
        of ``base``; ``log_form`` reads the others).
    Returns:
      dict with ``theta`` [s, p], ``value`` [s] (objective), ``grad_max`` [s] (max |grad| at
      the end), ``iters`` [s] (accepted steps), all NumPy; ``evals`` (total evaluations),
      ``steps`` (loop steps of ``width`` rows: evals / (steps * width) is the rows' use).
    """
    if objective not in ("huber", "huber_ml"):
        raise ValueError(f"objective={objective!r}: must be 'huber' or 'huber_ml'")
    threads = min(os.cpu_count() or 1, 2) if threads is None else threads
    theta0 = np.atleast_2d(np.asarray(theta0, dtype=np.float64))
    s, p = theta0.shape
    if free is None:
        free = tuple(range(p))
    if base is None:
        base = np.zeros(len(free), dtype=np.float64)
    base = np.asarray(base, dtype=np.float64)
    logy = np.asarray(logy, dtype=np.float64)
    m = logy.shape[0]
    weights = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape not in ((m,), (s, m)):
        raise ValueError(f"weights of shape {weights.shape}: need [points] = {(m,)} or "
                         f"[starts, points] = {(s, m)}")
    shared = weights.ndim == 1
    # Pad to a few shapes so that tables of similar size share one compiled program: points
    # by :func:`pad_points` (padded points have weight 0); starts to 256, or to a multiple of
    # 1024 above that (padded starts are never assigned to a row: they cost nothing, so one
    # start, a bootstrap of 20 resamples and a restart of 3 refits share one program). The
    # starts are split evenly over up to ``threads`` chunks (at least 256 starts on 256 points
    # each, fewer on more points; at most 8192), solved concurrently: XLA runs one program on
    # one core at a time.
    m_pad = pad_points(m)
    # a chunk worth a thread: 256 starts on 256 points, fewer starts on more points
    n_par = max(1, min(int(threads), s // max(1, 65536 // m_pad)))
    per = min(-(-s // n_par), 8192)
    chunk = MIN_CHUNK if per <= MIN_CHUNK else -(-per // 1024) * 1024
    width = _width(slots, per, m_pad * sum(int(np.prod(np.shape(v)[1:])) for v in logx.values()))
    pad = lambda v: np.concatenate([np.asarray(v, dtype=np.float64),
                                    np.zeros((m_pad - m, *np.shape(v)[1:]))])
    solve = _solver(log_form, tuple(int(i) for i in free), base.shape[0], int(width),
                    int(window), objective, shared)
    bounds = [(lo, min(lo + per, s)) for lo in range(0, s, per)]
    with jax.enable_x64(True):
        logx_j = {k: jnp.asarray(pad(v)) for k, v in logx.items()}
        fixed_args = (jnp.asarray(base), logx_j, jnp.asarray(pad(logy)),
                      jnp.asarray(huber_delta, jnp.float64), jnp.asarray(gtol, jnp.float64),
                      jnp.asarray(ftol, jnp.float64), jnp.asarray(max_iter, jnp.int32))

    def run(lo_hi):
        lo, hi = lo_hi
        theta_p = np.zeros((chunk, p))
        theta_p[:hi - lo] = theta0[lo:hi]
        w_p = np.zeros((1, m_pad) if shared else (chunk, m_pad))
        w_p[:1 if shared else hi - lo, :m] = weights if shared else weights[lo:hi]
        with jax.enable_x64(True):  # thread-local: entered in each worker
            out = solve(jnp.asarray(theta_p), jnp.asarray(w_p), *fixed_args,
                        jnp.asarray(hi - lo, jnp.int32))
            return [np.asarray(o)[:hi - lo] if np.ndim(o) else np.asarray(o) for o in out]

    if len(bounds) > 1 and n_par > 1:
        with ThreadPoolExecutor(max_workers=n_par) as pool:
            results = list(pool.map(run, bounds))
    else:
        results = [run(b) for b in bounds]
    theta, value, grad_max, iters = (np.concatenate([r[i] for r in results]) for i in range(4))
    if objective == "huber_ml":
        value = value + huber_log_normaliser(huber_delta) * weights.sum(axis=-1)
    return {"theta": theta, "value": value, "grad_max": grad_max, "iters": iters,
            "evals": int(sum(int(r[4]) for r in results)),
            "steps": int(sum(int(r[5]) for r in results)), "width": int(width)}


MIN_CHUNK = 256  # starts of the smallest padded chunk
SMALL_ROWS_WORK = 64 * 256 * 4  # rows x point values of a loop step too cheap to narrow the rows


def _width(slots: int, per: int, values: int) -> int:
    """Rows of the work queue for ``per`` starts on ``values`` table values (padded points x
    values per point: 2 for Chinchilla's N, D; hundreds for a training curve's features):
    ``slots`` where a step of ``slots`` rows is cheap (a compiled program shared by every
    start count), else only as many as there are starts (a power of two >= 8: refining 2
    starts on 10^5 rows, or 16 starts of a curve law, evaluates 8 or 16 rows a step, not 64)."""
    if slots * values <= SMALL_ROWS_WORK:
        return int(slots)
    return int(min(slots, max(_bucket(per), 8)))


def pad_points(m: int) -> int:
    """Padded point count: m rounded up to a multiple of an eighth of its power-of-two bucket
    (at least 8), so padding wastes at most 1/8 of the work (50 -> 56, 240 -> 256)."""
    step = max(_bucket(m) // 8, 8)
    return -(-max(int(m), 1) // step) * step


def _bucket(n: int) -> int:
    """Smallest power of two >= n."""
    return 1 << max(int(n) - 1, 0).bit_length()
