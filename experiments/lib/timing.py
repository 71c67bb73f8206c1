"""Timing helpers shared by the benchmarks and the accelerator check.

``best_time``: the best wall time of a jitted call after one compiling call (a benchmark
measures the machine undisturbed). ``train_step_throughput``: the compiled train step of
a model preset, in tokens and model FLOPs per second.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from lm.train import compiled, multihost, sharding
from lm.model.config import RunConfig, TrainConfig
from lm.data.config import DataConfig
from lm.model.counting import param_count, train_flops_per_token
from lm.data.packing import random_batch
from lm.model.presets import get_preset


def best_time(fn, *args, repeats: int) -> float:
    """Best wall time in seconds of ``fn(*args)`` after one compiling call."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def train_step_throughput(preset: str, seq_len: int, batch: int, repeats: int) -> dict:
    """Tokens and model FLOPs per second of ``preset``'s train step at ``batch`` x ``seq_len`` (best of ``repeats``).

    Exact training FLOPs per token (:func:`lm.model.counting.train_flops_per_token`: causal attention
    counted per visible pair; ``dense_flops_per_s`` counts every pair) over the step time.
    """
    cfg = get_preset(preset)
    run = RunConfig(model=cfg, data=DataConfig(seq_len=seq_len, batch_size=batch), train=TrainConfig(steps=10))
    mesh = sharding.single_device_mesh()
    state = sharding.init_sharded_state(run, mesh)
    batch_arrays = multihost.global_batch(random_batch(batch, seq_len, cfg.vocab_size), mesh, batch)
    step, compile_s = compiled.train_step(run, mesh, state, batch_arrays)
    lr = jnp.float32(1e-3)
    state, _ = step(state, batch_arrays, lr, jnp.float32(0.1))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, m = step(state, batch_arrays, lr, jnp.float32(0.1))
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    step_s = min(times)  # best of repeats, like the peak: both measure the machine undisturbed
    n_tok = batch * seq_len
    return {
        "preset": preset, "params": param_count(cfg)["total"], "batch": batch, "seq_len": seq_len,
        "compile_s": compile_s, "step_s": step_s, "tokens_per_s": n_tok / step_s,
        "model_flops_per_s": train_flops_per_token(cfg, seq_len) * n_tok / step_s,
        "dense_flops_per_s": train_flops_per_token(cfg, seq_len, attention="dense") * n_tok / step_s,
    }
