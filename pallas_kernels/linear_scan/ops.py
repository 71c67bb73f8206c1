"""``linear_scan``: the public op, its ``jax.custom_vjp`` and the ``impl=`` switch.

h_t = a_t * h_{t-1} + x_t, h_{-1} = h0 (De et al. 2024, "Griffin", arXiv 2402.19427,
eq. 4 is this recurrence with a_t and x_t from the RG-LRU gates).

Backward (the same scan, run in the other direction on the shifted decays): with
g_t = dL/dh_t (total), g_t = dy_t + a_{t+1} g_{t+1} and g_{T-1} = dy_{T-1} + dh_last, so
  grad_x = g,   grad_a_t = g_t * h_{t-1} (h_{-1} = h0),   grad_h0 = a_0 * g_0.
g is a reverse linear scan of dy with decays (a_1, ..., a_{T-1}, 1) started from dh_last;
the kernels ("pallas", "interpret") run their own forward kernel for it; the jnp
reference forms are differentiated by JAX instead (faster on CPU, same math). For ``reverse=True`` all of this mirrors.
h_{t-1} is read back from ``y`` (so in the input dtype, as in recurrentgemma's kernel).

Axis letters: b batch, t time, w width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from pallas_kernels.backend import IMPLS as BASE_IMPLS
from pallas_kernels.backend import kernel_variant, resolve_impl
from pallas_kernels.linear_scan import kernel_gpu, kernel_tpu
from pallas_kernels.linear_scan.reference import REFERENCE_FORMS, carry_dtype, check_shapes

# The CPU form that impl="reference" and impl="auto" on CPU run, chosen by measurement
# (``python -m experiments.bench_linear_scan``, float32, 2 shared CPU cores): the
# sequential lax.scan at unroll 1 (reference.SEQUENTIAL_UNROLL), differentiated by JAX,
# is the plain unroll-1 lax.scan baseline (0.9-1.2x forward, 0.7-1.0x forward+backward at
# [4, 1024, 256], [4|8, 4096, 1024] under load); the associative form's log-depth tree
# does ~2x the work (1.6-2.2x forward, 2-3x forward+backward).
CPU_REFERENCE = "sequential"

# impl values beyond pallas_kernels.backend.IMPLS: pick one reference form explicitly.
REFERENCE_IMPLS = tuple(REFERENCE_FORMS)
IMPLS = (*BASE_IMPLS, *REFERENCE_IMPLS)


def _kernel_for(kernel: str | None):
    """The Pallas kernel function: the accelerator's, or TPU's blocked kernel on CPU."""
    if kernel_variant(kernel, op="linear_scan") == "gpu":
        return kernel_gpu.linear_scan_gpu
    return kernel_tpu.linear_scan_tpu


def resolve_scan_impl(impl: str) -> str:
    """Map ``impl`` to one of "sequential", "associative", "pallas", "interpret"."""
    if impl in REFERENCE_IMPLS:
        return impl
    resolved = resolve_impl(impl, op="linear_scan")
    return CPU_REFERENCE if resolved == "reference" else resolved


def scan_forward(
    x: Float[Array, "b t w"],
    a: Float[Array, "b t w"],
    h0: Float[Array, "b w"],
    *,
    reverse: bool,
    impl: str,
    kernel: str | None = None,
) -> tuple[Float[Array, "b t w"], Float[Array, "b w"]]:
    """The forward scan by a resolved impl, without the custom_vjp (h0 is required).

    ``kernel`` ("tpu" | "gpu") picks the Pallas kernel body for "interpret"/"pallas";
    default: the current accelerator's (the TPU one on CPU).
    """
    if impl in REFERENCE_FORMS:
        return REFERENCE_FORMS[impl](x, a, h0, reverse=reverse)
    if impl not in ("pallas", "interpret"):
        allowed = REFERENCE_IMPLS + ("pallas", "interpret")
        raise ValueError(f"linear_scan: resolved impl={impl!r} is not one of {allowed}")
    return _kernel_for(kernel)(x, a, h0, reverse=reverse, interpret=impl == "interpret")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _linear_scan(x, a, h0, reverse, impl, kernel):
    return scan_forward(x, a, h0, reverse=reverse, impl=impl, kernel=kernel)


def _linear_scan_fwd(x, a, h0, reverse, impl, kernel):
    y, h_last = scan_forward(x, a, h0, reverse=reverse, impl=impl, kernel=kernel)
    return (y, h_last), (a, y, h0)


def _linear_scan_bwd(reverse, impl, kernel, residuals, cotangents):
    a, y, h0 = residuals
    dy, dh_last = cotangents
    acc = h0.dtype
    ones = jnp.ones_like(a[:, :1])
    h0_row = h0[:, None]
    if not reverse:
        a_shifted = jnp.concatenate([a[:, 1:], ones], axis=1)
        h_prev = jnp.concatenate([h0_row, y[:, :-1].astype(acc)], axis=1)
        a_first = a[:, 0]
    else:
        a_shifted = jnp.concatenate([ones, a[:, :-1]], axis=1)
        h_prev = jnp.concatenate([y[:, 1:].astype(acc), h0_row], axis=1)
        a_first = a[:, -1]
    # The adjoint scan's own h_last is g at the recurrence's first step, in the carry dtype.
    g, g_first = scan_forward(dy, a_shifted, dh_last.astype(acc), reverse=not reverse, impl=impl, kernel=kernel)
    grad_x = g.astype(dy.dtype)
    grad_a = (g.astype(acc) * h_prev).astype(a.dtype)
    grad_h0 = a_first.astype(acc) * g_first
    return grad_x, grad_a, grad_h0


_linear_scan.defvjp(_linear_scan_fwd, _linear_scan_bwd)


def linear_scan(
    x: Float[Array, "b t w"],
    a: Float[Array, "b t w"],
    h0: Float[Array, "b w"] | None = None,
    *,
    reverse: bool = False,
    impl: str = "auto",
    kernel: str | None = None,
) -> tuple[Float[Array, "b t w"], Float[Array, "b w"]]:
    """Diagonal linear recurrence h_t = a_t * h_{t-1} + x_t over the time axis.

    Args:
      x: inputs [b, t, w] (float32 or bfloat16).
      a: decays [b, t, w], same shape as x (a_t = 0 resets the state at step t).
      h0: initial state [b, w] (zeros if None): h_{-1} = h0, or h_T = h0 if reverse.
      reverse: run from the end, h_t = a_t * h_{t+1} + x_t.
      impl: "auto" (Pallas on TPU/GPU, the fastest reference form on CPU), "reference"
        (that reference form), "sequential" / "associative" (a named reference form),
        "pallas" (compiled kernel) or "interpret" (the kernel in the Pallas interpreter).
      kernel: "tpu" or "gpu" kernel body for "pallas"/"interpret" (default: the
        accelerator's; the TPU body on CPU).

    Returns:
      y [b, t, w] in x's dtype (every h_t, rounded once from the float32 carry) and
      h_last [b, w] in float32 (h_{T-1}, or h_0 if reverse); float64 inputs (reference
      impls only, under ``jax.enable_x64``) keep a float64 carry.
    """
    check_shapes(x, a)
    acc = carry_dtype(x.dtype)
    if h0 is None:
        h0 = jnp.zeros((x.shape[0], x.shape[2]), acc)
    elif h0.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"linear_scan: h0 has shape {h0.shape}, expected (b, w) = {(x.shape[0], x.shape[2])}")
    resolved = resolve_scan_impl(impl)
    if resolved in ("pallas", "interpret") and acc != jnp.float32:
        raise ValueError(f"linear_scan: impl={impl!r} (Pallas) takes float32/bfloat16 inputs, got {x.dtype}")
    if resolved in REFERENCE_FORMS:
        # A jnp form is differentiated by JAX itself: the transpose of lax.scan needs no
        # shifted copies of a and y, which made the custom backward 1.1-1.3x slower than
        # autodiff on CPU (bench_linear_scan); the math of the custom rule below is the same.
        return REFERENCE_FORMS[resolved](x, a, h0.astype(acc), reverse=reverse)
    return _linear_scan(x, a, h0.astype(acc), reverse, resolved, kernel)
