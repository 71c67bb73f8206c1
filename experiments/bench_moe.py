"""MoE training throughput by dispatch: ``python -m experiments.bench_moe``.

Trains the ``moe`` preset (top-2 routing, every block MoE) with 8 and 32 experts for a few
steps under each dispatch (``layers/moe_dispatch.py``):
  dropless  sort tokens by expert and run the grouped matmul ``pallas_kernels.gmm``;
  capacity  fixed expert buffers of ceil(tokens * k / e * capacity_factor) slots, overflow dropped;
  dense     every expert on every token, combined with the (mostly zero) one-hot weights.
and prints tokens/s of the train step and the dropped fraction of token-slots.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from lm.train import compiled, sharding
from lm.train import step as lm_step
from lm.model.config import RunConfig, TrainConfig
from lm.data.config import DataConfig
from lm.model.counting import param_count
from lm.data.packing import random_batch
from lm.model.presets import get_preset


def bench(num_experts: int, dispatch: str, batch: int, seq_len: int, steps: int) -> dict:
    base = get_preset("moe")
    cfg = dataclasses.replace(base, moe=dataclasses.replace(base.moe, num_experts=num_experts, dispatch=dispatch))
    run = RunConfig(model=cfg, data=DataConfig(seq_len=seq_len, batch_size=batch), train=TrainConfig(steps=steps))
    state = lm_step.init_state(run)
    b = random_batch(batch, seq_len, cfg.vocab_size)
    mesh = sharding.single_device_mesh()
    step, compile_s = compiled.train_step(run, mesh, state, b)
    state, m = step(state, b, jnp.float32(1e-3), jnp.float32(0.1))
    jax.block_until_ready(m["loss"])
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, b, jnp.float32(1e-3), jnp.float32(0.1))
    jax.block_until_ready(m["loss"])
    dt = (time.perf_counter() - t0) / steps
    dropped = float(np.mean([layer["dropped_fraction"] for layer in m["moe"]["layers"].values()]))
    return {"experts": num_experts, "dispatch": dispatch, "tokens_per_s": batch * seq_len / dt,
            "dropped_fraction": dropped, "compile_s": compile_s, "active_params": param_count(cfg)["active"],
            "total_params": param_count(cfg)["total"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_moe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experts", nargs="+", type=int, default=[8, 32])
    parser.add_argument("--dispatch", nargs="+", default=["dropless", "capacity", "dense"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    rows = []
    print(f"{'experts':>8} {'dispatch':<10}{'tokens/s':>10}{'dropped':>9}{'active/total params':>22}")
    for e in args.experts:
        for d in args.dispatch:
            r = bench(e, d, args.batch, args.seq_len, args.steps)
            rows.append(r)
            print(f"{e:>8} {d:<10}{r['tokens_per_s']:>10.0f}{r['dropped_fraction']:>9.3f}"
                  f"{r['active_params'] / 1e6:>11.2f}M/{r['total_params'] / 1e6:.2f}M")
    return rows


if __name__ == "__main__":
    main()
