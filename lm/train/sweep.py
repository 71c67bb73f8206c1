"""Vmapped sweeps: K runs of one shape, differing only in learning rate, init seed or weight decay, in ONE program.

Hyperparameter sweeps of small models are dominated by per-step fixed costs (host
dispatch, small matmuls that leave the hardware idle). Runs whose compiled step is the same
program -- same model, data, optimiser betas/clipping, batch -- differ only in the traced
scalars ``lr`` and ``weight_decay`` of :func:`lm.train.step.make_train_step` and in their initial
parameters, so ``jax.vmap`` over the stacked training states trains all of them in one
compiled step, one dispatch per step, on the SAME data batch (the batch is not vmapped).
This is how the Step Law grids (Li et al. 2025, "Predictable Scale: Part I", arXiv
2503.04715) are made affordable on an accelerator, where one small model leaves the device
idle. On a CPU a small model's step is already compute-bound; there the step vmaps 2 runs
at a time in a loop inside the same program (``width``, :func:`default_vmap_width`),
which matches sequential training's throughput while sharing the data stream, the
compiled program and the evaluation (see ``experiments/bench_vmap_sweep.py``).

The runs are trained by the one loop (:func:`lm.train.loop.train_loop`, stacked), as
:func:`lm.train.solo.train` trains a solo run: the same learning rate at a step
(:func:`lm.train.loop.lr_at`; schedules may differ between runs, since they are host-side
numbers), the same records of each run written by ``lm.train.records`` (config.json,
metrics.jsonl with the window-mean training loss every ``log_every`` steps, evaluations
every ``eval_every`` steps and after the last, result.json), on a mesh like ``train()``'s
(default: one device, the mesh (1, 1, 1, 1)), compiled through the same cache
(``lm.train.compiled``), with the stacked run axis unsharded. Not done here: checkpointing and
resume (a vmapped sweep of small models is cheaper to rerun than to checkpoint), and
per-run MoE router-jitter seeds (the jitter rng uses the first run's seed;
:func:`check_sweep` refuses such grids if seeds differ).

The sweep holds the lock of every run directory it writes (``lm.train.run_lock``) and stops at
the next step boundary when ``lm.train.preemption.should_stop`` says so (SIGTERM, Ctrl-C),
raising ``lm.train.preemption.Preempted``; with no checkpoints, its runs restart on rerun.

A run whose loss or gradient becomes non-finite keeps its last finite state (the step's
NaN guard), writes no more records and its result.json is ``status: "diverged"`` with
``diverged_at``; the other runs continue (high learning rates of a sweep are expected to
diverge).

Axis letters: k runs of the sweep, s steps, b batch rows, t time.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax

from lm.data import check
from lm.train import loop, multihost, run_lock, run_writer, sharding
from lm.train import step as lm_step
from lm.model.config import RunConfig
from lm.train.loop import LoopResult, stack_states
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


def init_stacked_state(runs: Sequence[RunConfig], mesh=None) -> dict:
    """The K fresh states of :func:`lm.train.step.init_state` (each with its own ``train.seed``), stacked.

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


def train_vmapped(
    runs: Sequence[RunConfig],
    run_dirs: Sequence[str | Path] | None = None,
    *,
    evaluate: bool = True,
    progress=None,
    width: int | None = None,
    mesh=None,
    listeners: tuple[run_writer.RecordListener, ...] = (),
) -> LoopResult:
    """Train K runs of one shape together (one compiled vmapped step, one shared data stream).

    Args:
      runs: the K runs (see :func:`check_sweep` for what may differ).
      run_dirs: optional K directories; each gets config.json, corpus.json, metrics.jsonl and
        result.json like :func:`lm.train.solo.train` writes them (no checkpoints).
      evaluate: evaluate every run on the validation split (every ``eval_every`` steps and after the last).
      progress: optional callable(step, total, {"loss": mean finite loss}).
      width: runs vmapped together inside the step (:func:`lm.train.step.make_vmapped_step`);
        None = :func:`default_vmap_width` (all on an accelerator, 2 on CPU).
      mesh: the mesh of every run (default: one device); the run axis is not sharded.
      listeners: ``lm.train.run_writer.RecordListener`` callables told of each record written.

    Returns:
      A :class:`lm.train.loop.LoopResult` with the per-step losses [k, s].

    Raises:
      lm.train.preemption.Preempted: a stop was requested (the runs keep no checkpoint).
      lm.train.run_lock.RunDirLockedError: another process holds one of ``run_dirs`` (nothing written).
    """
    runs = tuple(runs)
    check_sweep(runs)
    if run_dirs is not None and len(run_dirs) != len(runs):
        raise ValueError(f"run_dirs: {len(run_dirs)} directories for {len(runs)} runs")
    mesh = sharding.single_device_mesh() if mesh is None else mesh
    width = default_vmap_width(len(runs)) if width is None else width
    primary = jax.process_index() == 0
    dirs = [None] * len(runs) if run_dirs is None else [Path(d) for d in run_dirs]
    writers = [run_writer.RunWriter(d, r, enabled=primary, listeners=listeners) for r, d in zip(runs, dirs)]
    with contextlib.ExitStack() as stack:
        if primary:
            for d in run_dirs or ():
                stack.enter_context(run_lock.hold(d))
        # every run reads runs[0]'s batches
        corpus = check.corpus_record(runs[0].data) if run_dirs and primary else None
        for w in writers:
            w.begin(corpus)
            stack.callback(w.close)
        state = init_stacked_state(runs, mesh)
        train_it = stack.enter_context(contextlib.closing(multihost.make_host_iterator(runs[0], mesh, "train")))
        return loop.train_loop(runs, state, train_it, mesh, writers=writers, stacked=True, width=width,
                               evaluate_runs=evaluate, progress=progress)
