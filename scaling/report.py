"""Markdown report of a fit: recipe, parameters with intervals, derived quantities, figures.

Axis letters: none (tables of scalars).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def parameter_table(result, boot=None) -> str:
    """Markdown table: parameter, estimate, and the bootstrap interval when given."""
    level = f"{boot.level:.0%} interval" if boot is not None else "interval"
    lines = [f"| quantity | estimate | {level} |", "|---|---|---|"]
    names = list(result.params)
    if boot is not None:
        names += [k for k in boot.intervals.index if k not in result.params]
    for k in names:
        if k in result.params:
            est = result.params[k]
        else:
            est = boot.intervals.loc[k, "estimate"]
        if k in result.fixed:
            iv = "fixed"
        elif boot is not None and k in boot.intervals.index:
            lo, hi = boot.interval(k)
            iv = f"[{lo:.6g}, {hi:.6g}]"
        else:
            iv = "-"
        lines.append(f"| {k} | {est:.6g} | {iv} |")
    return "\n".join(lines)


def write_report(result, out_dir, *, boot=None, iso=None, figures: Sequence[Path] = (),
                 table_name: str = "", name: str = "report.md") -> Path:
    """Write ``<out_dir>/<name>``: the fit recipe, parameters, intervals and figures.

    Args:
      result: :class:`scaling.fit.FitResult`.
      boot: optional :class:`scaling.bootstrap.BootstrapResult`.
      iso: optional :class:`scaling.isoflop.IsoflopResult` (approach-2 section).
      figures: image paths to embed (relative links; PNGs are shown).
      table_name: where the data came from (shown in the header).
    Returns:
      Path of the report.
    """
    out = Path(out_dir)
    os.makedirs(out, exist_ok=True)
    lines = [f"# Scaling-law fit: {result.law.name}", ""]
    if table_name:
        lines += [f"Data: `{table_name}` ({len(result.logy)} runs)", ""]
    lines += [
        f"Law: {result.law.citation}.",
        "",
        f"Recipe: sum of Huber losses (delta = {result.huber_delta:g}) of log-loss residuals,"
        f" L-BFGS in float64 from {result.n_starts} starts; {result.n_at_best} reached the best"
        f" optimum (objective {result.objective:.6g}).",
        "",
        parameter_table(result, boot),
        "",
    ]
    if boot is not None:
        lines += [f"Bootstrap: {boot.n} resamples of the runs, refitted from the full-data "
                  f"optimum; {boot.n_failed} did not converge and were dropped; percentile "
                  "intervals.", ""]
    if iso is not None:
        lines += ["## IsoFLOP analysis (Chinchilla approach 2)", "",
                  f"N_opt ~ C^{iso.a:.4f} (interval [{iso.a_interval[0]:.4f}, "
                  f"{iso.a_interval[1]:.4f}]), D_opt ~ C^{iso.b:.4f} (interval "
                  f"[{iso.b_interval[0]:.4f}, {iso.b_interval[1]:.4f}]).", "",
                  iso.optima.to_markdown(index=False) if _has_tabulate() else
                  "```\n" + iso.optima.to_string(index=False) + "\n```", ""]
    figs = [Path(f) for f in figures if str(f).endswith(".png")]
    if figs:
        lines += ["## Figures", ""]
        for f in figs:
            rel = os.path.relpath(f, out)
            lines += [f"![{f.stem}]({rel})", ""]
    path = out / name
    path.write_text("\n".join(lines))
    return path


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
