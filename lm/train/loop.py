"""The one training loop: K >= 1 runs stepped together on a mesh; a solo run is K = 1.

Every trainer drives its runs through :func:`train_loop`: ``lm.train.solo.train`` (one run, a
single train state, checkpoints and resume) and ``lm.train.sweep.train_vmapped`` (K runs of
one shape, their states stacked on a leading axis k and stepped by one vmapped program, no
checkpoints). Like MaxText's ``train_loop`` around its one ``train_step``, the loop owns
what every run shares, written once:

- the learning rate at a step (:func:`lr_at`), computed on the host so that runs differing
  only in schedule, length or peak share one compiled program (``lm.train.compiled``);
- the averaging window: a record's ``train_loss`` is the mean training loss since the
  previous record, and the window travels in a checkpoint so a resumed run writes the
  records of an uninterrupted one; its ``tokens_per_s`` is the window's tokens over the seconds
  of its steps (each step until its loss is on the host; in a group each run gets a k-th
  share), counting only the steps timed in this process when the window came from a checkpoint;
- the record timing: a record every ``log_every`` and every ``eval_every`` steps and after
  the last step; an evaluation every ``eval_every`` steps and after the last; a checkpoint
  every ``checkpoint_every`` steps, at each of ``checkpoint_steps`` and after the last
  (when the run has checkpoints);
- divergence: the step's NaN guard keeps a run's last finite state; the loop marks the run
  diverged at that step, writes no more records for it and, once every run has diverged,
  stops. Its result.json is ``"status": "diverged"`` with ``diverged_at`` (the one record
  of a divergence, ``lm.train.records``);
- preemption (``lm.train.preemption.should_stop`` at every step boundary): with checkpoints, the
  step's checkpoint (carrying its pending record) is saved and ``Preempted`` raised before
  the record is written; without, the record is written first, and a stop after the last
  step is left to ``lm.train.preemption.handle_signals`` (nothing would be lost).

Each step's order: the step, its records, its checkpoint (when due), the stop (when asked),
the evaluation and the records' lines (one ``lm.train.run_writer.RunWriter`` per run), the progress.

Axis letters: k runs, s steps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm.train import compiled, multihost, preemption, records, run_writer, sharding
from lm.data import pipeline as lm_data
from lm.train.checkpoint import Checkpointer
from lm.model.config import RunConfig
from lm.train.schedules import lr_multiplier


def lr_at(run: RunConfig, step: int) -> float:
    """The learning rate of ``run`` at ``step`` (0-based): its peak times its schedule's multiplier."""
    return run.optimizer.learning_rate * lr_multiplier(run.schedule, step, run.train.steps)


# One program for the whole tree (op by op, every leaf shape and every index compiled its own)
_stack = jax.jit(lambda *states: jax.tree.map(lambda *xs: jnp.stack(xs), *states))
_take = jax.jit(lambda state, k: jax.tree.map(lambda x: x[k], state))


def stack_states(states: Sequence[dict]) -> dict:
    """Stack K training states leaf-wise: every leaf gains a leading axis k."""
    return _stack(*states)


def unstack_state(state: dict, k: int) -> dict:
    """Run ``k``'s training state out of a stacked one."""
    return _take(state, jnp.int32(k))


def evaluate(run: RunConfig, params, num_batches: int | None = None, *, mesh=None) -> tuple[dict, float]:
    """Validation loss (nats/target) and bits per byte on the first batches of the held-out split.

    ``mesh``: a ``lm.train.sharding.make_mesh`` mesh (default: one device); every host reads
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


@dataclasses.dataclass
class LoopResult:
    """Outcome of :func:`train_loop`.

    losses: float32 [k, s] per-step training loss of every run (NaN after divergence and
      for steps not trained in this call).
    diverged_at: per run, the first step whose loss/gradient was non-finite, or None;
      divergence: per run, that step's (loss, grad_norm), or None.
    results: per run, the summary written to result.json (``lm.train.records.result_record``).
    state: the final state (stacked, leading axis k, for a vmapped loop).
    compile_s, train_s: seconds compiling and running the steps (all K runs).
    """

    runs: tuple[RunConfig, ...]
    losses: np.ndarray
    diverged_at: list[int | None]
    divergence: list[tuple[float, float] | None]
    results: list[dict]
    state: dict
    compile_s: float
    train_s: float


def _due(done: int, every: int, steps: int) -> bool:
    return done % every == 0 or done == steps


def _progress_bar(runs: Sequence[RunConfig], start: int):
    from tqdm.auto import tqdm

    name = runs[0].name + (f" (+{len(runs) - 1})" if len(runs) > 1 else "")
    return tqdm(total=runs[0].train.steps, initial=start, desc=name, unit="step", dynamic_ncols=True, leave=False)


def train_loop(runs: Sequence[RunConfig], state: dict, train_it, mesh, *,
               writers: Sequence[run_writer.RunWriter] | None = None,
               stacked: bool = False, width: int = 0, ckpt: Checkpointer | None = None, meta: dict | None = None,
               resumed_from: int | None = None, evaluate_runs: bool = True,
               progress: Callable[[int, int, dict], None] | None = None) -> LoopResult:
    """Train ``runs`` from ``state``'s step to their last, writing each run's records.

    Args:
      runs: K runs sharing one program (``lm.train.sweep.check_sweep``); K = 1 unless ``stacked``.
      state: the train state on ``mesh`` (``stacked``: K states stacked on a leading axis).
      train_it: the host's data iterator (``lm.train.multihost.make_host_iterator``), at ``state``'s step.
      mesh: the mesh of every run.
      writers: one begun ``lm.train.run_writer.RunWriter`` per run (metrics.jsonl is opened here); None:
        no run writes files (e.g. a sequential twin in a test).
      stacked: step the stacked states with the vmapped step (``lm.train.step.make_vmapped_step``
        with ``width``); otherwise the single state with the solo step.
      ckpt: the run's checkpoints (solo only; None: none are saved).
      meta: the restored checkpoint's meta ({"window", "record"}: the training window and a
        record saved before its evaluation); resumed_from: its step (None: a fresh run).
      evaluate_runs: evaluate on the validation split (every ``eval_every`` steps and after the last).
      progress: optional callable(step, total, {"loss": mean loss of the runs not diverged});
        by default a tqdm bar is shown when ``train.progress``.

    Raises:
      lm.train.preemption.Preempted: a stop was requested (module docstring).
    """
    runs, meta = tuple(runs), meta or {}
    writers = [run_writer.RunWriter(None, r) for r in runs] if writers is None else writers
    k, base, tc = len(runs), runs[0], runs[0].train
    steps, tokens_per_step = tc.steps, base.data.seq_len * base.data.batch_size
    start = int(np.asarray(state["step"]).flat[0])
    per_run = (lambda a: np.asarray(a)) if stacked else (lambda a: np.asarray(a)[None])
    wds = np.asarray([r.optimizer.weight_decay for r in runs], np.float32)
    losses = np.full((k, steps), np.nan, np.float32)
    diverged: list[int | None] = [None] * k
    divergence: list[tuple[float, float] | None] = [None] * k
    window, window_n = np.zeros(k), 0
    window_s, window_timed = 0.0, 0  # the steps of the window timed in this process, and their seconds
    if "window" in meta:  # checkpoints written before the window was kept start an empty one
        window[0], window_n = meta["window"]
    last_train = np.full(k, math.nan)
    last_eval: list[dict] = [{} for _ in runs]
    compile_s = train_s = 0.0
    step_fn = None
    bar = _progress_bar(runs, start) if progress is None and tc.progress else None
    for w in writers:
        w.open_metrics(resumed_from)

    def params_of(i):
        return unstack_state(state, i)["params"] if stacked else state["params"]

    def finish(done, recs, log=True):
        """Evaluate if due and write the records of step ``done`` (None: a diverged run's, none)."""
        nonlocal compile_s
        if evaluate_runs and _due(done, tc.eval_every, steps):
            for i, rec in enumerate(recs):
                if rec is not None:
                    last_eval[i], c = evaluate(runs[i], params_of(i), mesh=mesh)
                    compile_s += c
                    recs[i] = {**rec, **last_eval[i]}
        for w, rec in zip(writers, recs):
            if log and rec is not None:
                w.metrics(rec)

    def save(done, rec):
        m = {"step": done, "config": base.to_dict(), "window": [float(window[0]), window_n]}
        if rec is not None:
            m["record"] = rec
        ckpt.save(done, state, multihost.gather_data_states(train_it.get_state()), m)

    try:
        pending = meta.get("record")
        if pending is not None and pending["step"] == start:
            # the checkpoint was saved before its step's evaluation and record: redo them (every host
            # evaluates; process 0 writes the line if the run stopped before it did)
            last_train[0] = pending["train_loss"]
            finish(start, [pending], log=not writers[0].logged(start))
        for step in range(start, steps):
            batch = multihost.global_batch(next(train_it), mesh, base.data.batch_size)
            if step_fn is None:
                step_fn, c = (compiled.vmapped_train_step(base, mesh, k, width, state, batch) if stacked
                              else compiled.train_step(base, mesh, state, batch))
                compile_s += c
            lrs = [lr_at(r, step) for r in runs]
            t0 = time.perf_counter()
            if stacked:
                state, m = step_fn(state, batch, jnp.asarray(np.asarray(lrs, np.float32)), jnp.asarray(wds))
            else:
                state, m = step_fn(state, batch, jnp.float32(lrs[0]), jnp.float32(wds[0]))
            loss, finite = per_run(m["loss"]).astype(np.float32), per_run(m["finite"])
            dt = time.perf_counter() - t0
            train_s, window_s, window_timed = train_s + dt, window_s + dt, window_timed + 1
            for i in range(k):
                if diverged[i] is None and not finite[i]:
                    diverged[i], divergence[i] = step, (float(loss[i]), float(per_run(m["grad_norm"])[i]))
            alive = np.array([d is None for d in diverged])
            losses[:, step] = np.where(alive, loss, np.nan)
            if not alive.any():
                break  # the update was not applied: the last checkpoint holds the last good state
            window += np.where(alive, loss, 0.0)
            window_n += 1
            done = step + 1
            recs = None
            if _due(done, tc.log_every, steps) or _due(done, tc.eval_every, steps):
                grad_norm, moe = per_run(m["grad_norm"]), m.get("moe")
                # the window's throughput: its tokens over its seconds, each of the k runs its share
                tokens_per_s = tokens_per_step * window_timed / max(window_s, 1e-9) / k
                recs = []
                for i, r in enumerate(runs):
                    rec = None
                    if alive[i]:
                        rec = records.metric_record(r, done, lrs[i], float(window[i] / window_n), float(grad_norm[i]),
                                                    tokens_per_s)
                        if moe is not None:
                            rec["moe"] = jax.tree.map(lambda a, i=i: per_run(a)[i].tolist(), moe)
                        last_train[i] = rec["train_loss"]
                    recs.append(rec)
                window[:], window_n, window_s, window_timed = 0.0, 0, 0.0, 0
            stop = (ckpt is not None or done < steps) and preemption.should_stop(done)
            if ckpt is not None and (stop or _due(done, tc.checkpoint_every, steps)
                                     or done in (tc.checkpoint_steps or ())):
                save(done, recs[0] if recs else None)
            if recs is not None and not (stop and ckpt is not None):  # a checkpoint carries its record
                finish(done, recs)
            if stop:
                raise _preempted(runs, done, stacked, ckpt)
            mean_loss = float(np.nanmean(losses[:, step]))
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.3f}",
                                tok_s=f"{tokens_per_step * (done - start) / max(train_s, 1e-9):.0f}")
                bar.update(1)
            if progress is not None:
                progress(done, steps, {"loss": mean_loss})
    finally:
        if bar is not None:
            bar.close()

    results = []
    for i, (r, w) in enumerate(zip(runs, writers)):
        ok = diverged[i] is None
        if ok and evaluate_runs and not last_eval[i]:  # resumed at the very end: evaluate the final parameters
            last_eval[i], c = evaluate(r, params_of(i), mesh=mesh)
            compile_s += c
        if ok and math.isnan(last_train[i]):
            last_train[i] = w.last_train_loss()
        nan = math.nan
        res = records.result_record(
            r, status="complete" if ok else "diverged", final_train_loss=float(last_train[i]) if ok else nan,
            final_val_loss=last_eval[i].get("val_loss", nan) if ok else nan,
            final_val_bpb=last_eval[i].get("val_bpb", nan) if ok else nan, compile_s=compile_s / k,
            train_s=train_s / k, resumed_from=resumed_from, diverged_at=diverged[i],
            **({"vmapped_with": k} if stacked else {}),
        )
        w.result(res)
        results.append(res)
    return LoopResult(runs, losses, diverged, divergence, results, state, compile_s, train_s)


def _preempted(runs, done: int, stacked: bool, ckpt: Checkpointer | None) -> preemption.Preempted:
    if ckpt is not None:
        return preemption.preempted(
            f"preempted at step {done} of run {runs[0].name!r} ({{signal}}), checkpoint saved in "
            f"{ckpt.directory}; rerun the same command to resume", done, saved=True)
    what = f"the vmapped group {', '.join(r.name for r in runs)}" if stacked else f"run {runs[0].name!r}"
    return preemption.preempted(
        f"preempted at step {done} of {what} ({{signal}}); {'groups keep' if stacked else 'it keeps'} no "
        "checkpoints: rerun the same command to train them again from step 0", done)
