"""The solo training loop: one run on a mesh, evaluation, NaN guard, resumable runs.

The loop only drives the shared pieces: the pure step (``lm.step``), the mesh and its
shardings (``lm.sharding``; one device is the mesh (1, 1, 1, 1)), the compile cache
(``lm.compiled``), checkpoints (``lm.checkpoint``) and run records (``lm.records``).
The step's learning rate is computed on the host from the schedule, so runs that differ
only in schedule, length or peak learning rate share one compiled program.

Axis letters: b batch, t time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lm import compiled, data_check, multihost, preemption, records, run_lock, sharding
from lm import data as lm_data
from lm import model as lm_model
from lm.checkpoint import Checkpointer, CheckpointError
from lm.compiled import enable_compilation_cache  # noqa: F401  (public here: runners call lm.train's)
from lm.config import ModelConfig, RunConfig
from lm.records import read_metrics  # noqa: F401  (public here: notebooks read lm.train's)
from lm.schedules import lr_multiplier
from lm.step import (  # noqa: F401  (the step's public names, also reachable from lm.train)
    cross_entropy,
    init_state,
    loss_fn,
    make_optimizer,
    make_train_step,
    weight_decay_mask,
)


class NonFiniteLossError(RuntimeError):
    """The loss or gradients became NaN/inf; the last good checkpoint is kept."""


def evaluate(run: RunConfig, params, num_batches: int | None = None, *, mesh=None) -> tuple[dict, float]:
    """Validation loss (nats/target) and bits per byte on the first batches of the held-out split.

    ``mesh``: a ``lm.sharding.make_mesh`` mesh (default: one device); every host reads
    its rows of each global batch. ``params`` may live anywhere (host or device arrays);
    they are placed on the mesh first. Returns the metrics and the seconds spent compiling.
    """
    mesh = sharding.single_device_mesh() if mesh is None else mesh
    params = jax.device_put(params, sharding.param_shardings(run.model, mesh))
    it = multihost.make_host_iterator(run, mesh, "validation")
    total, count, compile_s = 0.0, 0.0, 0.0
    try:
        for _ in range(num_batches or run.train.eval_batches):
            batch = multihost.global_batch(next(it), mesh, run.data.batch_size)
            fn, c = compiled.eval_step(run.model, mesh, params, batch)
            compile_s += c
            s, n = fn(params, batch)
            total += float(s)
            count += float(n)
    finally:
        it.close()
    loss = total / max(count, 1.0)
    bpb = lm_data.bits_per_byte(loss, lm_data.dataset_info(run.data)["targets_per_byte"])
    return {"val_loss": loss, "val_bpb": bpb}, compile_s


def train(run: RunConfig, run_dir: str | Path, *, progress=None, mesh=None) -> dict:
    """Train one run to completion, resuming from the latest checkpoint in ``run_dir``.

    Writes ``config.json``, ``metrics.jsonl`` (one record per log step and eval, with the
    cumulative FLOPs), orbax checkpoints, and ``result.json`` when finished (``lm.records``),
    holding the run directory's lock (``lm.run_lock``) throughout.

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
      mesh: a ``lm.sharding.make_mesh`` mesh to shard the run over (several devices or
        hosts); None = ``lm.sharding.single_device_mesh()``. Only process 0 writes the run
        files and takes the lock.

    Returns:
      The result summary (also written to ``result.json``).

    Raises:
      NonFiniteLossError: the loss became NaN/inf (the last good checkpoint is kept).
      ValueError: before anything is written, data the run cannot train on or a run
        directory that records another corpus (:func:`lm.data_check.check_run`).
      lm.preemption.Preempted: a stop was requested (``lm.preemption.should_stop``); a
        checkpoint of the step it stopped after was saved first.
      lm.run_lock.RunDirLockedError: another process holds ``run_dir`` (nothing written).
      lm.records.DiskFullError: no space left for a record or checkpoint (earlier ones intact).
    """
    mesh = sharding.single_device_mesh() if mesh is None else mesh
    corpus = data_check.check_run(run, run_dir)  # before anything is written: vocabulary, splits, corpus
    run_dir = Path(run_dir)
    primary = jax.process_index() == 0  # multi-host: one writer of the run files
    with run_lock.hold(run_dir) if primary else contextlib.nullcontext():
        run_dir.mkdir(parents=True, exist_ok=True)
        if primary:
            records.write_config(run_dir, run)
            records.write_corpus(run_dir, corpus)
        with (contextlib.closing(Checkpointer(run_dir, max_to_keep=run.train.keep_checkpoints)) as ckpt,
              contextlib.closing(multihost.make_host_iterator(run, mesh, "train")) as train_it):
            return _train(run, run_dir, ckpt, train_it, mesh, primary, progress)


def _due(done: int, every: int, steps: int) -> bool:
    return done % every == 0 or done == steps


def _train(run: RunConfig, run_dir: Path, ckpt: Checkpointer, train_it, mesh, primary: bool, progress) -> dict:
    """:func:`train`'s body, inside the run directory's lock."""
    tc = run.train
    tokens_per_step = run.data.seq_len * run.data.batch_size
    state = sharding.init_sharded_state(run, mesh)
    resumed_from, meta = None, {}
    if ckpt.latest_step() is not None:
        state, data_state, meta = ckpt.restore(None, state)
        train_it.set_state(multihost.local_data_state(data_state))
        resumed_from = int(state["step"])
    elif tc.init_from is not None:
        src_dir, src_step = tc.init_from
        src = Checkpointer(src_dir, max_to_keep=None, read_only=True)
        state, data_state, _ = src.restore(int(src_step), state)
        train_it.set_state(multihost.local_data_state(data_state))
        src.close()
    metrics_path = records.prepare_metrics(run_dir, resumed_from) if primary else None

    start = int(state["step"])
    compile_s, t_train = 0.0, 0.0
    step_fn = None
    bar = None
    if progress is None and tc.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=start, desc=run.name, unit="step", dynamic_ncols=True, leave=False)
    window_loss, window_n = meta.get("window", (0.0, 0))  # checkpoints before the window was kept: (0, 0)
    last_train_loss = float("nan")
    last_eval: dict = {}

    def save(step, record):
        meta = {"step": step, "config": run.to_dict(), "window": [window_loss, window_n]}
        if record is not None:
            meta["record"] = record
        ckpt.save(step, state, multihost.gather_data_states(train_it.get_state()), meta)

    def finish(done, record, log):
        """Evaluate if due and append the record of step ``done`` to ``log`` (None: not)."""
        nonlocal last_eval, compile_s
        if _due(done, tc.eval_every, tc.steps):
            last_eval, c = evaluate(run, state["params"], mesh=mesh)
            compile_s += c
            record = {**record, **last_eval}
        if log is not None:
            log.write(record)

    try:
        with records.MetricsLog(metrics_path, enabled=primary) as log:
            pending = meta.get("record")
            if pending is not None and pending["step"] == start:
                # the checkpoint was saved before its step's evaluation and record: redo them (every host
                # evaluates; process 0 writes the line if the run stopped before it did)
                last_train_loss = pending["train_loss"]
                written = primary and any(r["step"] == start for r in records.read_metrics(run_dir))
                finish(start, pending, None if written else log)
            for step in range(start, tc.steps):
                batch = multihost.global_batch(next(train_it), mesh, run.data.batch_size)
                if step_fn is None:
                    step_fn, c = compiled.train_step(run, mesh, state, batch)
                    compile_s += c
                lr = run.optimizer.learning_rate * lr_multiplier(run.schedule, step, tc.steps)
                t0 = time.perf_counter()
                state, m = step_fn(state, batch, jnp.float32(lr), jnp.float32(run.optimizer.weight_decay))
                loss = float(m["loss"])
                t_train += time.perf_counter() - t0
                if not bool(m["finite"]):
                    last = ckpt.latest_step()
                    raise NonFiniteLossError(
                        f"run {run.name!r}: loss or gradient became non-finite at step {step} "
                        f"(loss={loss}, grad_norm={float(m['grad_norm'])}); the update was not applied and the "
                        f"last good checkpoint (step {last}) in {ckpt.directory} is kept"
                    )
                window_loss += loss
                window_n += 1
                done = step + 1
                record = None
                if _due(done, tc.log_every, tc.steps) or _due(done, tc.eval_every, tc.steps):
                    record = records.metric_record(
                        run, done, lr, window_loss / window_n, float(m["grad_norm"]),
                        tokens_per_step * window_n / max(t_train, 1e-9),
                    )
                    if "moe" in m:
                        record["moe"] = jax.tree.map(lambda a: np.asarray(a).tolist(), m["moe"])
                    last_train_loss = record["train_loss"]
                    window_loss, window_n = 0.0, 0
                stop = preemption.should_stop(done)
                if stop or _due(done, tc.checkpoint_every, tc.steps) or done in (tc.checkpoint_steps or ()):
                    save(done, record)
                if stop:
                    raise preemption.preempted(
                        f"preempted at step {done} of run {run.name!r} ({{signal}}), checkpoint saved in "
                        f"{ckpt.directory}; rerun the same command to resume", done, saved=True)
                if record is not None:
                    finish(done, record, log)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.3f}",
                                    tok_s=f"{tokens_per_step * (done - start) / max(t_train, 1e-9):.0f}")
                    bar.update(1)
                if progress is not None:
                    progress(done, tc.steps, {"loss": loss})
    finally:
        if bar is not None:
            bar.close()
    if not last_eval:  # resumed at the very end: evaluate the final parameters
        last_eval, c = evaluate(run, state["params"], mesh=mesh)
        compile_s += c
    if math.isnan(last_train_loss):
        history = records.read_metrics(run_dir)
        last_train_loss = next((r["train_loss"] for r in reversed(history) if "train_loss" in r), float("nan"))
    result = records.result_record(
        run, status="complete", final_train_loss=last_train_loss, final_val_loss=last_eval["val_loss"],
        final_val_bpb=last_eval["val_bpb"], compile_s=compile_s, train_s=t_train, resumed_from=resumed_from,
    )
    if primary:
        records.write_result(run_dir, result)
    return result


def load_params(run_dir: str | Path, step: int | None = None, *, mesh=None,
                model: ModelConfig | None = None) -> tuple[RunConfig, dict]:
    """The config and parameters of a run from its checkpoints (latest step by default).

    The parameters are restored onto ``mesh`` (default: one device), whatever mesh saved
    them. ``model``: return them in this config's layer layout (``ModelConfig.scan_layers``,
    ``lm.model.convert_layers``), e.g. to evaluate a per-block checkpoint with the layer
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
