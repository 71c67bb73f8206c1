"""Per-token decode latency and cache bytes against context length: ``python -m experiments.bench_decode``.

For each preset and context length L the decode cache is sized for L tokens and one
jitted ``decode_step`` of a single token is timed (median of repeats). A decode step's
work does not depend on which cache slots hold real tokens (attention reads every slot
of its buffer, masked or not; recurrent and linear-attention states are fixed-size), so
the cache is not prefilled. Cache bytes are per sequence, summed over blocks
(``lm.model.cache_bytes``). Expected: the transformer's latency and cache grow with L;
Griffin's, Hawk's (fixed-size states and a ring buffer of the local-attention window)
stay flat.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from lm import model
from lm.presets import PRESETS, get_preset

DEFAULT_PRESETS = [p for p in ("transformer", "griffin", "hawk", "mla") if p in PRESETS]


def decode_latency(preset: str, context: int, batch: int = 1, repeats: int = 20) -> dict:
    """Median seconds of one single-token decode step with a cache sized for ``context`` tokens."""
    cfg = get_preset(preset)
    params = model.init_params(cfg, jax.random.PRNGKey(0))
    cache = model.init_cache(cfg, batch, context + 1)
    step = jax.jit(lambda p, c, x, s, q: model.decode_step(cfg, p, c, x, s, q))
    tok = jnp.zeros((batch, 1), jnp.int32)
    seg = jnp.ones((batch, 1), jnp.int32)
    pos = jnp.full((batch, 1), context, jnp.int32)
    jax.block_until_ready(step(params, cache, tok, seg, pos))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(step(params, cache, tok, seg, pos))
        times.append(time.perf_counter() - t0)
    return {
        "preset": preset,
        "context": context,
        "latency_ms": 1e3 * sorted(times)[len(times) // 2],
        "cache_bytes": model.cache_bytes(cfg, context),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS, help=f"from {sorted(PRESETS)}")
    parser.add_argument("--contexts", nargs="+", type=int, default=[1024, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    rows = []
    print(f"{'preset':<14}{'context':>9}{'ms/token':>11}{'cache MiB':>11}")
    for preset in args.presets:
        for ctx in args.contexts:
            r = decode_latency(preset, ctx, repeats=args.repeats)
            rows.append(r)
            print(f"{preset:<14}{ctx:>9}{r['latency_ms']:>11.2f}{r['cache_bytes'] / 2**20:>11.2f}")
    for preset in args.presets:
        mine = [r for r in rows if r["preset"] == preset]
        lat = [r["latency_ms"] for r in mine]
        flat = max(lat) / min(lat) - 1
        print(f"{preset}: latency spread across contexts {100 * flat:.0f}%; "
              f"cache {'constant' if len({r['cache_bytes'] for r in mine}) == 1 else 'grows'}")
    return rows


if __name__ == "__main__":
    main()
