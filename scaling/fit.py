"""Robust multistart fitting of a scaling law to a table of runs.

The recipe of Hoffmann et al. 2022 (arXiv:2203.15556), Sec. 3.3 and Appendix D.2:
minimise the SUM over runs of Huber_delta(log Lhat - log L) (delta = 1e-3) with the model
in log-sum-exp form (Chinchilla: log Lhat = LSE(a - alpha log N, b - beta log D, e)), by
L-BFGS from every point of a grid of initialisations, in float64; keep the best optimum and
count the starts that reached it. Besiroglu et al. 2024 (arXiv:2404.10102) showed that a
loose stopping rule ends the optimiser near its start; the stopping tests here are
scale-free and tight (:mod:`scaling.multistart`).

Command line: ``python -m scaling.fit TABLE.csv --law chinchilla --bootstrap 1000 --out DIR``
(see :mod:`scaling.cli`).

Axis letters: m runs, p free optimiser coordinates, s starts.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from scaling.law_specs import LawSpec, default_grid, get_law
from scaling.multistart import minimize_multistart
from scaling.table import FitConvergenceError, column_names, extract, load_table


@dataclass(frozen=True)
class FitResult:
    """A fitted law.

    Attributes:
      law: the :class:`scaling.law_specs.LawSpec` fitted.
      params: {parameter name: value} in the law's published parametrisation.
      objective: SUM of Huber losses over the runs at the optimum.
      n_starts: number of starts run; n_at_best: starts whose objective came within
        ``best_rtol`` (relative) of the best.
      theta: full optimiser vector [q] at the optimum; free: indices of the fitted
        coordinates; fixed: parameters held fixed.
      logx: {variable: log values [m]}; logy: log losses [m] (the data fitted).
      huber_delta: Huber delta; columns: variable -> column name.
      starts: per-start results (DataFrame [s, ...]: theta, objective, iterations).
    """

    law: LawSpec
    params: dict[str, float]
    objective: float
    n_starts: int
    n_at_best: int
    theta: np.ndarray
    free: tuple[int, ...]
    fixed: dict[str, float]
    logx: dict[str, np.ndarray]
    logy: np.ndarray
    huber_delta: float
    columns: dict[str, str]
    starts: pd.DataFrame = field(repr=False)

    def predict(self, table: pd.DataFrame | str | None = None) -> np.ndarray:
        """Predicted loss [m'] for the runs of ``table`` (default: the fitted runs).

        Evaluated through the law's log-space form at the fitted coordinates (float64), which
        stays finite where a degenerate fit has an overflowing natural parameter (A = e^a).
        """
        if table is None:
            logx = self.logx
        else:
            x = extract(load_table(table), self.law.variables, self.columns)
            logx = {k: np.log(v) for k, v in x.items()}
        with jax.enable_x64(True):
            out = self.law.log_form(jnp.asarray(self.theta, jnp.float64),
                                    {k: jnp.asarray(v, jnp.float64) for k, v in logx.items()})
            return np.exp(np.asarray(out, dtype=np.float64))

    def residuals(self) -> np.ndarray:
        """log Lhat - log L [m] on the fitted runs."""
        return np.log(self.predict()) - self.logy

    def bootstrap(self, n: int = 1000, seed: int = 0, level: float = 0.95,
                  budgets: Sequence[float] = ()):
        """Percentile intervals over ``n`` resamples of the runs (:mod:`scaling.bootstrap`).

        ``budgets``: FLOP budgets C at which N_opt(C), D_opt(C) are reported (Chinchilla
        forms), besides the parameters and the exponent ratio beta/(alpha+beta).
        """
        from scaling.bootstrap import bootstrap_fit

        return bootstrap_fit(self, n=n, seed=seed, level=level, budgets=budgets)

    def summary(self) -> pd.DataFrame:
        """One row per parameter: value (and whether it was held fixed)."""
        return pd.DataFrame({"value": self.params,
                             "fixed": {k: k in self.fixed for k in self.params}})


def _start_grid(spec: LawSpec, init_grid, free_names: list[str]) -> np.ndarray:
    """Starting points [s, p] of the free coordinates."""
    if isinstance(init_grid, str):
        name = init_grid if init_grid in spec.grids else (
            default_grid(spec) if init_grid == "hoffmann" else init_grid)
        grid = spec.grid(name)
        idx = [spec.theta_names.index(t) for t in free_names]
        return np.unique(grid[:, idx], axis=0)
    if isinstance(init_grid, Mapping):
        missing = set(free_names) - set(init_grid)
        if missing:
            raise ValueError(f"init_grid is missing coordinates {sorted(missing)}; "
                             f"the free coordinates are {free_names}")
        axes = [np.atleast_1d(np.asarray(init_grid[t], dtype=np.float64)) for t in free_names]
        return np.array(list(itertools.product(*axes)), dtype=np.float64)
    grid = np.atleast_2d(np.asarray(init_grid, dtype=np.float64))
    if grid.shape[1] != len(free_names):
        raise ValueError(f"init_grid of shape {grid.shape}: need [starts, {len(free_names)}] "
                         f"columns {free_names}")
    return grid


def fit_law(
    table: pd.DataFrame | str,
    law: str | LawSpec = "chinchilla",
    huber_delta: float = 1e-3,
    init_grid="hoffmann",
    columns: Mapping[str, str] | None = None,
    *,
    fixed: Mapping[str, float] | None = None,
    max_iter: int = 500,
    best_rtol: float = 1e-8,
) -> FitResult:
    """Fit ``law`` to ``table`` by multistart L-BFGS on the summed Huber loss of log residuals.

    Args:
      table: DataFrame or CSV path, one row per run, with the law's variables and ``loss``.
      law: a name from :data:`scaling.law_specs.LAWS` ("chinchilla", "chinchilla_tied",
        "data_constrained", "kaplan_n", "kaplan_d", "kaplan_c", "kaplan_nd", "saturating")
        or a :class:`LawSpec`.
      huber_delta: Huber delta (Hoffmann et al. 2022: 1e-3).
      init_grid: a grid name of the law ("hoffmann" = the published 4,500-point grid for
        Chinchilla; a law without it uses its default grid), a {theta name: values} dict
        (product grid), or an array [s, p] of starting points of the free coordinates.
      columns: variable -> column name (defaults: "N", "D", "U", "C", "loss").
      fixed: parameters held fixed, in the published parametrisation (e.g. Muennighoff et
        al. 2023 fit R_D*, R_N* with E, A, B, alpha, beta fixed).
      max_iter: L-BFGS iteration cap per start (a start reaching it is not converged).
      best_rtol: relative objective tolerance for counting a start as reaching the best.
    Returns:
      :class:`FitResult`.
    Raises:
      ValueError: bad table (missing column, NaN/inf or non-positive values, fewer runs than
        free parameters) or bad arguments.
      FitConvergenceError: no start converged.
    """
    spec = get_law(law)
    if not huber_delta > 0:
        raise ValueError(f"huber_delta={huber_delta!r}: must be > 0")
    df = load_table(table)
    data = extract(df, (*spec.variables, "loss"), columns)
    fixed = dict(fixed or {})
    unknown = set(fixed) - set(spec.param_names)
    if unknown:
        raise ValueError(f"fixed={fixed!r}: {sorted(unknown)} are not parameters of "
                         f"{spec.name!r} ({spec.param_names})")
    fixed_theta = {spec.theta_of[k] for k in fixed}
    free_names = [t for t in spec.theta_names if t not in fixed_theta]
    free = tuple(spec.theta_names.index(t) for t in free_names)
    m = len(data["loss"])
    if m < len(free):
        raise ValueError(f"table has {m} runs: fewer than the {len(free)} free parameters of "
                         f"{spec.name!r} ({free_names})")
    base = np.zeros(len(spec.theta_names))
    if fixed:
        filler = {k: fixed.get(k, 1.0) for k in spec.param_names}
        full = np.asarray(spec.from_params(filler), dtype=np.float64)
        for k in fixed:
            i = spec.theta_names.index(spec.theta_of[k])
            base[i] = full[i]
    theta0 = _start_grid(spec, init_grid, free_names)
    logx = {v: np.log(data[v]) for v in spec.variables}
    logy = np.log(data["loss"])
    out = minimize_multistart(spec.log_form, theta0, logx, logy, base=base, free=free,
                              huber_delta=huber_delta, max_iter=max_iter)
    value = out["value"]
    converged = np.isfinite(value) & (out["iters"] < max_iter)
    if not converged.any():
        raise FitConvergenceError(
            f"law {spec.name!r}: none of the {len(theta0)} starts converged within "
            f"max_iter={max_iter} (finite objective at {int(np.isfinite(value).sum())} starts)")
    best = int(np.argmin(np.where(converged, value, np.inf)))
    theta = base.copy()
    theta[list(free)] = out["theta"][best]
    objective = float(value[best])
    at_best = converged & (value <= objective + best_rtol * abs(objective) + 1e-300)
    with np.errstate(over="ignore"):  # a degenerate optimum may have e.g. A = e^800 = inf
        params = {k: float(v) for k, v in spec.to_params(theta).items()}
    for k, v in fixed.items():
        params[k] = float(v)
    starts = pd.DataFrame(out["theta"], columns=free_names)
    starts["objective"] = value
    starts["iterations"] = out["iters"]
    starts["converged"] = converged
    return FitResult(law=spec, params=params, objective=objective, n_starts=len(theta0),
                     n_at_best=int(at_best.sum()), theta=theta, free=free, fixed=fixed,
                     logx=logx, logy=logy, huber_delta=float(huber_delta),
                     columns=column_names(columns), starts=starts)


if __name__ == "__main__":
    from scaling.cli import main

    main()
