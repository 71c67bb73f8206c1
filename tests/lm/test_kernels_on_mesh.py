"""The Pallas kernels under the mesh, tested from this CPU (issue: kernels under the mesh).

Every kernel call runs inside ``jax.shard_map`` (``layers.partitioning.shard_kernel``), so
the sharded train step of every family lowers for TPU (Mosaic) and GPU (Triton) on 8
fake CPU devices, and the lowered program runs the expected number of kernel custom
calls: per block and train step, 3 for softmax attention (forward, dq, dkv: A, W, M), 2
for the RG-LRU scan (forward, reverse scan of the backward: R), 1 for linear attention
(forward kernel, reference backward: L) and 9 for a dropless MoE feed-forward (3 grouped
matmuls forward, 3 gmm + 3 tgmm backward). Decoding runs only forward kernels: the scan
(R: 1) and the MoE (3) in prefill and decode_step, linear attention in a prefill at least
one chunk long (L: 1); attention with a cache passes explicit positions, which the
attention kernel does not take (the documented reference fallback: 0).

Then, with every kernel in the Pallas interpreter, one train step of each family on the
mesh (2, 2, 2, 1) equals the single-device reference step.

The 8-device work runs in subprocesses (``tests/lm/kernel_mesh_worker.py``) so this process
keeps one device; they start together and share the two cores.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lm.presets import get_preset
from tests.lm.test_sharding import ROOT, _env

FAMILIES = ("transformer", "griffin", "hawk", "gla", "retnet", "mla", "moe")
MESHES = ((8, 1, 1, 1), (2, 4, 1, 1), (2, 2, 2, 1))
PLATFORMS = ("tpu", "gpu")
TRAIN_PER_BLOCK = {"A": 3, "W": 3, "M": 3, "R": 2, "L": 1}
DECODE_PER_BLOCK = {"prefill": {"R": 1, "L": 1}, "decode": {"R": 1}}
MOE_TRAIN, MOE_DECODE = 9, 3

TRAIN_CASES = [
    (family, mesh, platform, "train")
    for family in FAMILIES
    for mesh in MESHES + (((2, 1, 1, 4),) if family == "moe" else ())
    for platform in PLATFORMS
]
DECODE_CASES = [(family, (8, 1, 1, 1), platform, kind)
                for family in FAMILIES for platform in PLATFORMS for kind in ("prefill", "decode")]


def _key(case) -> str:
    family, mesh, platform, kind = case
    return f"{family}|{'x'.join(map(str, mesh))}|{platform}|{kind}"


def expected_kernel_calls(family: str, kind: str) -> int:
    """Kernel custom calls of the test-size model (each mixer of the pattern once)."""
    base = get_preset(family)
    letters = "".join(dict.fromkeys(base.pattern))
    table = TRAIN_PER_BLOCK if kind == "train" else DECODE_PER_BLOCK[kind]
    moe = (MOE_TRAIN if kind == "train" else MOE_DECODE) if base.moe_every else 0
    return sum(table.get(letter, 0) + moe for letter in letters)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("kernels_on_mesh")
    cases = TRAIN_CASES + DECODE_CASES
    groups = {"lower0": cases[0::2], "lower1": cases[1::2]}
    procs = {
        name: _worker_module(["lower", str(out / f"{name}.json"), json.dumps(group)])
        for name, group in groups.items()
    }
    procs["interpret"] = _worker_module(["interpret", str(out / "interpret.json"), json.dumps(FAMILIES)])
    merged = {}
    try:
        for name, proc in procs.items():
            text, _ = proc.communicate(timeout=1200)
            assert proc.returncode == 0, f"{name} worker failed:\n{text[-6000:]}"
            merged.update(json.loads((out / f"{name}.json").read_text()))
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return merged


def _worker_module(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.lm.kernel_mesh_worker", *args],
        cwd=ROOT, env=_env(8), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.parametrize("case", TRAIN_CASES + DECODE_CASES, ids=_key)
def test_lowers_for_accelerators_with_the_kernels(results, case):
    got = results[_key(case)]
    assert not isinstance(got, str), got
    assert got == expected_kernel_calls(case[0], case[3])


def test_expected_counts_see_every_kernel():
    """The table is not vacuous: every family's train step runs a kernel, and all four ops appear."""
    assert all(expected_kernel_calls(f, "train") > 0 for f in FAMILIES)
    assert expected_kernel_calls("moe", "train") == 3 + 9
    assert expected_kernel_calls("griffin", "decode") == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_interpreted_kernels_equal_single_device_reference(results, family):
    got = results[family]
    assert not isinstance(got, str), got
    sharded, reference = got["loss"]
    assert abs(sharded - reference) <= 1e-6 * abs(reference)
    assert got["worst_ratio"] <= 1.0, got
