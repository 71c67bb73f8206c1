"""Acceptance of families as plugins (issue 27 §3): the toy family with settings, installed as an
entry point of a test-only distribution (``tests/lm/conftest.py``), trains, resumes, counts its
FLOPs and shards, each in a fresh process that knows it only from the run's config.json.

  process 1  ``experiments.train``'s run, stopped after step 3 (step 2 checkpointed)
  process 2  4 fake CPU devices: reads config.json (the entry point loads then), counts the FLOPs,
             places the parameters on a (1, 2, 2, 1) mesh, and resumes the run sharded to step 4
  this one   the same run uninterrupted on one device (``experiments.train``), the reference
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import train as train_cli
from lm.model.families import MIXERS
from lm.model.counting import train_flops_per_token
from tests.lm.conftest import TOY_MODULE

ROOT = Path(__file__).resolve().parents[2]
ARGV = ["--name", "toy", "--model.pattern", "TA", "--model.families.toy.width", "12", "--model.families.toy.gate",
        "true", "--model.d_model", "16", "--model.num_layers", "2", "--model.num_heads", "2", "--model.d_ff", "32",
        "--data.source", "synthetic", "--data.seq_len", "16", "--data.batch_size", "4",
        "--data.synthetic_doc_len", "24", "--train.steps", "4", "--train.checkpoint_every", "2",
        "--train.eval_every", "4", "--train.eval_batches", "1", "--train.progress", "false", "--sample-tokens", "0"]

STOPPED = """
import sys
from experiments import train as cli
from lm.train import solo as train

class Stop(Exception):
    pass

def stop(done, total, metrics):
    if done == 3:
        raise Stop

run = cli.run_config(cli.build_parser().parse_args(sys.argv[2:]))
try:
    train.train(run, sys.argv[1], progress=stop)
except Stop:
    print("stopped")
"""

RESUMED = """
import json, sys
import jax
assert {module!r} not in sys.modules
from lm.train import records
run = records.read_config(sys.argv[1])  # the first that names "T": its entry point loads now
assert {module!r} in sys.modules
from lm.model import counting as flops
from lm.train import sharding, solo as train
mesh = sharding.make_mesh((1, 2, 2, 1))
shardings = sharding.param_shardings(run.model, mesh)
paths = jax.tree_util.tree_flatten_with_path(shardings)[0]
specs = {{jax.tree_util.keystr(p): tuple(s.spec) for p, s in paths if "TokenShift" in jax.tree_util.keystr(p)}}
result = train.train(run, sys.argv[1], mesh=mesh)
print(json.dumps({{"flops_per_token": flops.train_flops_per_token(run.model, run.data.seq_len),
                  "specs": {{k: [list(a) if isinstance(a, tuple) else a for a in v] for k, v in specs.items()}},
                  "result": result}}))
"""


def _env(site: Path, devices: int = 1) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}", "JAX_PLATFORMS": "cpu"}
    # the optimisation level (0) comes with XLA_FLAGS: tests/conftest.py
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    return env


def _python(code: str, args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return out.strip().splitlines()[-1]


def test_an_installed_family_trains_resumes_counts_and_shards_in_fresh_processes(tmp_path, toy_family):
    run_dir = tmp_path / "stopped" / "toy"
    assert _finish(_python(STOPPED, [str(run_dir), "--out", str(tmp_path / "stopped"), *ARGV], _env(toy_family))) \
        == "stopped"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["schema_version"] == 2 and saved["model"]["families"] == {"toy": {"width": 12, "gate": True}}
    resumed = _python(RESUMED.format(module=TOY_MODULE), [str(run_dir)], _env(toy_family, devices=4))
    reference = train_cli.main(["--out", str(tmp_path / "reference"), *ARGV])  # meanwhile, in this process
    got = json.loads(_finish(resumed))

    # FLOPs: T's forward is W_a, W_b, W_g (d x w) and W_o (w x d), 2 FLOPs per weight; training 3x forward
    d, w, t = 16, 12, 16
    attention = MIXERS["A"].flops
    run = train_cli.run_config(train_cli.build_parser().parse_args(["--out", "x", *ARGV]))
    expected = train_flops_per_token(dataclasses.replace(run.model, pattern="A"), t) \
        + 3 * (2 * 4 * d * w - attention(run.model, t, "causal"))
    assert got["flops_per_token"] == pytest.approx(expected)
    assert got["result"]["flops"] == pytest.approx(reference["flops"]) == pytest.approx(expected * 4 * 4 * t)

    # sharding: the toy's own logical axis "toy" goes to the tensor axis, FSDP takes the model width
    specs = {path.rsplit("[", 1)[1].strip("[]'"): spec for path, spec in got["specs"].items()}  # one T block
    assert specs == {"w_a": ["fsdp", "tensor"], "w_b": ["fsdp", "tensor"], "w_g": ["fsdp", "tensor"],
                     "w_o": ["tensor", "fsdp"]}, got["specs"]

    # resumed from the checkpoint of step 2, sharded, to the uninterrupted run's loss
    assert got["result"]["resumed_from"] == 2 and got["result"]["steps"] == 4
    np.testing.assert_allclose(got["result"]["final_val_loss"], reference["final_val_loss"], rtol=1e-4)
