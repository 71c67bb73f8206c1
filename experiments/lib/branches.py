"""A grid's runs as Warmup-Stable-Decay branches: one stable run per model, a cooldown branch per length.

Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed Training
Durations" (arXiv:2405.18392); Hu et al. 2024, MiniCPM (arXiv:2404.06395), Sec. 4: the
stable phase of a WSD schedule (constant learning rate after warmup) does not depend on the
run's length, so one stable run per model, checkpointed at the branch points, and a short
cooldown branch per length give the final losses of every length of the grid.

:func:`wsd_study` turns any grid of runs into that study: runs of the same model (same
model, data, optimizer and seed) share one stable run ``stable_<label>``, trained up to the
largest branch point s = L - round(cooldown_fraction * L), saving a checkpoint at every
branch point (``TrainConfig.checkpoint_steps``) and nowhere else, after the warmup of the
model's longest grid run; each grid run keeps its name, tags, length L and batch shape,
and becomes a branch that restores the stable run at s (``TrainConfig.init_from``:
parameters, optimizer and data-iterator state, the mechanism of ``experiments.wsd``) and
cools down over steps s .. L. No step is trained twice.
:func:`study_compute` counts the FLOPs a study trains (a branch only from its branch point).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from experiments.lib import data_budget
from experiments.lib.study import Study, StudyError, run_dir
from lm.model.config import DECAY_SHAPES, RunConfig, ScheduleConfig
from lm.model.counting import train_flops_per_token
from lm.train.schedules import warmup_steps

METHODS = ("grid", "wsd")
SUBDIR = "wsd"  # --method wsd writes under <the grid's --out>/wsd, beside the grid it is compared with


def branch_point(steps: int, fraction: float) -> int:
    """s: the first cooldown step of a ``steps``-step run: steps - round(fraction * steps)."""
    return steps - round(fraction * steps)


def _same_model(run: RunConfig) -> str:
    """What a branch shares with its stable run: model, data, optimizer, seed (JSON)."""
    d = run.to_dict()
    return json.dumps([d["model"], d["data"], d["optimizer"], d["train"]["seed"], d["train"]["z_loss"]],
                      sort_keys=True)


def wsd_study(grid: Study, out: str | Path, *, label: Callable[[Mapping[str, Any]], str], fraction: float = 0.2,
              shape: str = "sqrt", name: str | None = None) -> Study:
    """The WSD study of ``grid``: per model a stable run, then every grid run of it as a branch.

    Args:
      grid: the grid (its runs, tags and meta are kept; branches keep names and lengths).
      out: the WSD study's directory: branches name their stable run's directory
        (``<out>/runs/stable_<label>``, absolute).
      label: a model's name from a grid run's tags (e.g. ``lambda t: t["size"]``); runs with
        the same label must be the same model.
      fraction: cooldown length as a fraction of each branch (0 < fraction < 1).
      shape: cooldown shape (:data:`lm.model.config.DECAY_SHAPES`), to the grid run's floor
        ``schedule.min_ratio``; warmup: the grid's warmup of the model's longest run.

    Raises:
      StudyError: a bad fraction or shape, one label over two models, or a branch point not
        after the warmup or leaving no cooldown step.
    """
    if not 0.0 < fraction < 1.0:
        raise StudyError(f"cooldown fraction {fraction}: must be in (0, 1), e.g. 0.2")
    if shape not in DECAY_SHAPES:
        raise StudyError(f"cooldown shape {shape!r}: allowed shapes are {', '.join(DECAY_SHAPES)}")
    groups: dict[str, list[RunConfig]] = {}
    for run in grid.runs:
        groups.setdefault(label(grid.tags[run.name]), []).append(run)
    runs, tags = [], {}
    for key, members in groups.items():
        if len({_same_model(r) for r in members}) > 1:
            raise StudyError(f"runs labelled {key!r} ({members[0].name}, ...) are not one model: they cannot share "
                             "a stable run")
        members = sorted(members, key=lambda r: r.train.steps)
        first = members[0]
        # One warmup serves every branch (Hägele et al. Sec. 3: the warmup does not depend on the length);
        # the grid's warmup of the longest run (5% of it), not of the shortest: at the CPU presets' peak lr
        # (2e-2) the shortest run's 1-2 warmup steps left the d48L2 stable run 0.05-0.1 nats above every
        # cosine run of the grid from step 30 on and made the gain of the branches uneven across sizes
        # (fitted alpha 2.2 vs the grid's 0.86; with this warmup 1.0). A longer warmup lowers the loss's
        # sensitivity to a high peak lr (Wortsman et al. 2023, arXiv:2309.14322).
        warm = max(warmup_steps(r.schedule, r.train.steps) for r in members)
        points = {r.name: branch_point(r.train.steps, fraction) for r in members}
        for r in members:
            if not warm < points[r.name] < r.train.steps:
                raise StudyError(f"run {r.name!r} ({r.train.steps} steps) would cool down from step {points[r.name]}: "
                                 f"the branch point must lie after the warmup ({warm} steps) and before the end; "
                                 "change the cooldown fraction or lengthen the run")
        s_max = max(points.values())
        stable = dataclasses.replace(
            first, name=f"stable_{key}", schedule=ScheduleConfig(kind="constant", warmup_steps=warm),
            train=dataclasses.replace(first.train, steps=s_max, eval_every=s_max, checkpoint_every=s_max,
                                      checkpoint_steps=tuple(sorted(set(points.values()))), keep_checkpoints=None))
        stable_dir = str(run_dir(Path(out).resolve(), stable))
        common = {k: v for k, v in grid.tags[first.name].items()
                  if all(grid.tags[r.name].get(k) == v for r in members)}
        runs.append(stable)
        tags[stable.name] = {**common, "kind": "stable", "branch_point": 0}
        for r in members:
            s = points[r.name]
            runs.append(dataclasses.replace(
                r, schedule=ScheduleConfig(kind="wsd", warmup_steps=warm, decay_start=s, decay_shape=shape,
                                           min_ratio=r.schedule.min_ratio),
                train=dataclasses.replace(r.train, init_from=(stable_dir, s))))
            tags[r.name] = {**grid.tags[r.name], "kind": "branch", "branch_point": s}
    meta = {**grid.meta, "method": "wsd", "cooldown_fraction": fraction, "cooldown_shape": shape}
    return Study(name=name or f"{grid.name}-wsd", runs=tuple(runs), tags=data_budget.with_epoch_tags(runs, tags),
                 meta=meta, min_steps=grid.min_steps)


def trained_flops(run: RunConfig) -> float:
    """Training FLOPs a run spends: its steps after ``init_from``'s step (all of them from scratch)."""
    start = run.train.init_from[1] if run.train.init_from is not None else 0
    tokens = (run.train.steps - start) * run.data.batch_size * run.data.seq_len
    return tokens * train_flops_per_token(run.model, run.data.seq_len)


def study_compute(study: Study) -> dict[str, float]:
    """FLOPs ``study`` trains: "total", and for a WSD study "stable" and "branches" (:func:`trained_flops`)."""
    kinds = {"stable": 0.0, "branches": 0.0}
    for run in study.runs:
        kind = study.tags.get(run.name, {}).get("kind")
        kinds["stable" if kind == "stable" else "branches"] += trained_flops(run)
    return {"total": kinds["stable"] + kinds["branches"], **kinds}


def compute_lines(wsd: Study, grid: Study) -> tuple[dict[str, float], list[str]]:
    """The compute each method trains ({"wsd", "grid", "ratio", ...}) and its report paragraph."""
    w, g = study_compute(wsd), study_compute(grid)["total"]
    n_stable = sum(1 for r in wsd.runs if wsd.tags.get(r.name, {}).get("kind") == "stable")
    acct = {"wsd": w["total"], "wsd_stable": w["stable"], "wsd_branches": w["branches"], "grid": g,
            "ratio": w["total"] / g}
    return acct, [
        f"Compute trained: WSD {acct['wsd']:.4g} FLOPs ({n_stable} stable runs up to their last branch point "
        f"{acct['wsd_stable']:.4g} + {len(wsd.runs) - n_stable} cooldown branches {acct['wsd_branches']:.4g}); "
        f"the grid's {len(grid.runs)} runs {g:.4g} FLOPs; **WSD / grid = {100 * acct['ratio']:.1f}%**."]


# ------------------------------------------------------------------------------- CLI


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: the cooldown fraction must be a number in (0, 1), e.g. 0.2")
    return value


def add_args(parser: argparse.ArgumentParser) -> None:
    """``--method grid|wsd``, ``--cooldown-fraction`` and ``--cooldown-shape``."""
    parser.add_argument("--method", choices=METHODS, default="grid",
                        help="grid: one cosine run per grid point (default); wsd: one warmup-stable run per model and "
                             f"a cooldown branch per grid point (Hägele et al. 2024), under <--out>/{SUBDIR}, "
                             "compared with the grid's results in <--out> when they exist")
    parser.add_argument("--cooldown-fraction", type=_fraction, default=0.2,
                        help="--method wsd: each branch's cooldown, as a fraction of its steps (default 0.2)")
    parser.add_argument("--cooldown-shape", choices=DECAY_SHAPES, default="sqrt",
                        help="--method wsd: cooldown shape to the grid's floor (default sqrt: 1 - sqrt(progress), "
                             "Hägele et al.'s best)")


def locate(out: Path, args: argparse.Namespace) -> Path:
    """The study directory of ``--method``: ``out`` for the grid, ``out/wsd`` for WSD."""
    return out / SUBDIR if getattr(args, "method", "grid") == "wsd" else out


def check_args(args: argparse.Namespace) -> None:
    """Refuse ``--shard`` with ``--method wsd`` (a branch needs its stable run's checkpoints on this host)."""
    if getattr(args, "method", "grid") == "wsd" and getattr(args, "shard", None) is not None:
        raise StudyError("--shard: not available with --method wsd (each branch restores its stable run's "
                         "checkpoint, trained first in the same directory); run without --shard")


def _inside(x: float, interval) -> bool | None:
    """x in [lo, hi] up to rounding (a reference's multiplier is 1 with the interval [1, 1]); None for NaN;
    a bound may be infinite (an unbounded interval)."""
    x, (lo, hi) = float(x), (float(v) for v in interval)
    if any(math.isnan(v) for v in (x, lo, hi)):
        return None
    tol = 1e-9 * max(abs(v) for v in (lo, hi, x) if math.isfinite(v)) if math.isfinite(x) else 0.0
    return lo - tol <= x <= hi + tol


def side_by_side(quantities: Mapping[str, tuple[float, Any, float, Any]]) -> tuple[dict, list[str]]:
    """A markdown table of the same fitted quantities by both methods, and whether each estimate
    lies inside the other method's interval.

    Args:
      quantities: name -> (WSD estimate, WSD [lower, upper], grid estimate, grid [lower, upper]).
    Returns:
      ({name: {"wsd", "wsd_interval", "grid", "grid_interval", "wsd_in_grid", "grid_in_wsd"}}, lines).
    """
    from experiments.lib.report import markdown_table

    def fmt(x) -> str:
        return "nan" if x is None else f"{float(x):.4g}"  # inf: an unbounded interval

    def yes(flag) -> str:
        return "n/a" if flag is None else ("yes" if flag else "**no**")

    out, rows = {}, []
    for name, (w, wi, g, gi) in quantities.items():
        r = {"wsd": float(w), "wsd_interval": [float(v) for v in wi], "grid": float(g),
             "grid_interval": [float(v) for v in gi], "wsd_in_grid": _inside(w, gi), "grid_in_wsd": _inside(g, wi)}
        out[name] = r
        rows.append((name, fmt(w), f"[{fmt(wi[0])}, {fmt(wi[1])}]", fmt(g), f"[{fmt(gi[0])}, {fmt(gi[1])}]",
                     yes(r["wsd_in_grid"]), yes(r["grid_in_wsd"])))
    return out, markdown_table(["quantity", "WSD", "WSD 95% interval", "grid", "grid 95% interval",
                                "WSD inside grid's", "grid inside WSD's"], rows, align="lrlrlll")
