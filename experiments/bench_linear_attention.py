"""Benchmark: chunked vs quadratic linear attention, forward + backward, over sequence length.

    python -m experiments.bench_linear_attention [--lengths 1024 2048 ...] [--repeats 3]

Batch 1, 8 heads, key and value dims 64, RetNet-style scalar decay g (the chunked form's
common case; per-key decay makes the quadratic form O(T^2 K) in memory). Times are the
best of at least ``--repeats`` runs (and at least 1 s of runs) of a jitted
value-and-grad with respect to q, k, v and g, compiled ahead of time; the quadratic form
runs once per length. The GFLOP/s column is 3x the forward FLOPs of
:func:`linear_attention_flops` (forward + backward) over the chunked time.

The chunked form's backward is its hand-written ``custom_vjp`` (a reverse scan over
groups of chunks carrying the state gradient, the transposed chunk equations and the
decay gradient dL/dG = q dq - k dk; see :mod:`pallas_kernels.linear_attention.reference`):
it reuses the states entering each chunk saved by the forward and recomputes only the
intra-chunk scores, about 3.25x the forward FLOPs in all (the column above counts 3x). The
quadratic form's backward is JAX autodiff.

Reading target 2: XLA:CPU allocates every call's outputs and temporaries afresh, and on
Linux glibc serves blocks of 32 MiB and more with new ``mmap`` pages that fault in on first
touch (kernel time, counted in the cpu column). At 16k each [1, T, 8, 64] float32 array is
exactly 32 MiB, so o, its cotangent, the saved chunk states and the three gradients
(192 MiB) fault in on every call, which 1k (reused from the heap) never pays; most of the
growth beyond 16x is this system time, not the algorithm (user time per token is flat
from 1k to 16k; compare user and system time with ``os.times``). With glibc >= 2.35,
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python -m experiments.bench_linear_attention``
backs those blocks with transparent huge pages (measured: 49k -> 2k page faults per call
at 16k, and the ratio about 2 lower).

Targets (issue 6, 2 CPU cores): chunked >= 5x faster than quadratic at T = 8k, and
chunked time growing linearly (time(16k) / time(1k) <= 20).

The quadratic form materialises several [h, T, T] float32 tensors in the backward pass;
lengths whose estimate exceeds 80% of the available memory are skipped with the reason.

Axis letters: b batch, t time, h heads, k key dim, v value dim.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp

from lm.model.counting import linear_attention_flops
from pallas_kernels.linear_attention import linear_attention_chunked, linear_attention_parallel

HEADS, DIM = 8, 64
# float32 [h, T, T] tensors alive at once in the quadratic form's forward + backward
# (scores, decay, masked differences and their cotangents), measured loosely.
QUADRATIC_LIVE_TENSORS = 6


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux), or a large number elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


def make_step(form):
    def loss(q, k, v, g):
        o, _ = form(q, k, v, g)
        return jnp.sum(o * o)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


def time_step(step, args, *, min_repeats: int, min_seconds: float = 1.0) -> tuple[float, float]:
    """Best wall time and best process CPU time of ``step(*args)``, compiled ahead of time
    (no warm-up run needed); repeated at least ``min_repeats`` times and until
    ``min_seconds`` have passed. CPU time is less sensitive to other processes on a
    shared machine; both count every thread of this process."""
    compiled = step.lower(*args).compile()
    best_wall, best_cpu, spent, runs = float("inf"), float("inf"), 0.0, 0
    while runs < min_repeats or spent < min_seconds:
        wall, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(compiled(*args))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best_wall, best_cpu, spent, runs = min(best_wall, wall), min(best_cpu, cpu), spent + wall, runs + 1
    return best_wall, best_cpu


def inputs(t: int):
    keys = jax.random.split(jax.random.PRNGKey(t), 4)
    q = jax.random.normal(keys[0], (1, t, HEADS, DIM))
    k = jax.random.normal(keys[1], (1, t, HEADS, DIM))
    v = jax.random.normal(keys[2], (1, t, HEADS, DIM))
    g = jax.nn.log_sigmoid(jax.random.normal(keys[3], (1, t, HEADS)) + 4.0)
    return q, k, v, g


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="minimum timed runs of the chunked form")
    parser.add_argument("--tokens-per-step", type=int, default=256, help="chunked form's group size (speed only)")
    args = parser.parse_args(argv)

    chunked = make_step(lambda q, k, v, g: linear_attention_chunked(
        q, k, v, g, chunk_size=args.chunk_size, tokens_per_step=args.tokens_per_step))
    quadratic = make_step(lambda q, k, v, g: linear_attention_parallel(q, k, v, g))
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (timings on a busy machine are noisy)")
    print(f"linear attention fwd+bwd, batch 1, {HEADS} heads, dims {DIM}, scalar decay, "
          f"chunk {args.chunk_size}, {jax.device_count()} {jax.default_backend()} device(s)")
    print(f"{'T':>6} {'chunked s':>10} {'(cpu s)':>8} {'quadratic s':>12} {'(cpu s)':>8} {'quad/chunk':>10} "
          f"{'chunked GFLOP/s':>16}")
    results = {}
    for t in args.lengths:
        data = inputs(t)
        t_chunk, cpu_chunk = time_step(chunked, data, min_repeats=args.repeats)
        fwd_flops = t * linear_attention_flops(
            t, num_heads=HEADS, key_dim=DIM, value_dim=DIM, chunk_size=args.chunk_size, decay="scalar"
        )
        need = QUADRATIC_LIVE_TENSORS * HEADS * t * t * 4
        if need > 0.8 * available_bytes():
            free = available_bytes() / 2**30
            note = f"quadratic skipped: needs ~{need / 2**30:.0f} GiB, {free:.0f} GiB available"
            t_quad, cpu_quad = None, None
        else:
            (t_quad, cpu_quad), note = time_step(quadratic, data, min_repeats=1, min_seconds=0.0), ""
        results[t] = (t_chunk, t_quad, cpu_chunk, cpu_quad)
        quad = f"{t_quad:12.3f} {cpu_quad:8.3f}" if t_quad is not None else f"{'-':>12} {'-':>8}"
        ratio = f"{t_quad / t_chunk:10.1f}" if t_quad is not None else f"{'-':>10}"
        print(f"{t:>6} {t_chunk:10.3f} {cpu_chunk:8.3f} {quad} {ratio} {3 * fwd_flops / t_chunk / 1e9:16.1f}  {note}")

    print()
    if 8192 in results and results[8192][1] is not None:
        wall, _, cpu, cpu_q = results[8192][0], results[8192][1], results[8192][2], results[8192][3]
        speedup = results[8192][1] / wall
        print(f"target 1: quadratic / chunked at 8k = {speedup:.1f} wall, {cpu_q / cpu:.1f} cpu "
              f"(>= 5: {'PASS' if speedup >= 5 else 'FAIL'})")
    else:
        print("target 1: not measured (8k quadratic missing)")
    if 16384 in results and 1024 in results:
        growth = results[16384][0] / results[1024][0]
        growth_cpu = results[16384][2] / results[1024][2]
        print(f"target 2: chunked time 16k / 1k = {growth:.1f} wall, {growth_cpu:.1f} cpu "
              f"(<= 20: {'PASS' if growth <= 20 else 'FAIL'})")
    else:
        print("target 2: not measured (needs lengths 1024 and 16384)")
    return results


if __name__ == "__main__":
    main()
