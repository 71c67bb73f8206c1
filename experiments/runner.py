"""The sweep runner shared by every study: a grid of runs -> run directories -> one tidy table.

A *study* is a named grid (a tuple of :class:`lm.config.RunConfig`, built with
``dataclasses.replace``) plus study-level metadata. :func:`run_study` executes the grid (or
one shard of it) under ``out``:

  out/study.json                    manifest: study name, grid fingerprint, run names, meta
  out/runs/<run name>/              one directory per run (lm.train: config.json,
                                    metrics.jsonl, checkpoints/, result.json; and a
                                    TensorBoard event file, lm.tensorboard: run
                                    ``tensorboard --logdir out/runs``)
  out/results.csv                   the tidy table (one row per run), or, for a shard,
  out/results.shard-<i>-of-<n>.csv  that shard's rows (merge with :func:`merge_tables`)
  out/curves.csv                    long table of every run's loss curve (run, step,
                                    tokens, flops, train_loss, val_loss, N) for approach 1

Resumable: a run whose ``result.json`` records a finished run is never trained again
(``{}``, ``[]`` or a cut-short file is not one); an interrupted run resumes from its newest
intact orbax checkpoint (:func:`lm.train.train` does that; :mod:`lm.checkpoint` falls back
past unreadable ones), so a sweep killed at any moment and rerun yields the same table
(losses bitwise on CPU). A run none of whose checkpoints can be read is marked "failed"
(failure.json) and the sweep goes on; the next call retries it. ``shard=(i, n)`` trains
only grid[i::n], so a grid spreads over hosts or job-array tasks with any scheduler. Every
check that can fail (duplicate runs, too-short runs, an output directory that is a file,
cannot be written or holds another study, a damaged study.json, config.json or results
table, bad groups) runs before the first step of training.

Groups: ``run_study(..., groups=[(name, ...), ...])`` trains the runs of each group
together with ``train_group`` (default :func:`lm.vmap_sweep.train_vmapped`: one compiled
program vmapped over runs that differ only in learning rate, weight decay or seed; the
learning-rate axis of a Step Law grid). Runs in no group train alone with
:func:`lm.train.train`. Everything else is as for solo runs: the same run directories and
table columns (``wall_s`` of a grouped run is the group's wall time divided by the runs it
trained), a diverged run of a group is "diverged" in the table, the progress bar counts
the group's runs. A shard holds whole groups (the grid is sharded by work unit: a group,
placed at its first run's grid position, or a solo run). Resume: a group whose runs are
all finished is skipped; in a partially finished group (a kill while it wrote its results)
only the unfinished runs are trained again, as a smaller group of the same program
(``train_vmapped`` keeps no checkpoints, so they restart from step 0), and a finished run
is never retrained.

Compilation: JAX's persistent compilation cache is enabled
(:func:`lm.train.enable_compilation_cache`) and :data:`lm.compiled.CACHE` reuses the
compiled step across runs of identical shapes in one process; the table reports
``compile_s`` separately from ``train_s``.

Table columns: ``run``, ``status`` ("complete" | "diverged" | "failed" | "pending"; "failed":
the run's checkpoints could not be read, it is retried on the next call), ``study`` (the
grid fingerprint, so tables of other studies are refused when merging), every config
field by dotted path (``model.d_model``, ``train.steps``, ...), ``N`` (total parameters),
``N_non_embedding``, ``D`` (training tokens), ``C`` (training FLOPs), ``flops_per_token``,
``final_train_loss``, ``final_val_loss``, ``final_val_bpb``, ``loss_at_<C>`` (training
loss interpolated in log FLOPs at the study's FLOP checkpoints; NaN outside the run),
``compile_s``, ``train_s``, ``wall_s`` (the run's wall time in the call that finished it),
``resumed_from`` (checkpoint step the run resumed from, empty if none), plus any
per-run ``tags`` the study attaches (e.g. its nominal budget).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments import outdir
from experiments.progress import SweepProgress
from lm import train as lm_train
from lm.checkpoint import CheckpointError
from lm.config import RunConfig
from lm.config_legacy import legacy_run_dict
from lm.tensorboard import LiveEvents

MANIFEST = "study.json"
RUNS_DIR = "runs"
TABLE = "results.csv"
CURVES = "curves.csv"
SHARD_TABLE = re.compile(r"results\.shard-(\d+)-of-(\d+)\.csv$")
STATUSES = ("complete", "diverged", "failed", "pending")
# Config fields added after studies had been written: left out of the grid fingerprint and of
# the run-directory check while at their default, so those studies still resume and load.
ADDED_FIELDS = {"data.max_train_bytes": None, "data.path": None, "data.num_workers": 0, "model.scan_layers": False,
                "model.remat": "none", "model.parametrization": "sp", "model.base_width": None}


class StudyError(ValueError):
    """A grid or an output directory that cannot be run; raised before any training."""


# ----------------------------------------------------------------------------- study


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
        """sha256 of the grid (every run's full config, in grid order) and loss_at_flops.

        Fields of :data:`ADDED_FIELDS` count only when set to another value than their default.
        """
        blob = json.dumps([[canonical_config(r.to_dict()) for r in self.runs], list(self.loss_at_flops)],
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

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
    """A run's config dict (``RunConfig.to_dict`` or a config.json) without the
    :data:`ADDED_FIELDS` that hold their default (or are absent: written before they existed),
    with the model's family settings under their former flat keys (``lm/config_legacy.py``), so
    grids and run directories written before the families were nested keep their fingerprints."""
    out = legacy_run_dict(json.loads(json.dumps(config)))
    for path, default in ADDED_FIELDS.items():
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.get(key, {})
        if leaf in node and node[leaf] == default:
            del node[leaf]
    return out


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


# ----------------------------------------------------------------------- output dir


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def check_out(study: Study, out: str | Path) -> None:
    """Raise :class:`StudyError` if ``out`` cannot hold this study (creates nothing).

    Refused: a different study (a manifest
    with another name or grid fingerprint, run directories without a manifest, or a run
    directory whose config differs from the grid's); a damaged record (study.json, a run's
    config.json, a results table) that the study would have to trust.
    """
    out = Path(out)
    try:
        theirs = outdir.read_json_record(out / MANIFEST, "the study manifest")
        configs = {run.name: outdir.read_json_record(out / RUNS_DIR / run.name / "config.json", "the run's config")
                   for run in study.runs}
    except outdir.OutputError as err:
        raise StudyError(str(err)) from err
    mine = study.manifest()
    if theirs is not None:
        if theirs.get("study") != mine["study"] or theirs.get("fingerprint") != mine["fingerprint"]:
            raise StudyError(
                f"output directory {out} holds a different study: {theirs.get('study')!r} "
                f"({theirs.get('num_runs')} runs, meta {theirs.get('meta')}, fingerprint {theirs.get('fingerprint')}) "
                f"but this command's grid is {mine['study']!r} ({mine['num_runs']} runs, meta {mine['meta']}, "
                f"fingerprint {mine['fingerprint']}); choose another --out or remove {out}"
            )
    elif (out / RUNS_DIR).is_dir() and any((out / RUNS_DIR).iterdir()):
        raise StudyError(f"output directory {out} holds run directories but no {MANIFEST}: it is not a study "
                         "written by this runner; choose another --out")
    for run in study.runs:
        cfg = configs[run.name]
        if cfg is not None and canonical_config(cfg) != canonical_config(run.to_dict()):
            diff = outdir.config_differences(canonical_config(cfg), canonical_config(run.to_dict()))
            raise StudyError(f"run directory {out / RUNS_DIR / run.name} holds a different config than grid run "
                             f"{run.name!r} ({'; '.join(diff[:5])}{'; ...' if len(diff) > 5 else ''})")
    for path in study_tables(out):
        read_study_table(path, study)


def prepare_out(study: Study, out: str | Path) -> Path:
    """Check ``out`` (writable, :func:`check_out`), create it and write the manifest."""
    out = Path(out)
    try:
        outdir.check_writable_dir(out)
    except outdir.OutputError as err:
        raise StudyError(str(err)) from err
    check_out(study, out)
    (out / RUNS_DIR).mkdir(parents=True, exist_ok=True)
    if not (out / MANIFEST).exists():
        _atomic_write(out / MANIFEST, json.dumps(study.manifest(), indent=2))
    return out


def run_dir(out: str | Path, run: RunConfig) -> Path:
    return Path(out) / RUNS_DIR / run.name


def table_path(out: str | Path, shard: tuple[int, int] = (0, 1)) -> Path:
    i, n = shard
    return Path(out) / (TABLE if n == 1 else f"results.shard-{i}-of-{n}.csv")


# --------------------------------------------------------------------------- tables


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (list, tuple)):
            flat[f"{prefix}{k}"] = json.dumps(v)
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def loss_column(flops: float) -> str:
    """Table column of the training loss at ``flops`` FLOPs, e.g. "loss_at_1e+12"."""
    return f"loss_at_{flops:.4g}"


def interpolate_loss(records: Sequence[Mapping], flops: Sequence[float]) -> list[float]:
    """Training loss at each of ``flops``, linear in log FLOPs between logged records.

    Args:
      records: metrics.jsonl records with "flops" and "train_loss".
      flops: query FLOP counts [q].
    Returns:
      [q] losses; NaN before the first or after the last record.
    """
    pts = sorted((r["flops"], r["train_loss"]) for r in records if r.get("train_loss") is not None)
    if not pts:
        return [math.nan] * len(flops)
    x = np.log([p[0] for p in pts])
    y = np.asarray([p[1] for p in pts], dtype=float)
    out = []
    for c in flops:
        lc = math.log(c)
        out.append(float(np.interp(lc, x, y)) if x[0] - 1e-9 <= lc <= x[-1] + 1e-9 else math.nan)
    return out


def run_row(study: Study, out: str | Path, run: RunConfig) -> dict[str, Any]:
    """The table row of one run, read from its directory (status "pending" if unfinished)."""
    rd = run_dir(out, run)
    row: dict[str, Any] = {"run": run.name, "status": "pending", "study": study.fingerprint()}
    row.update(dict(study.tags.get(run.name, {})))
    row.update(_flatten(run.to_dict()))
    from lm.flops import param_count, train_flops_per_token

    counts = param_count(run.model)
    fpt = train_flops_per_token(run.model, run.data.seq_len)
    tokens = run.train.steps * run.data.batch_size * run.data.seq_len
    row.update(N=counts["total"], N_non_embedding=counts["non_embedding"], D=tokens, C=tokens * fpt,
               flops_per_token=fpt)
    result = _read_result(rd)
    failure = _read_json(rd / "failure.json")
    runner_info = _read_json(rd / "runner.json") or {}
    nan = math.nan
    row.update(final_train_loss=nan, final_val_loss=nan, final_val_bpb=nan)
    if result is not None:
        row.update(status=result.get("status", "complete"),
                   **{k: nan if result.get(k) is None else result[k]  # a diverged grouped run writes null
                      for k in ("final_train_loss", "final_val_loss", "final_val_bpb")})
    elif failure is not None:
        row["status"] = "failed" if failure.get("status") == "failed" else "diverged"
    records = lm_train.read_metrics(rd) if (result is not None or failure is not None) else []
    for c, loss in zip(study.loss_at_flops, interpolate_loss(records, study.loss_at_flops)):
        row[loss_column(c)] = loss
    row.update(compile_s=(result or {}).get("compile_s", nan), train_s=(result or {}).get("train_s", nan),
               wall_s=runner_info.get("wall_s", nan), resumed_from=(result or {}).get("resumed_from"))
    return row


def _read_json(path: Path) -> dict | None:
    """The JSON object in the file; None if it is missing, was cut short (a kill while
    writing) or holds something else than an object."""
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _read_result(rd: Path) -> dict | None:
    """The run's result.json if it records a finished run (:func:`experiments.outdir.is_finished_result`):
    ``{}``, ``[]`` or a cut-short file is not one."""
    result = _read_json(rd / "result.json")
    return result if outdir.is_finished_result(result) else None


def collect_table(study: Study, out: str | Path, runs: Iterable[RunConfig] | None = None) -> pd.DataFrame:
    """The tidy results table of ``runs`` (default: the whole grid) read from their directories."""
    runs = study.runs if runs is None else tuple(runs)
    return pd.DataFrame([run_row(study, out, r) for r in runs])


def collect_curves(study: Study, out: str | Path, runs: Iterable[RunConfig] | None = None) -> pd.DataFrame:
    """Long table of loss curves: run, N, step, tokens, flops, train_loss, val_loss (finished runs)."""
    from lm.flops import param_count

    rows = []
    for run in study.runs if runs is None else runs:
        rd = run_dir(out, run)
        if _read_result(rd) is None:
            continue
        n = param_count(run.model)["total"]
        for r in lm_train.read_metrics(rd):
            rows.append({"run": run.name, "N": n, "step": r["step"], "tokens": r["tokens"], "flops": r["flops"],
                         "train_loss": r.get("train_loss", math.nan), "val_loss": r.get("val_loss", math.nan)})
    return pd.DataFrame(rows, columns=["run", "N", "step", "tokens", "flops", "train_loss", "val_loss"])


def read_table(path: str | Path) -> pd.DataFrame:
    """A results table written by this runner (floats read back bit-exactly)."""
    if int(pd.__version__.split(".")[0]) >= 3:  # round-trip parsing is the default (the option is deprecated)
        return pd.read_csv(path)
    return pd.read_csv(path, float_precision="round_trip")


def study_tables(out: str | Path) -> list[Path]:
    """The results tables under ``out``: results.csv and every shard table."""
    return [p for p in sorted(Path(out).glob("results*.csv")) if p.name == TABLE or SHARD_TABLE.search(p.name)]


def read_study_table(path: str | Path, study: Study) -> pd.DataFrame:
    """A results table of ``study`` (:func:`read_table`), checked.

    Raises:
      StudyError: the file cannot be parsed, lacks the runner's columns, or belongs to
        another study (grid fingerprint). Tables under ``out`` are rebuilt from the run
        directories, so the message says to remove a damaged one.
    """
    try:
        table = read_table(path)
    except FileNotFoundError as err:
        raise StudyError(f"results table {path} does not exist") from err
    except (ValueError, OSError) as err:  # pandas' parser and empty-data errors, bad bytes
        raise StudyError(f"results table {path} cannot be read ({type(err).__name__}: "
                         f"{' '.join(str(err).split())[:200]}); it is damaged: remove it (the tables under --out "
                         "are rebuilt from the run directories) and rerun") from err
    missing = [c for c in ("run", "status", "study") if c not in table.columns]
    if missing:
        raise StudyError(f"results table {path} lacks the columns {missing}: it is not a table written by this "
                         "runner (or it is damaged); remove it and rerun")
    if len(table) and (table["study"].astype(str) != study.fingerprint()).any():
        raise StudyError(f"table {path} belongs to another study (fingerprint {table['study'].iloc[0]}, "
                         f"this grid's is {study.fingerprint()})")
    return table


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def merge_tables(tables: Sequence[pd.DataFrame | str | Path], order: Sequence[str] | None = None) -> pd.DataFrame:
    """Merge shard tables into one: one row per run, the finished row where shards disagree.

    Args:
      tables: DataFrames or CSV paths (e.g. every ``results.shard-*.csv``).
      order: run names giving the row order (the grid order); runs missing from every
        table are left out.
    Raises:
      StudyError: two tables hold different finished results for the same run.
    """
    frames = [read_table(t) if isinstance(t, (str, Path)) else t for t in tables]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    both = pd.concat(frames, ignore_index=True).copy()  # copy: one block, not one per column
    rank = both["status"].map({"complete": 0, "diverged": 1}).fillna(2)
    both = both.assign(_rank=rank).sort_values("_rank", kind="stable")
    done = both[both["_rank"] < 2]
    clash = done.groupby("run")["final_val_loss"].nunique(dropna=False)
    if (clash > 1).any():
        raise StudyError(f"shard tables disagree on finished runs {sorted(clash[clash > 1].index)}")
    merged = both.drop_duplicates("run", keep="first").drop(columns="_rank")
    if order is not None:
        pos = {name: i for i, name in enumerate(order)}
        merged = merged[merged["run"].isin(pos)]
        merged = merged.iloc[np.argsort([pos[r] for r in merged["run"]], kind="stable")]
    return merged.reset_index(drop=True)


def load_results(study: Study, out: str | Path, extra_tables: Sequence[str | Path] = ()) -> pd.DataFrame:
    """The study's table: rows rebuilt from the run directories under ``out`` (shards on a
    shared filesystem) merged with every shard table under ``out`` and ``extra_tables``
    (shards from other hosts).

    Raises:
      StudyError: ``out`` or a table belongs to another study (grid fingerprint).
    """
    out = Path(out)
    check_out(study, out)
    frames = [collect_table(study, out)]
    frames += [read_study_table(p, study) for p in [*study_tables(out), *extra_tables]]
    return merge_tables(frames, order=study.run_names)


# ----------------------------------------------------------------------------- run


GroupTrainer = Callable[..., Any]
"""``train_group(runs, run_dirs, *, progress)``: trains the runs together and writes each run's
config.json, metrics.jsonl and result.json (``"status": "complete" | "diverged"``) into its
directory as :func:`lm.train.train` does; ``progress(step, total, {"loss": ...})`` like
``train``'s. :func:`lm.vmap_sweep.train_vmapped` is one."""


def check_groups(study: Study, groups: Sequence[Sequence[str]],
                 check: Callable[[Sequence[RunConfig]], None] | None = None) -> tuple[tuple[str, ...], ...]:
    """Validate ``groups`` (run names of ``study``) and return them as tuples; trains nothing.

    Raises:
      StudyError: an empty group, a name not in the grid, a run in two groups (or twice in
        one), or runs that ``check`` refuses to train together (default
        :func:`lm.vmap_sweep.check_sweep`; its message is kept).
    """
    if check is None:
        from lm.vmap_sweep import check_sweep as check
    by_name = {r.name: r for r in study.runs}
    seen: dict[str, int] = {}
    out = []
    for i, group in enumerate(groups):
        if isinstance(group, str) or not len(group):
            raise StudyError(f"groups[{i}]={group!r}: a group is a non-empty sequence of run names")
        group = tuple(group)
        unknown = [n for n in group if n not in by_name]
        if unknown:
            raise StudyError(f"groups[{i}] names runs that are not in the grid of study {study.name!r}: {unknown}")
        for name in group:
            if name in seen:
                where = "twice in it" if seen[name] == i else f"also in groups[{seen[name]}]"
                raise StudyError(f"groups[{i}]: run {name!r} is {where}; a run belongs to at most one group")
            seen[name] = i
        try:
            check([by_name[n] for n in group])
        except ValueError as err:
            raise StudyError(f"groups[{i}] ({group[0]!r}, ...) cannot be trained together: {err}") from err
        out.append(group)
    return tuple(out)


def work_units(study: Study, groups: Sequence[Sequence[str]] = ()) -> tuple[tuple[RunConfig, ...], ...]:
    """The grid as units of training: each group (its runs in the group's order, placed at its
    first run's grid position) and every run in no group alone. Shards slice this list."""
    by_name = {r.name: r for r in study.runs}
    group_of = {name: i for i, g in enumerate(groups) for name in g}
    units, placed = [], set()
    for run in study.runs:
        i = group_of.get(run.name)
        if i is None:
            units.append((run,))
        elif i not in placed:
            placed.add(i)
            units.append(tuple(by_name[n] for n in groups[i]))
    return tuple(units)


def run_study(
    study: Study,
    out: str | Path,
    *,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    compilation_cache: bool = True,
    on_run_done: Callable[[RunConfig, dict], None] | None = None,
    groups: Sequence[Sequence[str]] = (),
    train_group: GroupTrainer | None = None,
    check_group: Callable[[Sequence[RunConfig]], None] | None = None,
) -> pd.DataFrame:
    """Train the (shard of the) grid under ``out``, skipping finished runs; write and return the table.

    Args:
      study: the grid.
      out: the study's output directory (created; must hold this study or nothing).
      shard: (i, n): train only work_units(study, groups)[i::n] (grid[i::n] without groups);
        the table written is that shard's.
      progress: show the sweep's progress bar.
      compilation_cache: enable JAX's persistent compilation cache first.
      on_run_done: optional callback(run, result) after each run trained here that wrote a
        result.json (a solo run that diverged writes failure.json instead; a grouped one a
        result with ``"status": "diverged"``).
      groups: run names trained together, one tuple per group (module docstring: resume,
        shards); runs in no group train alone.
      train_group: the group trainer (:data:`GroupTrainer`); default
        :func:`lm.vmap_sweep.train_vmapped`.
      check_group: raises ValueError for runs ``train_group`` cannot train together; default
        :func:`lm.vmap_sweep.check_sweep`.

    Returns:
      The shard's table (rows in grid order), also written to :func:`table_path`.

    Raises:
      StudyError: before any training (and before ``out`` is touched), for a bad grid,
        shard, group or output directory.
    """
    groups = check_groups(study, groups, check_group)
    if train_group is None:
        from lm.vmap_sweep import train_vmapped as train_group
    units = shard_runs(work_units(study, groups), shard)
    mine = {r.name for unit in units for r in unit}
    runs = tuple(r for r in study.runs if r.name in mine)
    out = prepare_out(study, out)
    if compilation_cache:
        lm_train.enable_compilation_cache()
    grouped = {name for g in groups for name in g}
    todo = [[r for r in unit if not _finished(out, r)] for unit in units]
    todo = [u for u in todo if u]
    left = [r for u in todo for r in u]
    bar = SweepProgress(left, len(runs) - len(left), len(runs), enabled=progress)
    path = table_path(out, shard)
    try:
        for unit in todo:
            if unit[0].name in grouped:
                _train_group(unit, out, bar, train_group)
            else:
                _train_solo(unit[0], out, bar)
            if on_run_done is not None:
                for run in unit:
                    result = _read_result(run_dir(out, run))
                    if result is not None:
                        on_run_done(run, result)
            write_table(collect_table(study, out, runs), path)
    finally:
        bar.close()
    table = collect_table(study, out, runs)
    write_table(table, path)
    failed = table.loc[table["status"] == "failed", "run"].tolist()
    if failed:
        print(f"{len(failed)} run(s) failed (unreadable checkpoints; see their failure.json): {failed}; "
              "the other runs went on. Rerun to retry them once their checkpoints are fixed or removed.")
    curves = CURVES if shard[1] == 1 else f"curves.shard-{shard[0]}-of-{shard[1]}.csv"
    write_table(collect_curves(study, out, runs), Path(out) / curves)
    return table


def _train_solo(run: RunConfig, out: Path, bar: SweepProgress) -> None:
    """lm.train.train into the run's directory (resumes from its checkpoint).

    A run that diverges writes failure.json ``{"status": "diverged"}`` (never retrained); one
    whose checkpoints cannot be read (:class:`lm.checkpoint.CheckpointError`, after falling
    back to every older checkpoint) writes ``{"status": "failed"}`` and the sweep goes on
    (retried on the next call, once the checkpoints are fixed or removed).
    """
    rd = run_dir(out, run)
    bar.start([run])
    t0 = time.perf_counter()
    events = LiveEvents([rd], bar)
    try:
        lm_train.train(run, rd, progress=events)
    except (lm_train.NonFiniteLossError, CheckpointError) as err:
        events.close()
        status = "failed" if isinstance(err, CheckpointError) else "diverged"
        _atomic_write(rd / "failure.json", json.dumps({"status": status, "error": str(err)}, indent=2))
        bar.write(f"run {run.name} {status}: {err}")
        bar.finish([run], steps_left=run.train.steps - (bar.last_step or 0), status=status)
        return
    events.close()
    _atomic_write(rd / "runner.json", json.dumps({"wall_s": time.perf_counter() - t0}))
    bar.finish([run])


def _train_group(runs: Sequence[RunConfig], out: Path, bar: SweepProgress, train_group: GroupTrainer) -> None:
    """``train_group`` over the (unfinished) runs of one group, each into its own directory."""
    dirs = [run_dir(out, r) for r in runs]
    bar.start(runs)
    t0 = time.perf_counter()
    events = LiveEvents(dirs, bar)
    try:
        train_group(tuple(runs), dirs, progress=events)
    finally:
        events.close()
    wall = (time.perf_counter() - t0) / len(runs)
    missing = [str(d) for d in dirs if _read_result(d) is None]
    if missing:
        raise RuntimeError(f"train_group={train_group!r} returned without writing result.json in {missing}")
    for d in dirs:
        _atomic_write(d / "runner.json", json.dumps({"wall_s": wall, "group": [r.name for r in runs]}))
    bar.finish(runs)


def _finished(out: Path, run: RunConfig) -> bool:
    """A finished result.json, or a failure.json of a diverged run: never trained again.

    A "failed" run (unreadable checkpoints) is tried again.
    """
    rd = run_dir(out, run)
    failure = _read_json(rd / "failure.json")
    return _read_result(rd) is not None or (failure is not None and failure.get("status") != "failed")
