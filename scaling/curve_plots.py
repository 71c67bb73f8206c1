"""Figures of the schedule-aware laws: loss curves with their fit or prediction, optimal schedules.

Saved as PNG and SVG by :func:`scaling.plots.save_figure`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from scaling.plots import save_figure


def plot_curves(fitted: pd.DataFrame, predicted: pd.DataFrame | None, out_dir, *,
                title: str = "", name: str = "curves") -> list[Path]:
    """Observed loss (dots) and the law (lines) against step, one colour per run.

    ``fitted``/``predicted``: rows with run, step, loss (optional), predicted_loss and, for
    predictions, lower/upper (the bootstrap band, drawn where finite). Fitted runs are solid,
    predicted runs dashed.
    """
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    parts = [(fitted, "-", "fit")]
    if predicted is not None:
        parts.append((predicted, "--", "predicted"))
    i = 0
    for df, style, what in parts:
        for run, g in df.groupby("run", sort=False):
            color = f"C{i % 10}"
            i += 1
            if "loss" in g and g["loss"].notna().any():
                ax.plot(g["step"], g["loss"], ".", ms=2.5, color=color, alpha=0.5)
            ax.plot(g["step"], g["predicted_loss"], style, color=color, lw=1.2, label=f"{run} ({what})")
            if "lower" in g and np.isfinite(g["lower"]).any():
                ax.fill_between(g["step"], g["lower"], g["upper"], color=color, alpha=0.15, lw=0)
    ax.set(xlabel="step", ylabel="loss", title=title or "loss curves: data (dots) and law (lines)")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, out_dir, name)


def plot_schedules(opt, out_dir, *, name: str = "optimal_schedule") -> list[Path]:
    """LR against step for the optimised schedule and its comparisons, with predicted final losses."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for key, eta in opt.schedules.items():
        ax.plot(np.arange(len(eta)), eta, lw=1.4 if key == "optimal" else 1.0,
                label=f"{key}: predicted final loss {opt.final_loss[key]:.4f}")
    ax.set(xlabel="step", ylabel="learning rate",
           title=f"loss-minimising schedule of the fitted multi-power law ({len(eta)} steps)")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, name)
