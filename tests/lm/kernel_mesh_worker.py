"""Subprocess side of tests/lm/test_kernels_on_mesh.py: the Pallas kernels under an 8-device mesh.

Runs with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` so that the parent
pytest process keeps one CPU device. Two tasks, each writing one JSON file:

  python -m tests.lm.kernel_mesh_worker lower OUT.json CASES_JSON
      CASES_JSON: [[preset, mesh, platform, kind], ...], kind "train" | "prefill" | "decode".
      Lowers each program for "tpu" / "gpu" (``lm.sharding.lower_train_step``, or the
      decode step under ``pallas_kernels.backend.target_platform``) and counts the
      kernels' custom calls it runs ({case: count} or {case: "error: ..."}).
  python -m tests.lm.kernel_mesh_worker interpret OUT.json PRESETS_JSON
      One train step of each preset on the mesh (2, 2, 2, 1) with every kernel
      impl="interpret", against the single-device reference step; writes both losses and
      the worst ratio |got - want| / (ATOL + RTOL |want|) over all state leaves (<= 1 passes).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")

from lm import compiled  # noqa: E402
from lm import data as lm_data  # noqa: E402
from lm import model as lm_model  # noqa: E402
from lm import sharding  # noqa: E402
from lm import train as lm_train  # noqa: E402
from lm.config import OptimizerConfig, RunConfig  # noqa: E402
from lm.presets import get_preset  # noqa: E402
from pallas_kernels.backend import target_platform  # noqa: E402
from tests.lm.sharding_worker import flat, initial_state  # noqa: E402

BATCH, SEQ = 8, 32
# Kernel (interpreted) vs reference on different reduction orders and layouts, float32 at
# the highest matmul precision: the largest differences seen are ~6e-6 absolute / 4e-5
# relative (GLA's Adam second moment of the embedding); the bound leaves 2x room.
RTOL, ATOL = 1e-4, 1e-5
PROMPT, MAX_LEN = 16, 24

# Custom-call targets of the Pallas kernels: Mosaic TPU, Triton, Mosaic GPU.
KERNEL_CALL = re.compile(r"custom_call @(tpu_custom_call|__gpu\$xla\.gpu\.triton|mosaic_gpu\w*)\(")
FUNC = re.compile(r"func\.func (?:public |private )?@([\w$.]+)\(")
CALL = re.compile(r"(?<![\w.])(?:func\.)?call @([\w$.]+)\(")


def tiny_run(preset: str, impl: str = "auto") -> RunConfig:
    """The preset at test size: each mixer of its pattern once, d_model 32, 4 heads, t=32,
    linear-attention chunk 16 (so the kernel, not the short-call reference, runs)."""
    base = get_preset(preset)
    kv = base.num_kv_heads if base.num_kv_heads is not None and 4 % base.num_kv_heads == 0 else None
    pattern = "".join(dict.fromkeys(base.pattern))
    model = dataclasses.replace(
        base, d_model=32, num_heads=4, num_kv_heads=kv, head_dim=None, d_ff=64, pattern=pattern,
        num_layers=len(pattern), window=8, attention_impl=impl,
        rnn=dataclasses.replace(base.rnn, width=None, heads=None, impl=impl),
        la=dataclasses.replace(base.la, chunk_size=16, impl=impl),
        moe=dataclasses.replace(base.moe, d_ff=32, gmm_impl=impl),
    )
    data = lm_data.DataConfig(source="synthetic", seq_len=SEQ, batch_size=BATCH, synthetic_doc_len=40)
    return RunConfig(model=model, data=data, optimizer=OptimizerConfig(eps=1e-3), name=preset)


def kernel_calls(text: str) -> int:
    """Kernel custom calls the lowered module executes: those in ``main`` plus, through
    every (nested) function call, those of the functions it calls (jax outlines jitted
    helpers such as the gmm kernels once and calls them from several places)."""
    bodies: dict[str, str] = {}
    starts = [(m.start(), m.group(1)) for m in FUNC.finditer(text)]
    for (start, name), (end, _) in zip(starts, starts[1:] + [(len(text), "")]):
        bodies[name] = text[start:end]
    memo: dict[str, int] = {}

    def count(name: str) -> int:
        if name not in memo:
            body = bodies.get(name, "")
            memo[name] = len(KERNEL_CALL.findall(body)) + sum(count(c) for c in CALL.findall(body))
        return memo[name]

    return count("main")


def lower_decode(run: RunConfig, mesh, platform: str, kind: str) -> str:
    """Prefill (a PROMPT-token call on an empty cache) or one decode_step, lowered for ``platform``."""
    cfg = run.model
    rows = sharding.batch_sharding(mesh, BATCH)
    t = PROMPT if kind == "prefill" else 1
    ints = jax.ShapeDtypeStruct((BATCH, t), jnp.int32, sharding=rows)
    with sharding.mesh_context(mesh), target_platform(platform):
        params = jax.eval_shape(lambda: lm_model.init_params(cfg, jax.random.PRNGKey(0)))
        cache = jax.eval_shape(lambda: lm_model.init_cache(cfg, BATCH, MAX_LEN))
        fn = jax.jit(lambda p, c, tok, seg, pos: lm_model.decode_step(cfg, p, c, tok, seg, pos))
        lowered = fn.trace(params, cache, ints, ints, ints).lower(
            lowering_platforms=(sharding.LOWERING_PLATFORMS[platform],)
        )
    return lowered.as_text()


def lower(out: str, cases: list) -> None:
    results = {}
    for preset, mesh_shape, platform, kind in cases:
        key = f"{preset}|{'x'.join(map(str, mesh_shape))}|{platform}|{kind}"
        try:
            run = tiny_run(preset)
            mesh = sharding.make_mesh(mesh_shape)
            if kind == "train":
                text = sharding.lower_train_step(run, mesh, platform=platform).as_text()
            else:
                text = lower_decode(run, mesh, platform, kind)
            results[key] = kernel_calls(text)
        except Exception:
            results[key] = "error: " + traceback.format_exc()[-3000:]
        print(key, results[key] if isinstance(results[key], int) else "error", flush=True)
    with open(out, "w") as f:
        json.dump(results, f)


def interpret(out: str, presets: list[str]) -> None:
    results = {}
    for preset in presets:
        try:
            ref_run, run = tiny_run(preset, "reference"), tiny_run(preset, "interpret")
            it = lm_data.make_iterator(ref_run.data, "train")
            batch = {k: np.asarray(v) for k, v in next(it).items() if k in sharding.BATCH_KEYS}
            it.close()
            init = initial_state(ref_run)
            lr, wd = jnp.float32(1e-2), jnp.float32(ref_run.optimizer.weight_decay)
            want, want_metrics = jax.jit(lm_train.make_train_step(ref_run))(init, batch, lr, wd)
            mesh = sharding.make_mesh((2, 2, 2, 1))
            state = sharding.shard_state(init, sharding.state_shardings(run, mesh))
            gbatch = {k: jax.device_put(v, sharding.batch_sharding(mesh, BATCH)) for k, v in batch.items()}
            fn, _ = compiled.train_step(run, mesh, state, gbatch, donate=False)
            got, got_metrics = fn(state, gbatch, lr, wd)
            got, want = flat(got), flat(want)
            assert sorted(got) == sorted(want)
            ratios = {k: float(np.max(np.abs(got[k] - want[k]) / (ATOL + RTOL * np.abs(want[k])))) for k in want}
            worst = max(ratios, key=ratios.get)
            results[preset] = {
                "loss": [float(got_metrics["loss"]), float(want_metrics["loss"])],
                "worst_leaf": worst,
                "worst_ratio": ratios[worst],
                "leaves": len(ratios),
            }
        except Exception:
            results[preset] = "error: " + traceback.format_exc()[-3000:]
        print(preset, results[preset], flush=True)
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    task, out_path, arg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if task == "lower":
        lower(out_path, arg)
    elif task == "interpret":
        interpret(out_path, arg)
    else:
        raise SystemExit(f"unknown task {task!r}; allowed: lower, interpret")
