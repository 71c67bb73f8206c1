"""Depthwise causal temporal convolution of the Griffin/Hawk recurrent block.

De et al. 2024, "Griffin" (arXiv 2402.19427), section 2.4 / figure 2(c), as in the public
recurrentgemma JAX release (params ``w`` [temporal_width, width], ``b`` [width]):

  y_t = b + sum_{j=0}^{k-1} w[k-1-j] * x_{t-j} * [positions_t >= j]

with k = temporal_width (4 in Griffin). The mask keeps every tap inside the current
document (tap j back is valid only if the document started at least j steps ago), so
packed sequences never mix. Decode keeps the last k - 1 inputs as its cache; the cache
of a fresh sequence is zeros, which is also the zero padding of the training pass.

Axis letters: b batch, t time, w width, k temporal width (taps).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from layers.partitioning import param


class Conv1D(nn.Module):
    """Causal depthwise conv over time with document masking and a decode cache.

    Attributes:
      width: channels w.
      temporal_width: taps k (>= 1).
      w_init_variance_scale: variance scale of the fan-in normal init of w
        (recurrentgemma: 0.01).
    Params: w [k, w], b [w] (zeros).
    """

    width: int
    temporal_width: int = 4
    w_init_variance_scale: float = 0.01
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        if self.temporal_width < 1:
            raise ValueError(f"Conv1D.temporal_width={self.temporal_width} must be >= 1")
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t w"],
        *,
        positions: Int[Array, "b t"],
        cache: Float[Array, "b k-1 w"] | None = None,
    ) -> tuple[Float[Array, "b t w"], Float[Array, "b k-1 w"] | None]:
        """Convolve t new steps.

        Args:
          x: inputs [b, t, w].
          positions: int32 [b, t] per-document positions (0 = document start).
          cache: the k - 1 inputs before x, [b, k - 1, w] (None: training, zeros).

        Returns:
          y [b, t, w] in ``dtype`` and the new cache (the last k - 1 inputs, in the cache's
          dtype), or None when cache is None.
        """
        k = self.temporal_width
        init = nn.initializers.variance_scaling(self.w_init_variance_scale, "fan_in", "normal")
        w = param(self, "w", init, (k, self.width), ("conv", "rnn"), self.param_dtype).astype(self.dtype)
        b = param(self, "b", nn.initializers.zeros_init(), (self.width,), ("rnn",), self.param_dtype).astype(self.dtype)

        x = x.astype(self.dtype)
        batch, t, _ = x.shape
        past = jnp.zeros((batch, k - 1, self.width), self.dtype) if cache is None else cache.astype(self.dtype)
        x_ext = jnp.concatenate([past, x], axis=1)  # [b, k - 1 + t, w]

        y = jnp.broadcast_to(b, x.shape)
        for j in range(k):
            x_back = x_ext[:, k - 1 - j : k - 1 - j + t]  # x_{t - j}
            valid = (positions >= j)[..., None]
            y = y + jnp.where(valid, x_back * w[k - 1 - j], 0.0).astype(self.dtype)
        new_cache = None if cache is None else x_ext[:, t:].astype(cache.dtype)
        return y, new_cache

    def init_cache(self, batch: int, max_len: int | None = None, dtype=jnp.float32) -> Float[Array, "b k-1 w"]:
        """Zeros [batch, k - 1, width] in ``dtype`` (constant size: max_len unused)."""
        del max_len
        return jnp.zeros((batch, self.temporal_width - 1, self.width), dtype)
