"""``python -m scaling.fit`` for the schedule-aware laws (``--law multi_power | lr_annealing``).

Examples::

    python -m scaling.fit curves.csv --law multi_power --lr lrs.csv --predict other.csv --out o/
    python -m scaling.fit --runs runs/wsd/default --law multi_power --holdout "run == 'r3'" --out o/
    python -m scaling.fit curves.csv --law multi_power --lr lrs.csv --optimize-schedule 24000 --out o/

The curve table has columns run, step, loss; ``--lr`` a table run, step, lr with every step of
each run from 0 (:mod:`scaling.curve_tables`); ``--runs DIR`` reads both from scalelab run
directories (:mod:`scaling.run_curves`). ``--predict`` takes a curve table (run, step, and
loss where known) whose runs' schedules are in ``--lr`` (or ``--runs``). Bad input: one
line on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import time
import numpy as np
import pandas as pd

from scaling.curve_fit import METHODS, curve_errors, curve_predictions, fit_curves
from scaling.curve_laws import CURVE_LAWS
from scaling.schedule_features import DEFAULT_RESOLUTION

FEW_RUNS = 5  # below: a run-level bootstrap has few distinct resamples


def add_curve_options(p) -> None:
    """The options of the schedule-aware laws, added to the ``scaling.fit`` parser."""
    g = p.add_argument_group("schedule-aware laws (--law multi_power | lr_annealing)")
    g.add_argument("--lr", default=None, metavar="CSV",
                   help="learning rates: columns run, step, lr with every step of each run from 0")
    g.add_argument("--runs", default=None, metavar="DIR",
                   help="read the loss curves and schedules of every run directory under DIR "
                        "(instead of TABLE and --lr)")
    g.add_argument("--method", default=None, choices=METHODS,
                   help="luo2025: the authors' recipe (default for multi_power; reproduces their "
                        "published fits); bfgs: multistart BFGS to convergence")
    g.add_argument("--resolution", type=float, default=DEFAULT_RESOLUTION,
                   help="drop-bin width / distance of the multi-power sum, in [0, 1) (0: exact)")
    g.add_argument("--optimize-schedule", type=int, default=None, metavar="STEPS",
                   help="multi_power: derive the loss-minimising non-increasing schedule of STEPS "
                        "steps and compare it with cosine and WSD (writes optimal_schedule.*)")


GENERIC = {"column": [], "fix": [], "weights": None, "grid": [], "budget": [], "isoflop": False,
           "threshold": None, "isoflop_window": None, "objective": "huber", "init_grid": "hoffmann"}


def refuse_curve_options(args) -> None:
    """For the other laws: the curve options do not apply (ValueError, one line)."""
    for name in ("lr", "runs", "method", "optimize_schedule"):
        if getattr(args, name, None) is not None:
            raise ValueError(f"--{name.replace('_', '-')} applies to the schedule-aware laws "
                             f"({sorted(CURVE_LAWS)}), not --law {args.law}")
    if args.table is None:
        raise ValueError("the table to fit is required (TABLE)")


def _check(args) -> None:
    for name, default in GENERIC.items():
        if getattr(args, name, default) != default:
            raise ValueError(f"--{name.replace('_', '-')} does not apply to --law {args.law}")
    if (args.table is None) == (args.runs is None):
        raise ValueError("give either TABLE (with --lr) or --runs DIR")
    if args.table is not None and args.lr is None:
        raise ValueError(f"--law {args.law} needs the learning rates: --lr CSV (run, step, lr)")
    if args.runs is not None and args.lr is not None:
        raise ValueError("--runs reads the runs' own schedules: drop --lr")
    if not 0.0 <= args.resolution < 1.0:
        raise ValueError(f"--resolution {args.resolution}: must be in [0, 1)")
    if args.optimize_schedule is not None:
        if args.law != "multi_power":
            raise ValueError("--optimize-schedule needs --law multi_power")
        if args.optimize_schedule < 2:
            raise ValueError(f"--optimize-schedule {args.optimize_schedule}: must be >= 2 steps")
        if args.out is None:
            raise ValueError("--optimize-schedule writes optimal_schedule.*: give --out DIR")


def fit_warnings(fit) -> list[str]:
    """One-line warnings: exponents running off, few BFGS starts at the best."""
    out = []
    for k in ("alpha", "beta", "gamma"):
        v = fit.params.get(k)
        if v is not None and not 1e-3 < v < 5.0:
            out.append(f"{k} = {v:.4g} is running off (outside (0.001, 5)): the curves do not pin "
                       "it down; the law's other parameters trade off against it")
    if fit.method == "bfgs" and fit.n_at_best <= 2 < fit.n_starts:
        out.append(f"only {fit.n_at_best} of {fit.n_starts} starts reached the best objective: "
                   "the answer depends on the start grid")
    return out


def _parameter_table(fit, boot) -> str:
    rows = []
    for k, v in fit.params.items():
        lo, hi = boot.interval(k) if boot is not None else (np.nan, np.nan)
        rows.append({"parameter": k, "estimate": v, "lower": lo, "upper": hi})
    return pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.6g}")


def run_curves(args) -> int:
    """Fit, bootstrap, predict, optimise and write for a schedule-aware law; returns 0."""
    from scaling.curve_tables import load_curves, load_schedules
    from scaling.predict import select_rows

    _check(args)
    if args.runs is not None:
        from scaling.run_curves import read_runs

        curves, schedules = read_runs(args.runs)
    else:
        curves, schedules = load_curves(args.table), load_schedules(args.lr)
    fit_rows, held = select_rows(curves, args.where, args.holdout)
    other = load_curves(args.predict, need_loss=False) if args.predict else None
    t0 = time.perf_counter()
    fit = fit_curves(fit_rows, schedules, args.law, method=args.method, resolution=args.resolution,
                     huber_delta=1e-3 if args.huber_delta is None else args.huber_delta)
    bad = sorted(k for k, v in fit.params.items() if not np.isfinite(v))
    if bad:
        from scaling.table import FitConvergenceError

        raise FitConvergenceError(
            f"the {args.law} fit ({fit.method}) ended with non-finite parameters {bad}: nothing written; "
            + ("try --method bfgs, or fit from a later step (--where 'step >= S')" if fit.method != "bfgs"
               else "fit from a later step (--where 'step >= S') or more runs with an LR drop"))
    print(f"{args.law} ({fit.method}): objective {fit.objective:.10g}, {len(fit.runs)} runs, "
          f"{len(fit_rows)} points, {fit.n_at_best}/{fit.n_starts} starts at the best "
          f"({time.perf_counter() - t0:.1f} s)")
    boot = None
    warnings = []
    if args.bootstrap:
        t0 = time.perf_counter()
        boot = fit.bootstrap(n=args.bootstrap, seed=args.seed, level=args.level)
        print(f"bootstrap: {boot.n} resamples of whole runs, {boot.n_failed} dropped "
              f"({time.perf_counter() - t0:.1f} s)")
        if len(fit.runs) < FEW_RUNS:
            warnings.append(f"only {len(fit.runs)} runs: resampling whole runs gives few distinct "
                            "resamples; read the intervals as rough")
        from scaling.refit import FAILED_UNRELIABLE, FAILED_WARN

        if boot.n_failed > boot.n * FAILED_WARN:
            verdict = ("the intervals are unreliable" if boot.n_failed > boot.n * FAILED_UNRELIABLE
                       else "dropping them biases the intervals")
            warnings.append(f"{100 * boot.n_failed / boot.n:.1f}% of bootstrap resamples ({boot.n_failed} of "
                            f"{boot.n}) dropped (no LR drop among their runs, or not converged): {verdict}")
        from scaling.diagnostics import interval_warnings

        warnings += interval_warnings(boot)
    warnings = fit_warnings(fit) + warnings
    print(_parameter_table(fit, boot))
    for w in warnings:
        print(f"warning: {w}")
    to_predict = [t for t in ((held if len(held) else None), other) if t is not None]
    pred = None
    if to_predict:
        pred = pd.concat([curve_predictions(fit, t, schedules, boot, args.level) for t in to_predict],
                         ignore_index=True)
        if "loss" in pred and pred["loss"].notna().any():
            print("prediction errors (per run; mean over runs):")
            print(curve_errors(pred.dropna(subset=["loss"])).to_string(float_format=lambda v: f"{v:.5g}"))
        else:
            print(pred.groupby("run").tail(1).to_string(index=False))
    opt = None
    if args.optimize_schedule is not None:
        from scaling.schedule_opt import optimize_schedule

        first = fit.schedules[fit.runs[0]]
        opt = optimize_schedule(fit.params, args.optimize_schedule, peak=fit.eta_ref,
                                warmup=min(int(np.argmax(first)) + 1, args.optimize_schedule - 2))
        print("predicted final loss: " + ", ".join(f"{k} {v:.5f}" for k, v in opt.final_loss.items()))
    if args.out:
        _write(args, fit, boot, pred, opt, warnings)
    return 0


def _write(args, fit, boot, pred, opt, warnings) -> None:
    """Figures and tables under ``--out``, staged and moved into place together
    (:func:`scaling.outputs.staged`: a failed write is one line, exit 1, earlier outputs kept)."""
    from scaling.curve_plots import plot_curves, plot_schedules
    from scaling.outputs import staged

    from scaling.fit_json import curve_record, write_fit_json

    written = ["params.csv", "fit.json"]
    with staged(args.out) as out:
        write_fit_json(out / "fit.json", curve_record(fit, boot, warnings, table=args.table or args.runs,
                                                       where=args.where, holdout=args.holdout, seed=args.seed))
        fitted = fit.table.assign(predicted_loss=fit.predict())
        figs = plot_curves(fitted, pred, out, title=f"{args.law}: fitted runs (solid), predicted (dashed)")
        fit.summary().to_csv(out / "params.csv", index_label="parameter")
        if pred is not None:
            pred.to_csv(out / "predictions.csv", index=False)
            written.append("predictions.csv")
        if boot is not None:
            boot.to_csv(out / "samples.csv")
            written.append("samples.csv")
        if opt is not None:
            pd.DataFrame({"step": np.arange(len(opt.schedules["optimal"])), **opt.schedules}).to_csv(
                out / "optimal_schedule.csv", index=False)
            written.append("optimal_schedule.csv")
            figs += plot_schedules(opt, out)
    print(f"wrote {', '.join(written)} and {len(figs)} figures to {args.out}")
