"""The one compile cache: train, vmapped-train and eval steps compiled for a mesh.

Every trainer (``lm.train``, ``lm.vmap_sweep``, the benchmarks) gets its compiled steps
here. A step is compiled once per program: the model, the optimiser's betas, eps and
clipping, the z-loss weight, the batch shape, the mesh (and for a vmapped step the number
of runs and their grouping). Learning rate, weight decay, schedule, length and (unless the
step draws randomness from it) the seed are arguments or host-side numbers, so runs that
differ only in them share one program: :data:`CACHE` reuses it within a process and JAX's
persistent compilation cache (:func:`enable_compilation_cache`) across processes.

A compiled step is called as ``fn(state, batch, lr, weight_decay)`` with float32 scalars
(float32 [k] vectors for a vmapped step); its inputs must be on the shardings of
``lm.sharding`` (``init_sharded_state``, ``global_batch``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lm import sharding
from lm import step as lm_step
from lm.config import ModelConfig, RunConfig

CACHE: dict[tuple, Any] = {}


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str:
    """Turn on JAX's persistent compilation cache (default ``$SCALELAB_JAX_CACHE`` or ~/.cache)."""
    path = str(path or os.environ.get("SCALELAB_JAX_CACHE", Path.home() / ".cache" / "scalelab" / "jax"))
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


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
               compiler_options: dict | None = None) -> tuple[Any, float]:
    """The compiled train step for these shapes on ``mesh``, and its compile seconds (0 if cached).

    ``state`` and ``batch`` may be arrays or ``jax.ShapeDtypeStruct``; ``compiler_options``: XLA's
    (``jax.stages.Lowered.compile``), e.g. a short-lived program's faster compile.
    """
    batch = _model_inputs(batch)
    b = batch["tokens"].shape[0]
    options = tuple(sorted((compiler_options or {}).items()))
    key = ("train", program_key(run), tuple(batch["tokens"].shape), mesh_key(mesh), donate, *options)
    zero = jnp.float32(0.0)

    def lower():
        with sharding.mesh_context(mesh):
            return sharding.sharded_train_step(run, mesh, b, donate=donate).lower(state, batch, zero, zero)

    return _cached(key, lower, compiler_options)


def vmapped_train_step(run: RunConfig, mesh: Mesh, runs: int, width: int, state, batch: dict) -> tuple[Any, float]:
    """The compiled step of ``runs`` stacked states (``lm.step.make_vmapped_step(run, width)``) on ``mesh``.

    Called as ``fn(states, batch, lr [k], weight_decay [k])``; returns it and its compile seconds.
    """
    batch = _model_inputs(batch)
    b = batch["tokens"].shape[0]
    key = ("vmapped", program_key(run), tuple(batch["tokens"].shape), mesh_key(mesh), runs, width)
    vec = jnp.zeros((runs,), jnp.float32)

    def lower():
        with sharding.mesh_context(mesh):
            fn = sharding.sharded_train_step(run, mesh, b, stacked_runs=runs, width=width)
            return fn.lower(state, batch, vec, vec)

    return _cached(key, lower)


def eval_step(model_cfg: ModelConfig, mesh: Mesh, params, batch: dict) -> tuple[Any, float]:
    """Compiled (params, batch) -> (summed nll, target count) on ``mesh``, and its compile seconds."""
    batch = _model_inputs(batch)
    b = batch["tokens"].shape[0]
    key = ("eval", model_cfg, tuple(batch["tokens"].shape), mesh_key(mesh))

    def lower():
        with sharding.mesh_context(mesh):
            return sharding.sharded_eval_step(model_cfg, mesh, b).lower(params, batch)

    return _cached(key, lower)
