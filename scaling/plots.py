"""Figures a researcher looks at after a fit, each saved as PNG and SVG.

Every function takes fitted results and/or a DataFrame and an output directory, writes
``<out_dir>/<name>.png`` and ``<out_dir>/<name>.svg``, and returns the two paths. Figures
are drawn on ``matplotlib.figure.Figure`` objects (Agg canvas, no display, no global
pyplot state).

Compute: by default the frontiers use C = 6ND (Kaplan et al. 2020, Hoffmann et al. 2022).
Pass ``flops_per_token`` (N -> training FLOPs per token, e.g. the exact count of
:func:`lm.model.counting.train_flops_per_token` interpolated along a model ladder) to draw them
under C = f(N) D instead, which is what runs trained at exact FLOP budgets lie on.

Axis letters: m runs, k budgets, g grid points, n bootstrap samples.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from scaling import laws
from scaling.constants import CHINCHILLA_TOKENS_PER_PARAM
from scaling.table import column_names, load_table


def save_figure(fig: Figure, out_dir, name: str) -> list[Path]:
    """Save ``fig`` as ``<out_dir>/<name>.png`` and ``.svg`` (creating ``out_dir``); the two paths."""
    out = Path(out_dir)
    os.makedirs(out, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    return paths


def _flops_per_token(flops_per_token: Callable | None) -> Callable:
    return (lambda n: 6.0 * np.asarray(n, float)) if flops_per_token is None else flops_per_token


def _compute_of(df: pd.DataFrame, columns, flops_per_token: Callable | None = None) -> np.ndarray:
    names = column_names(columns)
    if names["C"] in df.columns:
        return df[names["C"]].to_numpy(float)
    n = df[names["N"]].to_numpy(float)
    return _flops_per_token(flops_per_token)(n) * df[names["D"]].to_numpy(float)


def _allocation(C, A, B, alpha, beta, flops_per_token: Callable | None):
    """(N_opt, D_opt) under C = 6ND (closed form) or C = f(N) D; arguments broadcast."""
    if flops_per_token is None:
        return laws.chinchilla_allocation(C, A, B, alpha, beta)
    return laws.chinchilla_allocation_for_flops(C, A, B, alpha, beta, flops_per_token)


def _frontier(params: Mapping[str, np.ndarray], law_name: str, C: np.ndarray,
              flops_per_token: Callable | None = None) -> np.ndarray:
    """Loss at the compute-optimal allocation [g] (C = 6ND or C = f(N) D), or L(C) for a law of C."""
    if law_name == "saturating":
        return laws.saturating_power_law(C, params["E"], params["A"], params["alpha"])
    if law_name == "kaplan_c":
        return laws.kaplan_c(C, params["C_c"], params["alpha_C"])
    beta = params.get("beta", params["alpha"])
    n, d = _allocation(C, params["A"], params["B"], params["alpha"], beta, flops_per_token)
    return laws.chinchilla(n, d, params["E"], params["A"], params["B"], params["alpha"], beta)


def plot_loss_vs_compute(result, table, out_dir, *, columns=None, boot=None,
                         flops_per_token: Callable | None = None,
                         name: str = "loss_vs_compute", level: float = 0.95) -> list[Path]:
    """Every run's loss vs compute, the fitted compute-optimal frontier and its band.

    Args:
      result: :class:`scaling.fit.FitResult` of a Chinchilla-type law (or a law of C).
      table: the runs (DataFrame or CSV) with N, D (or C) and loss columns.
      boot: optional :class:`scaling.bootstrap.BootstrapResult` for the band.
      flops_per_token: N -> FLOPs per token for the frontier (and for runs without a C
        column); None = 6N.
    """
    df = load_table(table)
    names = column_names(columns or result.columns)
    C = _compute_of(df, names, flops_per_token)
    loss = df[names["loss"]].to_numpy(float)
    grid = np.geomspace(C.min() / 2, C.max() * 4, 200)
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    color = np.log10(df[names["N"]].to_numpy(float)) if names["N"] in df.columns else None
    sc = ax.scatter(C, loss, c=color, s=14, cmap="viridis", label="runs")
    if color is not None:
        fig.colorbar(sc, ax=ax, label="log10 N")
    ax.plot(grid, _frontier(result.params, result.law.name, grid, flops_per_token), "k-", label="fitted frontier")
    if boot is not None and len(boot.samples):
        curves = np.stack([_frontier(row, result.law.name, grid, flops_per_token)
                           for row in boot.samples.to_dict("records")])
        lo, hi = np.nanpercentile(curves, [50 * (1 - level), 50 * (1 + level)], axis=0)
        ax.fill_between(grid, lo, hi, color="k", alpha=0.2, label=f"{level:.0%} bootstrap")
    ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="loss",
           title=f"{result.law.name}: loss vs compute")
    ax.legend()
    return save_figure(fig, out_dir, name)


def plot_isoflop(iso, out_dir, *, name: str = "isoflop") -> list[Path]:
    """IsoFLOP curves: loss vs N per budget, fitted parabolas and their minima.

    Args:
      iso: :class:`scaling.isoflop.IsoflopResult`.
    """
    runs, optima = iso.table, iso.optima
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.add_subplot()
    budgets = np.sort(runs["C_budget"].unique())
    cmap = colormaps["plasma"]
    for i, c in enumerate(budgets):
        col = cmap(i / max(len(budgets) - 1, 1))
        r = runs[runs["C_budget"] == c]
        ax.scatter(r["N"], r["loss"], color=col, s=12)
        if iso.window is not None and len(r):
            best_n = r["N"].iloc[int(np.argmin(r["loss"].to_numpy()))]
            r = r[np.abs(np.log(r["N"] / best_n)) <= np.log(iso.window) + 1e-12]
        if len(r) >= 3:
            ln = np.log(r["N"].to_numpy(float))
            coef = np.polyfit(ln, r["loss"].to_numpy(float), 2)
            xs = np.linspace(ln.min(), ln.max(), 100)
            ax.plot(np.exp(xs), np.polyval(coef, xs), color=col, lw=1, label=f"C={c:.2g}")
    o = optima[np.isfinite(optima["N_star"])]
    ax.scatter(o["N_star"], o["L_star"], marker="*", s=80, color="k", zorder=5, label="minima")
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss", title="isoFLOP curves")
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, out_dir, name)


def plot_optimal_allocation(out_dir, *, iso=None, result=None, boot=None,
                            C_range: Sequence[float] | None = None,
                            flops_per_token: Callable | None = None,
                            name: str = "optimal_allocation", level: float = 0.95) -> list[Path]:
    """N_opt(C) and D_opt(C): isoFLOP optima and power laws, the parametric fit's allocation
    with its bootstrap band, and the 20-tokens-per-parameter reference.

    Args:
      iso: optional :class:`scaling.isoflop.IsoflopResult` (points and power laws).
      result, boot: optional Chinchilla-type fit and its bootstrap.
      C_range: (low, high) FLOPs to draw.
      flops_per_token: N -> FLOPs per token (C = f(N) D) for the fit's allocation and the
        20-tokens-per-parameter line; None = 6N.
    """
    f = _flops_per_token(flops_per_token)
    if C_range is None:
        C_range = ((iso.optima["C"].min() / 2, iso.optima["C"].max() * 4) if iso is not None
                   else (1e17, 1e24))
    grid = np.geomspace(C_range[0], C_range[1], 100)
    fitted = fitted_compute_range(iso=iso, result=result, flops_per_token=flops_per_token)
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "N", "N_opt (parameters)"), (axes[1], "D", "D_opt (tokens)")):
        if fitted is not None:
            ax.axvspan(*fitted, color="0.5", alpha=0.12, lw=0,
                       label="compute of the fitted runs (dashed: extrapolated)")
        if iso is not None:
            o = iso.optima[np.isfinite(iso.optima["N_star"])]
            ax.scatter(o["C"], o[f"{key}_star"], color="C0", label="isoFLOP minima")
            power_law = iso.n_opt if key == "N" else iso.d_opt
            expo = iso.a if key == "N" else iso.b
            _solid_inside(ax, grid, power_law(grid), fitted, "C0", f"approach 2: C^{expo:.3f}")
        if result is not None:
            p = result.params
            beta = p.get("beta", p["alpha"])
            n, d = _allocation(grid, p["A"], p["B"], p["alpha"], beta, flops_per_token)
            _solid_inside(ax, grid, n if key == "N" else d, fitted, "C1", f"{result.law.name} fit")
            if boot is not None and len(boot.samples):
                s = boot.samples
                bb = s["beta"] if "beta" in s else s["alpha"]
                nn, dd = _allocation(grid[None, :], s["A"].to_numpy()[:, None], s["B"].to_numpy()[:, None],
                                     s["alpha"].to_numpy()[:, None], np.asarray(bb)[:, None], flops_per_token)
                vals = nn if key == "N" else dd
                lo, hi = np.nanpercentile(vals, [50 * (1 - level), 50 * (1 + level)], axis=0)
                ax.fill_between(grid, lo, hi, color="C1", alpha=0.25)
        n20 = _n_at_tokens_per_param(grid, f, CHINCHILLA_TOKENS_PER_PARAM)
        ax.plot(grid, n20 if key == "N" else CHINCHILLA_TOKENS_PER_PARAM * n20, "k:", lw=1,
                label="20 tokens/param")
        ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel=label)
        ax.legend(fontsize=7)
    return save_figure(fig, out_dir, name)


def fitted_compute_range(*, iso=None, result=None, flops_per_token: Callable | None = None):
    """(C_min, C_max) spanned by the runs the fit (or the isoFLOP optima) used, or None."""
    lows, highs = [], []
    if result is not None and {"N", "D"} <= set(result.logx):
        n, d = np.exp(result.logx["N"]), np.exp(result.logx["D"])
        c = np.asarray(_flops_per_token(flops_per_token)(n), float) * d
        lows.append(c.min())
        highs.append(c.max())
    if iso is not None:
        c = iso.optima.loc[np.isfinite(iso.optima["N_star"]), "C"]
        if len(c):
            lows.append(c.min())
            highs.append(c.max())
    return (min(lows), max(highs)) if lows else None


def _solid_inside(ax, grid, y, fitted, color, label):
    """A curve solid over the fitted range and dashed where it extrapolates."""
    if fitted is None:
        ax.plot(grid, y, "-", color=color, label=label)
        return
    inside = (grid >= fitted[0]) & (grid <= fitted[1])
    ax.plot(grid, np.where(inside, y, np.nan), "-", color=color, label=label)
    for part in (grid <= fitted[0], grid >= fitted[1]):
        if part.sum() > 1:
            ax.plot(grid[part], np.asarray(y)[part], "--", color=color)


def plot_residuals(result, out_dir, *, name: str = "residuals") -> list[Path]:
    """Residuals log Lhat - log L of the fit against each variable of the law.

    One panel per variable, each with its own labels (the y label only on the first), laid
    out with ``constrained_layout`` so no tick label or title overlaps another.
    """
    r = result.residuals()
    vars_ = list(result.logx)
    fig = Figure(figsize=(4.4 * len(vars_), 3.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(vars_), sharey=True))
    for i, (ax, v) in enumerate(zip(axes, vars_)):
        ax.scatter(np.exp(result.logx[v]), r, s=10)
        ax.axhline(0.0, color="k", lw=1)
        ax.set(xscale="log", xlabel=_AXIS_LABELS.get(v, v))
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        if i == 0:
            ax.set_ylabel("log Lhat - log L")
    fig.suptitle(f"{result.law.name}: residuals (objective {result.objective:.4g})", fontsize=10)
    return save_figure(fig, out_dir, name)


def plot_law_1d(result, out_dir, *, boot=None, level: float = 0.95, name: str = "law") -> list[Path]:
    """Loss against the law's single variable (N, D or C): the runs, the fit and its band."""
    (var,) = result.law.variables
    x = np.exp(result.logx[var])
    grid = np.geomspace(x.min() / 2, x.max() * 4, 200)
    table = pd.DataFrame({result.columns[var]: grid})
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(x, np.exp(result.logy), s=14, label="runs")
    ax.plot(grid, result.predict(table), "k-", label=f"{result.law.name} fit")
    if boot is not None and boot.theta is not None and len(boot.theta):
        from scaling.predict import bootstrap_predictions

        preds = bootstrap_predictions(result, boot, {var: np.log(grid)})
        lo, hi = np.nanpercentile(preds, [50 * (1 - level), 50 * (1 + level)], axis=0)
        ax.fill_between(grid, lo, hi, color="k", alpha=0.2, label=f"{level:.0%} bootstrap")
    ax.set(xscale="log", yscale="log", xlabel=_AXIS_LABELS.get(var, var), ylabel="loss",
           title=f"{result.law.name}: loss vs {_AXIS_LABELS.get(var, var)}")
    ax.legend()
    return save_figure(fig, out_dir, name)


def plot_predictions(result, pred: pd.DataFrame, out_dir, *, name: str = "predicted_vs_observed") -> list[Path]:
    """Predicted against observed loss for predicted rows, with their bootstrap intervals."""
    obs = pred[result.columns["loss"]].to_numpy(float)
    p = pred["predicted_loss"].to_numpy(float)
    fig = Figure(figsize=(5.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    lo, hi = pred["lower"].to_numpy(float), pred["upper"].to_numpy(float)
    has = np.isfinite(lo) & np.isfinite(hi)
    ax.errorbar(obs[has], p[has], yerr=[p[has] - lo[has], hi[has] - p[has]], fmt="none",
                ecolor="C0", alpha=0.6)
    ax.scatter(obs, p, s=18, zorder=3, label="predicted rows")
    both = np.concatenate([obs, p])
    lim = [np.nanmin(both) * 0.98, np.nanmax(both) * 1.02]
    ax.plot(lim, lim, "k--", lw=0.8, label="predicted = observed")
    ax.set(xlim=lim, ylim=lim, xlabel="observed loss", ylabel="predicted loss",
           title=f"{result.law.name}: held-out predictions")
    ax.legend(fontsize=8)
    return save_figure(fig, out_dir, name)


_AXIS_LABELS = {"N": "parameters N", "D": "tokens D", "U": "unique tokens U",
                "C": "compute C (FLOPs)"}


def _n_at_tokens_per_param(C: np.ndarray, f: Callable, ratio: float) -> np.ndarray:
    """N with f(N) * ratio * N = C [g] (C = 6ND: sqrt(C / (6 ratio))), by log-log interpolation."""
    n6 = np.sqrt(C / (6.0 * ratio))
    n = np.geomspace(n6.min() * 1e-3, n6.max() * 1e3, 4001)
    c_of_n = np.asarray(f(n), float) * ratio * n  # increasing in N
    return np.exp(np.interp(np.log(C), np.log(c_of_n), np.log(n), left=np.nan, right=np.nan))


def plot_contours(result, out_dir, *, N_range=None, D_range=None, flops_per_token: Callable | None = None,
                  name: str = "contours") -> list[Path]:
    """Contours of the fitted L(N, D) with the efficient frontier and isoFLOP lines
    (C = 6ND, or C = f(N) D with ``flops_per_token``)."""
    f = _flops_per_token(flops_per_token)
    p = result.params
    N_range = N_range or (np.exp(result.logx["N"].min()) / 3, np.exp(result.logx["N"].max()) * 3)
    D_range = D_range or (np.exp(result.logx["D"].min()) / 3, np.exp(result.logx["D"].max()) * 3)
    n = np.geomspace(*N_range, 120)
    d = np.geomspace(*D_range, 120)
    nn, dd = np.meshgrid(n, d)
    x = {"N": nn.ravel(), "D": dd.ravel()}
    if "U" in result.logx:
        x["U"] = x["D"]
    law_params = {k: p[k] for k in result.law.param_names}  # not huber_ml's sigma
    L = np.asarray(result.law.predict(law_params, x)).reshape(nn.shape)
    fig = Figure(figsize=(6.4, 5))
    ax = fig.add_subplot()
    cs = ax.contour(nn, dd, L, levels=15, cmap="viridis")
    ax.clabel(cs, fontsize=6)
    ax.scatter(np.exp(result.logx["N"]), np.exp(result.logx["D"]), s=8, color="gray")
    if "beta" in p or result.law.name == "chinchilla_tied":
        beta = p.get("beta", p["alpha"])
        cgrid = np.geomspace(f(N_range[0]) * D_range[0], f(N_range[1]) * D_range[1], 200)
        nopt, dopt = _allocation(cgrid, p["A"], p["B"], p["alpha"], beta, flops_per_token)
        label = "C = 6ND" if flops_per_token is None else "C = f(N) D"
        ax.plot(nopt, dopt, "r-", label=f"efficient frontier ({label})")
        for c in np.geomspace(cgrid[20], cgrid[-20], 5):
            ax.plot(n, c / f(n), "k:", lw=0.7)
    ax.set(xscale="log", yscale="log", xlim=N_range, ylim=D_range, xlabel="parameters N",
           ylabel="tokens D", title=f"{result.law.name}: L(N, D)")
    ax.legend(fontsize=7)
    return save_figure(fig, out_dir, name)
