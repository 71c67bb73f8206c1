"""Bootstrap confidence intervals for a fitted law (resample runs, refit, percentiles).

Efron & Tibshirani 1993, Ch. 13 (percentile interval). Each resample draws the m runs with
replacement; it is expressed as integer weights w [n, m] (how often each run was drawn) so
that all resamples are refitted in one vectorised BFGS batch, each from a few starts, and
each counts only when its scaled gradient is small (:mod:`scaling.refit`). Refits that fail
are dropped and counted by reason; converged refits that land on a boundary of the law
(E -> 0, an exponent at 0 or running off, a coefficient overflowing) are kept but named, and
the intervals are also given without them (:func:`boundary_mask`).

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
      status: per-resample outcome [n] (str): "converged"; "boundary" (stopped while running
        off to a boundary of the law: kept, and flagged in ``degenerate``); or the reason it
        was dropped ("max_iter", "stalled", "non_finite"; :func:`scaling.refit.refit`).
      scaled_grad: per-resample scaled gradient at the kept optimum [n].
      degenerate: converged refits on a boundary of the law [n_ok] (bool).
      degenerate_reasons: {reason: count} over the converged refits, e.g. {"E -> 0": 42}.
      intervals_without_degenerate: ``intervals`` over the non-degenerate refits only.
      starts: starts per refit.
    """

    samples: pd.DataFrame
    intervals: pd.DataFrame
    level: float
    n: int
    n_failed: int
    distinct: np.ndarray | None = None
    theta: np.ndarray | None = None
    status: np.ndarray | None = None
    scaled_grad: np.ndarray | None = None
    degenerate: np.ndarray | None = None
    degenerate_reasons: dict | None = None
    intervals_without_degenerate: pd.DataFrame | None = None
    starts: int = 1

    @property
    def failed_fraction(self) -> float:
        """Share of the resamples whose refit was dropped."""
        return self.n_failed / self.n if self.n else 0.0

    @property
    def failed_reasons(self) -> dict[str, int]:
        """{reason: count} of the dropped refits (empty when none or unknown)."""
        if self.status is None:
            return {}
        dropped = ~np.isin(self.status, ("converged", "boundary"))
        reasons, counts = np.unique(self.status[dropped], return_counts=True)
        return {str(r): int(c) for r, c in zip(reasons, counts)}

    @property
    def degenerate_fraction(self) -> float:
        """Share of the converged refits on a boundary of the law."""
        d = self.degenerate
        return float(np.mean(d)) if d is not None and len(d) else 0.0

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
                  budgets: Sequence[float] = (), max_iter: int = 500,
                  grid_starts: int | None = None, gtol: float | None = None,
                  progress: bool | None = None) -> BootstrapResult:
    """Refit ``result`` (a :class:`scaling.fit.FitResult`) on ``n`` resamples of its runs.

    Args:
      result: the full-data fit; its optimum and its fastest grid starts start each refit.
      n: number of resamples; seed: NumPy seed of the resampling.
      level: coverage of the percentile intervals.
      budgets: FLOP budgets C at which derived quantities (N_opt, D_opt) are reported.
      max_iter: BFGS iteration cap per start.
      grid_starts, gtol: grid starts per refit and scaled-gradient tolerance
        (:func:`scaling.refit.refit`; defaults there).
      progress: a line on stderr when the refits take more than a few seconds (default: for
        large bootstraps, :func:`scaling.progress.wanted`).
    Returns:
      :class:`BootstrapResult` over the law's parameters and derived quantities.
    """
    from scaling.refit import refit

    if not (isinstance(n, (int, np.integer)) and n >= 2):
        raise ValueError(f"n={n!r}: need an integer number of resamples >= 2")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level!r}: must be in (0, 1)")
    spec = result.law
    m = len(result.logy)
    counts = resample_weights(m, n, seed)
    out = refit(result, counts * result.weights[None, :], grid_starts=grid_starts,
                max_iter=max_iter, gtol=gtol, progress=progress)
    # A refit stopped while running off to a boundary of the law (R* -> inf, E -> 0, ...)
    # has no stationary point to reach: it is kept (status "boundary") and flagged below as
    # degenerate, not dropped, so the intervals with and without such refits can both be given.
    status = out["status"].copy()
    with np.errstate(over="ignore"):
        every = spec.to_params(out["theta"][:, :len(spec.theta_names)])
    min_loss = float(np.exp(np.min(result.logy)))
    at_bound, _ = boundary_mask({k: every[k] for k in spec.param_names if k not in result.fixed},
                                min_loss)
    status[np.isin(status, ("stalled", "max_iter")) & at_bound] = "boundary"
    ok = np.isin(status, ("converged", "boundary"))
    full = out["theta"][ok]
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
    free_params = {k: v for k, v in cols.items() if k in spec.param_names and k not in result.fixed}
    degenerate, reasons = boundary_mask(free_params, min_loss)
    # a point = a distinct combination of the law's variables among the drawn, weighted runs
    point = np.unique(np.column_stack(list(result.logx.values())), axis=0, return_inverse=True)[1]
    drawn = (counts * result.weights[None, :]) > 0
    distinct = np.array([np.unique(point.ravel()[row]).size for row in drawn])
    return BootstrapResult(
        samples=samples, intervals=percentile_intervals(samples, estimates, level),
        level=level, n=n, n_failed=int((~ok).sum()), distinct=distinct, theta=full,
        status=status, scaled_grad=out["scaled_grad"], degenerate=degenerate,
        degenerate_reasons=reasons,
        intervals_without_degenerate=percentile_intervals(samples[~degenerate], estimates, level),
        starts=int(out["starts"]))


def boundary_mask(params: dict[str, np.ndarray], min_loss: float) -> tuple[np.ndarray, dict]:
    """Refits [n] on a boundary of the law, and {reason: count}.

    ``params``: {natural parameter: values [n]} of the free parameters; ``min_loss``: the
    smallest observed loss. Boundaries (thresholds of :mod:`scaling.diagnostics`, which
    applies them to the full-data fit): E -> 0 (below a fraction of the smallest loss), an
    exponent (alpha*, beta*, gamma*) at 0 or running off, a coefficient (A, B, N_c, D_c, C_c)
    overflowing, a decay constant R* running off; any non-finite parameter.
    """
    from scaling import diagnostics as dg

    n = len(next(iter(params.values()))) if params else 0
    mask = np.zeros(n, dtype=bool)
    reasons: dict[str, int] = {}

    def flag(hit, reason):
        hit = np.asarray(hit, dtype=bool)
        if hit.any():
            reasons[reason] = int(hit.sum())
        mask[:] |= hit

    with np.errstate(invalid="ignore"):
        for k, v in params.items():
            v = np.asarray(v, dtype=np.float64)
            flag(~np.isfinite(v), f"{k} not finite")
            if k == "E":
                flag(v < dg.E_MIN_FRACTION * min_loss, "E -> 0")
            elif dg._is_exponent(k):
                flag(v < dg.EXPONENT_MIN, f"{k} -> 0")
                flag(v > dg.EXPONENT_MAX, f"{k} > {dg.EXPONENT_MAX:g}")
            elif k in ("A", "B", "N_c", "D_c", "C_c"):
                flag(v > dg.COEF_MAX, f"{k} running off")
            elif k.startswith("R_"):
                flag(v > dg.R_STAR_MAX, f"{k} running off")
    return mask, reasons
