"""The one compile cache: train, vmapped-train and eval steps jitted on a mesh and compiled.

Every trainer (``lm.train.loop`` for ``lm.train.solo`` and ``lm.train.sweep``, the benchmarks, the
accelerator check) gets its compiled steps here, and the pod programs are lowered here
for a platform without its devices (:func:`lower_train_step`). A step is compiled once
per program: the model, the optimiser's betas, eps, clipping and decay mask, the z-loss
weight, the batch shape, the mesh, buffer donation (and for a vmapped step the number of
runs and their grouping). Learning rate, weight decay, schedule, length and (unless the
step draws randomness from it) the seed are arguments or host-side numbers, so runs that
differ only in them share one program: :data:`CACHE` reuses it within a process and JAX's
persistent compilation cache (:mod:`lm.train.compile_cache`) across processes.

A compiled step is called as ``fn(state, batch, lr, weight_decay)`` with float32 scalars
(float32 [k] vectors for a vmapped step); its inputs must be on the shardings of
``lm.train.sharding`` (``init_sharded_state``, ``global_batch``), which only places arrays:
the steps are jitted with those shardings here (:func:`sharded_train_step`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lm.train import compile_cache, sharding
from lm.train import step as lm_step
from lm.model.config import ModelConfig, RunConfig

CACHE: dict[tuple, Any] = {}


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache (:func:`lm.train.compile_cache.enable`); the folder or None."""
    return compile_cache.enable(path)


def program_key(run: RunConfig) -> tuple:
    """What of ``run`` the compiled train step depends on (not lr, weight decay, schedule, length)."""
    opt = dataclasses.replace(run.optimizer, learning_rate=1.0, weight_decay=0.0)
    seed = run.train.seed if lm_step.uses_step_rng(run) else None
    return run.model, opt, run.train.z_loss, seed


def mesh_key(mesh: Mesh) -> tuple:
    return mesh.axis_names, mesh.devices.shape, tuple(d.id for d in mesh.devices.flat)


def _cached(key: tuple, lower: Callable[[], jax.stages.Lowered], options: dict | None = None) -> tuple[Any, float]:
    if key in CACHE:
        return CACHE[key], 0.0
    t0 = time.perf_counter()
    compiled = lower().compile(options)
    CACHE[key] = compiled
    return compiled, time.perf_counter() - t0


def _model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in sharding.BATCH_KEYS}


def train_step(run: RunConfig, mesh: Mesh, state, batch: dict, *, donate: bool = True,
               compiler_options: dict | None = None, runs: int = 0, multipliers=None) -> tuple[Any, float]:
    """The compiled train step for these shapes on ``mesh``, and its compile seconds (0 if cached).

    ``state`` and ``batch`` may be arrays or ``jax.ShapeDtypeStruct``; ``compiler_options``: XLA's
    (``jax.stages.Lowered.compile``), e.g. a short-lived program's faster compile. ``runs`` > 0: the
    step of that many stacked states, each on its own batch ([runs, b, t], on
    :func:`stacked_batch_sharding`; e.g. one data order per seed), lr and weight decay float32 [runs].
    ``multipliers`` (``lm.model.parametrization.Multipliers``, each leaf [runs] with ``runs``; ``run.model``
    SP's config): the step takes them as a fifth argument, ``fn(state, batch, lr, wd, multipliers)``, in
    place of the config's μP multipliers, so SP and μP runs of one width share the program.
    """
    batch = _model_inputs(batch)
    b = batch["tokens"].shape[1 if runs else 0]
    options = tuple(sorted((compiler_options or {}).items()))
    traced = multipliers is not None
    key = ("train", program_key(run), tuple(batch["tokens"].shape), mesh_key(mesh), donate, runs, *options,
           *(("multipliers",) if traced else ()))
    zero = jnp.zeros((runs,) if runs else (), jnp.float32)

    def lower():
        with sharding.mesh_context(mesh):
            fn = sharded_train_step(run, mesh, b, donate=donate, stacked_runs=runs, own_batches=runs > 0,
                                    multipliers=traced)
            return fn.lower(state, batch, zero, zero, *((multipliers,) if traced else ()))

    return _cached(key, lower, compiler_options)


def vmapped_train_step(run: RunConfig, mesh: Mesh, runs: int, width: int, state, batch: dict) -> tuple[Any, float]:
    """The compiled step of ``runs`` stacked states (``lm.train.step.make_vmapped_step(run, width)``) on ``mesh``.

    Called as ``fn(states, batch, lr [k], weight_decay [k])``; returns it and its compile seconds.
    """
    batch = _model_inputs(batch)
    b = batch["tokens"].shape[0]
    key = ("vmapped", program_key(run), tuple(batch["tokens"].shape), mesh_key(mesh), runs, width)
    vec = jnp.zeros((runs,), jnp.float32)

    def lower():
        with sharding.mesh_context(mesh):
            fn = sharded_train_step(run, mesh, b, stacked_runs=runs, width=width)
            return fn.lower(state, batch, vec, vec)

    return _cached(key, lower)


def eval_step(model_cfg: ModelConfig, mesh: Mesh, params, batch: dict) -> tuple[Any, float]:
    """Compiled (params, batch) -> (summed nll, target count) on ``mesh``, and its compile seconds."""
    batch = _model_inputs(batch)
    b = batch["tokens"].shape[0]
    key = ("eval", model_cfg, tuple(batch["tokens"].shape), mesh_key(mesh))

    def lower():
        with sharding.mesh_context(mesh):
            return sharded_eval_step(model_cfg, mesh, b).lower(params, batch)

    return _cached(key, lower)


# ------------------------------------------------------------ the jitted steps


def stacked_batch_sharding(mesh: Mesh, batch_size: int) -> NamedSharding:
    """The sharding of K stacked batches [k, b, t]: a leading run axis (replicated), rows as one batch's."""
    return NamedSharding(mesh, P(None, *sharding.batch_spec(mesh, batch_size)))


def sharded_train_step(run: RunConfig, mesh: Mesh, batch_size: int, *, donate: bool = True, stacked_runs: int = 0,
                       width: int = 0, own_batches: bool = False, multipliers: bool = False):
    """``lm.train.step.make_train_step(run)`` jitted with explicit in/out shardings on ``mesh``.

    Returns a ``jax.jit`` function (state, batch, lr, weight_decay) -> (state, metrics)
    with float32 scalars; trace it under :func:`mesh_context` (``lm.train.compiled`` does).
    ``stacked_runs`` > 0: the vmapped step of that many stacked states
    (``lm.train.step.make_vmapped_step(run, width)``), lr and weight_decay float32 [k]; with
    ``own_batches`` each state on its own batch ([k, b, t], ``jax.vmap`` of the step). ``multipliers``:
    a fifth argument, the traced ``lm.model.parametrization.Multipliers`` (replicated; [k] leaves if stacked).

    Raises:
      ValueError: ``multipliers`` with stacked runs on one shared batch (``own_batches`` False).
    """
    stacked = stacked_runs > 0
    if multipliers and stacked and not own_batches:
        raise ValueError("sharded_train_step: multipliers need own_batches=True with stacked runs")
    state_sh = sharding.state_shardings(run, mesh, stacked=stacked)
    rows = stacked_batch_sharding(mesh, batch_size) if own_batches else sharding.batch_sharding(mesh, batch_size)
    batch_sh = {k: rows for k in sharding.BATCH_KEYS}
    replicated = NamedSharding(mesh, P())
    if stacked and own_batches:
        fn = jax.vmap(lm_step.make_train_step(run))
    else:
        fn = lm_step.make_vmapped_step(run, width) if stacked else lm_step.make_train_step(run)
    return jax.jit(
        fn,
        in_shardings=(state_sh, batch_sh, replicated, replicated, *((replicated,) if multipliers else ())),
        out_shardings=(state_sh, replicated),
        donate_argnums=(0,) if donate else (),
    )


def sharded_eval_step(model_cfg: ModelConfig, mesh: Mesh, batch_size: int):
    """``lm.train.step.make_eval_step`` jitted on ``mesh``: (params, batch) -> (summed nll, target count)."""
    batch_sh = {k: sharding.batch_sharding(mesh, batch_size) for k in sharding.BATCH_KEYS}
    return jax.jit(
        lm_step.make_eval_step(model_cfg),
        in_shardings=(sharding.param_shardings(model_cfg, mesh), batch_sh),
        out_shardings=NamedSharding(mesh, P()),
    )


# ------------------------------------------------------------ lowering for a target

# jax's lowering_platforms names of the two accelerator kinds.
LOWERING_PLATFORMS = {"tpu": "tpu", "gpu": "cuda"}


def lower_train_step(run: RunConfig, mesh: Mesh, *, platform: str) -> jax.stages.Lowered:
    """The sharded train step lowered for ``platform`` ("tpu" | "gpu") from abstract shapes.

    No device of that kind is needed: the state and batch are ``jax.ShapeDtypeStruct``
    with their shardings on ``mesh`` (8 fake CPU devices in tests), and
    ``pallas_kernels.backend.target_platform`` makes impl="auto" pick the platform's
    Pallas kernels, each inside its ``shard_map`` (``layers.partitioning.shard_kernel``).
    ``.as_text()`` is the StableHLO program a TPU / GPU job would compile.

    Raises:
      ValueError: ``platform`` is not "tpu" or "gpu".
    """
    from pallas_kernels.backend import target_platform

    if platform not in LOWERING_PLATFORMS:
        raise ValueError(f"lower_train_step: platform={platform!r} is not one of {tuple(LOWERING_PLATFORMS)}")
    b, t = run.data.batch_size, run.data.seq_len
    rows = sharding.batch_sharding(mesh, b)
    batch = {k: jax.ShapeDtypeStruct((b, t), jnp.float32 if k == "weights" else jnp.int32, sharding=rows)
             for k in sharding.BATCH_KEYS}
    scalar = jax.ShapeDtypeStruct((), jnp.float32)
    with sharding.mesh_context(mesh), target_platform(platform):
        fn = sharded_train_step(run, mesh, b, donate=False)
        return fn.trace(sharding.abstract_state(run, mesh), batch, scalar, scalar).lower(
            lowering_platforms=(LOWERING_PLATFORMS[platform],)
        )
