"""Benchmark: ``linear_scan`` forward and forward+backward time per implementation.

Times each reference form (sequential ``lax.scan``, ``lax.associative_scan``) at
[b, t, w] = [8, 4096, 1024] through the public op (so the backward is the op's
custom_vjp), the compiled Pallas kernel when a GPU/TPU is present, and optionally the
Pallas interpreter at a tiny size (its speed means nothing; it shows the path runs).

  python -m experiments.bench_linear_scan [--shape 8 4096 1024] [--repeats 3] [--interpret]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from pallas_kernels.backend import has_accelerator, platform
from pallas_kernels.linear_scan import linear_scan
from pallas_kernels.linear_scan.ops import resolve_scan_impl

INTERPRET_SHAPE = (1, 64, 128)


def _time(fn, *args, repeats: int) -> float:
    """Best wall time in seconds of ``fn(*args)`` after one compiling call."""
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _time_impl(impl: str, shape: tuple[int, int, int], dtype, repeats: int) -> dict:
    kx, ka, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, shape, dtype)
    a = jax.random.uniform(ka, shape, dtype, minval=0.9, maxval=1.0)
    # A random cotangent passed as an argument: a constant one (sum) lets XLA fold the
    # backward scan at compile time.
    dy = jax.random.normal(kg, shape, dtype)
    fwd = jax.jit(lambda x, a: linear_scan(x, a, impl=impl)[0])

    def loss(x, a, dy):
        return jnp.sum(linear_scan(x, a, impl=impl)[0].astype(jnp.float32) * dy)

    fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return {
        "impl": impl,
        "shape": tuple(shape),
        "dtype": jnp.dtype(dtype).name,
        "fwd_ms": 1e3 * _time(fwd, x, a, repeats=repeats),
        "fwd_bwd_ms": 1e3 * _time(fwd_bwd, x, a, dy, repeats=repeats),
    }


def bench_linear_scan(
    shape: tuple[int, int, int] = (8, 4096, 1024),
    *,
    dtype=jnp.float32,
    repeats: int = 3,
    interpret: bool = False,
    verbose: bool = True,
) -> dict:
    """Time linear_scan forward and forward+backward for each available implementation.

    Args:
      shape: [b, t, w] of x and a.
      dtype: input dtype.
      repeats: timed calls per measurement (the best is kept).
      interpret: also run the Pallas interpreter at the tiny shape INTERPRET_SHAPE.
      verbose: print a table.

    Returns:
      {impl: {"impl", "shape", "dtype", "fwd_ms", "fwd_bwd_ms", "auto"}} for
      "sequential", "associative", "pallas" (GPU/TPU only) and "interpret" (if asked);
      "auto" is True for the implementation that impl="auto" runs here.
    """
    impls = ["sequential", "associative"] + (["pallas"] if has_accelerator() else [])
    results = {impl: _time_impl(impl, shape, dtype, repeats) for impl in impls}
    if interpret:
        results["interpret"] = _time_impl("interpret", INTERPRET_SHAPE, dtype, 1)
    auto = resolve_scan_impl("auto")
    for impl, row in results.items():
        row["auto"] = impl == auto
    if verbose:
        print(f"linear_scan on {platform()} ({jax.device_count()} device(s)); impl='auto' runs {auto!r}")
        print(f"{'impl':<12} {'shape':<20} {'dtype':<9} {'fwd ms':>10} {'fwd+bwd ms':>11}")
        for impl, r in results.items():
            print(f"{impl:<12} {str(r['shape']):<20} {r['dtype']:<9} {r['fwd_ms']:>10.2f} {r['fwd_bwd_ms']:>11.2f}")
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(8, 4096, 1024), metavar=("B", "T", "W"))
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interpret", action="store_true", help=f"also time the interpreter at {INTERPRET_SHAPE}")
    args = parser.parse_args(argv)
    return bench_linear_scan(
        tuple(args.shape), dtype=jnp.dtype(args.dtype), repeats=args.repeats, interpret=args.interpret
    )


if __name__ == "__main__":
    main()
