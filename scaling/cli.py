"""Command line of ``python -m scaling.fit``: fit a law to a CSV, print, plot, report.

Example::

    python -m scaling.fit runs.csv --law chinchilla --bootstrap 1000 --out fit_out/
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from scaling.law_specs import LAWS


def build_parser() -> argparse.ArgumentParser:
    laws_help = "; ".join(f"{k}: {v.param_names} from {v.variables}" for k, v in LAWS.items())
    p = argparse.ArgumentParser(
        prog="python -m scaling.fit",
        description="Fit a scaling law to a table of runs (Huber loss on log residuals, "
                    "multistart L-BFGS, bootstrap intervals); print the parameters, write "
                    "plots (PNG+SVG) and a markdown report.",
    )
    p.add_argument("table", help="CSV file, one row per run")
    p.add_argument("--law", default="chinchilla", choices=sorted(LAWS), help=laws_help)
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="bootstrap resamples for percentile intervals (0: none)")
    p.add_argument("--level", type=float, default=0.95, help="interval coverage")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--huber-delta", type=float, default=1e-3, help="Huber delta")
    grids = "; ".join(f"{k}: {', '.join(v.grids)}" for k, v in LAWS.items())
    p.add_argument("--init-grid", default="hoffmann",
                   help=f"name of the law's grid of L-BFGS starts ({grids}); 'hoffmann' falls "
                        "back to the law's default grid")
    p.add_argument("--column", action="append", default=[], metavar="VAR=COL",
                   help="map a variable (N, D, U, C, loss) to a column; repeatable")
    p.add_argument("--fix", action="append", default=[], metavar="PARAM=VALUE",
                   help="hold a parameter fixed; repeatable")
    p.add_argument("--budget", action="append", type=float, default=[], metavar="C",
                   help="FLOP budget at which to report N_opt, D_opt; repeatable")
    p.add_argument("--isoflop", action="store_true",
                   help="also run the isoFLOP (approach 2) analysis (needs a C column)")
    p.add_argument("--isoflop-window", type=float, default=None, metavar="FACTOR",
                   help="fit each isoFLOP parabola to runs within this factor in N of the "
                        "budget's best run (default: all runs)")
    p.add_argument("--out", default=None, help="output directory for plots and report.md")
    return p


def _pairs(items: Sequence[str], what: str, cast=str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--{what} {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = cast(v.strip())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns 0 on success."""
    args = build_parser().parse_args(argv)
    from scaling import plots
    from scaling.fit import fit_law
    from scaling.report import parameter_table, write_report

    columns = _pairs(args.column, "column")
    t0 = time.perf_counter()
    res = fit_law(args.table, law=args.law, huber_delta=args.huber_delta,
                  init_grid=args.init_grid, columns=columns or None,
                  fixed=_pairs(args.fix, "fix", float) or None)
    print(f"{args.law}: objective {res.objective:.6g}, {res.n_at_best}/{res.n_starts} starts "
          f"at the best ({time.perf_counter() - t0:.1f} s)")
    boot = None
    if args.bootstrap:
        t0 = time.perf_counter()
        boot = res.bootstrap(n=args.bootstrap, seed=args.seed, level=args.level,
                             budgets=args.budget)
        print(f"bootstrap: {boot.n} resamples, {boot.n_failed} failed "
              f"({time.perf_counter() - t0:.1f} s)")
    print(parameter_table(res, boot))
    iso = None
    if args.isoflop:
        from scaling.isoflop import fit_isoflop

        iso = fit_isoflop(args.table, columns=columns or None, level=args.level,
                          window=args.isoflop_window)
        print(f"isoFLOP: a = {iso.a:.4f} {iso.a_interval}, b = {iso.b:.4f} {iso.b_interval}")
    if args.out:
        figs = []
        if {"N", "D"} <= set(res.law.variables) or res.law.variables == ("C",):
            figs += plots.plot_loss_vs_compute(res, args.table, args.out, boot=boot)
        figs += plots.plot_residuals(res, args.out)
        if "beta" in res.params or args.law == "chinchilla_tied":
            figs += plots.plot_contours(res, args.out)
            figs += plots.plot_optimal_allocation(args.out, iso=iso, result=res, boot=boot)
        if iso is not None:
            figs += plots.plot_isoflop(iso, args.out)
        path = write_report(res, args.out, boot=boot, iso=iso, figures=figs,
                            table_name=str(args.table))
        print(f"wrote {path} and {len(figs)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
