"""Learning rate x batch size grids at several (N, D): Step Law fits of eta_opt(N, D) and B_opt(D).

``python -m experiments.lr_scaling [--preset smoke|default|full] [--out DIR]``

Li et al. 2025, "Predictable Scale: Part I -- Optimal Hyperparameter Scaling Law in Large
Language Model Pretraining" (Step Law, arXiv:2503.04715), and DeepSeek LLM (arXiv:2401.02954,
Sec. 3.1): in each cell (model size N, training tokens D) train a grid of peak learning
rates x batch sizes; the runs within ``threshold`` (relative) of the cell's best final loss
are near-optimal; fit eta_opt(N, D) = c N^a D^b and B_opt(D) = d D^g by least squares in
log space on them (:mod:`scaling.hyperparams`, batch sizes in tokens), with the authors'
bootstrap (the near-optimal runs, filtered once, resampled with replacement; percentile
intervals and SDs).

The learning-rate axis of every (cell, batch size) is one group of the shared runner
(``run_study(groups=...)``), trained as ONE vmapped program (:func:`lm.train.sweep.train_vmapped`:
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

from experiments import lib
from experiments.lib import data_budget
from experiments.lib.report import check_level
from lm.train import sweep
from lm.model.config import OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from lm.model.presets import LADDER, ladder_model


@dataclasses.dataclass(frozen=True)
class Preset(lib.Preset):
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


def build_study(preset: Preset, preset_name: str = "custom", *, data: str = "stdlib",
                ) -> tuple[lib.Study, tuple[tuple[str, ...], ...]]:
    """The grid as a Study, and its vmapped groups of run names (one per cell x batch size: the lr axis)."""
    runs, tags, groups = [], {}, []
    for size, tokens in preset.cells:
        base_data = data_budget.base_data(data, seq_len=preset.seq_len, batch_size=preset.batch_sizes[0])
        model = data_budget.replace_vocab(ladder_model(*LADDER[size], dtype=preset.dtype), base_data)
        for b in preset.batch_sizes:
            steps = tokens // (b * preset.seq_len)
            base = RunConfig(
                model=model, data=dataclasses.replace(base_data, batch_size=b),
                optimizer=OptimizerConfig(),
                schedule=ScheduleConfig(kind="cosine", warmup_fraction=preset.warmup_fraction, min_ratio=0.1),
                train=TrainConfig(steps=steps, eval_every=steps, eval_batches=preset.eval_batches,
                                  log_every=max(1, steps // 8), checkpoint_every=steps, progress=False),
                name=f"{cell_name(size, tokens)}-B{b}",
            )
            group = sweep.sweep_runs(base, learning_rates=preset.learning_rates)
            groups.append(tuple(r.name for r in group))
            for r in group:
                runs.append(r)
                tags[r.name] = {"cell": cell_name(size, tokens), "size": size, "lr": r.optimizer.learning_rate,
                                "batch_size": b}
    meta = {"preset": preset_name, "cells": [list(c) for c in preset.cells], "batch_sizes": list(preset.batch_sizes),
            "learning_rates": list(preset.learning_rates), "seq_len": preset.seq_len, "threshold": preset.threshold}
    tags = data_budget.with_epoch_tags(runs, tags)
    study = lib.Study(name="lr_scaling", runs=tuple(runs), tags=tags, meta=meta, min_steps=4)
    return study, tuple(groups)


# --------------------------------------------------------------------------- analysis


def fit_laws(table: pd.DataFrame, threshold: float, n_bootstrap: int = 200, seed: int = 0,
             level: float = 0.95, batch: str = "batch_size") -> dict:
    """eta_opt(N, D) = c N^a D^b and B_opt(D) = d D^g by :func:`scaling.hyperparams.fit_hyper_law`.

    The Step Law recipe and the authors' bootstrap: near-optimal runs filtered once, then
    resampled with replacement (percentile intervals, SDs).

    Args:
      table: rows with N, D, lr, ``batch`` (batch size in tokens), loss (diverged runs dropped).
    Returns:
      {"estimate": {c, a, b, d, g, n_near_optimal}, "intervals": {name: (lo, hi)},
       "sd": {name: SD}, "n_ok": resamples fitted, "level", "warnings": [str]}.
    """
    from scaling.hyperparams import fit_hyper_law

    check_level(level)
    lr = fit_hyper_law(table, "lr_opt", threshold=threshold, n_bootstrap=n_bootstrap, seed=seed, level=level)
    bs = fit_hyper_law(table, "bs_opt", {"batch_size": batch}, threshold=threshold, n_bootstrap=n_bootstrap,
                       seed=seed, level=level)
    est = {**lr.params, **bs.params, "n_near_optimal": int(len(lr.kept))}
    intervals, sd = {}, {}
    for fit in (lr, bs):
        for k in fit.params:
            row = fit.boot.intervals.loc[k] if fit.boot is not None else None
            intervals[k] = (float(row["lower"]), float(row["upper"])) if row is not None else (np.nan, np.nan)
            sd[k] = float(row["std"]) if row is not None else np.nan
    n_ok = min(len(lr.boot.samples), len(bs.boot.samples)) if n_bootstrap else 0
    warnings = [f"eta_opt: {w}" for w in lr.warnings] + [f"B_opt: {w}" for w in bs.warnings]
    return {"estimate": est, "intervals": intervals, "sd": sd, "n_ok": n_ok, "level": level, "warnings": warnings}


def analyze(study: lib.Study, table: pd.DataFrame, out: str | Path, *, threshold: float, bootstrap: int,
            loss: str = "final_val_loss") -> dict:
    """Near-optimal runs per cell, fitted laws with intervals, heatmaps, report.md, fits.json."""
    from scaling.hyperparams import near_optimal

    out = Path(out)
    df = table.assign(loss=pd.to_numeric(table[loss], errors="coerce"))
    ok = df[(df["status"] == "complete") & np.isfinite(df["loss"])].reset_index(drop=True)
    ok["batch_tokens"] = ok["batch_size"] * int(study.meta["seq_len"])  # batch sizes in tokens
    fits = fit_laws(ok, threshold, n_bootstrap=bootstrap, batch="batch_tokens")
    near = near_optimal(ok, ["N", "D"], "loss", threshold)
    (out / "fits.json").write_text(json.dumps({k: v for k, v in fits.items()}, indent=2))

    lrs = sorted(df["lr"].unique())
    bss = sorted(df["batch_size"].unique())
    best = ok.loc[ok.groupby(["N", "D"])["loss"].idxmin()]
    figures = lib.figures.plot_lr_heatmaps(df, near, out)
    figures += lib.figures.plot_lr_opt(ok, near, best, fits["estimate"], out)
    e, iv = fits["estimate"], fits["intervals"]
    lines = [
        f"# Learning rate and batch size scaling ({study.meta.get('preset')} preset)", "",
        "Step Law (Li et al. 2025, arXiv:2503.04715): near-optimal runs (loss within "
        f"{100 * threshold:g}% of the cell's best; {e['n_near_optimal']} of {len(ok)} finished runs; "
        f"{int((df['status'] != 'complete').sum() + (~np.isfinite(df['loss'])).sum())} diverged/missing), "
        f"least squares in log space; bootstrap: the near-optimal runs resampled ({fits['n_ok']} resamples fitted), "
        f"{100 * fits['level']:.0f}% intervals.", "",
        f"- eta_opt(N, D) = {e['c']:.3g} N^{e['a']:.3f} D^{e['b']:.3f}  "
        f"(a in [{iv['a'][0]:.3f}, {iv['a'][1]:.3f}], b in [{iv['b'][0]:.3f}, {iv['b'][1]:.3f}]; "
        "Step Law: a = -0.713, b = 0.307)",
        f"- B_opt(D) = {e['d']:.3g} D^{e['g']:.3f} tokens  (g in [{iv['g'][0]:.3f}, {iv['g'][1]:.3f}]; "
        "Step Law: g = 0.571)",
        "",
    ]
    from scaling.diagnostics import markdown

    lines += markdown(fits["warnings"])
    lines += lib.markdown_table(
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
    report = lib.write_report(out, lines, figures)
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


def _analyze(study: lib.Study, table: pd.DataFrame, out: Path, preset: Preset, args) -> dict:
    return analyze(study, table, out, threshold=preset.threshold, bootstrap=preset.bootstrap)


def _summary(result: dict) -> str:
    e = result["fits"]["estimate"]
    return f"eta_opt = {e['c']:.3g} N^{e['a']:.3f} D^{e['b']:.3f};  B_opt = {e['d']:.3g} D^{e['g']:.3f}"


COMMAND = lib.StudyCommand(name="lr_scaling", doc=__doc__, presets=PRESETS,
                           build=lambda preset, args, out: build_study(preset, args.preset, data=args.data),
                           analyze=_analyze, summary=_summary, keep_diverged=True)  # high learning rates may diverge


def main(argv=None) -> dict:
    return COMMAND.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
