"""What ``python -m scaling.fit`` prints and writes after a fit (see :mod:`scaling.cli`).

Printed: the parameter table (estimate, bootstrap interval, SD) and every warning of
:mod:`scaling.diagnostics`. Written under ``--out``: figures (PNG+SVG), report.md, fit.json
(the machine-readable record, :mod:`scaling.fit_json`; read it with :func:`read_fit_json`),
samples.csv (the bootstrap refits) and predictions.csv (held-out or ``--predict`` rows).

Outputs are written into a staging folder inside ``--out`` and moved into place once all
are written: a failed write (a full disk, a quota, a path in the way) leaves the folder as it
was and ends in :class:`OutputError`, one line naming the folder and its free space (exit 1).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from scaling.fit_json import read_fit_json  # noqa: F401  (the readers' entry point)


class OutputError(RuntimeError):
    """Writing the outputs failed (disk full, quota, permissions): one line, exit status 1."""


def _free_space(path: Path) -> str:
    """Free space on the disk holding ``path`` (its nearest existing folder), e.g. '1.2 GB'."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = float(shutil.disk_usage(p).free)
    except OSError:
        return "unknown space"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if free < 1000 or unit == "TB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1000
    return "unknown space"


@contextlib.contextmanager
def staged(out_dir):
    """Yield a staging folder inside ``out_dir``; on success move its files into ``out_dir``.

    Any OSError while writing or moving becomes :class:`OutputError`; the staging folder (and
    ``out_dir`` itself, if this call created it) is removed, earlier outputs are kept.
    """
    out = Path(out_dir)
    created = None  # the topmost folder this call creates
    p = Path(os.path.abspath(out))
    while not p.exists() and p != p.parent:
        created, p = p, p.parent
    tmp = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".scaling-fit-", dir=out))
        yield tmp
        names = sorted(f.name for f in tmp.iterdir())
        for name in names:
            if (out / name).is_dir():
                raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(out / name))
        for name in names:
            os.replace(tmp / name, out / name)
    except BaseException as exc:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        if not isinstance(exc, OSError):
            raise
        what = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename else ""
        raise OutputError(f"cannot write the outputs to {str(out)!r}: {what}{where}; "
                          f"{_free_space(out)} free there") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


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
        from scaling.fit_json import fit_record, write_fit_json

        with staged(args.out) as tmp:
            figs = _figures(args, res, boot, iso, tmp)
            written = []
            if pred is not None:
                pred.to_csv(tmp / "predictions.csv", index=False)
                written.append("predictions.csv")
                if "rel_error" in pred:
                    figs += plots.plot_predictions(res, pred, tmp)
            if boot is not None:
                boot.to_csv(tmp / "samples.csv")
                written.append("samples.csv")
            record = fit_record(res, boot, warnings, table=str(args.table), where=args.where,
                                holdout=args.holdout, seed=args.seed, budgets=args.budget)
            write_fit_json(tmp / "fit.json", record)
            written.append("fit.json")
            path = write_report(res, tmp, boot=boot, iso=iso, figures=figs,
                                table_name=str(args.table), warnings=warnings, predictions=pred)
        print(f"wrote {Path(args.out) / path.name}, {', '.join(written)} and {len(figs)} figures")
    return 0


def _figures(args, res, boot, iso, out: Path) -> list[Path]:
    """Every figure that applies to the law (PNG+SVG paths) under ``out``."""
    from scaling import plots

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
    return figs
