"""The sweep runner shared by every study: a grid of runs -> run directories -> one tidy table.

:func:`run_study` trains a :class:`experiments.lib.study.Study` (or one shard of it) under
``out`` (layout: :mod:`experiments.lib.study`) and writes its table
(:mod:`experiments.lib.table`); :func:`load_results` reads the whole study back, merged over shards.


Resumable: a run whose ``result.json`` records a finished run is never trained again
(``{}``, ``[]`` or a cut-short file is not one); an interrupted run resumes from its newest
intact orbax checkpoint (:func:`lm.train.solo.train` does that; :mod:`lm.train.checkpoint` falls back
past unreadable ones), so a sweep killed at any moment and rerun yields the same table
(losses bitwise on CPU). A run none of whose checkpoints can be read is marked "failed"
(failure.json) and the sweep goes on; the next call retries it. ``shard=(i, n)`` trains
only grid[i::n], so a grid spreads over hosts or job-array tasks with any scheduler. Every
check that can fail (duplicate runs, too-short runs, an output directory that is a file,
cannot be written or holds another study, a damaged study.json, config.json or results
table, bad groups, data the runs cannot train on, a run directory trained on another corpus:
:func:`experiments.lib.data_budget.check_data`) runs before the first step of training.

Groups: ``run_study(..., groups=[(name, ...), ...])`` trains the runs of each group
together with ``train_group`` (default :func:`lm.train.sweep.train_vmapped`: one compiled
program vmapped over runs that differ only in learning rate, weight decay or seed; the
learning-rate axis of a Step Law grid). Runs in no group train alone with
:func:`lm.train.solo.train`. Everything else is as for solo runs: the same run directories and
table columns (``wall_s`` and ``cpu_s`` of a grouped run are the group's wall time and CPU
seconds divided by the runs it trained), a diverged run of a group is "diverged" in the table, the progress bar counts
the group's runs. A shard holds whole groups (the grid is sharded by work unit: a group,
placed at its first run's grid position, or a solo run). Resume: a group whose runs are
all finished is skipped; in a partially finished group (a kill while it wrote its results)
only the unfinished runs are trained again, as a smaller group of the same program
(``train_vmapped`` keeps no checkpoints, so they restart from step 0), and a finished run
is never retrained.

Stops and locks: SIGTERM or Ctrl-C (``lm.train.preemption.handle_signals``) stops the sweep at the
current run's next step boundary, with that run's checkpoint saved (a group stops likewise,
without checkpoints), or before the next run; ``lm.train.preemption.Preempted`` is raised, the
table written after the last finished unit lists every run (the unfinished ones "pending"),
and a rerun resumes. Each run's directory is
locked while it trains (``lm.train.run_lock``; a group locks each of its runs), so disjoint shards
run side by side and a second sweep reaching a run in training is refused
(``lm.train.run_lock.RunDirLockedError``); a run found finished once its lock is taken (by another
process meanwhile) is not trained again.

Compilation: JAX's persistent compilation cache is enabled
(:func:`lm.train.compiled.enable_compilation_cache`) and :data:`lm.train.compiled.CACHE` reuses the
compiled step across runs of identical shapes in one process; the table reports
``compile_s`` separately from ``train_s``.
"""

from __future__ import annotations

import contextlib
import json
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.lib import data_budget, outdir
from experiments.lib.outdir import atomic_write
from experiments.lib.progress import SweepProgress
from experiments.lib.study import (CURVES, MANIFEST, RUNS_DIR, Study, StudyError, canonical_config, run_dir,
                                   shard_runs, table_path)
from experiments.lib.table import (collect_curves, collect_table, merge_tables, read_study_table, study_tables,
                                   write_table)
from lm.train import compiled, preemption, records, run_lock, tensorboard
from lm.train import solo as lm_train
from lm.train.checkpoint import CheckpointError
from lm.model.config import RunConfig

# ----------------------------------------------------------------------- output dir


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
        atomic_write(out / MANIFEST, json.dumps(study.manifest(), indent=2))
    return out


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
directory as :func:`lm.train.solo.train` does; ``progress(step, total, {"loss": ...})`` like
``train``'s. :func:`lm.train.sweep.train_vmapped` is one."""


def check_groups(study: Study, groups: Sequence[Sequence[str]],
                 check: Callable[[Sequence[RunConfig]], None] | None = None) -> tuple[tuple[str, ...], ...]:
    """Validate ``groups`` (run names of ``study``) and return them as tuples; trains nothing.

    Raises:
      StudyError: an empty group, a name not in the grid, a run in two groups (or twice in
        one), or runs that ``check`` refuses to train together (default
        :func:`lm.train.sweep.check_sweep`; its message is kept).
    """
    if check is None:
        from lm.train.sweep import check_sweep as check
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
        result.json (``"status": "complete"`` or ``"diverged"``).
      groups: run names trained together, one tuple per group (module docstring: resume,
        shards); runs in no group train alone.
      train_group: the group trainer (:data:`GroupTrainer`); default
        :func:`lm.train.sweep.train_vmapped`.
      check_group: raises ValueError for runs ``train_group`` cannot train together; default
        :func:`lm.train.sweep.check_sweep`.

    Returns:
      The shard's table (rows in grid order), also written to :func:`table_path`.

    Raises:
      StudyError: before any training (and before ``out`` is touched), for a bad grid,
        shard, group or output directory.
      lm.train.preemption.Preempted: SIGTERM or Ctrl-C stopped the sweep (module docstring).
      lm.train.run_lock.RunDirLockedError: another process is training one of the runs.
      lm.train.records.DiskFullError: no space left for a record or checkpoint.
    """
    groups = check_groups(study, groups, check_group)
    if train_group is None:
        from lm.train.sweep import train_vmapped as train_group
    units = shard_runs(work_units(study, groups), shard)
    mine = {r.name for unit in units for r in unit}
    runs = tuple(r for r in study.runs if r.name in mine)
    data_budget.check_data(runs, out)  # vocabulary, splits, shards, corpus fingerprints: before out is touched
    out = prepare_out(study, out)
    with records.disk_full_guard(out, "writing the TensorBoard HParams experiment"):
        tensorboard.write_experiment(out / RUNS_DIR, tensorboard.varied_fields(
            records.flatten(r.to_dict()) for r in study.runs))  # the whole grid's: every shard writes the same
    if compilation_cache:
        compiled.enable_compilation_cache()
    grouped = {name for g in groups for name in g}
    todo = [[r for r in unit if not _finished(out, r)] for unit in units]
    todo = [u for u in todo if u]
    left = [r for u in todo for r in u]
    bar = SweepProgress(left, len(runs) - len(left), len(runs), enabled=progress)
    path = table_path(out, shard)
    try:
        with preemption.handle_signals():
            for unit in todo:
                _stop_between_runs(unit)
                with _locked(out, unit) as unit:  # the runner's records of the unit too
                    if not unit:
                        continue
                    if unit[0].name in grouped:
                        _train_group(unit, out, bar, train_group)
                    else:
                        _train_solo(unit[0], out, bar)
                if on_run_done is not None:
                    for run in unit:
                        result = records.read_result(run_dir(out, run))
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


def _stop_between_runs(unit: Sequence[RunConfig]) -> None:
    """Raise ``lm.train.preemption.Preempted`` if a signal came while the previous unit finished."""
    if preemption.requested() is not None:
        raise preemption.preempted(f"preempted before run {unit[0].name!r} ({{signal}}); every run before it is "
                                   "finished: rerun the same command to continue")


@contextlib.contextmanager
def _locked(out: Path, unit: Sequence[RunConfig]):
    """Hold the lock of every run directory of ``unit``; yield its runs still unfinished once
    they are held (another process may have finished some since the sweep looked)."""
    with contextlib.ExitStack() as locks:
        for run in unit:
            locks.enter_context(run_lock.hold(run_dir(out, run)))
        yield tuple(r for r in unit if not _finished(out, r))


def cpu_seconds() -> float:
    """CPU seconds (user + system, every thread) this process has used: a run's cost on a shared
    machine, where its wall time also counts the other processes' load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _train_solo(run: RunConfig, out: Path, bar: SweepProgress) -> None:
    """lm.train.solo.train into the run's directory (resumes from its checkpoint).

    A run that diverges writes result.json ``{"status": "diverged"}`` (``lm.train.solo.train``; never
    retrained); one whose checkpoints cannot be read (:class:`lm.train.checkpoint.CheckpointError`, after falling
    back to every older checkpoint) writes ``{"status": "failed"}`` and the sweep goes on
    (retried on the next call, once the checkpoints are fixed or removed).
    """
    rd = run_dir(out, run)
    bar.start([run])
    t0, c0 = time.perf_counter(), cpu_seconds()
    try:
        lm_train.train(run, rd, progress=bar)
    except (lm_train.NonFiniteLossError, CheckpointError) as err:
        status = "failed" if isinstance(err, CheckpointError) else "diverged"  # diverged: in its result.json
        if status == "failed":
            records.write_failure(rd, status, str(err))
        bar.write(f"run {run.name} {status}: {err}")
        bar.finish([run], steps_left=run.train.steps - (bar.last_step or 0), status=status)
        return
    records.write_record(rd, records.RUNNER, {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0})
    bar.finish([run])


def _train_group(runs: Sequence[RunConfig], out: Path, bar: SweepProgress, train_group: GroupTrainer) -> None:
    """``train_group`` over the (unfinished) runs of one group, each into its own directory."""
    dirs = [run_dir(out, r) for r in runs]
    bar.start(runs)
    t0, c0 = time.perf_counter(), cpu_seconds()
    train_group(tuple(runs), dirs, progress=bar)
    wall, cpu = (time.perf_counter() - t0) / len(runs), (cpu_seconds() - c0) / len(runs)
    missing = [str(d) for d in dirs if records.read_result(d) is None]
    if missing:
        raise RuntimeError(f"train_group={train_group!r} returned without writing result.json in {missing}")
    for d in dirs:
        records.write_record(d, records.RUNNER, {"wall_s": wall, "cpu_s": cpu, "group": [r.name for r in runs]})
    bar.finish(runs)


def _finished(out: Path, run: RunConfig) -> bool:
    """A finished result.json ("complete" or "diverged", ``lm.train.records.read_result``; the former
    failure.json of a diverged run too): never trained again.

    A "failed" run (unreadable checkpoints) is tried again.
    """
    return records.read_result(run_dir(out, run)) is not None
