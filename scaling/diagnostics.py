"""Honest warnings about a fit: what the numbers cannot support.

A fit always returns numbers; these checks say when they mean little (Besiroglu et al. 2024,
arXiv:2404.10102, found implausibly narrow published intervals and optimiser artefacts):

- fewer distinct points than free parameters, or exactly as many (the law interpolates),
  in the fit or in a share of the bootstrap resamples;
- a single value in a variable the law depends on (e.g. all N equal);
- a parameter at a bound or running off: an exponent above 2 or near 0, E -> 0, a
  coefficient overflowing, R* above 1e6;
- a best objective that few starts reach (the answer depends on the start grid);
- an estimate outside its own bootstrap interval.

Every function returns a list of one-line messages (empty: nothing to report).
"""

from __future__ import annotations

import numpy as np

EXPONENT_MAX = 2.0  # above: running off (published exponents are 0.05-0.8)
EXPONENT_MIN = 1e-3  # below: the term is a constant, its coefficient unidentified
E_MIN_FRACTION = 1e-3  # E below this fraction of the smallest loss: E -> 0
COEF_MAX = 1e30  # A, B, N_c, ... above: running off
R_STAR_MAX = 1e6  # Muennighoff R_D*, R_N* above: repetition never decays
FEW_STARTS = 0.01  # share of starts at the best below this (and <= 2 starts): start-grid luck
POINTS_SHARE = 0.05  # share of resamples with too few distinct points worth a warning


def _is_exponent(name: str) -> bool:
    return name.startswith(("alpha", "beta", "gamma"))


def distinct_points(logx: dict[str, np.ndarray], weights: np.ndarray | None = None) -> int:
    """Number of distinct combinations of the law's variables among rows of weight > 0."""
    x = np.column_stack(list(logx.values()))
    if weights is not None:
        x = x[np.asarray(weights) > 0]
    return int(np.unique(x, axis=0).shape[0])


def parameter_warnings(params: dict[str, float], fixed=(), min_loss: float | None = None) -> list[str]:
    """Parameters at a bound or running off (exponents, E, coefficients, R*)."""
    out = []
    for k, v in params.items():
        if k in fixed or k == "sigma":
            continue
        if not np.isfinite(v):
            out.append(f"{k} = {v}: overflowed (the fit ran off to a degenerate optimum)")
        elif _is_exponent(k) and v > EXPONENT_MAX:
            out.append(f"{k} = {v:.3g} > {EXPONENT_MAX:g}: the exponent is running off")
        elif _is_exponent(k) and v < EXPONENT_MIN:
            out.append(f"{k} = {v:.3g}: the exponent is at its bound 0 (the term is a constant)")
        elif k == "E" and min_loss is not None and v < E_MIN_FRACTION * min_loss:
            out.append(f"E = {v:.3g} -> 0: the irreducible loss is not identified")
        elif k.startswith("R_") and v > R_STAR_MAX:
            out.append(f"{k} = {v:.3g} > {R_STAR_MAX:.0e}: running off (no decay measured)")
        elif k in ("A", "B", "N_c", "D_c", "C_c") and v > COEF_MAX:
            out.append(f"{k} = {v:.3g}: the coefficient is running off")
    return out


def fit_warnings(result, boot=None) -> list[str]:
    """Warnings for a :class:`scaling.fitting.FitResult` and optionally its bootstrap."""
    out = []
    n_free = len(result.free)
    m = distinct_points(result.logx, result.weights)
    if m < n_free:
        out.append(f"{m} distinct points for {n_free} free parameters: underdetermined, the "
                   "estimates are arbitrary")
    elif m == n_free:
        out.append(f"{m} distinct points for {n_free} free parameters: the law interpolates "
                   "them; no error is measured and intervals mean nothing")
    for var, lx in result.logx.items():
        used = lx[result.weights > 0] if result.weights is not None else lx
        if np.ptp(used) == 0:
            out.append(f"all {result.columns.get(var, var)} equal ({np.exp(used[0]):.4g}): "
                       f"parameters that depend on {var} are not identified")
    out += parameter_warnings(result.params, result.fixed, float(np.exp(result.logy.min())))
    if result.n_starts >= 10 and result.n_at_best <= 2 and result.n_at_best < FEW_STARTS * result.n_starts:
        out.append(f"only {result.n_at_best} of {result.n_starts} starts reach the best objective: "
                   "the answer depends on the start grid")
    if boot is not None:
        out += bootstrap_warnings(boot, n_free, fixed=result.fixed)
    return out


def bootstrap_warnings(boot, n_free: int | None = None, fixed=()) -> list[str]:
    """Resamples with too few points, failed refits, estimates outside their own intervals."""
    out = []
    if n_free is not None and boot.distinct is not None and len(boot.distinct):
        share = float(np.mean(boot.distinct <= n_free))
        if share >= POINTS_SHARE:
            out.append(f"{share:.0%} of bootstrap resamples have no more distinct points than the "
                       f"{n_free} free parameters: the intervals are unreliable")
    from scaling.refit import refit_warnings  # dropped refits, refits on a boundary
    out += refit_warnings(boot)
    for name, row in boot.intervals.iterrows():
        if name in fixed:
            continue
        est, lo, hi = row["estimate"], row["lower"], row["upper"]
        if np.isfinite(est) and np.isfinite(lo) and np.isfinite(hi) and lo < hi and not lo <= est <= hi:
            out.append(f"{name} = {est:.4g} lies outside its own {boot.level:.0%} interval "
                       f"[{lo:.4g}, {hi:.4g}]: the estimate is unstable")
        elif np.isfinite(lo) and lo == hi and boot.n > 1:
            out.append(f"{name}: the {boot.level:.0%} interval collapsed to the point {lo:.4g}")
    return out


def markdown(warnings: list[str], title: str = "Warnings") -> list[str]:
    """Report lines: a heading and one bullet per warning (nothing when there are none)."""
    if not warnings:
        return []
    return [f"**{title}:**", "", *[f"- {w}" for w in warnings], ""]
