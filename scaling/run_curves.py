"""Loss curves and learning-rate schedules of scalelab run directories (``--runs DIR``).

A run directory holds ``config.json`` (the RunConfig) and ``metrics.jsonl`` (one record per
``log_every`` steps: ``step`` = updates done, ``train_loss`` = mean training loss since the
previous record). Every directory under DIR with both files is a run, named by its path
relative to DIR. The curve point of a record is (step - 1, train_loss): its last update
was step - 1, so the LR area it has seen is S(step - 1) = sum_{tau<step} eta_tau.

``scaling`` never imports ``lm`` (DESIGN.md: it fits tables of numbers), so the schedule is
read from config.json's plain JSON and evaluated by :func:`lr_multiplier`, which mirrors
``lm.train.schedules.lr_multiplier``; ``tests/scaling/test_curves_cli.py`` pins the two equal for
every kind and decay shape.

Axis letters: T steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

_SCHEDULE_DEFAULTS = {"kind": "cosine", "warmup_steps": None, "warmup_fraction": 0.05,
                      "min_ratio": 0.1, "decay_fraction": 0.2, "decay_start": None,
                      "decay_shape": "linear", "knots": None}


def _decay(shape: str, progress: float, floor: float) -> float:
    if shape == "linear":
        return 1.0 - (1.0 - floor) * progress
    if shape == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "sqrt":
        return 1.0 - (1.0 - floor) * math.sqrt(progress)
    if shape == "exponential":
        return max(floor, 1e-12) ** progress
    if shape == "step":
        return floor
    raise ValueError(f"decay_shape={shape!r}: allowed values are linear, cosine, sqrt, exponential, step")


def _interpolate(knots, step: int) -> float:
    if step <= knots[0][0]:
        return float(knots[0][1])
    for (s0, v0), (s1, v1) in zip(knots, knots[1:]):
        if step <= s1:
            return float(v0 + (v1 - v0) * (step - s0) / (s1 - s0))
    return float(knots[-1][1])


def lr_multiplier(cfg: dict, step: int, total: int) -> float:
    """Multiplier of the peak LR at ``step`` of a ``total``-step run (config.json's ``schedule``)."""
    warm = cfg["warmup_steps"] if cfg["warmup_steps"] is not None else max(
        1, round(cfg["warmup_fraction"] * total))
    if step < warm:
        return (step + 1) / warm
    if cfg["kind"] == "constant":
        return 1.0
    if cfg["kind"] == "table":
        return _interpolate(cfg["knots"], step)
    if cfg["kind"] == "cosine":
        return _decay("cosine", min(1.0, (step - warm + 1) / max(1, total - warm)), cfg["min_ratio"])
    start = cfg["decay_start"] if cfg["decay_start"] is not None else total - round(
        cfg["decay_fraction"] * total)
    if step < start:
        return 1.0
    return _decay(cfg["decay_shape"], min(1.0, (step - start + 1) / max(1, total - start)),
                  cfg["min_ratio"])


def run_schedule(config: dict) -> np.ndarray:
    """The LR at every step [T] of a run, from its config.json (a dict)."""
    sched = {**_SCHEDULE_DEFAULTS, **config.get("schedule", {})}
    total = int(config["train"]["steps"])
    peak = float(config["optimizer"]["learning_rate"])
    return peak * np.array([lr_multiplier(sched, s, total) for s in range(total)])


def read_runs(root) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """(curve table run, step, loss; {run: eta [T]}) of every run directory under ``root``.

    Raises ValueError for a missing folder, no runs, or an unreadable config.json.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--runs {str(root)!r}: no such directory")
    rows, schedules = [], {}
    for config_path in sorted(root.rglob("config.json")):
        run_dir = config_path.parent
        metrics = run_dir / "metrics.jsonl"
        if not metrics.is_file():
            continue
        name = str(run_dir.relative_to(root)) or run_dir.name
        try:
            config = json.loads(config_path.read_text())
            eta = run_schedule(config)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"--runs: {config_path}: not a readable run config ({type(exc).__name__}: "
                             f"{exc})") from None
        records = []
        for line in metrics.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a run killed mid-write leaves a partial last line
        points = [(int(r["step"]) - 1, float(r["train_loss"])) for r in records
                  if r.get("train_loss") is not None and 0 < int(r.get("step", 0)) <= len(eta)
                  and math.isfinite(float(r["train_loss"]))]
        if points:
            schedules[name] = eta
            rows.append(pd.DataFrame(points, columns=["step", "loss"]).assign(run=name))
    if not rows:
        raise ValueError(f"--runs {str(root)!r}: no run directories (config.json + metrics.jsonl "
                         "with train_loss records) under it")
    curves = pd.concat(rows, ignore_index=True)[["run", "step", "loss"]]
    return curves.drop_duplicates(["run", "step"], keep="last"), schedules
