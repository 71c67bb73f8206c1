"""Compile time against depth (layer scan) and step memory (remat): ``python -m experiments.bench_compile``.

1. Seconds to trace, lower and compile the train step of the ``transformer`` preset at 4 and
   32 layers, with and without ``ModelConfig.scan_layers``. Unscanned, XLA compiles every
   block separately (time grows with depth); scanned, the loop body is compiled once.
   Goal: with scan, 32-layer / 4-layer compile time <= 1.5.
2. The compiled step's temporary memory (``compiled.memory_analysis().temp_size_in_bytes``)
   at the ``transformer_512`` shape (bench_train's: d_model 512, 8 layers, batch 8 x 512)
   with ``ModelConfig.remat`` "none" and "full", the layers scanned (the JSON figure) and
   unrolled. Goal: "full" <= half of "none". Measured on the 2-core CPU (XLA:CPU): scanned,
   "full" keeps only each block's input per layer and cuts the temporaries ~5x; unrolled,
   XLA:CPU's scheduler moves the recomputation back next to the forward pass and saves
   only ~6% (use remat with scan_layers).

Everything is lowered from abstract shapes on the one-device mesh, so nothing is trained.
The last line printed is one JSON object:
``{"scan_compile_ratio_32_4": ..., "remat_full_over_none_temp_bytes": ...}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp

from lm.train import compiled as lm_compiled
from lm.train import sharding
from lm.model.config import RunConfig
from lm.data.config import DataConfig
from lm.model.presets import get_preset


def _abstract_batch(batch: int, seq_len: int) -> dict:
    spec = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
    return {"tokens": spec, "targets": spec, "weights": jax.ShapeDtypeStruct((batch, seq_len), jnp.float32),
            "segment_ids": spec, "positions": spec}


def compile_step(run: RunConfig):
    """(compiled train step, seconds to trace + lower + compile it) from abstract shapes."""
    mesh = sharding.single_device_mesh()
    state = sharding.abstract_state(run, mesh)
    batch = _abstract_batch(run.data.batch_size, run.data.seq_len)
    zero = jnp.float32(0.0)
    t0 = time.perf_counter()
    with sharding.mesh_context(mesh):
        lowered = lm_compiled.sharded_train_step(run, mesh, run.data.batch_size).lower(state, batch, zero, zero)
        compiled = lowered.compile()
    return compiled, time.perf_counter() - t0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="4,32", help="two layer counts, shallow,deep")
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length of the compile-time runs")
    parser.add_argument("--batch", type=int, default=4, help="batch of the compile-time runs")
    parser.add_argument("--parts", default="compile,memory", help="which measurements: compile, memory or both")
    args = parser.parse_args(argv)
    shallow, deep = (int(d) for d in args.depths.split(","))
    parts = set(args.parts.split(","))
    if not parts or parts - {"compile", "memory"}:
        parser.error(f"--parts={args.parts!r}: allowed values are compile, memory, compile,memory")

    out = {}
    if "compile" in parts:
        out["scan_compile_ratio_32_4"] = _compile_times(shallow, deep, args.seq_len, args.batch)
    if "memory" in parts:
        out["remat_full_over_none_temp_bytes"] = _remat_memory()
    print(json.dumps(out))
    return out


def _compile_times(shallow: int, deep: int, seq_len: int, batch: int) -> float:
    """Print compile seconds at both depths, unrolled and scanned; return the scanned deep/shallow ratio."""
    seconds = {}
    data = DataConfig(source="synthetic", seq_len=seq_len, batch_size=batch)
    for scan in (False, True):
        for depth in (shallow, deep):
            model = dataclasses.replace(get_preset("transformer"), num_layers=depth, scan_layers=scan)
            _, s = compile_step(RunConfig(model=model, data=data))
            seconds[(scan, depth)] = s
            print(f"transformer, {depth:2d} layers, scan_layers={scan!s:5}: compile {s:6.1f} s", flush=True)
    for scan in (False, True):
        print(f"  scan_layers={scan!s:5}: {deep}/{shallow} layers compile ratio "
              f"{seconds[(scan, deep)] / seconds[(scan, shallow)]:.2f}")
    return seconds[(True, deep)] / seconds[(True, shallow)]


def _remat_memory() -> float:
    """Print the step's temp bytes at transformer_512 per (scan, remat); return scanned full / none."""
    temp = {}
    data512 = DataConfig(source="synthetic", seq_len=512, batch_size=8)
    for scan in (True, False):
        for remat in ("none", "full"):
            model = dataclasses.replace(get_preset("transformer_512"), remat=remat, scan_layers=scan)
            compiled, s = compile_step(RunConfig(model=model, data=data512))
            temp[(scan, remat)] = compiled.memory_analysis().temp_size_in_bytes
            print(f"transformer_512 (batch 8 x 512), scan_layers={scan!s:5}, remat={remat!r:6}: "
                  f"temp {temp[(scan, remat)] / 2**20:8.1f} MiB (compile {s:.1f} s)", flush=True)
    for scan in (True, False):
        print(f"  scan_layers={scan!s:5}: remat full / none temp bytes {temp[(scan, 'full')] / temp[(scan, 'none')]:.2f}")
    return temp[(True, "full")] / temp[(True, "none")]


if __name__ == "__main__":
    main()
