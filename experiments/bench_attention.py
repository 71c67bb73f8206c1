"""Benchmark: flash_attention's path vs a plain masked softmax, windowed and causal.

Times, on the current backend, forward and forward+backward of
  * "dense": ``attention_reference``, the masked softmax over the full T x T score matrix;
  * "auto":  ``flash_attention(impl="auto")``: on CPU the blocked paths that skip
    invisible key blocks, on GPU/TPU the kernel.

Two tables:
  1. sliding window (256) at T = 1k, 2k, 4k, 8k, with the log-log slope of time against
     T: about 1 for linear growth (the windowed path must skip the masked blocks), about
     2 for quadratic (the dense softmax);
  2. causal self-attention without a window at T = 2k and 8k: the causal blocked path
     (``attention_causal_blocked``, the lower triangle of blocks) against dense, with its
     speed-up (goal on CPU: >= 1.6x at 2048).

  python -m experiments.bench_attention [--lengths 1024 2048 4096 8192] [--window 256]
      [--causal-lengths 2048 8192] [--only window|causal] [--heads 4] [--head-dim 64]
      [--repeats 3] [--no-backward] [--dense-backward-max 4096]

The dense forward+backward at 8k takes minutes on a 2-core CPU and is left out by
default (``--dense-backward-max 8192`` includes it).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.backend import platform
from pallas_kernels.flash_attention import attention_reference, flash_attention


def _time(fn, *args, repeats: int, budget_s: float = 1.0) -> float:
    """Best wall time in seconds of ``fn(*args)`` after one compiling call.

    Fast calls are repeated until ``budget_s`` is spent (at most 50 times, at least
    ``repeats``): the minimum over many runs resists other load on the machine. Calls
    slower than 10 s (the dense softmax at 8k) are timed once, those over 2 s ``repeats`` times.
    """
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    if first > 2.0:
        repeats, budget_s = (1 if first > 10.0 else repeats), 0.0
    best, spent, n = float("inf"), 0.0, 0
    while n < repeats or (spent < budget_s and n < 50):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        elapsed = time.perf_counter() - start
        best, spent, n = min(best, elapsed), spent + elapsed, n + 1
    return best


def loglog_slope(lengths, times) -> float:
    """Least-squares slope of log(time) against log(T): 1 = linear, 2 = quadratic."""
    return float(np.polyfit(np.log(lengths), np.log(times), 1)[0])


def _time_rows(fns: dict, lengths, *, heads: int, head_dim: int, repeats: int, backward: bool,
               dense_backward_max: int, verbose: bool) -> list[dict]:
    """Per length, forward (and forward+backward) milliseconds of each function in ``fns``."""
    rows = []
    for t in lengths:
        kq, kk, kv, kg = jax.random.split(jax.random.PRNGKey(t), 4)
        q, k, v = (jax.random.normal(key, (1, t, heads, head_dim)) for key in (kq, kk, kv))
        # A random cotangent passed in as an argument, so XLA cannot fold the backward.
        do = jax.random.normal(kg, (1, t, heads, head_dim))
        row = {"T": t}
        for name, fn in fns.items():
            row[f"{name}_fwd_ms"] = 1e3 * _time(jax.jit(fn), q, k, v, repeats=repeats)
            if backward and (name != "dense" or t <= dense_backward_max):
                grad = jax.jit(jax.grad(lambda q, k, v, do, fn=fn: jnp.sum(fn(q, k, v) * do), argnums=(0, 1, 2)))
                row[f"{name}_fwd_bwd_ms"] = 1e3 * _time(grad, q, k, v, do, repeats=repeats)
            elif backward:
                row[f"{name}_fwd_bwd_ms"] = float("nan")
        rows.append(row)
        if verbose:
            print("  " + "  ".join(f"{key}={val:.1f}" if isinstance(val, float) else f"{key}={val}"
                                   for key, val in row.items()), flush=True)
    return rows


def bench_attention(
    lengths=(1024, 2048, 4096, 8192), *, window: int = 256, heads: int = 4, head_dim: int = 64,
    repeats: int = 3, backward: bool = True, dense_backward_max: int = 4096, verbose: bool = True,
) -> dict:
    """Time dense vs windowed attention per length.

    The dense forward+backward is timed only for T <= dense_backward_max (NaN above).

    Returns:
      {"rows": [{"T", "dense_fwd_ms", "auto_fwd_ms", ("dense_fwd_bwd_ms", "auto_fwd_bwd_ms")}],
       "slopes": {column: log-log slope}}.
    """
    fns = {
        "dense": lambda q, k, v: attention_reference(q, k, v, window=window),
        "auto": lambda q, k, v: flash_attention(q, k, v, window=window, impl="auto"),
    }
    rows = _time_rows(fns, lengths, heads=heads, head_dim=head_dim, repeats=repeats, backward=backward,
                      dense_backward_max=dense_backward_max, verbose=verbose)
    columns = [c for c in rows[0] if c != "T"]
    slopes = {}
    for c in columns:
        kept = [(r["T"], r[c]) for r in rows if np.isfinite(r[c])]
        slopes[c] = loglog_slope(*zip(*kept)) if len(kept) > 1 else float("nan")
    if verbose:
        print(f"\nattention on {platform()}, b=1, h={heads}, d={head_dim}, window={window}, "
              f"best of >= {repeats} runs; auto = flash_attention(impl='auto')")
        print(f"{'T':>6} " + " ".join(f"{c:>18}" for c in columns) + f" {'fwd speed-up':>13}")
        for r in rows:
            print(f"{r['T']:>6} " + " ".join(f"{r[c]:>18.1f}" for c in columns)
                  + f" {r['dense_fwd_ms'] / r['auto_fwd_ms']:>12.1f}x")
        print(f"{'slope':>6} " + " ".join(f"{slopes[c]:>18.2f}" for c in columns) + "   (log time / log T)")
        linear = all(slopes[c] < 1.3 for c in columns if c.startswith("auto"))
        print(f"windowed path grows linearly in T: {'yes' if linear else 'NO'} "
              f"(auto slopes {', '.join(f'{slopes[c]:.2f}' for c in columns if c.startswith('auto'))}; "
              f"dense {', '.join(f'{slopes[c]:.2f}' for c in columns if c.startswith('dense'))})")
    return {"rows": rows, "slopes": slopes}


def bench_causal(
    lengths=(2048, 8192), *, heads: int = 4, head_dim: int = 64, repeats: int = 3, backward: bool = True,
    dense_backward_max: int = 4096, verbose: bool = True,
) -> dict:
    """Time dense vs flash_attention(impl="auto") for causal self-attention without a window.

    Returns:
      {"rows": [...as bench_attention], "speedup": {T: {"fwd": x, ("fwd_bwd": x)}}}: dense
      time over auto time (NaN where dense was not timed).
    """
    fns = {
        "dense": lambda q, k, v: attention_reference(q, k, v),
        "auto": lambda q, k, v: flash_attention(q, k, v, impl="auto"),
    }
    rows = _time_rows(fns, lengths, heads=heads, head_dim=head_dim, repeats=repeats, backward=backward,
                      dense_backward_max=dense_backward_max, verbose=verbose)
    kinds = ["fwd"] + (["fwd_bwd"] if backward else [])
    speedup = {r["T"]: {kind: r[f"dense_{kind}_ms"] / r[f"auto_{kind}_ms"] for kind in kinds} for r in rows}
    if verbose:
        print(f"\ncausal attention on {platform()}, b=1, h={heads}, d={head_dim}, no window; "
              "auto = flash_attention(impl='auto') (CPU: the causal blocked path)")
        columns = [c for c in rows[0] if c != "T"]
        print(f"{'T':>6} " + " ".join(f"{c:>18}" for c in columns) + " " + " ".join(f"{k + ' speed-up':>17}" for k in kinds))
        for r in rows:
            print(f"{r['T']:>6} " + " ".join(f"{r[c]:>18.1f}" for c in columns) + " "
                  + " ".join(f"{speedup[r['T']][k]:>16.2f}x" for k in kinds))
    return {"rows": rows, "speedup": speedup}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--causal-lengths", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--only", choices=("window", "causal"), help="run one of the two tables")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-backward", dest="backward", action="store_false", help="time the forward only")
    parser.add_argument("--dense-backward-max", type=int, default=4096,
                        help="longest T at which the dense forward+backward is timed")
    args = parser.parse_args(argv)
    common = dict(heads=args.heads, head_dim=args.head_dim, repeats=args.repeats, backward=args.backward,
                  dense_backward_max=args.dense_backward_max)
    out = {}
    if args.only != "causal":
        out["window"] = bench_attention(tuple(args.lengths), window=args.window, **common)
    if args.only != "window":
        out["causal"] = bench_causal(tuple(args.causal_lengths), **common)
    return out


if __name__ == "__main__":
    main()
