"""A study: a named grid of runs, its fingerprint, and where its records live under ``out``.

A *study* is a named grid (a tuple of :class:`lm.model.config.RunConfig`, built with
``dataclasses.replace``) plus study-level metadata. :func:`experiments.lib.sweep.run_study`
executes the grid (or one shard of it) under ``out``:

  out/study.json                    manifest: study name, grid fingerprint, run names, meta
  out/runs/<run name>/              one directory per run (lm.train.solo: config.json,
                                    metrics.jsonl, checkpoints/, result.json; and a
                                    TensorBoard event file, lm.train.tensorboard: run
                                    ``tensorboard --logdir out/runs``)
  out/runs/events.out.tfevents.0.study.scalelab
                                    the HParams experiment: the config fields the runs
                                    vary, TensorBoard's HParams columns (lm.train.tensorboard)
  out/results.csv                   the tidy table (one row per run, :mod:`experiments.lib.table`),
  out/results.shard-<i>-of-<n>.csv  or, for a shard, that shard's rows
  out/curves.csv                    long table of every run's loss curve (run, step,
                                    tokens, flops, train_loss, val_loss, N) for approach 1

The fingerprint (:meth:`Study.fingerprint`) hashes only the runs' configs and the study's
FLOP checkpoints: no class, module or preset name enters it, so moving code never changes
the fingerprint of a saved study (``tests/experiments/test_fingerprints.py`` pins them). Each
config is migrated to the current schema and hashed in its fingerprint form
(``lm.model.config_schema.fingerprint_form``), so a schema change never changes a fingerprint either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lm.model.config import ModelConfig, OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from lm.model.config_schema import fingerprint_form
from lm.data.config import DataConfig

MANIFEST = "study.json"
RUNS_DIR = "runs"
TABLE = "results.csv"
CURVES = "curves.csv"
SHARD_TABLE = re.compile(r"results\.shard-(\d+)-of-(\d+)\.csv$")


class StudyError(ValueError):
    """A grid or an output directory that cannot be run; raised before any training."""


@dataclasses.dataclass(frozen=True)
class Study:
    """A named grid of runs.

    Attributes:
      name: the study's name (``"chinchilla"``).
      runs: the grid, one RunConfig per run; names must be unique and usable as directory names.
      tags: per-run extra table columns, keyed by run name ({"budget": 1e12, "size": "s3"}).
      meta: JSON-able study-level settings recorded in the manifest (preset, data source, ...).
      loss_at_flops: FLOP counts at which every run's training loss is reported (approach 1).
      min_steps: the shortest run allowed (a run shorter than its warmup cannot be fitted).
    """

    name: str
    runs: tuple[RunConfig, ...]
    tags: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    loss_at_flops: tuple[float, ...] = ()
    min_steps: int = 1

    def __post_init__(self):
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise StudyError(f"Study.name={self.name!r}: must be a non-empty name of letters, digits, '_', '.', '-'")
        object.__setattr__(self, "runs", tuple(self.runs))
        object.__setattr__(self, "loss_at_flops", tuple(float(c) for c in self.loss_at_flops))
        if not self.runs:
            raise StudyError(f"Study {self.name!r}: the grid is empty (no runs)")
        if self.min_steps < 1:
            raise StudyError(f"Study.min_steps={self.min_steps}: must be >= 1")
        check_grid(self.runs, self.min_steps)
        unknown = sorted(set(self.tags) - {r.name for r in self.runs})
        if unknown:
            raise StudyError(f"Study.tags has entries for runs not in the grid: {unknown}")

    @property
    def run_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.runs)

    def fingerprint(self) -> str:
        """sha256 of the grid (every run's config in :func:`canonical_config` form, in grid order) and
        loss_at_flops. Fields added since studies were first written (``lm.model.config_schema.ADDED``)
        count only when set to another value than the one those studies implied.

        Computed once per Study (its runs and loss_at_flops are frozen): every row of the table
        carries it, and the table is collected again after each finished run.
        """
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            blob = json.dumps([[canonical_config(r.to_dict()) for r in self.runs], list(self.loss_at_flops)],
                              sort_keys=True)
            cached = hashlib.sha256(blob.encode()).hexdigest()[:16]
            object.__setattr__(self, "_fingerprint", cached)  # not a field: eq, replace and repr ignore it
        return cached

    def manifest(self) -> dict:
        return {
            "study": self.name,
            "fingerprint": self.fingerprint(),
            "num_runs": len(self.runs),
            "runs": list(self.run_names),
            "meta": dict(self.meta),
            "loss_at_flops": list(self.loss_at_flops),
        }


def canonical_config(config: Mapping) -> dict:
    """A run's config dict (``RunConfig.to_dict`` or a config.json of any schema version) as the
    fingerprint and the run-directory check compare it: migrated to the current schema, in its
    fingerprint form (``lm.model.config_schema.fingerprint_form``), so grids and run directories
    written by any earlier version keep their fingerprints and resume."""
    return fingerprint_form(config)


def check_grid(runs: Sequence[RunConfig], min_steps: int = 1) -> None:
    """Raise :class:`StudyError` for duplicate names, duplicate configs or too-short runs.

    Two runs are duplicates when their configs are equal apart from the name (they would
    train the same model twice) or when they share a name (they would share a directory).
    """
    by_name: dict[str, int] = {}
    by_config: dict[str, str] = {}
    for i, run in enumerate(runs):
        if not re.fullmatch(r"[A-Za-z0-9_.=+-]+", run.name):
            raise StudyError(f"run {i}: RunConfig.name={run.name!r} is not usable as a directory name "
                             "(allowed: letters, digits, '_', '.', '=', '+', '-')")
        if run.name in by_name:
            raise StudyError(f"duplicate run name {run.name!r}: grid entries {by_name[run.name]} and {i}")
        by_name[run.name] = i
        key = json.dumps(dataclasses.replace(run, name="").to_dict(), sort_keys=True)
        if key in by_config:
            raise StudyError(f"duplicate runs: {by_config[key]!r} and {run.name!r} have identical configs "
                             "(apart from the name); remove one")
        by_config[key] = run.name
        if run.train.steps < min_steps:
            raise StudyError(f"run {run.name!r} has train.steps={run.train.steps}, fewer than the study's "
                             f"minimum of {min_steps}: its budget is too small for this model")


def parse_shard(text: str | None) -> tuple[int, int]:
    """"i/n" -> (i, n) with 0 <= i < n; None -> (0, 1)."""
    if text is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise StudyError(f"--shard={text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return int(m.group(1)), int(m.group(2))


def shard_runs(runs: Sequence, shard: tuple[int, int]) -> tuple:
    """The i-th of n disjoint slices of the grid (or of its work units): runs[i::n]
    (interleaved, so shards get similar costs)."""
    i, n = shard
    if not 0 <= i < n:
        raise StudyError(f"shard={shard}: expected (i, n) with 0 <= i < n")
    return tuple(runs[i::n])


def run_dir(out: str | Path, run: RunConfig) -> Path:
    return Path(out) / RUNS_DIR / run.name


def table_path(out: str | Path, shard: tuple[int, int] = (0, 1)) -> Path:
    i, n = shard
    return Path(out) / (TABLE if n == 1 else f"results.shard-{i}-of-{n}.csv")



def cosine_run(name: str, model: ModelConfig, data: DataConfig, *, steps: int, learning_rate: float,
               eval_batches: int) -> RunConfig:
    """One grid point trained with the Chinchilla recipe (Hoffmann et al. 2022, Sec. 3):
    AdamW, cosine decay matched to the run's ``steps`` (5% warmup, floor 0.1 of the peak),
    one evaluation and one checkpoint at the end, 8 log records."""
    return RunConfig(
        model=model, data=data, optimizer=OptimizerConfig(learning_rate=learning_rate),
        schedule=ScheduleConfig(kind="cosine", warmup_fraction=0.05, min_ratio=0.1),
        train=TrainConfig(steps=steps, eval_every=steps, eval_batches=eval_batches, log_every=max(1, steps // 8),
                          checkpoint_every=steps, keep_checkpoints=1, progress=False),
        name=name)
