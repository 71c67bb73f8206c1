"""Learning rate x batch size grids at several (N, D): Step Law fits of eta_opt(N, D) and B_opt(D).

``python -m experiments.lr_scaling [--preset smoke|default|full] [--out DIR]``

Li et al. 2025, "Predictable Scale: Part I -- Optimal Hyperparameter Scaling Law in Large
Language Model Pretraining" (Step Law, arXiv:2503.04715), and DeepSeek LLM (arXiv:2401.02954,
Sec. 3.1): in each cell (model size N, training tokens D) train a grid of peak learning
rates x batch sizes; the runs within ``threshold`` (relative) of the cell's best final loss
are near-optimal; fit eta_opt(N, D) = c N^a D^b and B_opt(D) = d D^g by least squares in
log space on them (:mod:`scaling.hyperparams`), with bootstrap intervals (runs resampled
with replacement within each cell, both laws refitted; percentile intervals).

The learning-rate axis of every (cell, batch size) is one group of the shared runner
(``run_study(groups=...)``), trained as ONE vmapped program (:func:`lm.vmap_sweep.train_vmapped`:
same model, data and batch; K learning rates), so the runner's table, resume (a finished
run is never retrained), progress bar and curves work as for any study. Schedule: cosine over the run with warmup
``warmup_fraction``; AdamW; D is an exact multiple of every batch size's tokens per step.

Outputs under ``--out`` (default ``runs/lr_scaling/<preset>``): run directories, results.csv,
curves.csv, fits.json, report.md, heatmaps.png/svg (loss landscape per cell, near-optimal
runs outlined) and lr_opt.png/svg.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import runner, study_cli
from experiments.chinchilla import LADDER, ladder_model
from lm import vmap_sweep
from lm.config import OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from lm.data import DataConfig


@dataclasses.dataclass(frozen=True)
class Preset:
    """One grid.

    Attributes:
      cells: (ladder size, training tokens D) pairs; D must be a multiple of
        batch_size * seq_len for every batch size.
      batch_sizes: sequences per batch (the B axis).
      learning_rates: peak learning rates (the vmapped axis).
      seq_len, warmup_fraction, eval_batches: shared by every run.
      threshold: near-optimal band, relative to the cell's best loss.
      bootstrap: resamples for the intervals.
    """

    cells: tuple[tuple[str, int], ...]
    batch_sizes: tuple[int, ...]
    learning_rates: tuple[float, ...]
    seq_len: int
    warmup_fraction: float = 0.1
    eval_batches: int = 4
    threshold: float = 0.01
    bootstrap: int = 200
    dtype: str = "float32"  # compute dtype (parameters stay float32)

    def __post_init__(self):
        for size, tokens in self.cells:
            if size not in LADDER:
                raise ValueError(f"Preset.cells: size {size!r} is not in the ladder {list(LADDER)}")
            for b in self.batch_sizes:
                if tokens % (b * self.seq_len) or tokens // (b * self.seq_len) < 4:
                    raise ValueError(f"Preset.cells: D={tokens} must be a multiple of batch {b} x seq_len "
                                     f"{self.seq_len} giving >= 4 steps")
        if len({s for s, _ in self.cells}) < 2 or len({d for _, d in self.cells}) < 2:
            raise ValueError(f"Preset.cells={self.cells}: need >= 2 sizes and >= 2 token counts "
                             "to fit the N and D exponents")
        if len(self.learning_rates) < 3 or len(self.batch_sizes) < 2:
            raise ValueError("Preset: need >= 3 learning rates and >= 2 batch sizes")


PRESETS: dict[str, Preset] = {
    "smoke": Preset(cells=(("d16L1", 2048), ("d32L1", 2048), ("d16L1", 4096)), batch_sizes=(4, 8),
                    learning_rates=(3e-3, 1e-2, 3e-2, 1e-1), seq_len=32, eval_batches=2, bootstrap=50),
    "default": Preset(cells=(("d16L1", 1 << 17), ("d32L2", 1 << 17), ("d64L2", 1 << 17), ("d16L1", 1 << 18),
                             ("d32L2", 1 << 18), ("d64L2", 1 << 18)),
                      batch_sizes=(2, 4, 8, 16), learning_rates=tuple(np.geomspace(1e-3, 6.4e-2, 7).round(5)),
                      seq_len=128, eval_batches=8, bootstrap=500),
    "full": Preset(cells=tuple((s, d) for s in ("d256L4", "d384L6", "d512L8") for d in (1 << 30, 1 << 32)),
                   batch_sizes=(32, 64, 128, 256, 512), learning_rates=tuple(np.geomspace(2.5e-4, 1.6e-2, 7).round(6)),
                   seq_len=1024, eval_batches=32, bootstrap=1000, dtype="bfloat16"),
}


def cell_name(size: str, tokens: int) -> str:
    return f"{size}-D{tokens}"


def build_study(preset: Preset, preset_name: str = "custom") -> tuple[runner.Study, tuple[tuple[str, ...], ...]]:
    """The grid as a Study, and its vmapped groups of run names (one per cell x batch size: the lr axis)."""
    runs, tags, groups = [], {}, []
    for size, tokens in preset.cells:
        model = ladder_model(*LADDER[size], dtype=preset.dtype)
        for b in preset.batch_sizes:
            steps = tokens // (b * preset.seq_len)
            base = RunConfig(
                model=model, data=DataConfig(seq_len=preset.seq_len, batch_size=b),
                optimizer=OptimizerConfig(),
                schedule=ScheduleConfig(kind="cosine", warmup_fraction=preset.warmup_fraction, min_ratio=0.1),
                train=TrainConfig(steps=steps, eval_every=steps, eval_batches=preset.eval_batches,
                                  log_every=max(1, steps // 8), checkpoint_every=steps, progress=False),
                name=f"{cell_name(size, tokens)}-B{b}",
            )
            group = vmap_sweep.sweep_runs(base, learning_rates=preset.learning_rates)
            groups.append(tuple(r.name for r in group))
            for r in group:
                runs.append(r)
                tags[r.name] = {"cell": cell_name(size, tokens), "size": size, "lr": r.optimizer.learning_rate,
                                "batch_size": b}
    meta = {"preset": preset_name, "cells": [list(c) for c in preset.cells], "batch_sizes": list(preset.batch_sizes),
            "learning_rates": list(preset.learning_rates), "seq_len": preset.seq_len, "threshold": preset.threshold}
    study = runner.Study(name="lr_scaling", runs=tuple(runs), tags=tags, meta=meta, min_steps=4)
    return study, tuple(groups)


# --------------------------------------------------------------------------- analysis


def _fit_both(df: pd.DataFrame, threshold: float) -> dict[str, float]:
    from scaling.hyperparams import fit_bs_law, fit_lr_law

    lr = fit_lr_law(df, {"lr": "lr", "loss": "loss"}, threshold=threshold)
    bs = fit_bs_law(df, {"batch_size": "batch_size", "loss": "loss"}, threshold=threshold)
    return {"c": lr["c"], "a": lr["a"], "b": lr["b"], "d": bs["d"], "g": bs["g"], "n_near_optimal": lr["n_runs"]}


def fit_laws(table: pd.DataFrame, threshold: float, n_bootstrap: int = 200, seed: int = 0,
             level: float = 0.95) -> dict:
    """eta_opt(N, D) = c N^a D^b and B_opt(D) = d D^g with bootstrap percentile intervals.

    Args:
      table: rows with N, D, lr, batch_size, loss (diverged runs dropped before).
    Returns:
      {"estimate": {c, a, b, d, g, n_near_optimal}, "intervals": {name: (lo, hi)}, "n_ok": resamples fitted}.
    """
    est = _fit_both(table, threshold)
    rng = np.random.default_rng(seed)
    cells = [g.index.to_numpy() for _, g in table.groupby(["N", "D"])]
    samples = []
    for _ in range(n_bootstrap):
        idx = np.concatenate([rng.choice(c, size=c.size, replace=True) for c in cells])
        try:
            samples.append(_fit_both(table.loc[idx].reset_index(drop=True), threshold))
        except (ValueError, np.linalg.LinAlgError):
            continue
    s = pd.DataFrame(samples)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    intervals = {k: (float(np.percentile(s[k], lo)), float(np.percentile(s[k], hi))) if len(s) else (np.nan, np.nan)
                 for k in ("c", "a", "b", "d", "g")}
    return {"estimate": est, "intervals": intervals, "n_ok": len(s), "level": level}


def analyze(study: runner.Study, table: pd.DataFrame, out: str | Path, *, threshold: float, bootstrap: int,
            loss: str = "final_val_loss") -> dict:
    """Near-optimal runs per cell, fitted laws with intervals, heatmaps, report.md, fits.json."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from scaling import laws
    from scaling.hyperparams import near_optimal

    out = Path(out)
    df = table.assign(loss=pd.to_numeric(table[loss], errors="coerce"))
    ok = df[(df["status"] == "complete") & np.isfinite(df["loss"])].reset_index(drop=True)
    fits = fit_laws(ok, threshold, n_bootstrap=bootstrap)
    near = near_optimal(ok, ["N", "D"], "loss", threshold)
    (out / "fits.json").write_text(json.dumps({k: v for k, v in fits.items()}, indent=2))

    cells = list(dict.fromkeys(df["cell"]))
    lrs = sorted(df["lr"].unique())
    bss = sorted(df["batch_size"].unique())
    fig = Figure(figsize=(4.2 * len(cells), 3.6))
    for j, cell in enumerate(cells):
        ax = fig.add_subplot(1, len(cells), j + 1)
        c = df[df["cell"] == cell]
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
        ax.set_ylabel("batch size")
        ax.set_title(f"{cell} (N={c['N'].iloc[0]:.3g})", fontsize=9)
    fig.tight_layout()
    figures = study_cli.save_figure(fig, out, "heatmaps")

    e = fits["estimate"]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    best = ok.loc[ok.groupby(["N", "D"])["loss"].idxmin()]
    pred = laws.lr_opt(best["N"].to_numpy(float), best["D"].to_numpy(float), e["c"], e["a"], e["b"])
    near_pred = laws.lr_opt(near["N"].to_numpy(float), near["D"].to_numpy(float), e["c"], e["a"], e["b"])
    ax.scatter(near_pred, near["lr"], s=12, alpha=0.5, label="near-optimal runs")
    ax.scatter(pred, best["lr"], marker="*", s=80, color="C3", label="best run per cell")
    lim = [min(pred.min(), ok["lr"].min()) / 1.5, max(pred.max(), ok["lr"].max()) * 1.5]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("fitted eta_opt(N, D)")
    ax.set_ylabel("learning rate")
    ax.legend()
    figures += study_cli.save_figure(fig, out, "lr_opt")

    iv = fits["intervals"]
    lines = [
        f"# Learning rate and batch size scaling ({study.meta.get('preset')} preset)", "",
        "Step Law (Li et al. 2025, arXiv:2503.04715): near-optimal runs (loss within "
        f"{100 * threshold:g}% of the cell's best; {e['n_near_optimal']} of {len(ok)} finished runs; "
        f"{int((df['status'] != 'complete').sum() + (~np.isfinite(df['loss'])).sum())} diverged/missing), "
        f"least squares in log space, {fits['n_ok']} bootstrap resamples, {100 * fits['level']:.0f}% intervals.", "",
        f"- eta_opt(N, D) = {e['c']:.3g} N^{e['a']:.3f} D^{e['b']:.3f}  "
        f"(a in [{iv['a'][0]:.3f}, {iv['a'][1]:.3f}], b in [{iv['b'][0]:.3f}, {iv['b'][1]:.3f}]; "
        "Step Law: a = -0.713, b = 0.307)",
        f"- B_opt(D) = {e['d']:.3g} D^{e['g']:.3f}  (g in [{iv['g'][0]:.3f}, {iv['g'][1]:.3f}]; Step Law: g = 0.571)",
        "",
    ]
    lines += study_cli.markdown_table(
        ["cell", "N", "D", "best lr", "best batch", "best loss"],
        [(r["cell"], f"{r['N']:.3g}", f"{r['D']:.3g}", f"{r['lr']:.3g}", int(r["batch_size"]), f"{r['loss']:.4f}")
         for _, r in best.iterrows()], align="lrrrrr")
    edges = grid_edge_optima(best, lrs, bss)
    if edges:
        lines += ["", "## Optima on the edge of the grid", "",
                  "In these cells the best run sits at the smallest or largest value tried, so the true optimum "
                  "may lie outside the grid and the fitted law is bounded by the grid there, not measured; "
                  "extend the grid in that direction:", ""]
        lines += [f"- {cell}: {what}" for cell, what in edges]
    report = study_cli.write_report(out, lines, figures)
    return {"fits": fits, "near_optimal": near, "plots": figures, "report": report, "edges": edges}


def grid_edge_optima(best: pd.DataFrame, lrs, batch_sizes) -> list[tuple[str, str]]:
    """(cell, description) for every cell whose best learning rate or batch size is a grid extreme."""
    out = []
    for _, r in best.iterrows():
        what = []
        for col, grid, label in (("lr", lrs, "learning rate"), ("batch_size", batch_sizes, "batch size")):
            if r[col] == min(grid):
                what.append(f"{label} {r[col]:.3g} is the smallest tried")
            elif r[col] == max(grid):
                what.append(f"{label} {r[col]:.3g} is the largest tried")
        if what:
            out.append((r["cell"], "; ".join(what)))
    return out


# ------------------------------------------------------------------------------- CLI


def main(argv=None) -> dict:
    p = study_cli.study_parser("lr_scaling", __doc__, PRESETS, shard=True, bootstrap=True)
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    out = study_cli.out_dir("lr_scaling", args)
    with study_cli.cli_errors(p):
        study, groups = build_study(preset, args.preset)
        table = study_cli.train_and_load(study, out, args, groups=groups)
    result = {"out": out, "table": table}
    if not study_cli.analysis_ready(table, allow_diverged=True):  # high learning rates may diverge
        return result
    result.update(analyze(study, table, out, threshold=preset.threshold,
                          bootstrap=preset.bootstrap if args.bootstrap is None else args.bootstrap))
    e = result["fits"]["estimate"]
    print(f"eta_opt = {e['c']:.3g} N^{e['a']:.3f} D^{e['b']:.3f};  B_opt = {e['d']:.3g} D^{e['g']:.3f}\n"
          f"report: {result['report']}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
