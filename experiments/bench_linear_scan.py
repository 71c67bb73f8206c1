"""Benchmark: ``linear_scan`` forward and forward+backward time per form, against a plain baseline.

For each shape [b, t, w] (float32 by default) it times
  * "baseline":      a plain ``lax.scan`` (unroll 1) of h_t = a_t h_{t-1} + x_t, written
                     here in five lines and differentiated by JAX (the peer to beat);
  * "op (auto)":     the public op ``linear_scan(impl="auto")``, what the RG-LRU runs: on
                     CPU the sequential form differentiated by JAX (the custom_vjp serves
                     the kernels) (goal on CPU: <= 1.0x the baseline, forward and
                     forward+backward);
  * "sequential uN": the sequential reference form at unroll N (1, 4, 8), differentiated
                     by JAX, to choose ``SEQUENTIAL_UNROLL`` by measurement;
  * "associative":   the ``lax.associative_scan`` form;
  * "pallas":        the compiled kernel through the op, when a GPU/TPU is present;
  * "interpret":     optionally, the Pallas interpreter at a tiny size (its speed means
                     nothing; it shows the path runs).

  python -m experiments.bench_linear_scan [--shapes 4,1024,256 4,4096,1024 8,4096,1024]
      [--dtype float32] [--repeats 3] [--interpret]
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp

from experiments.lib.timing import best_time
from pallas_kernels.backend import has_accelerator, platform
from pallas_kernels.linear_scan import linear_scan
from pallas_kernels.linear_scan.ops import resolve_scan_impl
from pallas_kernels.linear_scan.reference import linear_scan_associative, linear_scan_sequential

INTERPRET_SHAPE = (1, 64, 128)
SHAPES = ((4, 1024, 256), (4, 4096, 1024), (8, 4096, 1024))
UNROLLS = (1, 4, 8)


def baseline_scan(x, a):
    """The plain recurrence: ``lax.scan`` over time, unroll 1, float32 carry, JAX autodiff."""
    def step(h, xa):
        h = xa[1] * h + xa[0]
        return h, h

    h0 = jnp.zeros((x.shape[0], x.shape[2]), jnp.float32)
    h_last, y = jax.lax.scan(step, h0, (jnp.swapaxes(x, 0, 1).astype(jnp.float32),
                                        jnp.swapaxes(a, 0, 1).astype(jnp.float32)))
    return jnp.swapaxes(y, 0, 1).astype(x.dtype), h_last


def forms() -> dict:
    """name -> (x, a) -> (y, h_last) for every timed form available here."""
    out = {"baseline": baseline_scan, "op (auto)": functools.partial(linear_scan, impl="auto")}
    for unroll in UNROLLS:
        out[f"sequential u{unroll}"] = functools.partial(linear_scan_sequential, unroll=unroll)
    out["associative"] = linear_scan_associative
    if has_accelerator():
        out["pallas"] = functools.partial(linear_scan, impl="pallas")
    return out


def _time_form(fn, shape, dtype, repeats: int) -> dict:
    kx, ka, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, shape, dtype)
    a = jax.random.uniform(ka, shape, dtype, minval=0.9, maxval=1.0)
    # A random cotangent passed as an argument: a constant one (sum) lets XLA fold the
    # backward scan at compile time.
    dy = jax.random.normal(kg, shape, dtype)
    fwd = jax.jit(lambda x, a: fn(x, a)[0])
    grad = jax.jit(jax.grad(lambda x, a, dy: jnp.sum(fn(x, a)[0].astype(jnp.float32) * dy), argnums=(0, 1)))
    return {"fwd_ms": 1e3 * best_time(fwd, x, a, repeats=repeats),
            "fwd_bwd_ms": 1e3 * best_time(grad, x, a, dy, repeats=repeats)}


def bench_linear_scan(
    shapes=SHAPES, *, dtype=jnp.float32, repeats: int = 3, interpret: bool = False, verbose: bool = True,
) -> dict:
    """Time every form at every shape.

    Returns:
      {shape: {form: {"fwd_ms", "fwd_bwd_ms", "fwd_vs_baseline", "fwd_bwd_vs_baseline"}}};
      with ``interpret`` also {"interpret": {...}} at INTERPRET_SHAPE.
    """
    results = {}
    auto = resolve_scan_impl("auto")
    if verbose:
        print(f"linear_scan on {platform()} ({jax.device_count()} device(s)), {jnp.dtype(dtype).name}; "
              f"impl='auto' runs {auto!r}; ratios are time / baseline (plain lax.scan, unroll 1)")
    for shape in shapes:
        rows = {name: _time_form(fn, tuple(shape), dtype, repeats) for name, fn in forms().items()}
        base = rows["baseline"]
        for row in rows.values():
            row["fwd_vs_baseline"] = row["fwd_ms"] / base["fwd_ms"]
            row["fwd_bwd_vs_baseline"] = row["fwd_bwd_ms"] / base["fwd_bwd_ms"]
        results[tuple(shape)] = rows
        if verbose:
            print(f"\n[b, t, w] = {list(shape)}")
            print(f"{'form':<15} {'fwd ms':>10} {'x base':>7} {'fwd+bwd ms':>11} {'x base':>7}")
            for name, r in rows.items():
                print(f"{name:<15} {r['fwd_ms']:>10.2f} {r['fwd_vs_baseline']:>6.2f}x "
                      f"{r['fwd_bwd_ms']:>11.2f} {r['fwd_bwd_vs_baseline']:>6.2f}x", flush=True)
    if interpret:
        fn = functools.partial(linear_scan, impl="interpret")
        results["interpret"] = _time_form(fn, INTERPRET_SHAPE, dtype, 1)
        if verbose:
            r = results["interpret"]
            print(f"\ninterpret at {list(INTERPRET_SHAPE)}: fwd {r['fwd_ms']:.1f} ms, fwd+bwd {r['fwd_bwd_ms']:.1f} ms")
    return results


def _shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.split(","))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected B,T,W")
    return parts


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=_shape, nargs="+", default=list(SHAPES), metavar="B,T,W")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interpret", action="store_true", help=f"also time the interpreter at {INTERPRET_SHAPE}")
    args = parser.parse_args(argv)
    return bench_linear_scan(args.shapes, dtype=jnp.dtype(args.dtype), repeats=args.repeats,
                             interpret=args.interpret)


if __name__ == "__main__":
    main()
