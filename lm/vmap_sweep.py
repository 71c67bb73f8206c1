"""Vmapped sweeps: K runs of one shape, differing only in learning rate, init seed or weight decay, in ONE program.

Hyperparameter sweeps of small models are dominated by per-step fixed costs (host
dispatch, small matmuls that leave the hardware idle). Runs whose compiled step is the same
program -- same model, data, optimiser betas/clipping, batch -- differ only in the traced
scalars ``lr`` and ``weight_decay`` of :func:`lm.step.make_train_step` and in their initial
parameters, so ``jax.vmap`` over the stacked training states trains all of them in one
compiled step, one dispatch per step, on the SAME data batch (the batch is not vmapped).
This is how the Step Law grids (Li et al. 2025, "Predictable Scale: Part I", arXiv
2503.04715) are made affordable on an accelerator, where one small model leaves the device
idle. On a CPU a small model's step is already compute-bound; there the step vmaps 2 runs
at a time in a loop inside the same program (``width``, :func:`default_vmap_width`),
which matches sequential training's throughput while sharing the data stream, the
compiled program and the evaluation (see ``experiments/bench_vmap_sweep.py``).

Schedule semantics are those of :func:`lm.train.train`: the learning rate of run k at step s
is ``peak_k * lm.schedules.lr_multiplier(schedule_k, s, steps)`` (schedules may differ
between runs, since they are host-side numbers); weight decay is the run's
``optimizer.weight_decay``. Each run's config.json, metrics.jsonl and result.json are
written by ``lm.records``, as for ``train()`` (records every ``log_every`` steps with the
window-mean training loss, a validation evaluation at the end). The step runs on a mesh
like ``train()``'s (default: one device, the mesh (1, 1, 1, 1)), compiled through the same
cache (``lm.compiled``), with the stacked run axis unsharded. Not done here: checkpointing and resume (a
vmapped sweep of small models is cheaper to rerun than to checkpoint), periodic
evaluation before the last step, and per-run MoE router-jitter seeds (the jitter rng uses
the first run's seed; :func:`check_sweep` refuses such grids if seeds differ).

The sweep holds the lock of every run directory it writes (``lm.run_lock``) and stops at
the next step boundary when ``lm.preemption.should_stop`` says so (SIGTERM, Ctrl-C),
raising ``lm.preemption.Preempted``; with no checkpoints, its runs restart on rerun.

A run whose loss or gradient becomes non-finite keeps its last finite state (the step's
NaN guard) and is reported as ``status: "diverged"`` from that step on; the other runs
continue (high learning rates of a sweep are expected to diverge).

Axis letters: k runs of the sweep, s steps, b batch rows, t time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lm import compiled, data_check, multihost, preemption, records, run_lock, sharding
from lm import step as lm_step
from lm.config import RunConfig
from lm.schedules import lr_multiplier
from lm.step import make_vmapped_step  # noqa: F401  (public here: the sweep's step)
from lm.train import evaluate
from pallas_kernels.backend import has_accelerator


def _shape_key(run: RunConfig) -> RunConfig:
    """The run with every field a vmapped sweep may vary set to a fixed value."""
    return dataclasses.replace(
        run,
        name="",
        optimizer=dataclasses.replace(run.optimizer, learning_rate=1.0, weight_decay=0.0),
        schedule=type(run.schedule)(),
        train=dataclasses.replace(run.train, seed=0, progress=False),
    )


def check_sweep(runs: Sequence[RunConfig]) -> None:
    """Raise ValueError unless ``runs`` can share one vmapped program.

    They must agree in everything but ``optimizer.learning_rate``, ``optimizer.weight_decay``,
    ``train.seed``, ``schedule``, ``train.progress`` and ``name``; names must be unique.
    """
    if not runs:
        raise ValueError("runs=(): a vmapped sweep needs at least one run")
    ref = _shape_key(runs[0])
    for r in runs[1:]:
        if _shape_key(r) != ref:
            diff = [f for f in ("model", "data", "optimizer", "train") if getattr(_shape_key(r), f) != getattr(ref, f)]
            raise ValueError(
                f"runs: run {r.name!r} differs from {runs[0].name!r} in {diff}; a vmapped sweep allows "
                "only optimizer.learning_rate, optimizer.weight_decay, train.seed and schedule to differ"
            )
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"runs: names {names} are not unique")
    if lm_step.uses_step_rng(runs[0]) and len({r.train.seed for r in runs}) > 1:
        raise ValueError(
            "runs: MoE router jitter draws its noise from train.seed inside the step, so runs with "
            "different seeds cannot share a program; set moe.router_jitter=0 or use one seed"
        )


def sweep_runs(
    base: RunConfig,
    *,
    learning_rates: Sequence[float] | None = None,
    weight_decays: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
) -> tuple[RunConfig, ...]:
    """The product grid of ``base`` over the given learning rates x weight decays x seeds.

    Returns K = len(lr) * len(wd) * len(seeds) runs (an axis left None keeps the base value),
    named ``<base.name>-lr<lr>-wd<wd>-s<seed>`` for the axes given.
    """
    lrs = [base.optimizer.learning_rate] if learning_rates is None else list(learning_rates)
    wds = [base.optimizer.weight_decay] if weight_decays is None else list(weight_decays)
    sds = [base.train.seed] if seeds is None else list(seeds)
    out = []
    for lr in lrs:
        for wd in wds:
            for sd in sds:
                name = base.name
                name += f"-lr{lr:.3g}" if learning_rates is not None else ""
                name += f"-wd{wd:.3g}" if weight_decays is not None else ""
                name += f"-s{sd}" if seeds is not None else ""
                out.append(dataclasses.replace(
                    base, name=name,
                    optimizer=dataclasses.replace(base.optimizer, learning_rate=float(lr), weight_decay=float(wd)),
                    train=dataclasses.replace(base.train, seed=int(sd)),
                ))
    return tuple(out)


def stack_states(states: Sequence[dict]) -> dict:
    """Stack K training states leaf-wise: every leaf gains a leading axis k."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack_state(state: dict, k: int) -> dict:
    """Run ``k``'s training state out of a stacked one."""
    return jax.tree.map(lambda x: x[k], state)


def init_stacked_state(runs: Sequence[RunConfig], mesh=None) -> dict:
    """The K fresh states of :func:`lm.step.init_state` (each with its own ``train.seed``), stacked.

    Placed on ``mesh`` (default: one device) with the stacked state's shardings.
    """
    mesh = sharding.single_device_mesh() if mesh is None else mesh
    init = jax.jit(lambda rng: lm_step.init_state(runs[0], rng))  # runs differ only in the seed here
    stacked = stack_states([init(jax.random.PRNGKey(r.train.seed)) for r in runs])
    return jax.device_put(stacked, sharding.state_shardings(runs[0], mesh, stacked=True))


# Runs vmapped together inside the step on a CPU (the groups loop inside the same program).
# ``python -m experiments.bench_vmap_sweep --width W`` on the 2-core CPU (8 runs, d_model 64):
# W = 1 / 2 / 4 / 8 ran at 0.90 / 1.01 / 0.88 / 0.78x the tokens/s of 8 sequential runs; a
# fully vmapped step's 8x larger activations overflow the caches.
CPU_VMAP_WIDTH = 2


def default_vmap_width(num_runs: int) -> int:
    """Runs vmapped together per inner step: all of them on a GPU/TPU, :data:`CPU_VMAP_WIDTH` on CPU."""
    return num_runs if has_accelerator() else min(num_runs, CPU_VMAP_WIDTH)


def learning_rates_at(runs: Sequence[RunConfig], step: int) -> np.ndarray:
    """float32 [k]: run k's learning rate at ``step`` (peak x its schedule's multiplier)."""
    return np.asarray(
        [r.optimizer.learning_rate * lr_multiplier(r.schedule, step, r.train.steps) for r in runs], np.float32
    )


@dataclasses.dataclass
class SweepResult:
    """Outcome of :func:`train_vmapped`.

    losses: float32 [k, s] per-step training loss of every run (NaN after divergence).
    diverged_at: per run, the first step whose loss/gradient was non-finite, or None.
    results: per run, the summary dict written to result.json (``train()``'s keys).
    states: the final stacked states (leading axis k).
    compile_s, train_s: seconds compiling the step and running the steps (all K runs).
    """

    runs: tuple[RunConfig, ...]
    losses: np.ndarray
    diverged_at: list[int | None]
    results: list[dict]
    states: dict
    compile_s: float
    train_s: float


def train_vmapped(
    runs: Sequence[RunConfig],
    run_dirs: Sequence[str | Path] | None = None,
    *,
    evaluate_final: bool = True,
    progress=None,
    width: int | None = None,
    mesh=None,
) -> SweepResult:
    """Train K runs of one shape together (one compiled vmapped step, one shared data stream).

    Args:
      runs: the K runs (see :func:`check_sweep` for what may differ).
      run_dirs: optional K directories; each gets config.json, metrics.jsonl and
        result.json like :func:`lm.train.train` writes them (no checkpoints).
      evaluate_final: evaluate every run on the validation split at the end.
      progress: optional callable(step, total, {"loss": mean finite loss}).
      width: runs vmapped together inside the step (:func:`lm.step.make_vmapped_step`);
        None = :func:`default_vmap_width` (all on an accelerator, 2 on CPU).
      mesh: the mesh of every run (default: one device); the run axis is not sharded.

    Returns:
      A :class:`SweepResult` with the per-step losses [k, s].

    Raises:
      lm.preemption.Preempted: a stop was requested (the runs keep no checkpoint).
      lm.run_lock.RunDirLockedError: another process holds one of ``run_dirs`` (nothing written).
    """
    runs = tuple(runs)
    check_sweep(runs)
    if run_dirs is not None and len(run_dirs) != len(runs):
        raise ValueError(f"run_dirs: {len(run_dirs)} directories for {len(runs)} runs")
    with contextlib.ExitStack() as locks:
        if jax.process_index() == 0:
            for d in run_dirs or ():
                locks.enter_context(run_lock.hold(d))
        return _train_vmapped(runs, run_dirs, evaluate_final, progress, width, mesh)


def _train_vmapped(runs, run_dirs, evaluate_final, progress, width, mesh) -> SweepResult:
    """:func:`train_vmapped`'s body, holding the run directories' locks."""
    mesh = sharding.single_device_mesh() if mesh is None else mesh
    width = default_vmap_width(len(runs)) if width is None else width
    base = runs[0]
    k, steps, tc = len(runs), base.train.steps, base.train
    tokens_per_step = base.data.seq_len * base.data.batch_size
    primary = jax.process_index() == 0
    dirs = [Path(d) for d in run_dirs] if run_dirs is not None else []
    logs = []
    corpus = data_check.corpus_record(base.data) if dirs and primary else None  # every run reads base's batches
    for r, d in zip(runs, dirs):
        d.mkdir(parents=True, exist_ok=True)
        if primary:
            records.write_config(d, r)
            records.write_corpus(d, corpus)
        logs.append(records.MetricsLog(records.prepare_metrics(d, None) if primary else None, enabled=primary))

    state = init_stacked_state(runs, mesh)
    wds = jnp.asarray([r.optimizer.weight_decay for r in runs], jnp.float32)
    it = multihost.make_host_iterator(base, mesh, "train")
    losses = np.full((k, steps), np.nan, np.float32)
    diverged: list[int | None] = [None] * k
    window = np.zeros(k)
    window_n = 0
    step_fn, compile_s, train_s = None, 0.0, 0.0
    try:
        for step in range(steps):
            batch = multihost.global_batch(next(it), mesh, base.data.batch_size)
            if step_fn is None:
                step_fn, compile_s = compiled.vmapped_train_step(base, mesh, k, width, state, batch)
            lrs = learning_rates_at(runs, step)
            t0 = time.perf_counter()
            state, m = step_fn(state, batch, jnp.asarray(lrs), wds)
            loss = np.asarray(m["loss"], np.float32)
            finite = np.asarray(m["finite"])
            train_s += time.perf_counter() - t0
            for i in range(k):
                if diverged[i] is None and not finite[i]:
                    diverged[i] = step
            alive = np.array([d is None for d in diverged])
            losses[:, step] = np.where(alive, loss, np.nan)
            window += np.where(alive, loss, 0.0)
            window_n += 1
            done = step + 1
            if logs and (done % tc.log_every == 0 or done == steps):
                grad_norm = np.asarray(m["grad_norm"])
                for i, (r, log) in enumerate(zip(runs, logs)):
                    log.write(records.metric_record(
                        r, done, float(lrs[i]), float(window[i] / window_n) if alive[i] else float("nan"),
                        float(grad_norm[i]), tokens_per_step * window_n / max(train_s, 1e-9) / k,
                    ))
                window[:] = 0.0
                window_n = 0
            if progress is not None:
                progress(done, steps, {"loss": float(np.nanmean(losses[:, step])) if alive.any() else float("nan")})
            if done < steps and preemption.should_stop(done):
                raise preemption.preempted(
                    f"preempted at step {done} of the vmapped group {', '.join(r.name for r in runs)} "
                    "({signal}); groups keep no checkpoints: rerun the same command to train them again "
                    "from step 0", done)
    finally:
        it.close()
        for log in logs:
            log.close()

    results = []
    for i, r in enumerate(runs):
        ev = {"val_loss": float("nan"), "val_bpb": float("nan")}
        if evaluate_final and diverged[i] is None:
            ev, c = evaluate(r, unstack_state(state, i)["params"], mesh=mesh)
            compile_s += c
        tail = losses[i, max(0, steps - tc.log_every):]
        res = records.result_record(
            r, status="complete" if diverged[i] is None else "diverged",
            final_train_loss=float(np.mean(tail)) if diverged[i] is None else float("nan"),
            final_val_loss=ev["val_loss"], final_val_bpb=ev["val_bpb"], compile_s=compile_s / k,
            train_s=train_s / k, resumed_from=None, diverged_at=diverged[i], vmapped_with=k,
        )
        if dirs and primary:
            records.write_result(dirs[i], res)
        results.append(res)
    return SweepResult(runs, losses, diverged, results, state, compile_s, train_s)


def train_sequential_losses(run: RunConfig, mesh=None) -> np.ndarray:
    """float32 [s]: the per-step training losses of ``run`` trained alone with the solo step.

    The sequential twin of one vmapped run (same data stream, same schedule, same mesh);
    used by the equality test and the benchmark.
    """
    mesh = sharding.single_device_mesh() if mesh is None else mesh
    state = sharding.init_sharded_state(run, mesh)
    it = multihost.make_host_iterator(run, mesh, "train")
    out = np.zeros(run.train.steps, np.float32)
    fn = None
    wd = jnp.float32(run.optimizer.weight_decay)
    try:
        for step in range(run.train.steps):
            batch = multihost.global_batch(next(it), mesh, run.data.batch_size)
            if fn is None:
                fn, _ = compiled.train_step(run, mesh, state, batch)
            lr = run.optimizer.learning_rate * lr_multiplier(run.schedule, step, run.train.steps)
            state, m = fn(state, batch, jnp.float32(lr), wd)
            out[step] = float(m["loss"])
    finally:
        it.close()
    return out
