"""Train-step throughput and MFU: ``python -m experiments.bench_train``.

1. Peak: the FLOP/s of a large jitted float32 matmul on this machine (best of several).
2. Train step of the ``transformer_512`` preset (d_model 512, 8 layers, sequence 512) at a
   batch that fills the step; achieved model FLOP/s = exact training FLOPs per step
   (``lm.model.counting``, causal attention counted per visible pair) / step time.
MFU = achieved / peak (Chowdhery et al. 2022, Appendix B). Target on a 2-core CPU in float32: >= 40%.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from experiments.lib.timing import best_time, train_step_throughput


def peak_matmul_flops(n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n float32 matmul (2 n^3 FLOPs)."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    mm = jax.jit(lambda x, y: x @ y)
    return 2 * n**3 / best_time(mm, a, b, repeats=repeats)


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
