"""Real-Gated Linear Recurrent Unit (RG-LRU) of Griffin/Hawk.

De et al. 2024, "Griffin: Mixing Gated Linear Recurrences with Local Attention"
(arXiv 2402.19427), section 2.4, eqs. (1)-(4), as in the public recurrentgemma JAX
release (parameter names ``a_param``, ``input_gate/{w,b}``, ``a_gate/{w,b}``):

  r_t = sigmoid(W_a x_t + b_a)                      recurrence gate   (eq. 1)
  i_t = sigmoid(W_x x_t + b_x)                      input gate        (eq. 2)
  a_t = a^(c r_t),  a = sigmoid(-Lambda) = exp(-softplus(Lambda)),  c = 8   (eq. 3)
  h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * x_t)                         (eq. 4)

W_a, W_x are block-diagonal (one block per head). At a document start (position 0) the
state is reset: a_t = 0 and the sqrt(1 - a_t^2) multiplier is 1. The derivative of the
sqrt is evaluated at max(1 - a_t^2, 1 / (4 * 1000^2)), i.e. bounded by 1000, so bfloat16
training does not produce NaNs. The recurrence itself is
:func:`pallas_kernels.linear_scan.linear_scan` (``impl=`` picks its implementation).

Deviation from recurrentgemma, for precision only: log a_t, a_t and the multiplier are
computed in float32 whatever ``dtype`` (recurrentgemma rounds a_t to ``dtype``, which in
bfloat16 turns a = 0.999 into 1.0); float32 results are identical.

Axis letters: b batch, t time, w width (= heads * block width), h heads,
i/j input/output channel within a block.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Float, Int

from layers.partitioning import param, shard_kernel
from pallas_kernels.linear_scan import linear_scan

_BTW = ("batch", "length", "rnn")  # logical axes of the scan's [b, t, w] inputs

# c in a_t = a^(c r_t) (Griffin eq. 3).
GATE_EXPONENT = 8.0
# Bound on d sqrt(x) / dx used by the normalisation multiplier (recurrentgemma: 1000).
MAX_SQRT_GRADIENT = 1000.0
# Ring of the initial base decay a = exp(-softplus(Lambda)) (Griffin appendix A).
MIN_RADIUS, MAX_RADIUS = 0.9, 0.999


def rnn_param_init(min_rad: float = MIN_RADIUS, max_rad: float = MAX_RADIUS, eps: float = 1e-8):
    """Initialiser of Lambda: a = exp(-softplus(Lambda)) uniform on the ring [min_rad, max_rad] by area.

    a^2 is uniform in [min_rad^2, max_rad^2]; Lambda = softplus^{-1}(-log a).
    """

    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        unif = jax.random.uniform(key, shape=shape)
        log_a = 0.5 * jnp.log(unif * (max_rad**2 - min_rad**2) + min_rad**2 + eps)
        return jnp.log(jnp.exp(-log_a) - 1.0).astype(dtype)

    return init


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def sqrt_bound_derivative(x: jax.Array, max_gradient: float) -> jax.Array:
    """sqrt(x) whose derivative is taken at max(x, 1 / (4 max_gradient^2)), so it is <= max_gradient."""
    del max_gradient
    return jnp.sqrt(x)


def _sqrt_fwd(x, max_gradient):
    del max_gradient
    return jnp.sqrt(x), x


def _sqrt_bwd(max_gradient, x, g):
    x_clipped = jnp.maximum(x, 1.0 / (4.0 * max_gradient**2))
    return (g / (2.0 * jnp.sqrt(x_clipped)),)


sqrt_bound_derivative.defvjp(_sqrt_fwd, _sqrt_bwd)


class BlockDiagonalLinear(nn.Module):
    """y = x W + b with W block-diagonal: ``num_blocks`` independent [w/h, w/h] blocks.

    Attributes:
      width: input = output width w (divisible by num_blocks).
      num_blocks: number of diagonal blocks h (the RG-LRU heads).
      w_init_variance_scale: variance scale of the fan-in normal init of w.
    Params: w [h, i, j], b [h, j] (zeros).
    """

    width: int
    num_blocks: int
    w_init_variance_scale: float = 1.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        if self.num_blocks <= 0 or self.width % self.num_blocks:
            raise ValueError(
                f"BlockDiagonalLinear.num_blocks={self.num_blocks} must be positive and divide width={self.width}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, x: Float[Array, "b t w"]) -> Float[Array, "b t w"]:
        block = self.width // self.num_blocks
        init = nn.initializers.variance_scaling(self.w_init_variance_scale, "fan_in", "normal")
        w = param(self, "w", init, (self.num_blocks, block, block), ("heads", None, None), self.param_dtype)
        b = param(self, "b", nn.initializers.zeros_init(), (self.num_blocks, block), ("heads", None), self.param_dtype)
        x_bthi = rearrange(x.astype(self.dtype), "b t (h i) -> b t h i", h=self.num_blocks)
        y_bthj = jnp.einsum("bthi,hij->bthj", x_bthi, w.astype(self.dtype)) + b.astype(self.dtype)
        return rearrange(y_bthj, "b t h j -> b t (h j)")


class RGLRU(nn.Module):
    """The RG-LRU layer (Griffin eqs. 1-4); see the module docstring.

    Attributes:
      width: recurrence width w.
      num_heads: diagonal blocks of the input and recurrence gates.
      w_init_variance_scale: init scale of the gates' block-diagonal weights.
      impl: ``linear_scan`` implementation ("auto", "reference", "sequential",
        "associative", "pallas", "interpret").
    Params: a_param [w] (Lambda), input_gate/{w, b}, a_gate/{w, b}.
    """

    width: int
    num_heads: int
    w_init_variance_scale: float = 1.0
    impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        if self.num_heads <= 0 or self.width % self.num_heads:
            raise ValueError(f"RGLRU.num_heads={self.num_heads} must be positive and divide width={self.width}")
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t w"],
        *,
        positions: Int[Array, "b t"],
        cache: Float[Array, "b w"] | None = None,
    ) -> tuple[Float[Array, "b t w"], Float[Array, "b w"] | None]:
        """Run the recurrence over t steps.

        Args:
          x: inputs [b, t, w].
          positions: int32 [b, t] per-document positions; 0 marks a document start.
          cache: float32 [b, w] state h before the first step (None: zeros, training).

        Returns:
          y [b, t, w] in ``dtype`` and the new state float32 [b, w] (None if cache is None).
        """
        a_param = param(self, "a_param", rnn_param_init(), (self.width,), ("rnn",), self.param_dtype)
        gate = functools.partial(
            BlockDiagonalLinear,
            width=self.width,
            num_blocks=self.num_heads,
            w_init_variance_scale=self.w_init_variance_scale,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        x = x.astype(self.dtype)
        gate_x = jax.nn.sigmoid(gate(name="input_gate")(x))
        gate_a = jax.nn.sigmoid(gate(name="a_gate")(x))

        log_a = -GATE_EXPONENT * gate_a.astype(jnp.float32) * jax.nn.softplus(a_param.astype(jnp.float32))
        reset = (positions == 0)[..., None]
        a = jnp.where(reset, 0.0, jnp.exp(log_a))
        multiplier = sqrt_bound_derivative(1.0 - jnp.exp(2.0 * log_a), MAX_SQRT_GRADIENT)
        multiplier = jnp.where(reset, 1.0, multiplier)
        normalized_x = (x * gate_x).astype(jnp.float32) * multiplier

        scan = shard_kernel(
            lambda x, a, h0: linear_scan(x, a, h0, impl=self.impl),
            (_BTW, _BTW, ("batch", "rnn")), (_BTW, ("batch", "rnn")),
        )
        y, h_last = scan(normalized_x.astype(self.dtype), a, cache)
        return y, (None if cache is None else h_last)

    def init_cache(self, batch: int, max_len: int | None = None, dtype=jnp.float32) -> Float[Array, "b w"]:
        """Zero state float32 [batch, width] (constant size: max_len and dtype unused)."""
        del max_len, dtype
        return jnp.zeros((batch, self.width), jnp.float32)
