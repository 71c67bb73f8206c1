"""One command for an accelerator: kernels compiled, timed, the train step's MFU, a short study.

  python -m experiments.accelerator_check [--chinchilla-seconds 120] [--skip-tests] [--out DIR]

On a GPU or TPU (the default JAX backend), in order:
  1. the kernel tests (``tests/pallas_kernels``) with ``interpret=False`` (their
     ``kernel_impl`` fixture adds "pallas" on a device; the interpreter cases are left out);
  2. each kernel against its reference form, forward and forward+backward, at a
     realistic shape (flash_attention, linear_scan, linear_attention, gmm);
  3. the bfloat16 train-step MFU of transformer_512 and griffin: model FLOPs per step
     (``lm.model.counting.train_flops_per_token``, not 6N) over step time and the device's peak;
  4. the chinchilla study (``--preset default``) for at most ``--chinchilla-seconds``.
It is sized for under 8 minutes on one H100 / H200.

On CPU it says that there is no accelerator, runs the lowering checks instead (every
family's sharded train step lowered for TPU and GPU on 8 fake devices, with its kernel
custom calls counted, in a subprocess) and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from experiments.lib.timing import best_time
from pallas_kernels.backend import count_kernel_calls, has_accelerator, platform

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("transformer", "griffin", "hawk", "gla", "retnet", "mla", "moe")
LOWERING_MESHES = ((8, 1, 1, 1), (2, 2, 2, 1))
# Dense bfloat16 peak FLOP/s per chip (vendor data sheets; H100/H200 SXM without sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12,
             "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}


def peak_flops(device) -> float | None:
    """The bf16 peak of ``device`` from :data:`PEAK_BF16` by its device_kind, or None."""
    kind = str(getattr(device, "device_kind", ""))
    return next((v for k, v in PEAK_BF16.items() if k.lower() in kind.lower()), None)


# ---------------------------------------------------------------------- on CPU


def tiny_model(family: str):
    """A test-size model of ``family`` (each mixer once, d_model 64): lowering only."""
    from lm.model.families import with_settings
    from lm.model.presets import get_preset

    base = get_preset(family)
    pattern = "".join(dict.fromkeys(base.pattern))
    model = dataclasses.replace(base, d_model=64, num_heads=4, head_dim=None, d_ff=128, pattern=pattern,
                                num_layers=len(pattern), window=8, moe=dataclasses.replace(base.moe, d_ff=64))
    return with_settings(with_settings(model, "rnn", width=None, heads=None), "la", chunk_size=16)


def lowering_checks() -> dict:
    """Lower every family's sharded train step for TPU and GPU; {case: kernel calls or error}."""
    from lm.train import compiled, sharding
    from lm.data import pipeline as lm_data
    from lm.model.config import RunConfig

    out = {}
    for family in FAMILIES:
        data = lm_data.DataConfig(source="synthetic", seq_len=32, batch_size=8)
        run = RunConfig(model=tiny_model(family), data=data, name=family)
        for shape in LOWERING_MESHES:
            mesh = sharding.make_mesh(shape)
            for target in ("tpu", "gpu"):
                key = f"{family} {'x'.join(map(str, shape))} {target}"
                try:
                    out[key] = count_kernel_calls(compiled.lower_train_step(run, mesh, platform=target).as_text())
                except Exception as exc:  # reported, and the check fails
                    out[key] = f"error: {type(exc).__name__}: {exc}"[:300]
                print(f"  {key:<28} {out[key]}", flush=True)
    return out


def run_lowering_subprocess() -> int:
    """Run :func:`lowering_checks` with 8 fake CPU devices; returns the number of failures."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
    proc = subprocess.run([sys.executable, "-m", "experiments.accelerator_check", "--lowering-only"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    print(proc.stdout, end="")
    if proc.returncode:
        print(proc.stderr[-3000:])
    return proc.returncode


# ------------------------------------------------------------------ on a device


def kernel_tests() -> int:
    """The kernel tests compiled on this device (pytest exit status; 0 = all passed)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/pallas_kernels", "-k", "not interpret"]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def kernel_timings() -> list[dict]:
    """Each kernel vs its reference form, forward and forward+backward (ms)."""
    from pallas_kernels.flash_attention import flash_attention
    from pallas_kernels.gmm import gmm
    from pallas_kernels.linear_attention import linear_attention
    from pallas_kernels.linear_scan import linear_scan

    key = iter(jax.random.split(jax.random.PRNGKey(0), 16))
    normal = lambda shape, dtype=jnp.bfloat16: jax.random.normal(next(key), shape, dtype)  # noqa: E731
    q, k, v = normal((4, 2048, 8, 128)), normal((4, 2048, 8, 128)), normal((4, 2048, 8, 128))
    x, a = normal((8, 4096, 1024), jnp.float32), jax.random.uniform(next(key), (8, 4096, 1024), minval=0.9)
    lq, lk, lv = normal((4, 2048, 8, 128)), normal((4, 2048, 8, 128)), normal((4, 2048, 8, 128))
    g = -jax.nn.softplus(normal((4, 2048, 8), jnp.float32))
    lhs, rhs = normal((8192, 1024)), normal((8, 1024, 1024))
    sizes = jnp.full((8,), 1024, jnp.int32)
    cases = {
        "flash_attention [4,2048,8,128] bf16": (lambda impl: lambda q, k, v: flash_attention(q, k, v, impl=impl), (q, k, v)),
        "linear_scan [8,4096,1024] f32": (lambda impl: lambda x, a: linear_scan(x, a, impl=impl)[0], (x, a)),
        "linear_attention [4,2048,8,128] bf16": (
            lambda impl: lambda q, k, v, g: linear_attention(q, k, v, g=g, impl=impl)[0], (lq, lk, lv, g)),
        "gmm [8192,1024]x[8,1024,1024] bf16": (lambda impl: lambda l, r: gmm(l, r, sizes, impl=impl), (lhs, rhs)),
    }
    rows = []
    for name, (make, args) in cases.items():
        row = {"kernel": name}
        for impl in ("pallas", "reference"):
            fn = make(impl)
            grad = jax.grad(lambda *xs, fn=fn: jnp.sum(fn(*xs).astype(jnp.float32)), argnums=(0, 1))
            row[f"{impl}_fwd_ms"] = 1e3 * best_time(jax.jit(fn), *args, repeats=5)
            row[f"{impl}_fwd_bwd_ms"] = 1e3 * best_time(jax.jit(grad), *args, repeats=5)
        rows.append(row)
        print(f"  {name:<40} fwd {row['pallas_fwd_ms']:8.2f} ms (reference {row['reference_fwd_ms']:8.2f})   "
              f"fwd+bwd {row['pallas_fwd_bwd_ms']:8.2f} ms (reference {row['reference_fwd_bwd_ms']:8.2f})", flush=True)
    return rows


def train_step_mfu(preset: str, *, batch: int = 16, seq_len: int = 1024, steps: int = 10) -> dict:
    """bfloat16 train step of ``preset``: seconds per step and MFU against the device's peak."""
    from lm.train import compiled, sharding
    from lm.data import pipeline as lm_data
    from lm.model import counting as lm_flops
    from lm.data.packing import random_batch
    from lm.model.config import RunConfig
    from lm.model.presets import get_preset

    model = dataclasses.replace(get_preset(preset), dtype="bfloat16")
    run = RunConfig(model=model, data=lm_data.DataConfig(source="synthetic", seq_len=seq_len, batch_size=batch),
                    name=preset)
    mesh = sharding.single_device_mesh()  # the trainers' path: the mesh (1, 1, 1, 1), the compile cache
    state = sharding.init_sharded_state(run, mesh, jax.random.PRNGKey(0))
    batch_arrays = jax.device_put(random_batch(batch, seq_len, model.vocab_size, seed=1),
                                  sharding.batch_sharding(mesh, batch))
    step, _ = compiled.train_step(run, mesh, state, batch_arrays)
    lr, wd = jnp.float32(1e-3), jnp.float32(0.0)
    state, _ = step(state, batch_arrays, lr, wd)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch_arrays, lr, wd)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    flops = lm_flops.train_flops_per_token(model, seq_len) * batch * seq_len
    peak = peak_flops(jax.devices()[0])
    mfu = None if peak is None else flops / seconds / peak
    print(f"  {preset:<16} {seconds * 1e3:8.1f} ms/step  {flops / seconds / 1e12:7.1f} TFLOP/s  "
          f"MFU {'n/a (unknown peak)' if mfu is None else f'{100 * mfu:.1f}%'}", flush=True)
    return {"preset": preset, "step_ms": seconds * 1e3, "model_tflops": flops / seconds / 1e12, "mfu": mfu}


def chinchilla(seconds: float, out: Path) -> dict:
    """The default chinchilla study on the device, stopped after ``seconds`` (it resumes if rerun)."""
    cmd = [sys.executable, "-m", "experiments.chinchilla", "--preset", "default", "--out", str(out), "--no-progress"]
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    try:
        rc = subprocess.run(cmd, cwd=ROOT, timeout=seconds).returncode
        status = "finished" if rc == 0 else f"failed (exit {rc})"
    except subprocess.TimeoutExpired:
        rc, status = 0, f"stopped after {seconds:.0f} s (rerun the command to resume)"
    print(f"  chinchilla: {status} in {time.perf_counter() - start:.0f} s; outputs in {out}", flush=True)
    return {"status": status, "returncode": rc}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chinchilla-seconds", type=float, default=120.0)
    parser.add_argument("--skip-tests", action="store_true", help="skip the kernel tests")
    parser.add_argument("--out", type=Path, default=None, help="chinchilla output directory (default: a temp dir)")
    parser.add_argument("--lowering-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.lowering_only:
        results = lowering_checks()
        return int(any(isinstance(v, str) for v in results.values()))
    if not has_accelerator():
        print(f"no accelerator: the default backend is {platform()!r}. Running the lowering checks "
              "(TPU and GPU programs lowered from this CPU on 8 fake devices, kernel calls counted).")
        failures = run_lowering_subprocess()
        print("lowering checks: " + ("all lowered" if failures == 0 else "FAILED"))
        return 0 if failures == 0 else 1
    print(f"accelerator: {jax.devices()[0].device_kind} ({platform()}), {jax.device_count()} device(s)")
    report = {"device": str(jax.devices()[0].device_kind)}
    if not args.skip_tests:
        report["kernel_tests_exit"] = kernel_tests()
    print("kernels vs reference:")
    report["kernels"] = kernel_timings()
    print("bf16 train step MFU:")
    report["mfu"] = [train_step_mfu("transformer_512"), train_step_mfu("griffin")]
    out = args.out or Path(tempfile.mkdtemp(prefix="accelerator_check_"))
    report["chinchilla"] = chinchilla(args.chinchilla_seconds, out)
    print(json.dumps(report, default=str))
    return int(bool(report.get("kernel_tests_exit")) or bool(report["chinchilla"]["returncode"]))


if __name__ == "__main__":
    raise SystemExit(main())
