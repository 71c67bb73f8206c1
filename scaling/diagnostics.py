"""Honest warnings about a fit: what the numbers cannot support.

A fit always returns numbers; these checks say when they mean little (Besiroglu et al. 2024,
arXiv:2404.10102, found implausibly narrow published intervals and optimiser artefacts):

- fewer distinct points than free parameters, or exactly as many (the law interpolates),
  in the fit or in a share of the bootstrap resamples;
- a single value in a variable the law depends on (e.g. all N equal);
- a parameter at a bound or running off: an exponent above 2 or near 0, E -> 0, a
  coefficient overflowing, R* above 1e6;
- a best objective that few starts reach (the answer depends on the start grid): k of s
  starts reached it, so a fresh grid of s starts would miss its basin with probability about
  (1 - k/s)^s; above MISS_PROBABILITY the answer depends on the grid (at any grid size: 1 of 9
  warns, as does 2 of 4500, but not 3 of 4500);
- rows that duplicate another row in every column the fit uses (variables, loss, weight):
  each copy is fitted, and resampled, as an independent run, so the bootstrap intervals are
  too narrow if they are copies of one run (the same point with other losses is repeated
  seeds, not duplicates);
- an estimate outside its own bootstrap interval; an interval collapsed to a point (unless
  the quantity is fixed by construction, e.g. beta/(alpha+beta) = 0.5 under alpha = beta or
  with alpha, beta fixed); an interval reaching values where the parameter runs off.

Every function returns a list of one-line messages (empty: nothing to report).
"""

from __future__ import annotations

import re

import numpy as np

EXPONENT_MAX = 2.0  # above: running off (published exponents are 0.05-0.8)
EXPONENT_MIN = 1e-3  # below: the term is a constant, its coefficient unidentified
E_MIN_FRACTION = 1e-3  # E below this fraction of the smallest loss: E -> 0
COEF_MAX = 1e30  # A, B, N_c, ... above: running off
R_STAR_MAX = 1e6  # Muennighoff R_D*, R_N* above: repetition never decays
MISS_PROBABILITY = 0.05  # (1 - k/s)^s above this: a grid of s starts could well miss the best
POINTS_SHARE = 0.05  # share of resamples with too few distinct points worth a warning


def _is_exponent(name: str) -> bool:
    return name.startswith(("alpha", "beta", "gamma"))


def distinct_points(logx: dict[str, np.ndarray], weights: np.ndarray | None = None) -> int:
    """Number of distinct combinations of the law's variables among rows of weight > 0."""
    x = np.column_stack(list(logx.values()))
    if weights is not None:
        x = x[np.asarray(weights) > 0]
    return int(np.unique(x, axis=0).shape[0])


def duplicate_rows(result) -> int:
    """Rows (of weight > 0) equal to an earlier row in every fitted column: variables, loss and,
    when not all 1, the weight."""
    cols = [*result.logx.values(), result.logy]
    w = result.weights if result.weights is not None else np.ones(len(result.logy))
    if np.any(w != 1):
        cols.append(w)
    x = np.column_stack(cols)[w > 0]
    return int(len(x) - np.unique(x, axis=0).shape[0])


def start_miss_probability(n_at_best: int, n_starts: int) -> float:
    """(1 - k/s)^s: the chance that s starts drawn like these miss a basin that k of s reached."""
    return float((1.0 - n_at_best / n_starts) ** n_starts) if n_starts else 0.0


def parameter_warnings(params: dict[str, float], fixed=(), min_loss: float | None = None) -> list[str]:
    """Parameters at a bound or running off (exponents, E, coefficients, R*)."""
    out = []
    for k, v in params.items():
        if k in fixed or k == "sigma":
            continue
        why = running_off(k, v, min_loss)
        if why:
            out.append(f"{k} = {v:.3g}{why}" if np.isfinite(v) else f"{k} = {v}{why}")
    return out


def running_off(k: str, v: float, min_loss: float | None = None) -> str:
    """Why the value ``v`` of parameter ``k`` is at a bound or running off ("" if it is not)."""
    if not np.isfinite(v):
        return ": overflowed (the fit ran off to a degenerate optimum)"
    if _is_exponent(k) and v > EXPONENT_MAX:
        return f" > {EXPONENT_MAX:g}: the exponent is running off"
    if _is_exponent(k) and v < EXPONENT_MIN:
        return ": the exponent is at its bound 0 (the term is a constant)"
    if k == "E" and min_loss is not None and v < E_MIN_FRACTION * min_loss:
        return " -> 0: the irreducible loss is not identified"
    if k.startswith("R_") and v > R_STAR_MAX:
        return f" > {R_STAR_MAX:.0e}: running off (no decay measured)"
    if k in ("A", "B", "N_c", "D_c", "C_c") and v > COEF_MAX:
        return ": the coefficient is running off"
    return ""


def fixed_by_construction(result, names) -> set[str]:
    """Quantities among ``names`` that no free coordinate of ``result`` moves.

    E.g. beta/(alpha+beta) = 0.5 under chinchilla_tied, or with alpha and beta both fixed:
    their bootstrap interval is a point by construction, not a collapsed interval. Found by
    moving the free coordinates at random and recomputing the law's derived quantities (at the
    budgets C named in ``names``, e.g. "N_opt(C=1e+21)").
    """
    spec = result.law
    names = list(names)
    budgets = sorted({float(c) for c in re.findall(r"\(C=([^)]+)\)", " ".join(names))})
    q = len(spec.theta_names)
    free = [i for i in result.free if i < q]
    thetas = np.tile(np.asarray(result.theta[:q], dtype=np.float64), (4, 1))
    thetas[1:, free] += np.random.default_rng(0).normal(0.0, 0.1, (3, len(free)))
    with np.errstate(all="ignore"):
        params = spec.to_params(thetas)
        values = {**params, **(spec.derived(params, budgets) if spec.derived is not None else {})}
    out = set()
    for k in names:
        if k in values:
            v = np.asarray(values[k], dtype=np.float64)
            if np.all(np.abs(v - v[0]) <= 1e-12 * np.abs(v[0])):
                out.add(k)
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
    dup = duplicate_rows(result)
    if dup:
        cols = [result.columns.get(v, v) for v in (*result.logx, "loss")]
        out.append(f"{dup} rows duplicate another row in every fitted column ({', '.join(cols)}): "
                   "each copy is fitted and resampled as an independent run, so the bootstrap "
                   "intervals are too narrow if they are copies of one run (drop the copies)")
    min_loss = float(np.exp(result.logy.min()))
    out += parameter_warnings(result.params, result.fixed, min_loss)
    k, s = result.n_at_best, result.n_starts
    miss = start_miss_probability(k, s)
    if k < s and miss > MISS_PROBABILITY:
        out.append(f"only {k} of {s} starts reach the best objective (a basin that {k} in {s} "
                   f"starts reach is missed by {s} such starts with probability {miss:.0%}): "
                   "the answer depends on the start grid")
    if boot is not None:
        constant = set(result.fixed) | fixed_by_construction(result, boot.intervals.index)
        out += bootstrap_warnings(boot, n_free, fixed=constant, min_loss=min_loss)
    return out


def bootstrap_warnings(boot, n_free: int | None = None, fixed=(), min_loss: float | None = None) -> list[str]:
    """Resamples with too few points, failed refits, estimates outside their own intervals,
    collapsed intervals and intervals reaching values where a parameter runs off.

    ``fixed``: quantities fixed by hand or by construction (no interval to judge).
    """
    out = []
    if n_free is not None and boot.distinct is not None and len(boot.distinct):
        share = float(np.mean(boot.distinct <= n_free))
        if share >= POINTS_SHARE:
            out.append(f"{share:.0%} of bootstrap resamples have no more distinct points than the "
                       f"{n_free} free parameters: the intervals are unreliable")
    from scaling.refit import refit_warnings  # dropped refits, refits on a boundary
    out += refit_warnings(boot)
    out += interval_warnings(boot, fixed)
    for name, row in boot.intervals.iterrows():
        est, lo, hi = row["estimate"], row["lower"], row["upper"]
        if name in fixed or name == "sigma" or not np.isfinite(est) or running_off(name, est, min_loss):
            continue  # the estimate's own warning says it
        for end in (lo, hi):
            why = running_off(name, end, min_loss) if not np.isnan(end) else ""
            if why:
                out.append(f"{name}: its {boot.level:.0%} interval [{lo:.4g}, {hi:.4g}] reaches "
                           f"{name} = {end:.3g}{why}, in some bootstrap refits; the interval "
                           "does not measure it")
                break
    return out


def interval_warnings(boot, fixed=()) -> list[str]:
    """Estimates outside their own percentile interval (the resamples' refits land elsewhere than
    the full data's: the estimate is unstable and the interval does not describe it) and
    intervals collapsed to a point; ``fixed``: quantities with no interval to judge."""
    out = []
    for name, row in boot.intervals.iterrows():
        est, lo, hi = row["estimate"], row["lower"], row["upper"]
        if name in fixed:
            continue
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
