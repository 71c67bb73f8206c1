"""Reference forms of the diagonal linear recurrence h_t = a_t * h_{t-1} + x_t.

The core of the RG-LRU (De et al. 2024, "Griffin", arXiv 2402.19427, eq. 4) and of
every diagonal linear RNN. Two readable pure-JAX algorithms that compute the same thing:

* :func:`linear_scan_sequential`: ``lax.scan`` over time, one multiply-add per step
  (T sequential steps, O(T) work).
* :func:`linear_scan_associative`: ``lax.associative_scan`` with the operator
  (a_i, x_i) . (a_j, x_j) = (a_j a_i, a_j x_i + x_j) (Blelloch 1990; log T depth).

Both keep the carry in float32 whatever the input dtype (float64 for float64 inputs,
used by finite-difference tests); ``y`` comes back in the input dtype and ``h_last`` in
the carry dtype. They are the source of truth for the Pallas kernels
and the CPU path of :func:`pallas_kernels.linear_scan.linear_scan`.

Axis letters: b batch, t time, w width (channels).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Float


def carry_dtype(dtype) -> jnp.dtype:
    """The accumulation dtype: float32, or float64 for float64 inputs (x64 tests)."""
    return jnp.promote_types(dtype, jnp.float32)

# Steps per iteration of the sequential scan's loop, chosen by measurement
# (``python -m experiments.bench_linear_scan``, float32, 2 shared CPU cores): unrolling
# does not pay on XLA:CPU. At [4, 1024, 256] unroll 4 / 8 were 2.3x / 3.2x slower forward
# and 1.7x / 4.2x slower forward+backward than unroll 1 (and unroll 8 compiled for
# minutes); at [4|8, 4096, 1024] unroll 8 was measured 1.26-1.49x slower than unroll 1.
SEQUENTIAL_UNROLL = 1


def _initial_state(x: Float[Array, "b t w"], h0: Float[Array, "b w"] | None) -> Float[Array, "b w"]:
    if h0 is None:
        return jnp.zeros((x.shape[0], x.shape[2]), carry_dtype(x.dtype))
    if h0.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"linear_scan: h0 has shape {h0.shape}, expected (b, w) = {(x.shape[0], x.shape[2])}")
    return h0.astype(carry_dtype(x.dtype))


def check_shapes(x, a) -> None:
    """Raise ValueError unless x and a are both [b, t, w] of one shape."""
    if x.ndim != 3 or x.shape != a.shape:
        raise ValueError(f"linear_scan: x {x.shape} and a {a.shape} must both be [b, t, w] with equal shapes")


@functools.partial(jax.jit, static_argnames=("reverse", "unroll"))
def linear_scan_sequential(
    x: Float[Array, "b t w"],
    a: Float[Array, "b t w"],
    h0: Float[Array, "b w"] | None = None,
    *,
    reverse: bool = False,
    unroll: int = SEQUENTIAL_UNROLL,
) -> tuple[Float[Array, "b t w"], Float[Array, "b w"]]:
    """h_t = a_t * h_{t-1} + x_t by ``lax.scan`` (float32 carry).

    Args:
      x: inputs [b, t, w].
      a: decays [b, t, w] (same shape as x).
      h0: initial state [b, w] (zeros if None); h_{-1} = h0, or h_T = h0 if reverse.
      reverse: run from the end: h_t = a_t * h_{t+1} + x_t.
      unroll: time steps per loop iteration (``lax.scan``'s unroll).

    Returns:
      y [b, t, w] (all h_t, in x's dtype) and h_last [b, w] float32 (h_{T-1}, or h_0 if
      reverse).
    """
    check_shapes(x, a)
    h = _initial_state(x, h0)

    def step(h_prev, xa):
        x_t, a_t = xa
        h_t = a_t * h_prev + x_t
        return h_t, h_t

    # Converting once outside the loop: per-step bfloat16 converts are ~10x slower on CPU.
    xs = (rearrange(x, "b t w -> t b w").astype(h.dtype), rearrange(a, "b t w -> t b w").astype(h.dtype))
    h_last, y = jax.lax.scan(step, h, xs, reverse=reverse, unroll=max(1, min(unroll, x.shape[1])))
    return rearrange(y, "t b w -> b t w").astype(x.dtype), h_last


@functools.partial(jax.jit, static_argnames=("reverse",))
def linear_scan_associative(
    x: Float[Array, "b t w"],
    a: Float[Array, "b t w"],
    h0: Float[Array, "b w"] | None = None,
    *,
    reverse: bool = False,
) -> tuple[Float[Array, "b t w"], Float[Array, "b w"]]:
    """h_t = a_t * h_{t-1} + x_t by ``lax.associative_scan`` (float32 throughout).

    Same contract as :func:`linear_scan_sequential`. ``h0`` is folded into the first
    element of the scan (x_0 <- x_0 + a_0 * h0), which leaves a_0 untouched.
    """
    check_shapes(x, a)
    h = _initial_state(x, h0)
    xf, af = x.astype(h.dtype), a.astype(h.dtype)
    first = -1 if reverse else 0
    xf = xf.at[:, first].add(af[:, first] * h)

    def combine(earlier, later):
        a_i, x_i = earlier
        a_j, x_j = later
        return a_j * a_i, a_j * x_i + x_j

    _, y = jax.lax.associative_scan(combine, (af, xf), reverse=reverse, axis=1)
    h_last = y[:, 0] if reverse else y[:, -1]
    return y.astype(x.dtype), h_last


REFERENCE_FORMS = {
    "sequential": linear_scan_sequential,
    "associative": linear_scan_associative,
}
