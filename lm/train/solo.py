"""The solo run: one run on a mesh, trained by the one loop (``lm.train.loop``), resumable.

This module sets a run up and hands it to :func:`lm.train.loop.train_loop` as K = 1: the data
check, the run directory's lock and records (``lm.train.records``), its checkpoints
(``lm.train.checkpoint``: resume, or a start from another run's checkpoint), the sharded state
(``lm.train.sharding``; one device is the mesh (1, 1, 1, 1)). The loop owns the steps, the
records' timing, evaluation, the NaN guard's divergence record and preemption.

Axis letters: b batch, t time.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import jax

from lm.data import check as data_check
from lm.train import loop, multihost, records, run_lock, run_writer, sharding
from lm.model import network as lm_model
from lm.train.checkpoint import Checkpointer, CheckpointError
from lm.model.config import ModelConfig, RunConfig


class NonFiniteLossError(RuntimeError):
    """The loss or gradients became NaN/inf; the last good checkpoint is kept."""


def train(run: RunConfig, run_dir: str | Path, *, progress=None, mesh=None,
          listeners: tuple[run_writer.RecordListener, ...] = ()) -> dict:
    """Train one run to completion, resuming from the latest checkpoint in ``run_dir``.

    Writes ``config.json``, ``metrics.jsonl`` (one record per log step and eval, with the
    cumulative FLOPs), orbax checkpoints, and ``result.json`` when finished (``lm.train.records``),
    holding the run directory's lock (``lm.train.run_lock``) throughout.

    Each step's order: the step, its training record, its checkpoint (when due), then its
    evaluation and the record's line in metrics.jsonl. The checkpoint carries the training
    window since the last record and, when one is due at its step, that record, so a resume
    from it (after a kill, a preemption or a failed evaluation) writes exactly the records an
    uninterrupted run writes, and the final checkpoint is saved before the final evaluation.

    Args:
      run: the run's configuration.
      run_dir: its directory (created).
      progress: optional callable(step, total, metrics) for an outer progress display;
        by default a tqdm bar is shown when ``run.train.progress``.
      mesh: a ``lm.train.sharding.make_mesh`` mesh to shard the run over (several devices or
        hosts); None = ``lm.train.sharding.single_device_mesh()``. Only process 0 writes the run
        files and takes the lock.
      listeners: ``lm.train.run_writer.RecordListener`` callables told of each record written.

    Returns:
      The result summary (also written to ``result.json``).

    Raises:
      NonFiniteLossError: the loss became NaN/inf; result.json records ``"status":
        "diverged"`` and the step (``diverged_at``), the last good checkpoint is kept.
      ValueError: before anything is written, data the run cannot train on or a run
        directory that records another corpus (:func:`lm.data.check.check_run`).
      lm.train.preemption.Preempted: a stop was requested (``lm.train.preemption.should_stop``); a
        checkpoint of the step it stopped after was saved first.
      lm.train.run_lock.RunDirLockedError: another process holds ``run_dir`` (nothing written).
      lm.train.records.DiskFullError: no space left for a record or checkpoint (earlier ones intact).
    """
    mesh = sharding.single_device_mesh() if mesh is None else mesh
    corpus = data_check.check_run(run, run_dir)  # before anything is written: vocabulary, splits, corpus
    run_dir = Path(run_dir)
    primary = jax.process_index() == 0  # multi-host: one writer of the run files
    writer = run_writer.RunWriter(run_dir, run, enabled=primary, listeners=listeners)
    with run_lock.hold(run_dir) if primary else contextlib.nullcontext():
        run_dir.mkdir(parents=True, exist_ok=True)
        writer.begin(corpus)
        with (contextlib.closing(Checkpointer(run_dir, max_to_keep=run.train.keep_checkpoints)) as ckpt,
              contextlib.closing(multihost.make_host_iterator(run, mesh, "train")) as train_it,
              contextlib.closing(writer)):
            state, meta, resumed_from = _start(run, ckpt, train_it, mesh)
            out = loop.train_loop([run], state, train_it, mesh, writers=[writer], ckpt=ckpt, meta=meta,
                                  resumed_from=resumed_from, progress=progress)
            if out.diverged_at[0] is not None:
                loss, grad_norm = out.divergence[0]
                raise NonFiniteLossError(
                    f"run {run.name!r}: loss or gradient became non-finite at step {out.diverged_at[0]} "
                    f"(loss={loss}, grad_norm={grad_norm}); the update was not applied and the "
                    f"last good checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is kept"
                )
    return out.results[0]


def _start(run: RunConfig, ckpt: Checkpointer, train_it, mesh) -> tuple[dict, dict, int | None]:
    """The state to train from (the latest checkpoint, ``train.init_from``'s, or fresh), its
    checkpoint's meta and the step resumed from (None unless resumed); positions ``train_it``."""
    state = sharding.init_sharded_state(run, mesh)
    if ckpt.latest_step() is not None:
        state, data_state, meta = ckpt.restore(None, state)
        train_it.set_state(multihost.local_data_state(data_state))
        return state, meta, int(state["step"])
    if run.train.init_from is not None:
        src_dir, src_step = run.train.init_from
        src = Checkpointer(src_dir, max_to_keep=None, read_only=True)
        try:
            state, data_state, _ = src.restore(int(src_step), state)
        finally:
            src.close()
        train_it.set_state(multihost.local_data_state(data_state))
    return state, {}, None


def load_params(run_dir: str | Path, step: int | None = None, *, mesh=None,
                model: ModelConfig | None = None) -> tuple[RunConfig, dict]:
    """The config and parameters of a run from its checkpoints (latest step by default).

    The parameters are restored onto ``mesh`` (default: one device), whatever mesh saved
    them. ``model``: return them in this config's layer layout (``ModelConfig.scan_layers``,
    ``lm.model.network.convert_layers``), e.g. to evaluate a per-block checkpoint with the layer
    scan or the reverse; the returned config then carries ``model``.
    """
    run_dir = Path(run_dir)
    if not (run_dir / records.CONFIG).exists():
        raise CheckpointError(f"{run_dir} has no {records.CONFIG}: not a run directory")
    run = records.read_config(run_dir)
    mesh = sharding.single_device_mesh() if mesh is None else mesh
    ckpt = Checkpointer(run_dir, max_to_keep=None, read_only=True)
    try:
        state, _, _ = ckpt.restore(step, sharding.abstract_state(run, mesh))
    finally:
        ckpt.close()
    if model is None:
        return run, state["params"]
    return dataclasses.replace(run, model=model), lm_model.convert_layers(state["params"], run.model, model)
