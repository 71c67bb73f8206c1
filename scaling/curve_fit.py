"""Fitting schedule-aware laws to whole loss curves, and predicting other schedules' curves.

Recipe (Luo et al. 2025, arXiv:2503.12811, and their released code): the SUM over every
evaluation point of every fitted curve of Huber_delta(log Lhat - log L), delta = 1e-3 (as
Hoffmann et al. 2022). The authors run AdamW from one start found on a simplified law; here
the same objective is minimised to convergence by the project's multistart BFGS in float64
(:func:`scaling.multistart.minimize_multistart`) from a small data-scaled grid
(:func:`scaling.curve_laws.start_grid`).

Bootstrap: the points of one curve are not independent (one run's noise and its schedule),
so a resample draws whole RUNS with replacement (Efron & Tibshirani 1993, Ch. 13 applied to
curves), as integer per-run counts, refitted in one batch from the full-data optimum. With
few runs the resamples are few and crude: the interval says so (``distinct`` runs per
resample; a resample without any LR drop cannot identify the drop term and is dropped).

Axis letters: m evaluation points, R runs, n resamples, q law coordinates, J drop bins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from scaling import constants as K
from scaling.bootstrap import BootstrapResult, percentile_intervals, resample_weights
from scaling.curve_recipe import fit_recipe
from scaling.curve_laws import CurveLaw, evaluate, get_curve_law, start_grid
from scaling.curve_tables import load_curves, load_schedules, match
from scaling.multistart import minimize_multistart
from scaling.schedule_features import DEFAULT_RESOLUTION
from scaling.table import FitConvergenceError


def stack_features(law: CurveLaw, per_run, eta_ref: float, resolution: float):
    """Features of every point of every run, concatenated: {name: [m] or [m, J]} (J padded)."""
    parts = [law.features(eta, steps, eta_ref, resolution) for _, eta, steps, _ in per_run]
    out = {}
    for key in parts[0]:
        arrays = [p[key] for p in parts]
        if arrays[0].ndim == 2:
            width = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
        out[key] = np.concatenate(arrays)
    return out


@dataclass(frozen=True)
class CurveFit:
    """A schedule-aware law fitted to loss curves.

    Attributes:
      law: the :class:`scaling.curve_laws.CurveLaw`; method: "luo2025" or "bfgs".
      params: published parametrisation (the caller's LR units); theta: optimiser coordinates [q] (LRs in units of eta_ref).
      eta_ref: the LR unit (largest fitted LR); resolution: drop-bin width (see
        :mod:`scaling.schedule_features`); huber_delta: Huber delta of the objective.
      objective: summed Huber loss at the optimum; n_starts, n_at_best: starts run and starts
        within ``1e-8`` (relative) of the best; starts: per-start results.
      table: the fitted points (run, step, loss); runs: fitted run names; run_index: run of
        each point [m]; schedules: {run: eta [T]}; x: features [m] / [m, J]; logy: log loss [m].
    """

    law: CurveLaw
    method: str
    params: dict[str, float]
    theta: np.ndarray
    eta_ref: float
    resolution: float
    huber_delta: float
    objective: float
    n_starts: int
    n_at_best: int
    table: pd.DataFrame = field(repr=False)
    runs: tuple[str, ...] = field(repr=False)
    run_index: np.ndarray = field(repr=False)
    schedules: dict[str, np.ndarray] = field(repr=False)
    x: dict[str, np.ndarray] = field(repr=False)
    logy: np.ndarray = field(repr=False)
    starts: pd.DataFrame = field(repr=False)

    def predict(self, curves=None, lrs=None, theta=None) -> np.ndarray:
        """Predicted loss [m'] at the (run, step) rows of ``curves`` (default: the fitted points).

        ``lrs``: the schedules of runs not fitted ({run: eta} or a run, step, lr table); a
        fitted run's own schedule is used when ``lrs`` lacks it. ``theta`` [n, q]: evaluate
        those coordinates instead (bootstrap refits), returning [n, m'].
        """
        theta = self.theta if theta is None else theta
        if curves is None:
            return evaluate(self.law, theta, self.x)
        table = load_curves(curves, need_loss=False)
        schedules = {**self.schedules, **(load_schedules(lrs) if lrs is not None else {})}
        per_run = match(table, schedules)
        x = stack_features(self.law, per_run, self.eta_ref, self.resolution)
        runs = table["run"].to_numpy()
        order = np.concatenate([np.flatnonzero(runs == r) for r, *_ in per_run])
        pred = evaluate(self.law, theta, x)
        out = np.empty_like(pred)
        out[..., order] = pred
        return out

    def bootstrap(self, n: int = 200, seed: int = 0, level: float = 0.95,
                  max_iter: int = 500, plateau: bool = False) -> BootstrapResult:
        """Percentile intervals over ``n`` resamples of whole runs (see the module docstring).

        ``distinct`` holds the distinct runs of each resample; a resample whose runs have no
        LR drop (the drop term unidentified) or whose refit did not converge is dropped and
        counted in ``n_failed``. With ``method="bfgs"`` a refit counts as converged by its
        scaled gradient (:func:`scaling.refit.scaled_gradient`), not by stopping before
        ``max_iter``; with ``"luo2025"`` each resample is refitted by the same fixed recipe as
        the full data (its early-stopped AdamW is the estimator whose spread the interval shows).
        ``plateau=True`` (a "bfgs" fit accepted by ``plateau_rtol``, whose parameters run to a
        boundary): a refit counts when its objective is finite, at ``max_iter`` or not, since
        its gradient along the unconstrained direction never vanishes; the estimator is then
        "``max_iter`` BFGS steps from the full data's optimum", and the intervals of the
        parameters that did not settle only say where those steps ended.
        """
        if not (isinstance(n, (int, np.integer)) and n >= 2):
            raise ValueError(f"n={n!r}: need an integer number of resamples >= 2")
        if not 0.0 < level < 1.0:
            raise ValueError(f"level={level!r}: must be in (0, 1)")
        counts = resample_weights(len(self.runs), n, seed)  # [n, R]
        weights = counts[:, self.run_index]  # [n, m]
        if self.method == "luo2025":
            theta_r, value_r, _ = fit_recipe(self.law, self.x, self.logy, weights, self.huber_delta)
            out = {"theta": theta_r, "value": value_r, "iters": np.zeros(n, int)}
        else:
            out = minimize_multistart(self.law.log_form, np.tile(self.theta, (n, 1)), self.x,
                                      self.logy, weights=weights, huber_delta=self.huber_delta,
                                      max_iter=max_iter)
        has_drop = _runs_with_drops(self)
        ok = (np.isfinite(out["value"]) & ((out["iters"] < max_iter) | plateau)
              & ((counts * has_drop[None, :]).sum(axis=1) > 0))
        if self.method == "bfgs" and not plateau:  # converged by the scaled gradient, as the final-loss laws' refits
            from scaling.refit import INTERPOLATES, default_gtol, scaled_gradient

            q = len(self.theta)
            grad = scaled_gradient(self.law.log_form, out["theta"], self.x, self.logy, weights,
                                   base=self.theta, free=tuple(range(q)), huber_delta=self.huber_delta)
            # a Huber sum at ~0 interpolates the resample: at its minimum, the ratio is 0/0 there
            interpolates = out["value"] <= INTERPOLATES * weights.sum(axis=1)
            ok &= (grad <= default_gtol(len(self.logy), q)) | interpolates
        theta = out["theta"][ok]
        with np.errstate(over="ignore", invalid="ignore"):
            params = self.law.to_params(theta, self.eta_ref)
        samples = pd.DataFrame({k: np.asarray(v, dtype=np.float64) for k, v in params.items()})
        return BootstrapResult(samples=samples,
                               intervals=percentile_intervals(samples, self.params, level),
                               level=level, n=n, n_failed=int((~ok).sum()),
                               distinct=(counts > 0).sum(axis=1), theta=theta)

    def summary(self) -> pd.DataFrame:
        """One row per parameter (published parametrisation)."""
        return pd.DataFrame({"value": self.params})


def _runs_with_drops(fit: CurveFit) -> np.ndarray:
    """Whether each fitted run's schedule has an LR drop after its peak [R]."""
    out = []
    for run in fit.runs:
        eta = fit.schedules[run]
        peak = int(np.argmax(eta))
        out.append(bool(np.any(np.diff(eta[peak:]) < 0)))
    return np.asarray(out)


METHODS = ("luo2025", "bfgs")


def plateau_top(value: np.ndarray, rtol: float) -> float | None:
    """The objective at or below which multistart ends count as on the minimum's plateau, or None.

    The lowest group of at least half of the starts (``value`` [s], NaN for a failed start) whose
    objectives lie within ``rtol`` (relative) of the group's lowest: the top of that group. A start
    below it went further along the flat direction than the group and counts too: one such start
    must not make the others' agreement go unseen (measured: 14 of 16 starts within 1e-9 of one
    another, one 6e-4 lower, none of them converged).
    """
    v = np.sort(value[np.isfinite(value)])
    need = -(-len(value) // 2)
    for i in range(len(v) - need + 1):
        if v[i + need - 1] <= v[i] + rtol * abs(v[i]):
            return float(v[i] + rtol * abs(v[i]))
    return None


def _method(law: CurveLaw, method: str | None) -> str:
    if method is None:
        return "luo2025" if law.name == "multi_power" else "bfgs"
    if method not in METHODS or (method == "luo2025" and law.name != "multi_power"):
        allowed = METHODS if law.name == "multi_power" else ("bfgs",)
        raise ValueError(f"method={method!r}: law {law.name!r} allows {list(allowed)}")
    return method


def fit_curves(curves, lrs, law: str | CurveLaw = "multi_power", *,
               resolution: float = DEFAULT_RESOLUTION, huber_delta: float = K.HOFFMANN_HUBER_DELTA,
               method: str | None = None, init_grid: np.ndarray | None = None,
               max_iter: int = 500, best_rtol: float = 1e-8,
               plateau_rtol: float | None = None) -> CurveFit:
    """Fit a schedule-aware law to loss curves.

    Args:
      curves: DataFrame or CSV path with columns run, step, loss (see :mod:`scaling.curve_tables`).
      lrs: the schedules: {run: eta [T]} or a DataFrame / CSV with run, step, lr (every step
        from 0).
      law: "multi_power" or "lr_annealing" (or a :class:`CurveLaw`).
      resolution: drop-bin width (0: exact, O(m T) memory); huber_delta: Huber delta on log
        residuals (1e-3, as the authors).
      method: "luo2025" (the authors' recipe, :mod:`scaling.curve_recipe`; the default for
        multi_power) or "bfgs" (multistart BFGS to convergence; the default for lr_annealing).
      init_grid: "bfgs" starting points [s, q] of the coordinates (default :func:`start_grid`).
      max_iter: BFGS iterations per start; best_rtol: tolerance of "at the best".
      plateau_rtol: "bfgs" only; None (default): a start converges by the BFGS stopping rules
        before ``max_iter``. Else a start stopped at ``max_iter`` also counts as converged
        when at least half of the starts end within ``plateau_rtol`` (relative) of one another,
        and so does a start below them (:func:`plateau_top`): they agree on the minimum value
        while the parameters still move along a direction the data do not constrain (L0 -> 0,
        beta -> inf); ``starts`` shows which.
    Raises:
      ValueError: bad tables (missing columns or steps, a run without LRs, too few points).
      FitConvergenceError: no start converged.
    """
    law = get_curve_law(law)
    if not (np.isfinite(resolution) and 0 <= resolution < 1):
        raise ValueError(f"resolution={resolution!r}: must be in [0, 1)")
    table = load_curves(curves)
    schedules = load_schedules(lrs)
    per_run = match(table, schedules)
    if len(table) < len(law.theta_names):
        raise ValueError(f"curve table has {len(table)} points: fewer than the "
                         f"{len(law.theta_names)} parameters of {law.name!r}")
    eta_ref = max(float(np.max(eta)) for _, eta, _, _ in per_run)
    x = stack_features(law, per_run, eta_ref, resolution)
    loss = np.concatenate([lo for *_, lo in per_run])
    logy = np.log(loss)
    method = _method(law, method)
    if method == "luo2025":
        theta_r, value_r, steps_r = fit_recipe(law, x, logy, huber_delta=float(huber_delta))
        out = {"theta": theta_r, "value": value_r, "iters": np.zeros(1, int)}
        theta0 = theta_r
    else:
        theta0 = (start_grid(law, x["log_area"], loss) if init_grid is None
                  else np.atleast_2d(init_grid))
        out = minimize_multistart(law.log_form, theta0, x, logy, huber_delta=float(huber_delta),
                                  max_iter=max_iter)
    value = out["value"]
    converged = np.isfinite(value) & (out["iters"] < max_iter)
    if plateau_rtol is not None and method == "bfgs":
        top = plateau_top(value, plateau_rtol)
        if top is not None:
            converged |= np.isfinite(value) & (value <= top)
    if not converged.any() and method == "luo2025":
        raise FitConvergenceError(f"law {law.name!r}: the authors' recipe ended without a finite objective "
                                  "(as where no simplified-law start kept L0, A, B > 0)")
    if not converged.any():
        raise FitConvergenceError(f"law {law.name!r}: none of the {len(theta0)} starts converged "
                                  f"within max_iter={max_iter}")
    best = int(np.argmin(np.where(converged, value, np.inf)))
    theta = out["theta"][best]
    obj = float(value[best])
    at_best = converged & (value <= obj + best_rtol * abs(obj) + 1e-300)
    with np.errstate(over="ignore"):
        params = {k: float(v) for k, v in law.to_params(theta, eta_ref).items()}
    starts = pd.DataFrame(out["theta"], columns=list(law.theta_names))
    starts["objective"], starts["iterations"], starts["converged"] = value, out["iters"], converged
    runs = tuple(r for r, *_ in per_run)
    run_index = np.concatenate([np.full(len(s), i) for i, (_, _, s, _) in enumerate(per_run)])
    fitted = pd.concat([pd.DataFrame({"run": r, "step": s, "loss": lo}) for r, _, s, lo in per_run],
                       ignore_index=True)
    return CurveFit(law=law, method=method, params=params, theta=theta, eta_ref=eta_ref,
                    resolution=resolution,
                    huber_delta=float(huber_delta), objective=obj, n_starts=len(theta0),
                    n_at_best=int(at_best.sum()), table=fitted, runs=runs, run_index=run_index,
                    schedules={r: e for r, e, _, _ in per_run}, x=x, logy=logy, starts=starts)


def curve_predictions(fit: CurveFit, curves, lrs=None, boot: BootstrapResult | None = None,
                      level: float | None = None) -> pd.DataFrame:
    """``curves``' rows plus predicted_loss, lower, upper (bootstrap interval; NaN without) and,
    where a loss is given, rel_error = predicted / observed - 1."""
    df = load_curves(curves, need_loss=False).reset_index(drop=True)
    df["predicted_loss"] = fit.predict(df, lrs)
    lo = hi = np.full(len(df), np.nan)
    if boot is not None and boot.theta is not None and len(boot.theta):
        level = boot.level if level is None else level
        preds = fit.predict(df, lrs, theta=boot.theta)
        lo, hi = np.nanpercentile(preds, [50 * (1 - level), 50 * (1 + level)], axis=0)
    df["lower"], df["upper"] = lo, hi
    if "loss" in df:
        df["rel_error"] = df["predicted_loss"] / df["loss"] - 1.0
    return df


def curve_errors(pred: pd.DataFrame) -> pd.DataFrame:
    """Per-run prediction errors and their mean over runs (row "mean"), as Luo et al. 2025 report.

    PredE = mean |L - Lhat| / L, WorstE = max |L - Lhat| / L, R^2 = 1 - SS_res / SS_tot, MAE,
    RMSE, per curve; the "mean" row averages each over the curves (the authors' released
    ``evaluate_mpl``).
    """
    rows = {}
    for run, g in pred.groupby("run", sort=False):
        y, p = g["loss"].to_numpy(float), g["predicted_loss"].to_numpy(float)
        rel = np.abs(y - p) / y
        rows[run] = {"PredE": rel.mean(), "WorstE": rel.max(),
                     "R2": 1.0 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2),
                     "MAE": np.mean(np.abs(y - p)), "RMSE": np.sqrt(np.mean((y - p) ** 2))}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.loc["mean"] = out.mean()
    return out


def schedules_of(mapping: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """A run, step, lr table from {run: eta [T]} (the ``--lr`` format)."""
    return pd.concat([pd.DataFrame({"run": r, "step": np.arange(len(e)), "lr": e})
                      for r, e in mapping.items()], ignore_index=True)
