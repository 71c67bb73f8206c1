"""Bootstrap confidence intervals for a fitted law (resample runs, refit, percentiles).

Efron & Tibshirani 1993, Ch. 13 (percentile interval). Each resample draws the m runs with
replacement; it is expressed as integer weights w [n, m] (how often each run was drawn) so
that all resamples are refitted in one vectorised BFGS batch, each starting from the
full-data optimum (:mod:`scaling.multistart`).

Axis letters: n resamples, m runs, p free coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class BootstrapResult:
    """Bootstrap samples and percentile intervals.

    Attributes:
      samples: DataFrame [n_ok, q], one row per converged resample, one column per parameter
        and derived quantity.
      intervals: DataFrame indexed by quantity with columns ``estimate`` (full-data value),
        ``lower``, ``upper`` (percentile interval at ``level``), ``median``, ``std``.
      level: nominal coverage, e.g. 0.95.
      n: resamples drawn; n_failed: resamples whose refit did not converge (dropped).
      distinct: distinct fitted points (rows with distinct variable values) in each
        resample [n] (for the warning on resamples with fewer points than parameters).
      theta: optimiser coordinates of the converged refits [n_ok, q] (for predictions).
    """

    samples: pd.DataFrame
    intervals: pd.DataFrame
    level: float
    n: int
    n_failed: int
    distinct: np.ndarray | None = None
    theta: np.ndarray | None = None

    def to_csv(self, path) -> None:
        """Write the samples (one row per converged resample) for later derived quantities."""
        self.samples.to_csv(path, index_label="resample")

    def __post_init__(self):
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"level={self.level!r}: must be in (0, 1)")

    def interval(self, name: str) -> tuple[float, float]:
        """(lower, upper) of quantity ``name``."""
        row = self.intervals.loc[name]
        return float(row["lower"]), float(row["upper"])


def percentile_intervals(samples: pd.DataFrame, estimates: dict[str, float],
                         level: float) -> pd.DataFrame:
    """Percentile intervals of each column of ``samples`` [n, q] at ``level`` in (0, 1)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r}: must be in (0, 1)")
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    rows = {}
    for name in samples.columns:
        v = samples[name].to_numpy(dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            rows[name] = dict(estimate=estimates.get(name, np.nan), lower=np.nan,
                              upper=np.nan, median=np.nan, mean=np.nan, std=np.nan)
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # degenerate resamples (A ~ 1e200): inf
            mean, std = np.mean(v), np.std(v, ddof=1) if v.size > 1 else np.nan
        rows[name] = dict(estimate=estimates.get(name, np.nan),
                          lower=np.percentile(v, lo_q), upper=np.percentile(v, hi_q),
                          median=np.median(v), mean=mean, std=std)
    return pd.DataFrame.from_dict(rows, orient="index")


def resample_weights(m: int, n: int, seed: int) -> np.ndarray:
    """Bootstrap counts w [n, m]: row i says how often each run is drawn in resample i."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(m, np.full(m, 1.0 / m), size=n).astype(np.float64)


def bootstrap_fit(result, n: int = 1000, seed: int = 0, level: float = 0.95,
                  budgets: Sequence[float] = (), max_iter: int = 500) -> BootstrapResult:
    """Refit ``result`` (a :class:`scaling.fit.FitResult`) on ``n`` resamples of its runs.

    Args:
      result: the full-data fit; each resample starts from its optimum.
      n: number of resamples; seed: NumPy seed of the resampling.
      level: coverage of the percentile intervals.
      budgets: FLOP budgets C at which derived quantities (N_opt, D_opt) are reported.
    Returns:
      :class:`BootstrapResult` over the law's parameters and derived quantities.
    """
    from scaling.multistart import minimize_multistart

    if not (isinstance(n, (int, np.integer)) and n >= 2):
        raise ValueError(f"n={n!r}: need an integer number of resamples >= 2")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r}: must be in (0, 1)")
    spec = result.law
    m = len(result.logy)
    counts = resample_weights(m, n, seed)
    theta0 = np.tile(result.theta[list(result.free)], (n, 1))
    out = minimize_multistart(
        spec.log_form, theta0, result.logx, result.logy, weights=counts * result.weights[None, :],
        base=result.theta, free=result.free, huber_delta=result.huber_delta, max_iter=max_iter,
        objective=result.objective_kind)
    ok = np.isfinite(out["value"]) & (out["iters"] < max_iter)
    full = np.tile(result.theta, (n, 1))
    full[:, list(result.free)] = out["theta"]
    full = full[ok]
    with np.errstate(over="ignore"):
        params = spec.to_params(full[:, :len(spec.theta_names)])
    cols = {k: np.asarray(params[k], dtype=np.float64) for k in spec.param_names}
    if result.objective_kind == "huber_ml":
        cols["sigma"] = np.exp(full[:, -1])
    estimates = dict(result.params)
    if spec.derived is not None:
        cols.update({k: np.asarray(v, dtype=np.float64)
                     for k, v in spec.derived(params, budgets).items()})
        est = spec.derived({k: np.asarray(v) for k, v in result.params.items()}, budgets)
        estimates.update({k: float(v) for k, v in est.items()})
    samples = pd.DataFrame(cols)
    # a point = a distinct combination of the law's variables among the drawn, weighted runs
    point = np.unique(np.column_stack(list(result.logx.values())), axis=0, return_inverse=True)[1]
    drawn = (counts * result.weights[None, :]) > 0
    distinct = np.array([np.unique(point.ravel()[row]).size for row in drawn])
    return BootstrapResult(samples=samples,
                           intervals=percentile_intervals(samples, estimates, level),
                           level=level, n=n, n_failed=int((~ok).sum()), distinct=distinct,
                           theta=full)
