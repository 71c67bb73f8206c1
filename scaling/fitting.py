"""Robust multistart fitting of a scaling law to a table of runs.

The recipe of Hoffmann et al. 2022 (arXiv:2203.15556), Sec. 3.3 and Appendix D.2:
minimise the SUM over runs of Huber_delta(log Lhat - log L) (delta = 1e-3) with the model
in log-sum-exp form (Chinchilla: log Lhat = LSE(a - alpha log N, b - beta log D, e)), by a
quasi-Newton method (they use L-BFGS; here BFGS with a dense inverse Hessian) from every
point of a grid of initialisations, in float64; keep the best optimum and count the starts
that reached it. Besiroglu et al. 2024 (arXiv:2404.10102) showed that a loose stopping rule
ends the optimiser near its start; the stopping tests here are scale-free and tight
(:mod:`scaling.multistart`).

Objectives: ``"huber"`` (the summed Huber loss above) or ``"huber_ml"``: maximum likelihood
with residuals r ~ exp(-Huber_delta(r / sigma)) / (sigma Z(delta)) and the scale sigma a free
parameter (Besiroglu et al. 2024, arXiv:2404.10102, Sec. 4). There delta applies to the
standardised r / sigma, so its default is 1.345 (95 % efficiency at the normal), not the 1e-3
of raw log residuals: with 1e-3 the density is Laplace and sigma comes out ~1e-3 mean|r|.
Optional per-point weights w multiply each run's term.

Command line: ``python -m scaling.fit TABLE.csv --law chinchilla --bootstrap 1000 --out DIR``
(see :mod:`scaling.cli`).

Axis letters: m runs, p free optimiser coordinates, s starts.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from scaling import constants as K
from scaling.law_specs import LawSpec, default_grid, get_law
from scaling.multistart import minimize_multistart
from scaling.progress import slow_notice, wanted
from scaling.table import FitConvergenceError, column_names, extract, load_table

OBJECTIVES = ("huber", "huber_ml")
SCREEN_ROWS = 512  # rows of the screening subsample (tables of more than twice this)
REFINE = 32  # screened optima refined on all rows


@dataclass(frozen=True)
class FitResult:
    """A fitted law.

    Attributes:
      law: the :class:`scaling.law_specs.LawSpec` fitted.
      params: {parameter name: value} in the law's published parametrisation.
      objective: SUM of Huber losses over the runs at the optimum.
      n_starts: number of starts run; n_at_best: starts whose objective came within
        ``best_rtol`` (relative) of the best (of a screened fit: on the subsample).
      theta: full optimiser vector [q] at the optimum; free: indices of the fitted
        coordinates; fixed: parameters held fixed.
      logx: {variable: log values [m]}; logy: log losses [m] (the data fitted).
      huber_delta: Huber delta; columns: variable -> column name.
      starts: per-start results (DataFrame [s, ...]: theta, objective, iterations).
      weights: per-run weights [m] (ones when none were given).
      objective_kind: "huber" or "huber_ml" (then ``theta``'s last coordinate is log sigma).
      table: the fitted rows (the DataFrame the fit read).
      grid: the starting points [s, p] of the free coordinates (row i started ``starts`` row
        i; the bootstrap refits start from the fastest of those that reached the best).
      screened: rows of the subsample the ``n_starts`` starts were screened on (0: none;
        then ``starts`` holds the refinement on all rows of the best screened optima).
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
    weights: np.ndarray = field(default=None, repr=False)
    objective_kind: str = "huber"
    table: pd.DataFrame | None = field(default=None, repr=False)
    grid: np.ndarray | None = field(default=None, repr=False)
    screened: int = 0

    @property
    def law_theta(self) -> np.ndarray:
        """The law's coordinates [q] (``theta`` without the likelihood's log sigma)."""
        return self.theta[:len(self.law.theta_names)]

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
            out = jitted_log_form(self.law.log_form)(
                jnp.asarray(self.law_theta, jnp.float64),
                {k: jnp.asarray(v, jnp.float64) for k, v in logx.items()})
            return np.exp(np.asarray(out, dtype=np.float64))

    def residuals(self) -> np.ndarray:
        """log Lhat - log L [m] on the fitted runs."""
        return np.log(self.predict()) - self.logy

    def bootstrap(self, n: int = 1000, seed: int = 0, level: float = 0.95,
                  budgets: Sequence[float] = (), **kw):
        """Percentile intervals over ``n`` resamples of the runs (:mod:`scaling.bootstrap`).

        ``budgets``: FLOP budgets C at which N_opt(C), D_opt(C) are reported (Chinchilla
        forms), besides the parameters and the exponent ratio beta/(alpha+beta). ``kw``:
        options of :func:`scaling.bootstrap.bootstrap_fit` (max_iter, grid_starts, gtol,
        progress).
        """
        from scaling.bootstrap import bootstrap_fit

        return bootstrap_fit(self, n=n, seed=seed, level=level, budgets=budgets, **kw)

    def summary(self) -> pd.DataFrame:
        """One row per parameter: value (and whether it was held fixed)."""
        return pd.DataFrame({"value": self.params,
                             "fixed": {k: k in self.fixed for k in self.params}})


@functools.lru_cache(maxsize=32)
def jitted_log_form(log_form, batched: bool = False):
    """``log_form`` (theta [q], logx {var: [m]}) -> [m] jitted once per law (and shapes), or
    with ``batched`` over theta rows [n, q] -> [n, m]: one compiled program instead of one
    per operation (eager dispatch compiles each operation for each new table length)."""
    return jax.jit(jax.vmap(log_form, in_axes=(0, None)) if batched else log_form)


def _start_grid(spec: LawSpec, init_grid, free_names: list[str],
                grid_values: Mapping[str, Sequence[float]] | None = None) -> np.ndarray:
    """Starting points [s, p] of the free coordinates of the law.

    ``grid_values`` ({theta name: values}) replaces those axes of a named grid.
    """
    grid_values = dict(grid_values or {})
    unknown = set(grid_values) - set(spec.theta_names)
    if unknown:
        raise ValueError(f"grid: {sorted(unknown)} are not coordinates of {spec.name!r}; "
                         f"allowed: {list(spec.theta_names)}")
    for k, v in grid_values.items():
        v = np.atleast_1d(np.asarray(v, dtype=np.float64))
        if v.size == 0 or not np.all(np.isfinite(v)):
            raise ValueError(f"grid {k}={list(v)}: need one or more finite values")
    if isinstance(init_grid, str):
        name = init_grid if init_grid in spec.grids else (
            default_grid(spec) if init_grid == "hoffmann" else init_grid)
        spec.grid(name)  # validates the name
        axes = {**spec.grids[name], **{k: tuple(np.atleast_1d(v)) for k, v in grid_values.items()}}
        return np.array(list(itertools.product(*(axes[t] for t in free_names))), dtype=np.float64)
    if grid_values:
        raise ValueError("grid values replace axes of a named init_grid; pass init_grid by name")
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
    huber_delta: float | None = None,
    init_grid="hoffmann",
    columns: Mapping[str, str] | None = None,
    *,
    fixed: Mapping[str, float] | None = None,
    weights: str | Sequence[float] | np.ndarray | None = None,
    objective: str = "huber",
    grid_values: Mapping[str, Sequence[float]] | None = None,
    max_iter: int = 500,
    best_rtol: float = 1e-8,
    screen_rows: int | None = None,
    refine: int = REFINE,
    progress: bool | None = None,
) -> FitResult:
    """Fit ``law`` to ``table`` by multistart BFGS on the summed Huber loss of log residuals.

    Args:
      table: DataFrame or CSV path, one row per run, with the law's variables and ``loss``.
      law: a name from :data:`scaling.law_specs.LAWS` (e.g. "chinchilla", "chinchilla_tied",
        "data_constrained", "kaplan_n", "offset_n", "saturating") or a :class:`LawSpec`.
      huber_delta: Huber delta. Default: 1e-3 for "huber" (Hoffmann et al. 2022, on log-loss
        residuals; also Besiroglu et al. 2024), 1.345 for "huber_ml", where it applies to
        r / sigma (:data:`scaling.constants.HUBER_ML_DELTA`).
      init_grid: a grid name of the law ("hoffmann" = the published 4,500-point grid for
        Chinchilla; a law without it uses its default grid), a {theta name: values} dict
        (product grid), or an array [s, p] of starting points of the free coordinates.
      columns: variable -> column name (defaults: "N", "D", "U", "C", "loss").
      fixed: parameters held fixed, in the published parametrisation (e.g. Muennighoff et
        al. 2023 fit R_D*, R_N* with E, A, B, alpha, beta fixed).
      weights: per-run weights [m] (>= 0, not all 0), or the name of a column holding them.
      objective: "huber" (sum of weighted Huber losses) or "huber_ml" (Huber likelihood with
        a free scale sigma, reported as the parameter ``sigma``).
      grid_values: {theta name: values} replacing those axes of the named ``init_grid``.
      max_iter: BFGS iteration cap per start (a start reaching it is not converged).
      best_rtol: relative objective tolerance for counting a start as reaching the best.
      screen_rows, refine: screen every start on a stratified subsample of ``screen_rows``
        rows, then refine the ``refine`` best distinct screened optima on all rows (default:
        :data:`SCREEN_ROWS` rows for tables of more than twice that; 0: every start on all
        rows).
      progress: print a line on stderr when a stage runs more than a few seconds (default:
        for fits of at least 2e6 starts x rows, :func:`scaling.progress.wanted`).
    Returns:
      :class:`FitResult`.
    Raises:
      ValueError: bad table (missing column, NaN/inf or non-positive values, fewer runs than
        free parameters) or bad arguments.
      FitConvergenceError: no start converged.
    """
    spec = get_law(law)
    if huber_delta is None:
        huber_delta = K.HUBER_ML_DELTA if objective == "huber_ml" else K.HOFFMANN_HUBER_DELTA
    if not (isinstance(huber_delta, (int, float)) and np.isfinite(huber_delta) and huber_delta > 0):
        raise ValueError(f"huber_delta={huber_delta!r}: must be a finite number > 0")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}: must be one of {OBJECTIVES}")
    if not (isinstance(max_iter, int) and max_iter > 0):
        raise ValueError(f"max_iter={max_iter!r}: must be a positive integer")
    df = load_table(table)
    if len(df) == 0:
        raise ValueError("table has no rows")
    data = extract(df, (*spec.variables, "loss"), columns)
    w = _point_weights(df, weights)
    fixed = dict(fixed or {})
    unknown = set(fixed) - set(spec.param_names)
    if unknown:
        raise ValueError(f"fixed={fixed!r}: {sorted(unknown)} are not parameters of "
                         f"{spec.name!r} ({spec.param_names})")
    for k, v in fixed.items():
        if not np.isfinite(v):
            raise ValueError(f"fixed {k}={v!r}: must be a finite number")
    fixed_theta = {spec.theta_of[k] for k in fixed}
    free_names = [t for t in spec.theta_names if t not in fixed_theta]
    m = int((w > 0).sum())
    if m < len(free_names):
        raise ValueError(f"table has {m} runs: fewer than the {len(free_names)} free parameters of "
                         f"{spec.name!r} ({free_names})")
    base = np.zeros(len(spec.theta_names))
    if fixed:
        filler = {k: fixed.get(k, 1.0) for k in spec.param_names}
        with np.errstate(divide="ignore", invalid="ignore"):
            full = np.asarray(spec.from_params(filler), dtype=np.float64)
        for k in fixed:
            i = spec.theta_names.index(spec.theta_of[k])
            if not np.isfinite(full[i]):
                raise ValueError(f"fixed {k}={fixed[k]!r}: outside the law's domain (must be > 0)")
            base[i] = full[i]
    theta0 = _start_grid(spec, init_grid, free_names, grid_values)
    logx = {v: np.log(data[v]) for v in spec.variables}
    logy = np.log(data["loss"])
    free = tuple(spec.theta_names.index(t) for t in free_names)
    if objective == "huber_ml":
        # log sigma starts at the log-loss spread (a scale-free guess), as one more coordinate
        log_sigma0 = np.log(max(float(np.std(logy)), 1e-4))
        base = np.append(base, log_sigma0)
        theta0 = np.column_stack([theta0, np.full(len(theta0), log_sigma0)])
        free = (*free, len(spec.theta_names))
        free_names = [*free_names, "log_sigma"]
    kw = dict(base=base, free=free, huber_delta=float(huber_delta), max_iter=max_iter,
              objective=objective)
    for name, v, lo in (("screen_rows", screen_rows, 0), ("refine", refine, 1)):
        if v is not None and not (isinstance(v, (int, np.integer)) and v >= lo):
            raise ValueError(f"{name}={v!r}: must be an integer >= {lo}")
    if screen_rows is None:
        screen_rows = SCREEN_ROWS if m > 2 * SCREEN_ROWS else 0
    grid = theta0
    progress = wanted(progress, m * len(theta0))
    if screen_rows and m > screen_rows and len(theta0) > refine:
        # Screen-then-refine: every start on a stratified subsample, the best distinct
        # screened optima on subsamples 8x larger (keeping a quarter each time, at least 2),
        # then on all rows: a fit costs rows x starts, and only the last stage sees every row.
        rows, keep, pre = int(screen_rows), int(refine), None
        while rows < m:
            idx = _stratified_rows(logx, w, rows)
            sub_w = w[idx] * (w.sum() / w[idx].sum())
            with slow_notice(f"{spec.name}: {len(grid)} starts on {len(idx)} of {m} rows",
                             progress):
                o = minimize_multistart(spec.log_form, grid, {k: v[idx] for k, v in logx.items()},
                                        logy[idx], weights=sub_w, **kw)
            pre = o if pre is None else pre  # the screen of the whole grid
            grid = _best_distinct(o["theta"], o["value"], keep)
            rows, keep = rows * 8, max(keep // 4, 2)
    with slow_notice(f"{spec.name}: {len(grid)} starts on {m} rows", progress):
        out = minimize_multistart(spec.log_form, grid, logx, logy, weights=w, **kw)
    value = out["value"]
    converged = np.isfinite(value) & (out["iters"] < max_iter)
    if not converged.any():
        raise FitConvergenceError(
            f"law {spec.name!r}: none of the {len(theta0)} starts converged within "
            f"max_iter={max_iter} (finite objective at {int(np.isfinite(value).sum())} starts)")
    best = int(np.argmin(np.where(converged, value, np.inf)))
    theta = base.copy()
    theta[list(free)] = out["theta"][best]
    objective_value = float(value[best])
    at_best = converged & (value <= objective_value + best_rtol * abs(objective_value) + 1e-300)
    n_at_best = int(at_best.sum())
    if grid is not theta0:  # screened: the grid's starts that reached the subsample's best
        pv = np.where(np.isfinite(pre["value"]) & (pre["iters"] < max_iter), pre["value"], np.inf)
        n_at_best = int((pv <= pv.min() + best_rtol * abs(pv.min()) + 1e-300).sum())
    with np.errstate(over="ignore"):  # a degenerate optimum may have e.g. A = e^800 = inf
        params = {k: float(v) for k, v in spec.to_params(theta[:len(spec.theta_names)]).items()}
    for k, v in fixed.items():
        params[k] = float(v)
    if objective == "huber_ml":
        params["sigma"] = float(np.exp(theta[-1]))
    starts = pd.DataFrame(out["theta"], columns=free_names)
    starts["objective"] = value
    starts["iterations"] = out["iters"]
    starts["converged"] = converged
    return FitResult(law=spec, params=params, objective=objective_value, n_starts=len(theta0),
                     n_at_best=n_at_best, theta=theta, free=free, fixed=fixed,
                     logx=logx, logy=logy, huber_delta=float(huber_delta),
                     columns=column_names(columns), starts=starts, weights=w,
                     objective_kind=objective, table=df, grid=grid,
                     screened=int(screen_rows) if grid is not theta0 else 0)


def _stratified_rows(logx: dict[str, np.ndarray], w: np.ndarray, k: int) -> np.ndarray:
    """Indices of ~k rows of weight > 0 spread evenly over the rows sorted by the law's
    variables (the first variable first: every model size, and within one its data sizes)."""
    active = np.flatnonzero(w > 0)
    order = active[np.lexsort([logx[v][active] for v in reversed(list(logx))])]
    return np.unique(order[np.linspace(0, len(order) - 1, k).round().astype(int)])


def _best_distinct(theta: np.ndarray, value: np.ndarray, k: int) -> np.ndarray:
    """The k lowest-objective rows of theta [s, p] with distinct values (rounded to 1e-6)."""
    order = np.argsort(np.where(np.isfinite(value), value, np.inf), kind="stable")
    _, first = np.unique(np.round(theta[order], 6), axis=0, return_index=True)
    return theta[order[np.sort(first)[:k]]]


def _point_weights(df: pd.DataFrame, weights) -> np.ndarray:
    """Per-run weights [m] from None (ones), a column name, or an array."""
    if weights is None:
        return np.ones(len(df))
    if isinstance(weights, str):
        if weights not in df.columns:
            raise ValueError(f"weights={weights!r}: no such column; the table has {list(df.columns)}")
        values = pd.to_numeric(df[weights], errors="coerce").to_numpy(dtype=np.float64)
    else:
        values = np.asarray(weights, dtype=np.float64).ravel()
        if values.shape != (len(df),):
            raise ValueError(f"weights of shape {values.shape}: need one per row ({len(df)})")
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        raise ValueError(f"weights must be finite and >= 0; bad in rows {list(df.index[bad][:20])}")
    if not values.any():
        raise ValueError("weights are all 0")
    return values


