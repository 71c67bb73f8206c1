"""Subprocess side of tests/lm/test_sharding.py: runs where JAX sees several (fake) CPU devices.

The parent pytest process keeps one device; it starts this module with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (N = 8, or 4 per process for the
two-process ``jax.distributed`` run), and compares what it writes (``.npz`` of every
state leaf by tree path, JSON of shardings) against the single-device step.

  python -m tests.lm.sharding_worker devices8 OUT_DIR CASES_JSON
  python -m tests.lm.sharding_worker multiprocess OUT_DIR [PROCESS_ID NUM_PROCESSES PORT]
  (without the last three: SCALELAB_COORDINATOR, SCALELAB_NUM_PROCESSES, SCALELAB_PROCESS_ID)
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_default_matmul_precision", "highest")

from lm.data import pipeline as lm_data  # noqa: E402
from lm.train import compiled, multihost, sharding  # noqa: E402
from lm.train import step as lm_step  # noqa: E402
from lm.train import loop  # noqa: E402
from lm.train.checkpoint import Checkpointer  # noqa: E402
from lm.model.config import OptimizerConfig, RunConfig  # noqa: E402
from lm.model.families import with_settings  # noqa: E402
from lm.model.presets import get_preset  # noqa: E402

BATCH = 8
HOSTS = 2  # the global batch is the concatenation of two hosts' slices
LRS = (1e-2, 5e-3)


def tiny_run(preset: str) -> RunConfig:
    """The preset at test size: each mixer of its pattern once, d_model 32, 4 heads; Adam eps 1e-3 (see the test)."""
    base = get_preset(preset)
    kv = base.num_kv_heads if base.num_kv_heads is not None and 4 % base.num_kv_heads == 0 else None
    pattern = "".join(dict.fromkeys(base.pattern))  # each mixer once: "RRW" -> "RW"
    model = dataclasses.replace(
        base, d_model=32, num_heads=4, num_kv_heads=kv, head_dim=None, d_ff=64, pattern=pattern,
        num_layers=len(pattern), moe=dataclasses.replace(base.moe, d_ff=32),
    )
    model = with_settings(model, "rnn", width=None, heads=None)
    data = lm_data.DataConfig(source="synthetic", seq_len=16, batch_size=BATCH, synthetic_doc_len=40)
    return RunConfig(model=model, data=data, optimizer=OptimizerConfig(eps=1e-3), name=preset)


def host_batches(run: RunConfig, steps: int) -> list[list[dict]]:
    """batches[step][host]: the per-host numpy slices (shard h of HOSTS) of each step."""
    its = [lm_data.make_iterator(run.data, "train", shard_index=h, shard_count=HOSTS) for h in range(HOSTS)]
    out = [[{k: np.asarray(v) for k, v in next(it).items()} for it in its] for _ in range(steps)]
    for it in its:
        it.close()
    return out


def concat(slices: list[dict]) -> dict:
    return {k: np.concatenate([s[k] for s in slices]) for k in sharding.BATCH_KEYS}


def flat(tree) -> dict[str, np.ndarray]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf)) for path, leaf in leaves}


def specs(tree) -> dict[str, str]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): str(tuple(leaf.sharding.spec)) for path, leaf in leaves}


def initial_state(run: RunConfig) -> dict:
    """``lm.train.step.init_state`` as host arrays (jitted: eager init is slow; every path starts from it)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.device_get(jax.jit(lambda: lm_step.init_state(run), out_shardings=device)())


def reference_steps(run: RunConfig, init: dict, batches: list[dict]) -> list[tuple[dict, float]]:
    """The single-device steps (plain ``jax.jit`` on device 0, no mesh): [(state, loss)]."""
    t0 = time.perf_counter()
    step = jax.jit(lm_step.make_train_step(run))
    state = init
    out = []
    for batch, lr in zip(batches, LRS):
        state, metrics = step(state, batch, jnp.float32(lr), jnp.float32(run.optimizer.weight_decay))
        state = jax.device_get(state)
        out.append((state, float(metrics["loss"])))
    print(f"{run.name} reference: {time.perf_counter() - t0:.1f}s", flush=True)
    return out


def sharded_step(run, mesh, state, host_slices: list[dict], lr):
    """One sharded step from a host state; the batch assembled from host slices."""
    shardings = sharding.state_shardings(run, mesh)
    state = jax.device_put(state, shardings)
    batch = multihost.global_batch(concat(host_slices), mesh, BATCH)
    fn, seconds = compiled.train_step(run, mesh, state, batch, donate=False)
    new_state, metrics = fn(state, batch, jnp.float32(lr), jnp.float32(run.optimizer.weight_decay))
    print(f"{run.name} {dict(mesh.shape)}: compiled in {seconds:.1f}s", flush=True)
    return new_state, float(metrics["loss"]), shardings


def save_case(out: Path, name: str, state, loss: float, extra: dict | None = None) -> None:
    np.savez(out / f"{name}.npz", **flat(state))
    (out / f"{name}.json").write_text(json.dumps({"loss": loss, **(extra or {})}))


def devices8(out: Path, cases: list[tuple[str, list[int]]]) -> None:
    runs = {}
    for preset, mesh_shape in cases:
        name = f"{preset}-{'x'.join(map(str, mesh_shape))}"
        try:
            if preset not in runs:
                run = tiny_run(preset)
                batches = host_batches(run, len(LRS))
                init = initial_state(run)
                ref = reference_steps(run, init, [concat(b) for b in batches])
                save_case(out, f"{preset}-reference", ref[0][0], ref[0][1])
                save_case(out, f"{preset}-reference2", ref[1][0], ref[1][1])
                runs[preset] = (run, batches, init)
            run, batches, init = runs[preset]
            mesh = sharding.make_mesh(mesh_shape)
            new_state, loss, shardings = sharded_step(run, mesh, init, batches[0], LRS[0])
            expected = jax.tree.map(lambda s: str(tuple(s.spec)), shardings)
            save_case(out, name, new_state, loss, {
                "specs": specs(new_state), "expected_specs": specs_of(expected),
            })
        except Exception:  # recorded for the parent test of this case
            (out / f"{name}.error").write_text(traceback.format_exc())
    if "transformer" in runs:
        checkpoint_across_meshes(out, runs)


def specs_of(tree) -> dict[str, str]:
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def checkpoint_across_meshes(out: Path, runs) -> None:
    """Step 1 on (2, 4, 1, 1), save, restore onto (2, 2, 2, 1), step 2 there."""
    try:
        run, batches, init = runs["transformer"]
        mesh_a, mesh_b = sharding.make_mesh((2, 4, 1, 1)), sharding.make_mesh((2, 2, 2, 1))
        state_a, _, _ = sharded_step(run, mesh_a, init, batches[0], LRS[0])
        ckpt = Checkpointer(out / "ckpt_run", max_to_keep=None)
        ckpt.save(1, state_a, {}, {"step": 1})
        restored, _, meta = ckpt.restore(1, sharding.abstract_state(run, mesh_b))
        ckpt.close()
        same = all(
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(restored))
        )
        on_b = all(
            leaf.sharding.is_equivalent_to(sh, leaf.ndim)
            for leaf, sh in zip(jax.tree.leaves(restored), jax.tree.leaves(sharding.state_shardings(run, mesh_b)))
        )
        batch = multihost.global_batch(concat(batches[1]), mesh_b, BATCH)
        fn, _ = compiled.train_step(run, mesh_b, restored, batch, donate=False)
        state2, metrics = fn(restored, batch, jnp.float32(LRS[1]), jnp.float32(run.optimizer.weight_decay))
        # Initialisation in shards and the sharded evaluation equal their one-device versions.
        fresh = sharding.init_sharded_state(run, mesh_b)
        init_equal = all(
            np.allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
            for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(init))
        )
        params = jax.device_get(state2["params"])
        val_sharded, _ = loop.evaluate(run, state2["params"], num_batches=1, mesh=mesh_b)
        val_plain, _ = loop.evaluate(run, params, num_batches=1)
        save_case(out, "checkpoint", state2, float(metrics["loss"]), {
            "restored_equal": same, "restored_on_new_mesh": on_b, "meta_step": meta["step"],
            "init_sharded_equal": init_equal, "init_sharded_specs": specs(fresh) == specs(restored),
            "val_loss_sharded": val_sharded["val_loss"], "val_loss_plain": val_plain["val_loss"],
        })
    except Exception:
        (out / "checkpoint.error").write_text(traceback.format_exc())


def multiprocess(out: Path, argv: list[str]) -> None:
    """One jax.distributed process: a (2, 2, 2, 1) step on its host slice.

    argv is PROCESS_ID NUM_PROCESSES PORT, or empty to join from the SCALELAB_* variables.
    """
    from jax.experimental import multihost_utils

    if argv:
        process_id, num_processes, port = (int(a) for a in argv)
        joined = multihost.maybe_initialize_distributed(f"localhost:{port}", num_processes, process_id)
    else:
        joined = multihost.maybe_initialize_distributed()
    process_id = jax.process_index()
    run = tiny_run("transformer")
    mesh = sharding.make_mesh((2, 2, 2, 1))
    index, count = multihost.host_shard(mesh, BATCH)
    it = multihost.make_host_iterator(run, mesh)
    local = {k: np.asarray(v) for k, v in next(it).items()}
    # Every host's data state travels in one checkpoint item; each resumes its own.
    saved = multihost.gather_data_states(it.get_state())
    following = np.asarray(next(it)["tokens"])
    it.close()
    resumed = multihost.make_host_iterator(run, mesh)
    resumed.set_state(multihost.local_data_state(json.loads(json.dumps(saved))))
    data_resumes = bool(np.array_equal(np.asarray(next(resumed)["tokens"]), following))
    resumed.close()
    shardings = sharding.state_shardings(run, mesh)
    state = jax.device_put(initial_state(run), shardings)
    batch = multihost.global_batch(local, mesh, BATCH)
    fn, _ = compiled.train_step(run, mesh, state, batch, donate=False)
    new_state, metrics = fn(state, batch, jnp.float32(LRS[0]), jnp.float32(run.optimizer.weight_decay))
    gathered = multihost_utils.process_allgather(new_state, tiled=True)
    info = {
        "joined": joined,
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "host_shard": [index, count],
        "local_rows": int(local["tokens"].shape[0]),
        "data_state_hosts": len(saved["hosts"]),
        "data_resumes": data_resumes,
    }
    save_case(out, f"process{process_id}", gathered, float(metrics["loss"]), info)
    np.savez(out / f"process{process_id}-batch.npz", **local)
    jax.distributed.shutdown()


if __name__ == "__main__":
    task, out_dir = sys.argv[1], Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    if task == "devices8":
        devices8(out_dir, [(p, list(m)) for p, m in json.loads(sys.argv[3])])
    elif task == "multiprocess":
        multiprocess(out_dir, sys.argv[3:])
    else:
        raise SystemExit(f"unknown task {task!r}; allowed: devices8, multiprocess")
