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
mesh (2, 2, 2, 1) is as close to the exact (float64) step as the single-device float32
reference step is: the error model of
:func:`test_sharded_interpreted_kernels_equal_single_device_reference`.

The 8-device work runs in subprocesses (``tests/lm/kernel_mesh_worker.py``) so this process
keeps one device; they start together and share the two cores. Under xdist this module and
tests/lm/test_sharding.py are one unit of work (``tests/conftest.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lm.model.presets import get_preset
from tests.lm.test_sharding import ROOT, _env

FAMILIES = ("transformer", "griffin", "hawk", "gla", "retnet", "mla", "moe")
MESHES = ((8, 1, 1, 1), (2, 4, 1, 1), (2, 2, 2, 1))
PLATFORMS = ("tpu", "gpu")
TRAIN_PER_BLOCK = {"A": 3, "W": 3, "M": 3, "R": 2, "L": 1}
DECODE_PER_BLOCK = {"prefill": {"R": 1, "L": 1}, "decode": {"R": 1}}
MOE_TRAIN, MOE_DECODE = 9, 3
# Error model of the sharded step (see the test): sharded error <= FACTOR x single-device error
# + FLOOR_ULPS float32 ulps of the leaf's largest magnitude (LOSS_FLOOR_ULPS for the loss).
FACTOR, FLOOR_ULPS, LOSS_FLOOR_ULPS = 4.0, 64, 8
EPS32 = float(np.finfo(np.float32).eps)

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


def error_excess(sharded: float, single: float, scale: float, floor_ulps: float) -> float:
    """sharded / (FACTOR single + floor_ulps eps32 scale): the error model's ratio (<= 1 passes).

    ``sharded`` and ``single`` are errors against the float64 step, ``scale`` the largest
    magnitude of the exact value.
    """
    bound = FACTOR * single + floor_ulps * EPS32 * scale
    return sharded / bound if bound > 0 else (0.0 if sharded == 0 else float("inf"))


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_interpreted_kernels_equal_single_device_reference(results, family):
    """The sharded step is no further from the exact step than float32 puts the single-device one.

    Both float32 steps are compared with the same step in float64 (the reference path,
    every float32 of the model, loss and optimiser widened; ``kernel_mesh_worker``). Per
    state leaf (parameters, Adam moments, step), with e = max |x - exact| over the leaf:

        e_sharded <= FACTOR e_single + FLOOR_ULPS eps32 max |exact|,   FACTOR 4, FLOOR_ULPS 64

    and for the loss FACTOR |L_single - L| + LOSS_FLOOR_ULPS eps32 |L| with 8 ulps.

    Why a model and not a fixed tolerance (issue 23): one Adam step turns a gradient g of
    about eps = 1e-3 into lr g / (|g| + eps), so lr / eps = 10 times a gradient's rounding
    error reaches the parameter. GLA's float32 gradients are least accurate at document
    starts, where the state restarts: the embedding row of token 257, which starts the
    batch's rows, gets -8.6e-6 single-device and -1.20e-5 sharded for an exact -1.05e-5;
    the two float32 parameters then differ by 3.1e-5, 1.77 times the former fixed bound
    (1e-5 + 1e-4 |w|), while each is as far from the exact value (1.75e-5 single-device,
    1.69e-5 sharded). The sharded path is not wrong; float32 is.

    Constants, from the 7 families on this machine, measured on the meshes (2, 2, 2, 1),
    (8, 1, 1, 1) and (2, 4, 1, 1) and at XLA's default and zeroth optimisation level: the
    largest e_sharded / e_single where the single-device error is well above the floor
    is 2.1 (GLA's b_decay Adam moment); where it is not, e_sharded reaches 40 ulps (a
    Griffin bias: 40 ulps of its largest value, 4.7e-8); FACTOR 4 and 64 ulps keep every
    leaf below half the bound (worst 0.51). Loss errors are at most 1.2 ulps sharded and
    6 single-device (worst ratio 0.14 with 8 ulps). The model still sees small errors
    of the sharded path: GLA's per-key log-decays off by a relative 1e-5 inside the
    sharded kernel only give a worst ratio of 1.3 (1e-4: 5.2, 1e-3: 49).
    """
    got = results[family]
    assert not isinstance(got, str), got
    loss = got["loss"]
    loss_excess = error_excess(abs(loss["sharded"] - loss["exact"]), abs(loss["single"] - loss["exact"]),
                               abs(loss["exact"]), LOSS_FLOOR_ULPS)
    assert loss_excess <= 1.0, loss
    excess = {leaf: error_excess(*errors, FLOOR_ULPS) for leaf, errors in got["leaves"].items()}
    worst = max(excess, key=excess.get)
    assert excess[worst] <= 1.0, (worst, got["leaves"][worst], excess[worst])
