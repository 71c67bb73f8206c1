"""lm/train/sharding.py: sharded train steps equal the single-device step; checkpoints change meshes;
two jax.distributed processes agree with one.

The multi-device parts run in subprocesses (``tests/lm/sharding_worker.py``) with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` so that this pytest process keeps
its single CPU device: two subprocesses with 8 fake devices share the (preset, mesh)
cases and the checkpoint test, and two processes with 4 fake devices each are joined by
``jax.distributed`` (localhost coordinator). The CPU backend of jax 0.10.2 runs
cross-process collectives through Gloo (``jax_cpu_collectives_implementation="gloo"``,
the default), so the two-process step is a real multi-host step: the batch is read as two
host slices, assembled with ``jax.make_array_from_process_local_data``, and parameters
are sharded across both processes on the mesh (2, 2, 2, 1). Under xdist this module and
tests/lm/test_kernels_on_mesh.py are one unit of work (``tests/conftest.py``).

The reference is the plain ``jax.jit`` of ``lm.train.step.make_train_step`` on one device (no mesh),
fed the global batch (the two host slices concatenated). Adam's first update is
g / (|g| + eps) per element, ~sign(g): an element whose gradient is near eps turns a
float32 reduction-order difference into an O(lr) change, so the runs use eps = 1e-3 (the
update is then a smooth function of the gradient) and compare every leaf of the new state
(parameters, Adam moments, step) at rtol 1e-5, atol 5e-7 (the largest difference seen
is 2e-7) and the loss at rtol 1e-6.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lm.train import multihost, sharding

ROOT = Path(__file__).resolve().parents[2]
MESHES = ((8, 1, 1, 1), (2, 4, 1, 1), (2, 2, 2, 1))
# One line per preset: (preset in lm/model/presets.py, meshes of its train-step test).
PRESET_MESHES = (
    ("transformer", MESHES),
    ("griffin", MESHES),
    ("mla", MESHES),
    ("moe", MESHES + ((2, 1, 1, 4),)),
)
CASES = [(preset, mesh) for preset, meshes in PRESET_MESHES for mesh in meshes]
RTOL, ATOL = 1e-5, 5e-7


def _env(devices: int) -> dict:
    env = dict(os.environ)
    # the optimisation level (0, as the reference in this process) comes with XLA_FLAGS: tests/conftest.py
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"  # GSPMD's resharding warnings
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _worker(args: list[str], devices: int, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.lm.sharding_worker", *args],
        cwd=ROOT, env={**_env(devices), **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"worker failed (exit {proc.returncode}):\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> tuple[Path, Path]:
    """Run the 8-device workers and the two jax.distributed processes (concurrently).

    Returns the directories of their results: (8 devices, 2 processes).
    """
    out8 = tmp_path_factory.mktemp("devices8")
    out2 = tmp_path_factory.mktemp("processes2")
    port = _free_port()
    # The presets split over two 8-device workers (two cores); the checkpoint test needs "transformer".
    presets = [p for p, _ in PRESET_MESHES]
    groups = [presets[0::2], presets[1::2]]
    procs = [
        _worker(["devices8", str(out8), json.dumps([[p, list(m)] for p, m in CASES if p in group])], 8)
        for group in groups if group
    ]
    # Process 0 joins with explicit arguments, process 1 from the SCALELAB_* environment.
    procs.append(_worker(["multiprocess", str(out2), "0", "2", str(port)], 4))
    procs.append(_worker(["multiprocess", str(out2)], 4, SCALELAB_COORDINATOR=f"localhost:{port}",
                         SCALELAB_NUM_PROCESSES="2", SCALELAB_PROCESS_ID="1"))
    try:
        for proc in procs:
            _finish(proc)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return out8, out2


@pytest.fixture(scope="module")
def devices8(workers) -> Path:
    return workers[0]


def _load(out: Path, name: str) -> tuple[dict, dict]:
    error = out / f"{name}.error"
    assert not error.exists(), error.read_text()
    arrays = np.load(out / f"{name}.npz")
    return {k: arrays[k] for k in arrays.files}, json.loads((out / f"{name}.json").read_text())


def _assert_states_close(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL, err_msg=key)


# ------------------------------------------------------------------ in this process


def test_resolve_mesh_shape_fills_the_rest_and_validates():
    assert sharding.resolve_mesh_shape((-1, 1, 1, 1), 8) == (8, 1, 1, 1)
    assert sharding.resolve_mesh_shape((2, -1, 2, 1), 16) == (2, 4, 2, 1)
    assert sharding.resolve_mesh_shape((1, 1, 1, 1), 1) == (1, 1, 1, 1)
    for bad, match in [((8, 1, 1), "needs 4 sizes"), ((-1, -1, 1, 1), "at most one"), ((0, 1, 1, 1), "positive"),
                       ((3, -1, 1, 1), "do not divide"), ((2, 2, 1, 1), "differs")]:
        with pytest.raises(ValueError, match=match):
            sharding.resolve_mesh_shape(bad, 8)


def test_single_device_mesh_replicates_everything():
    """Size-1 axes collapse: on one device every spec is fully replicated (same code path)."""
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1, "expert": 1}
    assert sharding.param_spec(mesh, ("embed", "mlp"), (32, 64)) == P(None, None)
    assert sharding.batch_spec(mesh, 3) == P(None, None)
    assert multihost.host_shard(mesh, 4) == (0, 1)
    assert all(rule is None for _, rule in sharding.logical_rules(mesh))


def test_param_spec_rules_on_an_abstract_mesh():
    """The table on a (2, 4, 2, 2) mesh: tensor on heads/mlp, experts, FSDP on the largest free dim."""
    mesh = jax.sharding.AbstractMesh((2, 4, 2, 2), sharding.MESH_AXES)  # specs only need the axis sizes
    spec = sharding.param_spec
    assert spec(mesh, ("embed", "heads", "head_dim"), (64, 8, 16)) == P("fsdp", "tensor", None)
    assert spec(mesh, ("embed", "mlp"), (64, 256)) == P("fsdp", "tensor")
    assert spec(mesh, ("mlp", "embed"), (256, 64)) == P("tensor", "fsdp")
    # vocab 259 is not divisible by tensor=2: left replicated, FSDP takes embed.
    assert spec(mesh, ("vocab", "embed"), (259, 64)) == P(None, "fsdp")
    assert spec(mesh, ("vocab", "embed"), (256, 64)) == P("tensor", "fsdp")
    # Largest free dimension: 96 > 64.
    assert spec(mesh, ("embed", None), (64, 96)) == P(None, "fsdp")
    assert spec(mesh, ("experts", "embed", "mlp"), (4, 64, 128)) == P("expert", "fsdp", "tensor")
    # Nothing divisible by fsdp=4: replicated over fsdp.
    assert spec(mesh, ("embed",), (6,)) == P(None)
    # The batch: rows over data x fsdp x expert = 16.
    assert sharding.batch_spec(mesh, 32) == P(("data", "fsdp", "expert"), None)
    with pytest.raises(ValueError, match="batch_size=8"):
        sharding.batch_spec(mesh, 8)


@pytest.mark.parametrize("family, par", [("transformer", "mup"), ("griffin", "sp"), ("moe", "mup")])
def test_abstract_state_is_that_of_the_init(family, par):
    """The state's shapes for the shardings, read from the model's cached abstract parameters (one
    trace of the init per shape, shared by SP and μP), equal those of ``init_state`` traced whole."""
    from lm.model import parametrization
    from lm.model.config import RunConfig
    from lm.model.presets import mup_family_model
    from lm.train import step

    cfg = parametrization.at_width(mup_family_model(family, 16, 1), 32)
    run = RunConfig(model=cfg if par == "mup" else parametrization.sp_config(cfg))
    got = sharding._abstract_init(run)
    want = jax.eval_shape(lambda: step.init_state(run, jax.random.PRNGKey(0)))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert [(x.shape, x.dtype) for x in jax.tree.leaves(got)] == [(x.shape, x.dtype) for x in jax.tree.leaves(want)]


def test_maybe_initialize_distributed_single_process_is_a_no_op(monkeypatch):
    monkeypatch.setattr(multihost, "_on_cloud_tpu_vm", lambda: False)
    for var in ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                "SCALELAB_COORDINATOR", "SCALELAB_NUM_PROCESSES", "SCALELAB_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    assert multihost.maybe_initialize_distributed() is False
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert multihost.maybe_initialize_distributed() is False
    assert multihost.maybe_initialize_distributed("localhost:1234", 1, 0) is False
    with pytest.raises(ValueError, match="give all three"):
        multihost.maybe_initialize_distributed("localhost:1234")
    assert not jax.distributed.is_initialized()


@pytest.mark.parametrize(
    "env,expected",
    [
        ({"SLURM_NTASKS": "4"}, {}),  # JAX's SLURM detection supplies everything
        ({"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}, {}),  # a TPU slice on GKE
        ({"ON_TPU_VM": "1"}, {}),  # a Cloud TPU VM: JAX reads the slice from the metadata server
        ({"SCALELAB_COORDINATOR": "h0:1234", "SCALELAB_NUM_PROCESSES": "4", "SCALELAB_PROCESS_ID": "2"},
         {"coordinator_address": "h0:1234", "num_processes": 4, "process_id": 2}),
    ],
)
def test_maybe_initialize_distributed_detects_launchers(monkeypatch, env, expected):
    for var in ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                "SCALELAB_COORDINATOR", "SCALELAB_NUM_PROCESSES", "SCALELAB_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(multihost, "_on_cloud_tpu_vm", lambda: "ON_TPU_VM" in env)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert multihost.maybe_initialize_distributed() is True
    assert len(calls) == 1
    args, kwargs = calls[0]
    names = ("coordinator_address", "num_processes", "process_id")
    given = {**dict(zip(names, args)), **{k: v for k, v in kwargs.items() if v is not None}}
    assert given == expected


def test_data_states_round_trip_and_refuse_another_process_count():
    state = {"position": 3, "blob": b"\x00\xff packed"}
    saved = json.loads(json.dumps(multihost.gather_data_states(state)))  # as a JSON checkpoint item
    assert len(saved["hosts"]) == 1
    assert multihost.local_data_state(saved) == state
    # The state lm.train.solo saves without a mesh (one host) is accepted too.
    assert multihost.local_data_state(saved["hosts"][0]) == state
    with pytest.raises(ValueError, match="2 host entries"):
        multihost.local_data_state({"hosts": saved["hosts"] * 2})


# --------------------------------------------------------------- 8 fake devices


@pytest.mark.parametrize("preset,mesh", CASES, ids=[f"{p}-{'x'.join(map(str, m))}" for p, m in CASES])
def test_sharded_train_step_equals_single_device(devices8, preset, mesh):
    got, info = _load(devices8, f"{preset}-{'x'.join(map(str, mesh))}")
    want, ref = _load(devices8, f"{preset}-reference")
    np.testing.assert_allclose(info["loss"], ref["loss"], rtol=1e-6)
    _assert_states_close(got, want)
    # The step's outputs live where the explicit out_shardings say, and something is sharded.
    assert info["specs"] == info["expected_specs"]
    used = " ".join(info["specs"].values())
    for axis, size in zip(sharding.MESH_AXES, mesh):
        if axis in ("fsdp", "tensor", "expert"):
            assert (f"'{axis}'" in used) == (size > 1), (axis, size)


def test_checkpoint_restores_onto_another_mesh_and_training_continues(devices8):
    """Step 1 on (2, 4, 1, 1), save, restore onto (2, 2, 2, 1), step 2 == two single-device steps.

    Also: ``init_sharded_state`` equals ``init_state`` and the sharded validation loss the
    one-device ``lm.train.loop.evaluate``.
    """
    got, info = _load(devices8, "checkpoint")
    want, ref = _load(devices8, "transformer-reference2")
    assert info["restored_equal"] and info["restored_on_new_mesh"] and info["meta_step"] == 1
    assert info["init_sharded_equal"] and info["init_sharded_specs"]
    np.testing.assert_allclose(info["val_loss_sharded"], info["val_loss_plain"], rtol=1e-6)
    np.testing.assert_allclose(info["loss"], ref["loss"], rtol=1e-6)
    _assert_states_close(got, want)


# ---------------------------------------------------------- two processes (Gloo)


def test_two_processes_with_jax_distributed_agree_with_one(workers):
    devices8, processes = workers
    want, ref = _load(devices8, "transformer-reference")
    batches = []
    for i in range(2):
        got, info = _load(processes, f"process{i}")
        assert info["joined"] and info["process_index"] == i and info["process_count"] == 2
        assert (info["device_count"], info["local_device_count"]) == (8, 4)
        assert info["host_shard"] == [i, 2] and info["local_rows"] == 4
        assert info["data_state_hosts"] == 2 and info["data_resumes"]
        np.testing.assert_allclose(info["loss"], ref["loss"], rtol=1e-6)
        _assert_states_close(got, want)
        arrays = np.load(processes / f"process{i}-batch.npz")
        batches.append(arrays["tokens"])
    # The hosts read different rows of the global batch.
    assert not np.array_equal(batches[0], batches[1])
