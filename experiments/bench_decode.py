"""Per-token decode latency and cache bytes against context length: ``python -m experiments.bench_decode``.

For each preset and context length L the decode cache is sized for L tokens and
single-token ``decode_step`` calls are timed as in a decode loop: jitted, the cache
donated and fed back (updated in place), median of repeats. A decode step's work does not
depend on which cache slots hold real tokens (attention reads every slot of its buffer,
masked or not; recurrent and linear-attention states are fixed-size), so the cache is not
prefilled. Cache bytes are per sequence, summed over blocks
(``lm.model.network.cache_bytes``). Expected: the transformer's latency and cache grow with L;
Griffin's, Hawk's (fixed-size states and a ring buffer of the local-attention window)
stay flat.

The MLA section compares the ``mla`` preset's cache with a multi-head-attention model of
the same width and heads (target: at most 1/8) and times its two decode paths, absorbed
(attention over the latent) and naive (keys and values re-expanded from the latent).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp

from lm.model import network as model
from lm.model.families import with_settings
from lm.model.presets import PRESETS, get_preset

DEFAULT_PRESETS = [p for p in ("transformer", "griffin", "hawk", "mla") if p in PRESETS]


def decode_latency(preset: str, context: int, batch: int = 1, repeats: int = 20, cfg=None) -> dict:
    """Median seconds of one single-token decode step with a cache sized for ``context`` tokens."""
    cfg = get_preset(preset) if cfg is None else cfg
    params = model.init_params(cfg, jax.random.PRNGKey(0))
    cache = model.init_cache(cfg, batch, context + repeats + 2)
    step = jax.jit(lambda p, c, x, s, q: model.decode_step(cfg, p, c, x, s, q), donate_argnums=1)
    tok = jnp.zeros((batch, 1), jnp.int32)
    seg = jnp.ones((batch, 1), jnp.int32)
    pos = jnp.full((batch, 1), context, jnp.int32)
    _, cache = jax.block_until_ready(step(params, cache, tok, seg, pos))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _, cache = jax.block_until_ready(step(params, cache, tok, seg, pos))
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
    if "mla" in PRESETS:
        rows += mla_section(args.contexts, args.repeats)
    return rows


def mla_section(contexts: list[int], repeats: int) -> list[dict]:
    """MLA cache bytes vs an MHA of the same width and heads; absorbed vs naive decode latency."""
    mla = get_preset("mla")
    mha = dataclasses.replace(mla, pattern="A", head_dim=mla.d_model // mla.num_heads)
    ratio = model.cache_bytes(mla, 1) / model.cache_bytes(mha, 1)
    print(f"\nMLA cache per token {model.cache_bytes(mla, 1)} B vs MHA (same width, {mla.num_heads} heads) "
          f"{model.cache_bytes(mha, 1)} B: ratio {ratio:.3f} (target <= 0.125)")
    rows = []
    print(f"{'path':<10}{'context':>9}{'ms/token':>11}")
    for path in ("absorbed", "naive"):
        cfg = with_settings(mla, "mla", decode_path=path)
        for ctx in contexts:
            r = decode_latency(f"mla_{path}", ctx, repeats=repeats, cfg=cfg)
            rows.append(r)
            print(f"{path:<10}{ctx:>9}{r['latency_ms']:>11.2f}")
    return rows


if __name__ == "__main__":
    main()
