"""The studies' figures, each saved as PNG and SVG (:func:`scaling.plots.save_figure`).

Every function draws from a study's table (or what its analysis computed from it) on a
``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), writes ``<out>/<name>.png`` and
``.svg``, and returns the two paths. The generic figures of a fit (loss vs compute, isoFLOP
curves, allocation, residuals, contours) are :mod:`scaling.plots`; these are the study-shaped
ones: architecture frontiers, repetition, learning-rate landscapes, WSD branches, μP.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullFormatter

from lm.train.records import atomic_write
from scaling import laws
from scaling.plots import save_figure


def _par_name(par: str) -> str:
    return "μP" if par == "mup" else "SP"


# ------------------------------------------------------------------- architectures


def plot_frontiers(table: pd.DataFrame, fits: Mapping, multipliers: pd.DataFrame, out: str | Path, *,
                   context: int, loss: str = "final_val_loss", name: str = "frontiers") -> list[Path]:
    """Left: every run and each family's fitted L(C) with its bootstrap band; right: multipliers + cache.

    Args:
      table: complete runs with family, C and ``loss``; fits: {family: (FitResult, BootstrapResult)}
        of L(C) = E + A C^-alpha; multipliers: per family multiplier, lower, upper,
        cache_bytes_per_token; context: the context length of the cache column.
    """
    fig = Figure(figsize=(12, 4.5))
    ax, bx = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    c_max = float(table["C"].max())
    grid = np.geomspace(float(table["C"].min()) / 2, c_max * 4, 100)
    for i, (family, (fit, boot)) in enumerate(fits.items()):
        color = f"C{i}"
        runs = table[table["family"] == family]
        ax.scatter(runs["C"], runs[loss], s=10, color=color, alpha=0.4)
        p, s = fit.params, boot.samples
        ax.plot(grid, p["E"] + p["A"] * grid ** -p["alpha"], color=color, label=family)
        band = s["E"].to_numpy()[:, None] + s["A"].to_numpy()[:, None] * grid[None] ** -s["alpha"].to_numpy()[:, None]
        if len(band):
            ax.fill_between(grid, np.percentile(band, 2.5, axis=0), np.percentile(band, 97.5, axis=0), color=color,
                            alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs C (exact, per family)")
    ax.set_ylabel(loss)
    ax.set_title("L(C) frontiers, 95% bootstrap bands")
    ax.legend()
    y = np.arange(len(multipliers))
    m = multipliers["multiplier"].to_numpy()
    err = np.nan_to_num(np.clip(np.stack([m - multipliers["lower"], multipliers["upper"] - m]), 0, None),
                        posinf=0.0)
    bx.barh(y, np.where(np.isfinite(m), m, np.nan), xerr=err, color=[f"C{i}" for i in range(len(m))])
    bx.axvline(1.0, color="k", lw=0.8)
    bx.set_yticks(y, [f"{f} ({multipliers.loc[f, 'cache_bytes_per_token']:.3g} B/tok)" for f in multipliers.index])
    bx.set_xscale("log")
    bx.set_xlabel("compute to match the transformer at the largest budget (x C_max)")
    bx.set_title(f"compute multipliers; decode cache bytes per token at {context} context")
    fig.tight_layout()
    return save_figure(fig, out, name)


# ---------------------------------------------------------------- data-constrained


def plot_repeated_value(data: pd.DataFrame, d_eff: np.ndarray, params: Mapping[str, float], boot,
                        out: str | Path, name: str = "repeated_value") -> list[Path]:
    """Effective data D'/U against epochs D/U: the fitted Muennighoff Eq. (5) curve with its
    bootstrap band (``boot``: samples with R_D_star, or None) and each run's D' from the law."""
    e_grid = np.geomspace(1, max(64.0, data["epochs"].max() * 2), 100)
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    ax.plot(e_grid, e_grid, "k:", lw=0.8, label="unique data (D' = D)")
    ax.plot(e_grid, laws.effective_data(e_grid, 1.0, params["R_D_star"]), color="C0",
            label=f"fit: R_D* = {params['R_D_star']:.3g}")
    if boot is not None and len(boot.samples):
        band = np.stack([laws.effective_data(e_grid, 1.0, r) for r in boot.samples["R_D_star"].to_numpy()])
        ax.fill_between(e_grid, np.percentile(band, 2.5, 0), np.percentile(band, 97.5, 0), color="C0", alpha=0.2)
    ax.scatter(data["D"] / data["U"], d_eff / data["U"], s=12, color="C1", label="runs (D' from the fitted law)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("epochs D / U")
    ax.set_ylabel("effective data D' / U")
    ax.legend()
    return save_figure(fig, out, name)


def plot_loss_vs_epochs(table: pd.DataFrame, fit, out: str | Path, loss: str = "final_val_loss",
                        name: str = "loss_vs_epochs") -> list[Path]:
    """Loss against epochs per (size, U), measured (markers) and the fitted law ``fit`` (dashed)."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    t = table[table["status"] == "complete"]
    for i, ((size, U), g) in enumerate(t.groupby(["size", "U"])):
        g = g.sort_values("epochs")
        ax.plot(g["epochs"], g[loss], "o-", color=f"C{i}", label=f"{size}, U={U:.3g}")
        ax.plot(g["epochs"], fit.law.predict(fit.params, {"N": g["N"].to_numpy(float), "D": g["D"].to_numpy(float),
                                                          "U": g["U"].to_numpy(float)}), "--", color=f"C{i}", alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("epochs")
    ax.set_ylabel(loss)
    ax.legend(fontsize=7)
    return save_figure(fig, out, name)


# ---------------------------------------------------------------------- lr scaling


def plot_lr_heatmaps(table: pd.DataFrame, near: pd.DataFrame, out: str | Path, name: str = "heatmaps") -> list[Path]:
    """Loss over (learning rate, batch size), one panel per cell; near-optimal runs outlined in red."""
    cells = list(dict.fromkeys(table["cell"]))
    lrs = sorted(table["lr"].unique())
    bss = sorted(table["batch_size"].unique())
    fig = Figure(figsize=(4.2 * len(cells), 3.6))
    for j, cell in enumerate(cells):
        ax = fig.add_subplot(1, len(cells), j + 1)
        c = table[table["cell"] == cell]
        grid = np.full((len(bss), len(lrs)), np.nan)
        for _, r in c.iterrows():
            grid[bss.index(r["batch_size"]), lrs.index(r["lr"])] = r["loss"]
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis_r")
        fig.colorbar(im, ax=ax, shrink=0.8)
        for _, r in near[near["cell"] == cell].iterrows():
            ax.add_patch(Rectangle((lrs.index(r["lr"]) - 0.5, bss.index(r["batch_size"]) - 0.5), 1, 1,
                                   fill=False, ec="r", lw=2))
        ax.set_xticks(range(len(lrs)), [f"{v:.2g}" for v in lrs], rotation=45)
        ax.set_yticks(range(len(bss)), [str(v) for v in bss])
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("batch size (sequences)")
        ax.set_title(f"{cell} (N={c['N'].iloc[0]:.3g})", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out, name)


def plot_lr_opt(table: pd.DataFrame, near: pd.DataFrame, best: pd.DataFrame, estimate: Mapping[str, float],
                out: str | Path, name: str = "lr_opt") -> list[Path]:
    """Learning rate of the near-optimal runs and of each cell's best run against the fitted eta_opt(N, D)."""
    e = estimate
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    pred = laws.lr_opt(best["N"].to_numpy(float), best["D"].to_numpy(float), e["c"], e["a"], e["b"])
    near_pred = laws.lr_opt(near["N"].to_numpy(float), near["D"].to_numpy(float), e["c"], e["a"], e["b"])
    ax.scatter(near_pred, near["lr"], s=12, alpha=0.5, label="near-optimal runs")
    ax.scatter(pred, best["lr"], marker="*", s=80, color="C3", label="best run per cell")
    lim = [min(pred.min(), table["lr"].min()) / 1.5, max(pred.max(), table["lr"].max()) * 1.5]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fitted eta_opt(N, D)")
    ax.set_ylabel("learning rate")
    ax.legend()
    return save_figure(fig, out, name)


# ----------------------------------------------------------------------------- wsd


def plot_wsd_curves(curves: pd.DataFrame, longest: int, out: str | Path, name: str = "loss_curves") -> list[Path]:
    """Training loss against tokens: the stable run, its decay branches and the cosine runs
    (``curves``: the study's curves.csv; the branch and cosine run of length ``longest`` are labelled)."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for run, g in (curves.groupby("run", sort=False) if len(curves) else []):
        g = g.dropna(subset=["train_loss"])
        if run == "stable":
            style = dict(color="k", lw=1.5)
        else:
            style = dict(color="C0", lw=1) if run.startswith("wsd") else dict(color="C1", lw=1, ls="--")
        labelled = run == "stable" or run.endswith(f"L{longest}")
        ax.plot(g["tokens"], g["train_loss"], **style, label=run if labelled else None)
    ax.set_xlabel("tokens")
    ax.set_ylabel("training loss")
    ax.set_title("stable run (black), WSD branches (blue), cosine runs (orange)")
    ax.legend()
    return save_figure(fig, out, name)


def plot_wsd_data_scaling(gaps: pd.DataFrame, fits: Mapping[str, Mapping[str, float]], out: str | Path,
                          loss: str = "final_val_loss", name: str = "data_scaling") -> list[Path]:
    """Final loss against tokens D of the WSD branches and the cosine runs, with their fitted
    L(D) = E + A D^-alpha (``fits``: {"wsd" | "cosine": params}, either may be absent)."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    ax.plot(gaps["D"], gaps["cosine"], "o--", color="C1", label="cosine, one run per length")
    ax.plot(gaps["D"], gaps["wsd"], "s-", color="C0", label="WSD branches of one stable run")
    grid = np.geomspace(gaps["D"].min(), gaps["D"].max(), 50)
    for kind, color in (("wsd", "C0"), ("cosine", "C1")):
        if kind in fits:
            p = fits[kind]
            ax.plot(grid, p["E"] + p["A"] * grid ** -p["alpha"], color=color, alpha=0.4, lw=3)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens D")
    ax.set_ylabel(loss)
    ax.legend()
    return save_figure(fig, out, name)


# ------------------------------------------------------------------------------ μP


def plot_coord_check(table: pd.DataFrame, family: str, out: str | Path,
                     parametrizations: Sequence[str] = ("sp", "mup")) -> list[Path]:
    """Rows SP / μP; columns: rms at each step, then update_rms at the last step (log-log, one line per module)."""
    df = table[table["family"] == family]
    steps = sorted(df["step"].unique())
    fig = Figure(figsize=(2.8 * (len(steps) + 1), 2.8 * len(parametrizations)))
    for i, par in enumerate(parametrizations):
        d = df[df["parametrization"] == par]
        panels = [(s, "rms") for s in steps] + [(steps[-1], "update_rms")]
        for j, (s, col) in enumerate(panels):
            ax = fig.add_subplot(len(parametrizations), len(panels), i * len(panels) + j + 1)
            for k, (module, g) in enumerate(d[d["step"] == s].groupby("module", sort=False)):
                ax.plot(g["width"], g[col], marker="o", ms=3, color=f"C{k % 10}", label=module)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{_par_name(par)}: {col} step {s}", fontsize=8)
            ax.set_xlabel("width", fontsize=8)
    fig.axes[0].legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, out, f"coord_check_{family}")


def plot_lr_transfer(table: pd.DataFrame, optima: pd.DataFrame, drift: Mapping[str, float], out: str | Path,
                     parametrizations: Sequence[str] = ("sp", "mup"), name: str = "transfer") -> list[Path]:
    """Validation loss against learning rate: one curve per width (its optimum dashed), a panel per parametrization."""
    fig = Figure(figsize=(10, 4))
    for j, par in enumerate(parametrizations):
        ax = fig.add_subplot(1, len(parametrizations), j + 1)
        d = table[table["parametrization"] == par]
        for k, (width, g) in enumerate(d.groupby("width")):
            g = g.sort_values("lr")
            y = np.where(g["status"] == "complete", pd.to_numeric(g["final_val_loss"], errors="coerce"), np.nan)
            ax.plot(g["lr"], y, marker="o", ms=3, color=f"C{k}", label=f"d={width}")
            o = optima[(optima["parametrization"] == par) & (optima["width"] == width)].iloc[0]
            ax.axvline(o["lr_opt"], color=f"C{k}", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("validation loss")
        ax.set_title(f"{_par_name(par)}: drift {drift[par]:+.2f} grid steps", fontsize=9)
        best = optima.loc[optima["parametrization"] == par, "best_loss"]
        best = best[np.isfinite(best)]
        if len(best):  # every width's optimum in view; diverging tails cut
            ax.set_ylim(best.min() - 0.05, best.max() + 0.5)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, out, name)


def plot_loss_prediction(optima: pd.DataFrame, predictions: Mapping[str, Mapping], out: str | Path,
                         name: str = "prediction") -> list[Path]:
    """Best loss against N per parametrization: the fitted widths, the held-out widest, the fitted L(N) and the
    prediction's interval (``lower``/``upper`` of ``predictions``, when given)."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.add_subplot()
    for k, (par, p) in enumerate(predictions.items()):
        g = optima[optima["parametrization"] == par].sort_values("N")
        ax.scatter(g["N"].iloc[:-1], g["best_loss"].iloc[:-1], color=f"C{k}", label=f"{par} (fitted)")
        ax.scatter([p["N"]], [p["actual"]], marker="*", s=90, color=f"C{k}", label=f"{par} widest (held out)")
        if np.isfinite(p.get("lower", np.nan)):  # the bootstrap interval of the prediction
            ax.errorbar([p["N"] * 1.04], [p["predicted"]], yerr=[[p["predicted"] - p["lower"]],
                                                                 [p["upper"] - p["predicted"]]],
                        fmt="_", color=f"C{k}", capsize=3, lw=0.8)
        n = np.geomspace(g["N"].min() / 1.2, p["N"] * 1.5, 50)
        fitted = p["fit"].predict(pd.DataFrame({"N": n, "loss": np.ones_like(n)}))
        ax.plot(n, fitted, color=f"C{k}", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("best validation loss")
    ax.legend(fontsize=7)
    return save_figure(fig, out, name)


# ------------------------------------------------------------------------- one run


def plot_loss_curve(records: Sequence[Mapping], out: str | Path, title: str) -> Path:
    """Train and validation loss against tokens of one run (its metrics.jsonl records), saved as loss_curve.png."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    tr = [(r["tokens"], r["train_loss"]) for r in records if "train_loss" in r]
    va = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    if tr:
        ax.plot(*zip(*tr), label="train")
    if va:
        ax.plot(*zip(*va), "o-", label="validation")
    ax.set(xlabel="tokens", ylabel="loss (nats/token)", title=title)
    ax.legend()
    fig.tight_layout()
    path = Path(out) / "loss_curve.png"
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    atomic_write(path, png.getvalue())  # a run-directory file: whole or not at all
    return path
