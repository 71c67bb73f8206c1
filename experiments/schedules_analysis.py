"""The loss-curve study's analysis: both laws fitted on three curves, predictions, the optimised schedule.

See :mod:`experiments.schedules` for the grid. Here, from the runs' loss curves
(``scaling.run_curves.read_runs``: the train_loss records, point = (step - 1, loss)):

1. fit multi_power (Luo et al. 2025, arXiv:2503.12811, the authors' recipe) and lr_annealing
   (Tissue et al. 2024, arXiv:2408.11029, multistart BFGS) on the curves tagged ``fitted``,
   from the end of the warmup on, with a fallback and a refusal (:mod:`experiments.lib.curve_fits`);
2. predict every curve (after the warmup): PredE = mean |L - Lhat| / L, WorstE = max, per curve, and their mean
   over the predicted curves (``scaling.curve_errors``); parameters with percentile intervals
   over resamples of the fitted RUNS (``CurveFit.bootstrap``; with three runs the intervals are
   coarse: they say how much one curve moves the fit);
3. optimise the schedule of the long length under the multi-power fit
   (``scaling.optimize_schedule``), compress it to ``preset.knots`` knots (:func:`compress`),
   train it (:func:`optimised_study`) and compare its observed final
   training loss (the last curve point) with the law's prediction for the schedule actually
   trained, and with the cosine and WSD runs of the same length.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import lib
from experiments.lib.cli import training
from experiments.lib.curve_fits import LAWS, LEVEL, finite, fit_laws, params_table

__all__ = ["LAWS", "LEVEL", "STABLE", "analyze", "compress", "fit_laws", "optimised_study", "summary"]

STABLE = "constant"  # the constant run, which every branch restores


def compress(eta: np.ndarray, peak: float, warmup: int, n: int) -> tuple[tuple[int, float], ...]:
    """Knots (step, eta / peak) of a non-increasing schedule ``eta`` [T] after its ``warmup``.

    Knot k sits at the first step where (elapsed fraction of the steps + fraction of the total
    LR drop) / 2 reaches k / (n - 1), so a long plateau and a short cooldown both get knots;
    the first and last step and the plateau's end are always knots (so at most n + 1). Linear
    interpolation between them (ScheduleConfig kind "table") is the trained schedule.
    """
    mult = np.minimum(np.asarray(eta[warmup:], float) / peak, 1.0)  # [T - W]
    steps = np.arange(warmup, len(eta))
    elapsed = (steps - warmup) / max(1, len(steps) - 1)
    drop = mult[0] - mult
    frac = drop / drop[-1] if drop[-1] > 0 else elapsed
    c = 0.5 * (elapsed + frac)  # non-decreasing from 0 to 1
    idx = np.unique(np.clip(np.searchsorted(c, np.linspace(0.0, 1.0, n)), 0, len(steps) - 1))
    plateau_end = np.flatnonzero(mult >= mult[0])[-1]  # a knot at the corner, where the decay begins
    idx = np.unique(np.concatenate([[0, plateau_end], idx, [len(steps) - 1]]))
    return tuple((int(steps[i]), float(max(round(mult[i], 8), 1e-8))) for i in idx)


def _final(curves: pd.DataFrame, run: str) -> float:
    c = curves[curves["run"] == run]
    return float(c.loc[c["step"].idxmax(), "loss"])


def trained_steps(study: lib.Study) -> int:
    """Optimiser steps the grid trains: each run's steps less the prefix it restores."""
    return sum(r.train.steps - (r.train.init_from[1] if r.train.init_from else 0) for r in study.runs)


def optimised_study(study: lib.Study, knots) -> lib.Study:
    """The one-run study training the optimised schedule (kind "table" with ``knots``).

    It restores the constant run at the last of its checkpoints (every ``checkpoint_every``
    steps) before the schedule leaves the peak, if any, so that prefix is not trained again.
    """
    stable = next(r for r in study.runs if r.name == STABLE)
    flat = -1  # the multiplier is 1 (the peak) at every step after the warmup up to this one
    for s, v in knots:
        if v < 1.0:
            break
        flat = int(s)
    unit, stable_steps = stable.train.checkpoint_every, stable.train.steps
    # the constant run's checkpoint c saw steps 0..c-1: restorable if those were at the peak too
    start = min((flat + 1) // unit, (stable_steps - 1) // unit) * unit if flat >= 0 else 0
    schedule = dataclasses.replace(stable.schedule, kind="table", knots=tuple((int(s), float(v)) for s, v in knots))
    init = (_stable_dir(study), start) if start else None
    train = dataclasses.replace(stable.train, checkpoint_every=stable.train.steps, keep_checkpoints=1, init_from=init)
    run = dataclasses.replace(stable, schedule=schedule, train=train, name="optimised")
    return lib.Study(name="schedules-optimised", runs=(run,),
                     tags={"optimised": {"kind": "optimised", "length": stable.train.steps, "branch_point": start,
                                         "fitted": False}}, meta={"parent": study.fingerprint()})


def _stable_dir(study: lib.Study) -> str:
    return next(r.train.init_from[0] for r in study.runs if r.train.init_from)



def check_optimised(study, preset, fit, curves, etas, out: Path, *, train: bool, progress: bool) -> dict:
    """Optimise, compress, train (if ``train``) and compare the schedule of the long length.

    Returns {"knots", "deviation" (max |multiplier difference| of the knots from the optimiser's
    schedule), "opt" (the OptimalSchedule), "table" (one row per schedule of the long length:
    predicted and observed final training loss, final validation loss), "out", "trained"}.
    """
    from scaling.run_curves import read_runs, run_schedule
    from scaling.schedule_opt import optimize_schedule

    L, W, peak = preset.steps, preset.warmup_steps, preset.learning_rate
    head = etas[STABLE][:W]  # lm's warmup, which every trained schedule shares
    opt = optimize_schedule(fit.params, L, peak, warmup=W, final=preset.min_ratio * peak, head=head)
    knots = compress(opt.schedules["optimal"], peak, W, preset.knots)
    ks, vs = np.array(knots).T
    deviation = float(np.max(np.abs(np.interp(np.arange(W, L), ks, vs) - opt.schedules["optimal"][W:] / peak)))
    sub = optimised_study(study, knots)
    sub_out = out / f"optimised-{sub.fingerprint()}"
    trained = False
    if train:
        with training("python -m experiments.schedules"):
            lib.run_study(sub, sub_out, progress=progress)
    if (sub_out / "study.json").exists():
        table = lib.load_results(sub, sub_out)
        trained = bool((table["status"] == "complete").all())
    eta = {"optimised": run_schedule(sub.runs[0].to_dict())}  # the schedule lm trains (lm's warmup)
    names = ["optimised", f"cosine-L{L}", f"wsd-exp-L{L}", f"wsd-lin-L{L}"]
    eta.update({r: etas[r] for r in names[1:]})
    last = pd.DataFrame({"run": names, "step": L - 1})
    predicted = fit.predict(last, eta)
    observed = {r: _final(curves, r) for r in names[1:]}
    val = {}
    if trained:
        opt_curves, _ = read_runs(sub_out / "runs")
        observed["optimised"] = _final(opt_curves, "optimised")
        val["optimised"] = float(table["final_val_loss"].iloc[0])
    rows = [{"schedule": r, "predicted_final_loss": float(p), "observed_final_loss": observed.get(r, np.nan),
             "final_val_loss": val.get(r, np.nan)} for r, p in zip(names, predicted)]
    opt_plot = dataclasses.replace(
        opt, schedules={"optimal": opt.schedules["optimal"], f"trained ({len(knots)} knots)": eta["optimised"],
                        "cosine": eta[names[1]], "wsd-exp": eta[names[2]]},
        final_loss={"optimal": opt.final_loss["optimal"], f"trained ({len(knots)} knots)": float(predicted[0]),
                    "cosine": float(predicted[1]), "wsd-exp": float(predicted[2])})
    return {"knots": knots, "deviation": deviation, "opt": opt_plot, "table": pd.DataFrame(rows),
            "out": sub_out, "trained": trained, "start": sub.runs[0].train.init_from}


def _optimised_lines(check: dict, preset) -> tuple[list[str], dict]:
    """The report's section on the optimised schedule; its gains over the cosine and WSD runs."""
    opt = check["table"].set_index("schedule")
    lines = ["", f"## The optimised schedule ({preset.steps} steps)", "",
             f"Projected Adam on the LR decrements under the multi-power fit (Luo et al. Sec. 5), compressed to "
             f"{len(check['knots'])} knots (max |multiplier change| {check['deviation']:.3g}); projected Adam "
             f"started from the constant, cosine and WSD schedules and the {check['opt'].start} start ended lowest "
             "(scaling.schedule_opt); the law predicts "
             f"{check['opt'].final_loss['optimal']:.4f} for the optimiser's schedule with its own warmup. "
             + (f"Trained from the constant run's checkpoint at step {check['start'][1]}." if check["start"]
                else "Trained from step 0."), ""]
    lines += lib.markdown_table(["schedule", "predicted final train loss", "observed final train loss",
                                 "final val loss"],
                                [(r, f"{v.predicted_final_loss:.4f}", f"{v.observed_final_loss:.4f}",
                                  f"{v.final_val_loss:.4f}") for r, v in opt.iterrows()], align="lrrr")
    gain = {}
    for ref in (f"cosine-L{preset.steps}", f"wsd-exp-L{preset.steps}"):
        gain[ref] = {k: opt.loc[ref, c] - opt.loc["optimised", c] for k, c in
                     (("predicted", "predicted_final_loss"), ("observed", "observed_final_loss"),
                      ("val", "final_val_loss"))}
        lines += ["", (f"Gain of the optimised schedule over {ref} (> 0: better): predicted "
                       f"{gain[ref]['predicted']:+.4f}, observed {gain[ref]['observed']:+.4f} (final train loss), "
                       f"{gain[ref]['val']:+.4f} (final validation loss)." if check["trained"] else
                       f"Not trained yet (--analysis-only): rerun without it to train {check['out']}.")]
    return lines, gain


def analyze(study, table: pd.DataFrame, out, preset, *, bootstrap: int | None = None, train: bool = True,
            progress: bool = False) -> dict:
    """Fits, predictions, errors, the optimised schedule; CSVs, figures and report.md under ``out``."""
    from scaling.curve_plots import plot_curves, plot_schedules
    from scaling.run_curves import read_runs

    out = Path(out)
    fitted = [r.name for r in study.runs if study.tags[r.name]["fitted"]]
    curves, etas = read_runs(out / "runs")
    curves = curves[curves["run"].isin(study.run_names)]
    first = preset.warmup_steps
    fits, notes = fit_laws(curves, etas, fitted, bootstrap, first_step=first)
    errors = pd.concat([e.assign(law=law) for law, (*_, e) in fits.items()], ignore_index=True)
    params = params_table(fits)
    predictions = pd.concat([p.assign(law=law) for law, (_, _, p, _) in fits.items() if len(p)], ignore_index=True)
    mpl = fits["multi_power"]
    check = None
    if finite(mpl[0]):
        check = check_optimised(study, preset, mpl[0], curves, etas, out, train=train, progress=progress)
        val = table.set_index("run")["final_val_loss"]
        check["table"]["final_val_loss"] = [val.get(r, v) for r, v in
                                            zip(check["table"]["schedule"], check["table"]["final_val_loss"])]
    for name, df in (("curve_errors", errors), ("params", params), ("predictions", predictions),
                     ("optimised", check["table"] if check else pd.DataFrame())):
        df.to_csv(out / f"{name}.csv", index=False)
    shown = next((law for law in LAWS if fits[law][0] is not None), None)  # the first law not refused
    figures = []
    if shown:
        pred = fits[shown][2]
        figures = plot_curves(pred[pred["fitted"]], pred[~pred["fitted"]], out, name="curves",
                              title=f"{shown.replace('_', '-')} law: fitted (solid) and predicted (dashed) curves")
    figures += plot_schedules(check["opt"], out) if check else []

    steps = trained_steps(study)
    scratch = sum(r.train.steps for r in study.runs)
    lines = [f"# Loss curves across learning-rate schedules ({study.meta.get('preset')} preset)", "",
             "Luo et al. 2025 (multi-power law, arXiv:2503.12811) and Tissue et al. 2024 (LR annealing, "
             "arXiv:2408.11029), fitted on the training-loss curves of " + ", ".join(fitted) + "; every other "
             "curve is predicted. A branch's curve is the steps it trained after restoring the constant run. "
             f"Every curve is fitted and scored from step {first}, the end of the warmup (where the authors' "
             "released curves begin; see experiments.lib.curve_fits).", "",
             f"Steps trained: {steps} (branches restore the constant run; from scratch: {scratch}).", "",
             "## Prediction errors (PredE = mean |L - Lhat| / L, WorstE = max)", ""]
    by = errors.set_index(["law", "run"])
    order = errors[errors["law"] == LAWS[0]]
    cell = lambda law, v: "refused" if fits[law][0] is None else f"{v:.4f}"  # noqa: E731
    rows = [(run, "fit" if fit else "predicted",
             *(cell(law, by.loc[(law, run)].get(m, np.nan)) for law in LAWS for m in ("PredE", "WorstE")))
            for run, fit in zip(order["run"], order["fitted"])]
    mean = mean_errors(errors)
    rows.append(("**mean of predicted**", "",
                 *(cell(law, mean.loc[law, m]) for law in LAWS for m in ("PredE", "WorstE"))))
    lines += lib.markdown_table(["curve", "", *(f"{m} {law}" for law in LAWS for m in ("PredE", "WorstE"))],
                                rows, align="llrrrr")
    lines += ["", f"## Fitted parameters ({int(100 * LEVEL)}% intervals over {bootstrap or 0} resamples of the "
              f"{len(fitted)} fitted runs)", ""]
    lines += lib.markdown_table(["law", "parameter", "value", "interval"],
                                [(r.law, r.param, f"{r.value:.4g}",
                                  f"[{r.lower:.4g}, {r.upper:.4g}]" if np.isfinite(r.lower) else "-")
                                 for r in params.itertuples()], align="llrr")
    if notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in notes)]
    if check is None:
        lines += ["", "## The optimised schedule", "", "None: the multi-power law was refused (see the notes)."]
        gain = {}
    else:
        more, gain = _optimised_lines(check, preset)
        lines += more
    report = lib.write_report(out, lines, figures)
    return {"fits": fits, "errors": errors, "params": params, "predictions": predictions, "optimised": check,
            "gain": gain, "steps_trained": steps, "plots": figures, "report": report, "notes": notes}


def mean_errors(errors: pd.DataFrame) -> pd.DataFrame:
    """Mean PredE and WorstE over the predicted curves, one row per law (NaN for a refused law)."""
    pred = errors[~errors["fitted"]].reindex(columns=["law", "PredE", "WorstE"])
    return pred.groupby("law")[["PredE", "WorstE"]].mean().reindex(list(LAWS))


def summary(result: dict) -> str:
    """The mean PredE/WorstE of the predicted curves per law, and the optimised schedule's check."""
    mean = mean_errors(result["errors"])
    check = result["optimised"]
    refused = [n for n in result.get("notes", []) if "REFUSED" in n]
    optimised = check["table"].to_string(index=False) if check else "no optimised schedule"
    return (mean.to_string() + "\n" + "".join(n + "\n" for n in refused) + optimised
            + f"\nsteps trained: {result['steps_trained']}")
