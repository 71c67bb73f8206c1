"""Train-step throughput and MFU: ``python -m experiments.bench_train``.

1. Peak: the FLOP/s of a large jitted float32 matmul on this machine (best of several).
2. Train step of the ``transformer_512`` preset (d_model 512, 8 layers, sequence 512) at a
   batch that fills the step; achieved model FLOP/s = exact training FLOPs per step
   (``lm.flops``, causal attention counted per visible pair) / step time.
MFU = achieved / peak (Chowdhery et al. 2022, Appendix B). Target on a 2-core CPU in float32: >= 40%.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from lm import compiled, sharding
from lm.config import RunConfig, TrainConfig
from lm.data import DataConfig
from lm.flops import param_count, train_flops_per_token
from lm.presets import get_preset


def _best_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def peak_matmul_flops(n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n float32 matmul (2 n^3 FLOPs)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    return 2 * n**3 / _best_time(mm, a, b, repeats=repeats)


def train_step_throughput(preset: str, seq_len: int, batch: int, repeats: int) -> dict:
    cfg = get_preset(preset)
    run = RunConfig(model=cfg, data=DataConfig(seq_len=seq_len, batch_size=batch), train=TrainConfig(steps=10))
    mesh = sharding.single_device_mesh()
    state = sharding.init_sharded_state(run, mesh)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (batch, seq_len), 0, cfg.vocab_size)
    batch_arrays = {
        "tokens": tokens, "targets": jnp.roll(tokens, -1, axis=1), "weights": jnp.ones((batch, seq_len)),
        "segment_ids": jnp.ones((batch, seq_len), jnp.int32),
        "positions": jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), (batch, seq_len)),
    }
    batch_arrays = sharding.global_batch(batch_arrays, mesh, batch)
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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="transformer_512")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matmul-n", type=int, default=4096)
    args = parser.parse_args(argv)
    print(f"devices: {jax.devices()}")
    peak = peak_matmul_flops(args.matmul_n)
    print(f"peak float32 matmul ({args.matmul_n}^3): {peak / 1e9:.1f} GFLOP/s")
    r = train_step_throughput(args.preset, args.seq_len, args.batch, args.repeats)
    r["peak_flops_per_s"] = peak
    r["mfu"] = r["model_flops_per_s"] / peak
    r["hfu_dense_attention"] = r["dense_flops_per_s"] / peak
    print(f"preset {r['preset']}: {r['params'] / 1e6:.1f}M params, batch {r['batch']} x {r['seq_len']} tokens")
    print(f"compile {r['compile_s']:.1f} s; step {r['step_s'] * 1e3:.0f} ms; {r['tokens_per_s']:.0f} tokens/s")
    print(f"model FLOP/s {r['model_flops_per_s'] / 1e9:.1f} G -> MFU {100 * r['mfu']:.1f}% "
          f"(counting the dense attention square: {100 * r['hfu_dense_attention']:.1f}%)")
    return r


if __name__ == "__main__":
    main()
