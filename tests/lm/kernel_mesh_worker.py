"""Subprocess side of tests/lm/test_kernels_on_mesh.py: the Pallas kernels under an 8-device mesh.

Runs with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` so that the parent
pytest process keeps one CPU device. Two tasks, each writing one JSON file:

  python -m tests.lm.kernel_mesh_worker lower OUT.json CASES_JSON
      CASES_JSON: [[preset, mesh, platform, kind], ...], kind "train" | "prefill" | "decode".
      Lowers each program for "tpu" / "gpu" (``lm.train.compiled.lower_train_step``, or the
      decode step under ``pallas_kernels.backend.target_platform``) and counts the
      kernels' custom calls it runs ({case: count} or {case: "error: ..."}).
  python -m tests.lm.kernel_mesh_worker interpret OUT.json PRESETS_JSON
      One train step of each preset on the mesh (2, 2, 2, 1) with every kernel
      impl="interpret" ("sharded"), the single-device reference step ("single", float32)
      and the same reference step in float64 ("exact"); writes the three losses and, per
      state leaf, the largest errors of the sharded and the single-device results against
      the float64 one and the leaf's largest magnitude (the test's error model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")

from lm.train import compiled  # noqa: E402
from lm.data import pipeline as lm_data  # noqa: E402
from lm.model import network as lm_model  # noqa: E402
from lm.train import sharding  # noqa: E402
from lm.train import step as lm_step  # noqa: E402
from lm.model.config import OptimizerConfig, RunConfig  # noqa: E402
from lm.model.families import with_settings  # noqa: E402
from lm.model.presets import get_preset  # noqa: E402
from pallas_kernels.backend import count_kernel_calls, target_platform  # noqa: E402
from tests.lm.sharding_worker import flat, initial_state  # noqa: E402

BATCH, SEQ = 8, 32
PROMPT, MAX_LEN = 16, 24

def tiny_run(preset: str, impl: str = "auto") -> RunConfig:
    """The preset at test size: each mixer of its pattern once, d_model 32, 4 heads, t=32,
    linear-attention chunk 16 (so the kernel, not the short-call reference, runs)."""
    base = get_preset(preset)
    kv = base.num_kv_heads if base.num_kv_heads is not None and 4 % base.num_kv_heads == 0 else None
    pattern = "".join(dict.fromkeys(base.pattern))
    model = dataclasses.replace(
        base, d_model=32, num_heads=4, num_kv_heads=kv, head_dim=None, d_ff=64, pattern=pattern,
        num_layers=len(pattern), window=8, attention_impl=impl,
        moe=dataclasses.replace(base.moe, d_ff=32, gmm_impl=impl),
    )
    model = with_settings(model, "rnn", width=None, heads=None, impl=impl)
    model = with_settings(model, "la", chunk_size=16, impl=impl)
    data = lm_data.DataConfig(source="synthetic", seq_len=SEQ, batch_size=BATCH, synthetic_doc_len=40)
    return RunConfig(model=model, data=data, optimizer=OptimizerConfig(eps=1e-3), name=preset)


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
            lowering_platforms=(compiled.LOWERING_PLATFORMS[platform],)
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
                text = compiled.lower_train_step(run, mesh, platform=platform).as_text()
            else:
                text = lower_decode(run, mesh, platform, kind)
            results[key] = count_kernel_calls(text)
        except Exception:
            results[key] = "error: " + traceback.format_exc()[-3000:]
        print(key, results[key] if isinstance(results[key], int) else "error", flush=True)
    with open(out, "w") as f:
        json.dump(results, f)


@contextlib.contextmanager
def float64_everywhere():
    """Trace in float64: x64 on, and ``jnp.float32`` bound to float64 meanwhile.

    The model, the loss and the optimiser name float32 explicitly (casts, zero states,
    norms); with the name rebound, every one of them computes in float64.
    :func:`float64_step` checks that no float32 is left in the lowered program.
    """
    float32 = jnp.float32
    jax.config.update("jax_enable_x64", True)
    jnp.float32 = jnp.float64
    try:
        yield
    finally:
        jnp.float32 = float32
        jax.config.update("jax_enable_x64", False)


def float64_step(run: RunConfig, state: dict, batch: dict, lr: float, wd: float) -> tuple[dict, float]:
    """The single-device train step of ``run`` in float64 from the same (float32) state and batch."""
    wide = lambda tree: jax.tree.map(  # noqa: E731
        lambda x: np.asarray(x, np.float64) if np.asarray(x).dtype.kind == "f" else np.asarray(x), tree
    )
    with float64_everywhere():
        args = (wide(state), wide(batch), np.float64(lr), np.float64(wd))
        lowered = jax.jit(lm_step.make_train_step(run)).trace(*args).lower()
        if "f32" in lowered.as_text():
            raise AssertionError(f"{run.name}: the float64 reference step still computes in float32")
        new_state, metrics = lowered.compile()(*args)
        return jax.device_get(new_state), float(metrics["loss"])


def errors_against(exact: dict, **results: dict) -> dict[str, list[float]]:
    """Per leaf: [max |result - exact| for each result, in order, ..., max |exact|]."""
    out = {}
    for key, want in exact.items():
        errs = [float(np.max(np.abs(r[key].astype(np.float64) - want))) for r in results.values()]
        out[key] = errs + [float(np.max(np.abs(want)))]
    return out


def interpret(out: str, presets: list[str]) -> None:
    results = {}
    for preset in presets:
        try:
            ref_run, run = tiny_run(preset, "reference"), tiny_run(preset, "interpret")
            it = lm_data.make_iterator(ref_run.data, "train")
            batch = {k: np.asarray(v) for k, v in next(it).items() if k in sharding.BATCH_KEYS}
            it.close()
            init = initial_state(ref_run)
            lr, wd = 1e-2, ref_run.optimizer.weight_decay
            single, single_metrics = jax.jit(lm_step.make_train_step(ref_run))(
                init, batch, jnp.float32(lr), jnp.float32(wd)
            )
            mesh = sharding.make_mesh((2, 2, 2, 1))
            state = jax.device_put(init, sharding.state_shardings(run, mesh))
            gbatch = {k: jax.device_put(v, sharding.batch_sharding(mesh, BATCH)) for k, v in batch.items()}
            fn, _ = compiled.train_step(run, mesh, state, gbatch, donate=False)
            sharded, sharded_metrics = fn(state, gbatch, jnp.float32(lr), jnp.float32(wd))
            exact, exact_loss = float64_step(ref_run, init, batch, lr, wd)
            sharded, single, exact = flat(sharded), flat(single), flat(exact)
            assert sorted(sharded) == sorted(single) == sorted(exact)
            results[preset] = {
                "loss": {"sharded": float(sharded_metrics["loss"]), "single": float(single_metrics["loss"]),
                         "exact": exact_loss},
                "leaves": errors_against(exact, sharded=sharded, single=single),
            }
        except Exception:
            results[preset] = "error: " + traceback.format_exc()[-3000:]
        print(preset, "error" if isinstance(results[preset], str) else results[preset]["loss"], flush=True)
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
