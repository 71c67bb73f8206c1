"""Markdown report of a fit: recipe, parameters with intervals, derived quantities, figures.

Axis letters: none (tables of scalars).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def parameter_table(result, boot=None) -> str:
    """Markdown table: parameter, estimate, and the bootstrap interval and SD when given."""
    level = f"{boot.level:.0%} interval" if boot is not None else "interval"
    lines = [f"| quantity | estimate | {level} | bootstrap SD |", "|---|---|---|---|"]
    names = list(result.params)
    constant = set()
    if boot is not None:
        from scaling.diagnostics import fixed_by_construction

        names += [k for k in boot.intervals.index if k not in result.params]
        constant = fixed_by_construction(result, names) - set(result.fixed)
    for k in names:
        if k in result.params:
            est = result.params[k]
        else:
            est = boot.intervals.loc[k, "estimate"]
        sd = "-"
        if k in result.fixed:
            iv = "fixed"
        elif k in constant:
            iv = "fixed by construction"
        elif boot is not None and k in boot.intervals.index:
            lo, hi = boot.interval(k)
            iv = f"[{lo:.6g}, {hi:.6g}]"
            sd = f"{boot.intervals.loc[k, 'std']:.3g}"
        else:
            iv = "-"
        lines.append(f"| {k} | {est:.6g} | {iv} | {sd} |")
    return "\n".join(lines)


def write_report(result, out_dir, *, boot=None, iso=None, figures: Sequence[Path] = (),
                 table_name: str = "", name: str = "report.md", warnings: Sequence[str] | None = None,
                 predictions=None) -> Path:
    """Write ``<out_dir>/<name>``: the fit recipe, parameters, intervals and figures.

    Args:
      result: :class:`scaling.fit.FitResult`.
      boot: optional :class:`scaling.bootstrap.BootstrapResult`.
      iso: optional :class:`scaling.isoflop.IsoflopResult` (approach-2 section).
      figures: image paths to embed (relative links; PNGs are shown).
      table_name: where the data came from (shown in the header).
      warnings: lines of :func:`scaling.diagnostics.fit_warnings` (computed when None).
      predictions: optional DataFrame of :func:`scaling.predict.predictions`.
    Returns:
      Path of the report.
    """
    out = Path(out_dir)
    os.makedirs(out, exist_ok=True)
    lines = [f"# Scaling-law fit: {result.law.name}", ""]
    if table_name:
        lines += [f"Data: `{table_name}` ({len(result.logy)} runs)", ""]
    from scaling.diagnostics import fit_warnings, markdown

    how = (f"sum of Huber losses (delta = {result.huber_delta:g}) of log-loss residuals"
           if result.objective_kind == "huber" else
           f"Huber likelihood (delta = {result.huber_delta:g} on r / sigma, sigma free; "
           "Besiroglu et al. 2024) of log-loss residuals")
    if result.weights is not None and (result.weights != 1).any():
        how += ", weighted per run"
    lines += [
        f"Law: {result.law.citation}.",
        "",
        f"Recipe: {how}, BFGS in float64 from {result.n_starts} starts; {result.n_at_best} "
        f"reached the best optimum (objective {result.objective:.10g}).",
        "",
        parameter_table(result, boot),
        "",
    ]
    lines += markdown(fit_warnings(result, boot) if warnings is None else list(warnings))
    if boot is not None:
        lines += [f"Bootstrap: {boot.n} resamples of the runs, refitted from the full-data "
                  f"optimum; {boot.n_failed} did not converge and were dropped; percentile "
                  "intervals.", ""]
    if iso is not None:
        lines += ["## IsoFLOP analysis (Chinchilla approach 2)", "",
                  f"N_opt ~ C^{iso.a:.4f} (interval [{iso.a_interval[0]:.4f}, "
                  f"{iso.a_interval[1]:.4f}]), D_opt ~ C^{iso.b:.4f} (interval "
                  f"[{iso.b_interval[0]:.4f}, {iso.b_interval[1]:.4f}]).", "",
                  _table(iso.optima), ""]
    if predictions is not None:
        cols = [c for c in predictions.columns if c in (*result.columns.values(), "predicted_loss",
                                                        "lower", "upper", "rel_error")]
        lines += ["## Predictions", "", _table(predictions[cols]), ""]
    figs = [Path(f) for f in figures if str(f).endswith(".png")]
    if figs:
        lines += ["## Figures", ""]
        for f in figs:
            rel = os.path.relpath(f, out)
            lines += [f"![{f.stem}]({rel})", ""]
    path = out / name
    path.write_text("\n".join(lines))
    return path


def _table(df) -> str:
    if _has_tabulate():
        return df.to_markdown(index=False)
    return "```\n" + df.to_string(index=False) + "\n```"


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
