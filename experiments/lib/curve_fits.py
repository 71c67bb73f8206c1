"""The loss-curve fits of the studies (experiments.schedules): which points, which method, and when a law is refused.

**Fit window.** Luo et al. 2025 (arXiv:2503.12811) fit L(t) after the warmup: their released
curves (``loss_curve_repo/csv_{25,100}``, copied in ``../shared/data/published/mpl2025_loss_curves``)
begin at step 2,160, the end of the 2,160-step warmup, and the law's S_W term carries the
warmup's LR area; Tissue et al. 2024 likewise fit after the warmup. During the warmup the loss
falls from about log(vocabulary) by a transient that no power of the LR area describes: at CPU
scale it spans most of a curve's range, and kept in the fitted points it made both multi-power
fits fail on the default preset (the recipe's simplified law ran L0 below 0; every BFGS start
hit its iteration cap). So every curve is fitted AND scored from the first point at or after
the warmup's end (:func:`fit_window`; a point's step is its last update, so the first kept
point has seen the whole warmup): the rule is the authors', not a tuned cut.

**Method chain** (:func:`fit_law`), per law:

1. the law's default method (multi_power: the authors' recipe, :mod:`scaling.curve_recipe`;
   lr_annealing: multistart BFGS);
2. if that raises :class:`scaling.table.FitConvergenceError` or ends with non-finite
   parameters: multistart BFGS from the data-scaled grid (:func:`scaling.curve_laws.start_grid`:
   L0 from the lowest loss, A' through the median point, LRs in units of the peak), where a
   start stopped at the iteration cap still counts when at least half of the starts agree on
   the minimum objective to ``PLATEAU_RTOL`` (``fit_curves(plateau_rtol=...)``; a start below
   them, further along the flat direction, counts too: :func:`scaling.curve_fit.plateau_top`): the minimum
   is found while a parameter the curves do not constrain runs to its boundary (L0 -> 0 far
   from convergence; beta -> inf, C -> 0, where G tends to 1 - exp(-kx)); :func:`unsettled`
   names those parameters in the report;
3. if that fails too, the law is REFUSED: it gets no predictions and no errors (never NaN
   numbers), and the reason is in the report's notes and in curve_errors.csv's ``status``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LAWS = ("multi_power", "lr_annealing")
LEVEL = 0.95
PLATEAU_RTOL = 1e-6  # starts "agree on the minimum": the objective's value to six digits
FALLBACK_MAX_ITER = 2_000  # BFGS steps per start of the fallback (4x the default: drifting starts move slowly)
SETTLED_RTOL = 1e-2  # a parameter whose value differs by more among those starts did not settle


def fit_window(curves: pd.DataFrame, warmup_steps: int) -> pd.DataFrame:
    """The points fitted and scored: those at step >= ``warmup_steps`` (after the warmup)."""
    return curves[curves["step"] >= warmup_steps]


def finite(fit) -> bool:
    """Whether ``fit`` exists and all of its parameters are finite."""
    return fit is not None and bool(np.all(np.isfinite(list(fit.params.values()))))


def unsettled(fit) -> list[str]:
    """The parameters that differ by > SETTLED_RTOL (relative) among the starts at the minimum (within
    PLATEAU_RTOL of the lowest, or on its plateau: :func:`scaling.curve_fit.plateau_top`).

    Empty for a fit whose starts converged to one point (and for the recipe, one start).
    """
    from scaling.curve_fit import plateau_top

    if fit is None or fit.method != "bfgs":
        return []
    s = fit.starts
    low = float(s["objective"].min())
    top = max(plateau_top(s["objective"].to_numpy(), PLATEAU_RTOL) or -np.inf, low + PLATEAU_RTOL * abs(low))
    at = s[(s["objective"] <= top) & s["converged"]]
    if len(at) < 2:
        return []
    with np.errstate(over="ignore", invalid="ignore"):
        p = fit.law.to_params(at[list(fit.law.theta_names)].to_numpy(), fit.eta_ref)
    out = []
    for name, v in p.items():
        v = np.asarray(v, float)
        spread = np.nanmax(v) - np.nanmin(v)
        if not np.isfinite(spread) or spread > SETTLED_RTOL * max(np.nanmax(np.abs(v)), 1e-300):
            out.append(f"{name} in [{np.nanmin(v):.3g}, {np.nanmax(v):.3g}]")
    return out


def fit_law(table: pd.DataFrame, lrs: dict, law: str, notes: list[str]):
    """The law's fit by the chain of the module docstring; None (refused) with the reason in ``notes``."""
    import scaling
    from scaling.table import FitConvergenceError

    fit = None
    try:
        fit = scaling.fit_curves(table, lrs, law)
    except FitConvergenceError as err:
        notes.append(f"{law}: the default fit did not converge ({err})")
    if finite(fit):
        return fit
    if fit is not None:
        notes.append(f"{law}: the {fit.method} fit ended with non-finite parameters "
                     f"({', '.join(f'{k} {v:.4g}' for k, v in fit.params.items())})")
    try:
        refit = scaling.fit_curves(table, lrs, law, method="bfgs", plateau_rtol=PLATEAU_RTOL,
                                   max_iter=FALLBACK_MAX_ITER)
    except FitConvergenceError as err:
        notes.append(f"{law}: REFUSED: multistart BFGS found no minimum either ({err})")
        return None
    if not finite(refit):
        notes.append(f"{law}: REFUSED: multistart BFGS ended with non-finite parameters")
        return None
    loose = unsettled(refit)
    agree = int(refit.starts["converged"].sum())
    notes.append(f"{law}: refitted by multistart BFGS ({agree} of {refit.n_starts} starts at the minimum)"
                 + (f"; not settled by these curves (running to a boundary): {'; '.join(loose)}" if loose else ""))
    return refit


def _errors(pred: pd.DataFrame) -> pd.DataFrame:
    from scaling import curve_fit

    rows = []
    for fitted, part in pred.groupby("fitted"):
        rows.append(curve_fit.curve_errors(part).drop(index="mean").assign(fitted=fitted))
    out = pd.concat(rows)
    out.index.name = "run"
    return out.reset_index()


def fit_laws(curves: pd.DataFrame, schedules: dict, fitted: list[str], bootstrap: int | None,
             first_step: int = 0):
    """{law: (CurveFit or None, BootstrapResult | None, predictions, errors per curve)}, notes.

    ``curves`` are windowed to step >= ``first_step`` (:func:`fit_window`) for the fit and the
    scores. A refused law (fit None) has empty predictions and one errors row per curve with
    ``status`` "refused" and no numbers; the notes say why.
    """
    from scaling.curve_fit import curve_predictions
    from scaling.diagnostics import interval_warnings

    out, notes = {}, []
    curves = fit_window(curves, first_step)
    table, lrs = curves[curves["run"].isin(fitted)], {r: schedules[r] for r in fitted}
    runs = list(dict.fromkeys(curves["run"]))
    for law in LAWS:
        fit = fit_law(table, lrs, law, notes)
        if fit is None:
            errors = pd.DataFrame({"run": runs, "fitted": [r in fitted for r in runs], "status": "refused"})
            out[law] = (None, None, pd.DataFrame(columns=[*curves.columns, "predicted_loss"]), errors)
            continue
        loose = bool(unsettled(fit))
        # a resample's refit cannot settle what the full data's did not: it counts when finite
        boot = fit.bootstrap(n=bootstrap, seed=0, level=LEVEL, plateau=loose) if bootstrap else None
        if boot is not None and loose:
            notes.append(f"{law}: each bootstrap refit is 500 BFGS steps from the fit, kept if finite "
                         f"({boot.n - boot.n_failed} of {boot.n}); the intervals of the parameters that did not "
                         "settle only say where those steps ended")
        if boot is not None:  # an estimate its own resamples do not surround: the interval does not describe it
            notes += [f"{law}: {w}" for w in interval_warnings(boot)]
        pred = curve_predictions(fit, curves, schedules, boot)
        pred["fitted"] = pred["run"].isin(fitted)
        out[law] = (fit, boot, pred, _errors(pred).assign(status=f"fitted ({fit.method})"))
    return out, notes


def params_table(fits: dict) -> pd.DataFrame:
    """One row per (law, parameter): value and the bootstrap interval (NaN without resamples)."""
    rows = []
    for law, (fit, boot, _, _) in fits.items():
        for name, value in (fit.params if fit is not None else {}).items():
            lo = hi = np.nan
            if boot is not None and name in boot.intervals.index:
                lo, hi = boot.intervals.loc[name, ["lower", "upper"]]
            rows.append({"law": law, "param": name, "value": value, "lower": lo, "upper": hi})
    return pd.DataFrame(rows, columns=["law", "param", "value", "lower", "upper"])
