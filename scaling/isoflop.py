"""IsoFLOP analysis: Chinchilla approaches 1 and 2 (Hoffmann et al. 2022, Sec. 3.1-3.2).

Approach 2: group runs by FLOP budget C (tolerant to small mismatches), fit a parabola of
loss in log N per budget, take its minimum (N*, D*, L*), then fit N_opt = k_N C^a and
D_opt = k_D C^b by least squares in log space; bootstrap intervals by resampling the runs
within each budget. Approach 1: the envelope (minimum loss over all training curves at
each FLOP count) and its power laws. Extrapolation check: refit without the largest budget
and predict its L* (saturating law L*(C) = E + A C^-alpha) and N*.

Axis letters: m runs, k budgets, n bootstrap resamples.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scaling.table import column_names, extract, load_table


def group_budgets(C: np.ndarray, rtol: float = 0.05) -> np.ndarray:
    """Budget label [m] (geometric mean of its group) for FLOP counts C [m].

    Sorted FLOP counts whose consecutive ratio is below 1 + rtol share a budget.
    """
    C = np.asarray(C, dtype=np.float64)
    order = np.argsort(C)
    logc = np.log(C[order])
    starts = np.concatenate([[True], np.diff(logc) > np.log1p(rtol)])
    gid_sorted = np.cumsum(starts) - 1
    centers = np.exp(np.array([logc[gid_sorted == g].mean() for g in range(gid_sorted.max() + 1)]))
    gid = np.empty_like(gid_sorted)
    gid[order] = gid_sorted
    return centers[gid]


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of y = slope x + intercept by least squares."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def _budget_optima(C, logn, loss, logd, budgets, warn=True, window=None):
    """Per-budget parabola minima: DataFrame [k] with C, N_star, D_star, L_star, in_range.

    ``window``: fit only runs with |log N - log N_min| <= log(window), N_min the run of
    lowest loss in the budget (None: all runs).
    """
    rows = []
    for c in budgets:
        sel = C == c
        if window is not None and sel.any():
            j = np.flatnonzero(sel)[np.argmin(np.where(sel, loss, np.inf)[sel])]
            sel = sel & (np.abs(logn - logn[j]) <= np.log(window) + 1e-12)
        ln, ls = logn[sel], loss[sel]
        row = dict(C=c, N_star=np.nan, D_star=np.nan, L_star=np.nan, n_runs=int(sel.sum()),
                   in_range=False)
        if sel.sum() >= 3 and np.ptp(ln) > 0:
            q2, q1, q0 = np.polyfit(ln, ls, 2)
            if q2 > 0:
                x_star = -q1 / (2 * q2)
                row["L_star"] = q0 + q1 * x_star + q2 * x_star**2
                row["N_star"] = np.exp(x_star)
                if logd is not None and np.ptp(ln) > 0:
                    s, i = _ols(ln, logd[sel])
                    row["D_star"] = np.exp(s * x_star + i)
                else:
                    row["D_star"] = c / (6.0 * row["N_star"])
                row["in_range"] = bool(ln.min() <= x_star <= ln.max())
                if warn and not row["in_range"]:
                    warnings.warn(f"isoFLOP budget C={c:.3g}: parabola minimum N*={np.exp(x_star):.3g}"
                                  f" outside the sampled range [{np.exp(ln.min()):.3g}, "
                                  f"{np.exp(ln.max()):.3g}]", stacklevel=3)
            elif warn:
                warnings.warn(f"isoFLOP budget C={c:.3g}: parabola not convex; no minimum",
                              stacklevel=3)
        rows.append(row)
    return pd.DataFrame(rows)


def optimal_power_laws(optima: pd.DataFrame, use_edge: bool = True) -> dict[str, float]:
    """OLS in log space of N* = k_N C^a and D* = k_D C^b on per-budget optima.

    Args:
      optima: DataFrame [k] with columns C, N_star, D_star (and in_range unless use_edge);
        rows with NaN N_star are skipped.
    Returns:
      {"a", "k_N", "b", "k_D"}.
    """
    return _exponents(optima, use_edge)


def _exponents(optima: pd.DataFrame, use_edge: bool):
    ok = np.isfinite(optima["N_star"])
    if not use_edge:
        ok &= optima["in_range"].astype(bool)
    o = optima[ok]
    if len(o) < 2:
        return dict(a=np.nan, k_N=np.nan, b=np.nan, k_D=np.nan)
    a, ia = _ols(np.log(o["C"]), np.log(o["N_star"]))
    b, ib = _ols(np.log(o["C"]), np.log(o["D_star"]))
    return dict(a=a, k_N=np.exp(ia), b=b, k_D=np.exp(ib))


@dataclass(frozen=True)
class IsoflopResult:
    """Approach-2 fit.

    Attributes:
      optima: DataFrame [k]: C, N_star, D_star, L_star, n_runs, in_range (minimum inside the
        sampled N range of the budget).
      a, b: exponents of N_opt = k_N C^a and D_opt = k_D C^b; k_N, k_D their coefficients.
      a_interval, b_interval: bootstrap percentile intervals at ``level`` (NaN if no
        bootstrap was run).
      samples: bootstrap samples of (a, b, k_N, k_D) [n, 4].
      table: the runs (columns C_budget, N, D, loss) the fit used.
      window: the parabola window used (None: all runs of a budget).
    """

    optima: pd.DataFrame
    a: float
    b: float
    k_N: float
    k_D: float
    a_interval: tuple[float, float]
    b_interval: tuple[float, float]
    level: float
    samples: pd.DataFrame = field(repr=False)
    table: pd.DataFrame = field(repr=False)
    window: float | None = None

    def n_opt(self, C):
        """N_opt(C) = k_N C^a, shape of C."""
        return self.k_N * np.asarray(C, dtype=np.float64) ** self.a

    def d_opt(self, C):
        """D_opt(C) = k_D C^b, shape of C."""
        return self.k_D * np.asarray(C, dtype=np.float64) ** self.b

    def extrapolation_check(self) -> dict[str, float]:
        """Refit on all budgets but the largest; relative errors of its predicted L*, N*.

        L*(C) follows the saturating law E + A C^-alpha fitted by :func:`scaling.fit_law`
        on the remaining L* (Porian et al. 2024's grid); N* the refitted power law.
        """
        from scaling.fitting import fit_law

        o = self.optima[np.isfinite(self.optima["N_star"])].sort_values("C")
        if len(o) < 4:
            raise ValueError(f"extrapolation check needs >= 4 budgets with optima, got {len(o)}")
        train, last = o.iloc[:-1], o.iloc[-1]
        e = _exponents(train.assign(in_range=True), use_edge=True)
        n_pred = e["k_N"] * last["C"] ** e["a"]
        fit = fit_law(pd.DataFrame({"C": train["C"], "loss": train["L_star"]}),
                      law="saturating", init_grid="porian")
        l_pred = float(fit.predict(pd.DataFrame({"C": [last["C"]], "loss": [1.0]}))[0])
        return {"C": float(last["C"]), "L_star": float(last["L_star"]), "L_pred": l_pred,
                "L_rel_error": l_pred / last["L_star"] - 1.0, "N_star": float(last["N_star"]),
                "N_pred": float(n_pred), "N_rel_error": n_pred / last["N_star"] - 1.0}


def fit_isoflop(table: pd.DataFrame | str, columns: Mapping[str, str] | None = None, *,
                budget_rtol: float = 0.05, n_bootstrap: int = 200, seed: int = 0,
                level: float = 0.95, use_edge: bool = False,
                window: float | None = None) -> IsoflopResult:
    """Chinchilla approach 2 on a table of runs (one row per run: C, N, loss; D optional).

    Args:
      table: DataFrame or CSV path.
      columns: variable -> column name (defaults "C", "N", "D", "loss").
      budget_rtol: FLOP counts within this relative spread form one budget.
      n_bootstrap: resamples (runs resampled within each budget); 0 skips the bootstrap.
      level: coverage of the percentile intervals.
      use_edge: also fit budgets whose minimum falls outside the sampled range.
      window: fit each parabola only to runs within this factor in N of the budget's
        lowest-loss run (None: all runs); isoFLOP curves are not parabolas far from the
        minimum.
    Returns:
      :class:`IsoflopResult`. Warns for budgets whose minimum is outside the sampled range.
    """
    df = load_table(table)
    names = column_names(columns)
    have_d = names["D"] in df.columns
    data = extract(df, ("C", "N", "loss") + (("D",) if have_d else ()), columns)
    budgets_of = group_budgets(data["C"], budget_rtol)
    budgets = np.unique(budgets_of)
    logn = np.log(data["N"])
    logd = np.log(data["D"]) if have_d else None
    optima = _budget_optima(budgets_of, logn, data["loss"], logd, budgets, window=window)
    est = _exponents(optima, use_edge)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(budgets_of == c) for c in budgets]
    boot = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_bootstrap):
            idx = np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups])
            o = _budget_optima(budgets_of[idx], logn[idx], data["loss"][idx],
                               None if logd is None else logd[idx], budgets, warn=False,
                               window=window)
            boot.append(_exponents(o, use_edge))
    samples = pd.DataFrame(boot, columns=["a", "k_N", "b", "k_D"])
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def interval(name):
        v = samples[name].to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]
        return (float(np.percentile(v, lo)), float(np.percentile(v, hi))) if v.size else (
            np.nan, np.nan)

    runs = pd.DataFrame({"C_budget": budgets_of, "C": data["C"], "N": data["N"],
                         "loss": data["loss"]})
    if have_d:
        runs["D"] = data["D"]
    return IsoflopResult(optima=optima, a=est["a"], b=est["b"], k_N=est["k_N"], k_D=est["k_D"],
                         a_interval=interval("a"), b_interval=interval("b"), level=level,
                         samples=samples, table=runs, window=window)


def envelope(table: pd.DataFrame | str, columns: Mapping[str, str] | None = None,
             n_bins: int = 40, C_range: tuple[float, float] | None = None) -> dict:
    """Chinchilla approach 1: the loss envelope over training curves and its power laws.

    ``table`` holds training-curve points (one row per (run, step): C FLOPs so far, N, D
    tokens so far, loss). FLOP counts are binned log-uniformly; in each bin the point with
    the lowest loss gives (C, N, D, L) of the envelope; N_opt ~ C^a and D_opt ~ C^b are
    fitted by least squares in log space. ``C_range`` restricts the power-law fit to
    budgets where the sampled models bracket the optimum (the envelope's ends are pinned to
    the smallest and largest model).

    Returns:
      {"envelope": DataFrame [bins] (C, N, D, loss), "a", "b", "k_N", "k_D"}.
    """
    df = load_table(table)
    data = extract(df, ("C", "N", "D", "loss"), columns)
    logc = np.log(data["C"])
    edges = np.linspace(logc.min(), logc.max() + 1e-12, n_bins + 1)
    which = np.clip(np.digitize(logc, edges) - 1, 0, n_bins - 1)
    rows = []
    for bin_id in np.unique(which):
        sel = np.flatnonzero(which == bin_id)
        j = sel[np.argmin(data["loss"][sel])]
        rows.append({k: data[k][j] for k in ("C", "N", "D", "loss")})
    env = pd.DataFrame(rows)
    use = env if C_range is None else env[(env["C"] >= C_range[0]) & (env["C"] <= C_range[1])]
    if len(use) < 2:
        raise ValueError(f"C_range={C_range!r}: fewer than 2 envelope points inside")
    a, ia = _ols(np.log(use["C"]), np.log(use["N"]))
    b, ib = _ols(np.log(use["C"]), np.log(use["D"]))
    return {"envelope": env, "a": a, "b": b, "k_N": float(np.exp(ia)), "k_D": float(np.exp(ib))}
