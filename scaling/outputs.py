"""What ``python -m scaling.fit`` prints and writes after a fit (see :mod:`scaling.cli`).

Printed: the parameter table (estimate, bootstrap interval, SD) and every warning of
:mod:`scaling.diagnostics`. Written under ``--out``: figures (PNG+SVG), report.md,
samples.csv (the bootstrap refits) and predictions.csv (held-out or ``--predict`` rows).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd


def finish(args, res, held: pd.DataFrame, other, columns) -> int:
    """Bootstrap, print, and write every output of one fit; returns 0."""
    from scaling import plots
    from scaling.diagnostics import fit_warnings
    from scaling.predict import predictions
    from scaling.report import parameter_table, write_report

    boot = None
    if args.bootstrap:
        t0 = time.perf_counter()
        boot = res.bootstrap(n=args.bootstrap, seed=args.seed, level=args.level,
                             budgets=args.budget)
        print(f"bootstrap: {boot.n} resamples, {boot.n_failed} failed "
              f"({time.perf_counter() - t0:.1f} s)")
    print(parameter_table(res, boot))
    warnings = fit_warnings(res, boot)
    for w in warnings:
        print(f"warning: {w}")
    to_predict = [t for t in (held if len(held) else None, other) if t is not None]
    pred = None
    if to_predict:
        pred = pd.concat([predictions(res, t, boot, args.level) for t in to_predict],
                         ignore_index=True)
        show = [c for c in (res.columns[v] for v in (*res.law.variables, "loss")) if c in pred]
        show += [c for c in ("predicted_loss", "lower", "upper", "rel_error") if c in pred]
        print(pred[show].to_string(index=False, float_format=lambda v: f"{v:.6g}"))
        if boot is None:
            print("(no --bootstrap: no prediction intervals)")
    iso = None
    if args.isoflop:
        from scaling.isoflop import fit_isoflop

        iso = fit_isoflop(res.table, columns=columns or None, level=args.level, window=args.isoflop_window)
        print(f"isoFLOP: a = {iso.a:.4f} {iso.a_interval}, b = {iso.b:.4f} {iso.b_interval}")
    if args.out:
        out = Path(args.out)
        figs = []
        variables = set(res.law.variables)
        if {"N", "D"} <= variables or res.law.variables == ("C",):
            figs += plots.plot_loss_vs_compute(res, res.table, out, boot=boot, level=args.level)
        elif len(res.law.variables) == 1:
            figs += plots.plot_law_1d(res, out, boot=boot, level=args.level)
        figs += plots.plot_residuals(res, out)
        if "beta" in res.params or args.law == "chinchilla_tied":
            figs += plots.plot_contours(res, out)
            figs += plots.plot_optimal_allocation(out, iso=iso, result=res, boot=boot, level=args.level)
        if iso is not None:
            figs += plots.plot_isoflop(iso, out)
        written = []
        if pred is not None:
            pred.to_csv(out / "predictions.csv", index=False)
            written.append(out / "predictions.csv")
            if "rel_error" in pred:
                figs += plots.plot_predictions(res, pred, out)
        if boot is not None:
            boot.to_csv(out / "samples.csv")
            written.append(out / "samples.csv")
        path = write_report(res, out, boot=boot, iso=iso, figures=figs,
                            table_name=str(args.table), warnings=warnings, predictions=pred)
        print(f"wrote {path}, {', '.join(p.name for p in written) or 'no tables'} and "
              f"{len(figs)} figures")
    return 0
