"""RMSNorm (Zhang & Sennrich 2019), in the zero-centred-scale form of Gemma and Griffin.

y = x / sqrt(mean(x^2) + eps) * (1 + scale), scale initialised to zero, statistics in float32.

Axis letters: ... any leading axes, d normalised feature axis.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from layers.partitioning import param


def rms_normalize(x: Float[Array, "... d"], eps: float = 1e-6) -> Float[Array, "... d"]:
    """x / sqrt(mean(x^2) + eps), computed in float32, returned in float32."""
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis with a learned (1 + scale) gain.

    Attributes:
      eps: added to the mean square.
      axis_name: logical axis name of the normalised dimension (for sharding rules).
      dtype: output dtype (None: the input's dtype).
    """

    eps: float = 1e-6
    axis_name: str | None = "embed"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        scale = param(self, "scale", nn.initializers.zeros_init(), (x.shape[-1],), (self.axis_name,), self.param_dtype)
        y = rms_normalize(x, self.eps) * (1.0 + scale.astype(jnp.float32))
        return y.astype(self.dtype or x.dtype)
