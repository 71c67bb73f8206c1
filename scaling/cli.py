"""Command line of ``python -m scaling.fit``: fit a law to a CSV, print, plot, report, predict.

Example::

    python -m scaling.fit runs.csv --law chinchilla --bootstrap 1000 --out fit_out/
    python -m scaling.fit runs.csv --law chinchilla_tied --holdout "N > 1e9" --bootstrap 200 --out o/

Every bad input (a missing, empty or unreadable table, a bad column, a bad option) ends with
one line on stderr, exit status 2, and nothing written; options are checked before fitting.
A failure to write the outputs (a full disk, a quota) is one line naming the folder and its
free space, exit status 1, and leaves earlier outputs as they were (:mod:`scaling.outputs`).
``--where`` / ``--holdout`` take the expression grammar of :mod:`scaling.row_filter` (column
conditions only; nothing is evaluated as Python).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence

from scaling.curve_laws import CURVE_LAWS
from scaling.curves_cli import add_curve_options, refuse_curve_options, run_curves
from scaling.fitting import OBJECTIVES
from scaling.hyperparams import HYPER_LAWS
from scaling.law_specs import LAWS
from scaling.outputs import OutputError
from scaling.table import FitConvergenceError

PROG = "python -m scaling.fit"
BATCH_UNITS = ("tokens", "sequences")
BATCH_LAWS = ("bs_opt", "bs_opt_nd", "bs_opt_c")


class UsageError(ValueError):
    """A bad command-line option or table (reported as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    laws_help = "; ".join(f"{k}: {v.param_names} from {v.variables}" for k, v in LAWS.items())
    laws_help += "; " + "; ".join(f"{k}: {v}" for k, v in HYPER_LAWS.items())
    p = _Parser(
        prog=PROG,
        description="Fit a scaling law to a table of runs (Huber loss on log residuals, "
                    "multistart BFGS, bootstrap intervals); print the parameters and warnings, "
                    "write plots (PNG+SVG), report.md, fit.json, samples.csv and predictions.csv.",
    )
    p.add_argument("table", nargs="?", default=None,
                   help="CSV file, one row per run (curve laws: run, step, loss per evaluation)")
    p.add_argument("--law", default="chinchilla", choices=sorted([*LAWS, *HYPER_LAWS, *CURVE_LAWS]),
                   help=laws_help)
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="bootstrap resamples for percentile intervals and SDs (0: none; else >= 2)")
    p.add_argument("--level", type=float, default=0.95, help="interval coverage, in (0, 1)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--objective", default="huber", choices=OBJECTIVES,
                   help="huber: sum of Huber losses (Hoffmann et al. 2022); huber_ml: Huber "
                        "likelihood with a free scale sigma (Besiroglu et al. 2024)")
    p.add_argument("--huber-delta", type=float, default=None,
                   help="Huber delta, > 0 (default: 1e-3 on log residuals for huber, Hoffmann "
                        "et al. 2022; 1.345 on r / sigma for huber_ml)")
    p.add_argument("--weights", default=None, metavar="COLUMN",
                   help="column of per-run weights (>= 0)")
    grids = "; ".join(f"{k}: {', '.join(v.grids)}" for k, v in LAWS.items())
    p.add_argument("--init-grid", default="hoffmann",
                   help=f"name of the law's grid of starts ({grids}); 'hoffmann' falls back to "
                        "the law's default grid")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="replace the start values of one optimiser coordinate (e.g. "
                        "alpha=0.2,0.5; chinchilla: a, b, e = log A, log B, log E, alpha, beta); "
                        "repeatable")
    p.add_argument("--column", action="append", default=[], metavar="VAR=COL",
                   help="map a variable (N, D, U, C, loss) to a column; repeatable")
    p.add_argument("--fix", action="append", default=[], metavar="PARAM=VALUE",
                   help="hold a parameter fixed; repeatable")
    p.add_argument("--budget", action="append", type=float, default=[], metavar="C",
                   help="FLOP budget at which to report N_opt, D_opt; repeatable")
    where_help = ("column names, numbers, 'strings', + - * /, comparisons (chained: 1e6 <= N < "
                  "1e8), in [...], & | ~ and or not, parentheses, COL.str.contains('...'); "
                  "nothing else")
    p.add_argument("--where", default=None, metavar="EXPR",
                   help=f"fit only the rows where EXPR holds, e.g. \"N < 1e9 & D > 1e10\" ({where_help})")
    p.add_argument("--holdout", default=None, metavar="EXPR",
                   help="hold out the rows where EXPR holds (same grammar) and predict them")
    p.add_argument("--predict", default=None, metavar="CSV",
                   help="predict the rows of another table (writes predictions.csv)")
    p.add_argument("--threshold", type=float, default=None,
                   help="lr_opt/bs_opt: near-optimal band relative to each cell's best loss "
                        "(default 0.0025)")
    p.add_argument("--batch-unit", default="tokens", choices=BATCH_UNITS,
                   help="bs_opt/bs_opt_nd/bs_opt_c: the unit of the batch-size column; "
                        "sequences are converted to tokens with --seq-len (default: tokens)")
    p.add_argument("--seq-len", type=int, default=None, metavar="L",
                   help="tokens per sequence, for --batch-unit sequences (an integer >= 1)")
    p.add_argument("--isoflop", action="store_true",
                   help="also run the isoFLOP (approach 2) analysis (needs a C column)")
    p.add_argument("--isoflop-window", type=float, default=None, metavar="FACTOR",
                   help="fit each isoFLOP parabola to runs within this factor in N of the "
                        "budget's best run (default: all runs)")
    p.add_argument("--out", default=None,
                   help="output directory for plots, report.md, samples.csv, predictions.csv")
    add_curve_options(p)
    return p


def _pairs(items: Sequence[str], what: str, cast=str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--{what} {item!r}: expected NAME=VALUE")
        k, v = (s.strip() for s in item.split("=", 1))
        try:
            value = cast(v)
        except ValueError:
            raise UsageError(f"--{what} {item!r}: {v!r} is not a number") from None
        if cast is float and not math.isfinite(value):
            raise UsageError(f"--{what} {item!r}: must be finite")
        out[k] = value
    return out


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def check_args(args) -> None:
    """Refuse bad options before any fitting (UsageError, one line)."""
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise UsageError(f"--bootstrap {args.bootstrap}: must be 0 (none) or >= 2")
    if not 0.0 < args.level < 1.0:
        raise UsageError(f"--level {args.level}: must be in (0, 1)")
    delta = args.huber_delta
    if delta is not None and not (math.isfinite(delta) and delta > 0):
        raise UsageError(f"--huber-delta {args.huber_delta}: must be a finite number > 0")
    if args.threshold is not None and not (math.isfinite(args.threshold) and args.threshold >= 0):
        raise UsageError(f"--threshold {args.threshold}: must be a finite number >= 0")
    if args.isoflop_window is not None and not args.isoflop_window > 1:
        raise UsageError(f"--isoflop-window {args.isoflop_window}: must be > 1")
    for c in args.budget:
        if not (math.isfinite(c) and c > 0):
            raise UsageError(f"--budget {c}: must be a finite number > 0")
    if args.out is not None:
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise UsageError(f"--out {args.out!r}: exists and is not a directory")
        parent = args.out
        while not os.path.exists(parent):
            parent = os.path.dirname(os.path.abspath(parent))
        if not os.access(parent, os.W_OK):
            raise UsageError(f"--out {args.out!r}: {parent!r} is not writable")
    if args.batch_unit == "sequences":
        if args.law not in BATCH_LAWS:
            raise UsageError(f"--batch-unit sequences: only for the batch-size laws "
                             f"{', '.join(BATCH_LAWS)} (--law {args.law})")
        if args.seq_len is None:
            raise UsageError("--batch-unit sequences needs --seq-len L (tokens per sequence, an "
                             "integer >= 1); or --batch-unit tokens")
        if args.seq_len < 1:
            raise UsageError(f"--seq-len {args.seq_len}: must be an integer >= 1")
    elif args.seq_len is not None:
        raise UsageError(f"--seq-len {args.seq_len}: only with --batch-unit sequences "
                         f"(--batch-unit is one of {', '.join(BATCH_UNITS)})")
    if (args.predict or args.holdout) and args.out is None:
        raise UsageError("--predict and --holdout write predictions.csv: give --out DIR")
    if args.predict is not None and not os.path.isfile(args.predict):
        raise UsageError(f"--predict {args.predict!r}: no such file")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; 0 on success, 2 on a bad input, 1 when the outputs cannot be
    written (one line on stderr)."""
    try:
        return run(argv)
    except (UsageError, ValueError, FitConvergenceError, OutputError) as exc:
        msg = " ".join(str(exc).split())
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1 if isinstance(exc, OutputError) else 2


def run(argv: Sequence[str] | None = None) -> int:
    """Parse, check, fit, then write; raises ValueError/UsageError on bad input."""
    args = build_parser().parse_args(argv)
    check_args(args)
    if args.law in CURVE_LAWS:
        return run_curves(args)
    refuse_curve_options(args)
    columns = _pairs(args.column, "column")
    fixed = _pairs(args.fix, "fix", float)
    try:
        grid_values = {k: _floats(v) for k, v in _pairs(args.grid, "grid").items()}
    except ValueError as exc:
        raise UsageError(f"--grid: {exc}") from None
    from scaling.predict import select_rows
    from scaling.table import load_table

    df = load_table(args.table)
    if len(df) == 0:
        raise UsageError(f"table={args.table!r}: header only, no rows")
    fit_rows, held = select_rows(df, args.where, args.holdout)
    if args.law in HYPER_LAWS:
        from scaling.hyperparams_cli import run_hyper

        return run_hyper(args, fit_rows, columns)
    from scaling.fitting import fit_law

    other = None
    if args.predict is not None:
        other = load_table(args.predict)
    t0 = time.perf_counter()
    res = fit_law(fit_rows, law=args.law, huber_delta=args.huber_delta, init_grid=args.init_grid,
                  columns=columns or None, fixed=fixed or None, weights=args.weights,
                  objective=args.objective, grid_values=grid_values or None)
    print(f"{args.law}: objective {res.objective:.10g} ({args.objective}), {res.n_at_best}/"
          f"{res.n_starts} starts at the best, {len(fit_rows)} rows "
          f"({time.perf_counter() - t0:.1f} s)")
    from scaling.outputs import finish

    return finish(args, res, held, other, columns)


if __name__ == "__main__":
    sys.exit(main())
