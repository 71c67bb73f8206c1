"""A mixer family defined outside ``lm/``: the token-shift mixer "T", registered with one spec.

y_t = x_t W_a + x_{t-1} W_b within a document (x_{-1} = 0 at a document start), the
simplest mixer with a decode cache (the last token). It exists to test that a family
needs nothing but a :class:`lm.mixers.MixerSpec` and one :func:`lm.mixers.register_mixer`
call: the model, the decoder, the FLOP counter and ``experiments.train`` all take it.

Axis letters: b batch, t time, d model width.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from layers.partitioning import param
from lm.mixers import MIXERS, MixerSpec, compute_dtype, register_mixer

LETTER = "T"


class TokenShift(nn.Module):
    """y_t = x_t W_a + x_{t-1} W_b, the previous token zero at a document start; cache {"last": [b, d]}."""

    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t d"],
        *,
        segment_ids: Int[Array, "b t"],
        positions: Int[Array, "b t"],
        cache: dict | None = None,
    ) -> tuple[Float[Array, "b t d"], dict | None]:
        d = self.width
        init = nn.initializers.normal(d**-0.5)
        w_a = param(self, "w_a", init, (d, d), ("embed", "mlp")).astype(self.dtype)
        w_b = param(self, "w_b", init, (d, d), ("embed", "mlp")).astype(self.dtype)
        x = x.astype(self.dtype)
        first = jnp.zeros_like(x[:, :1]) if cache is None else cache["last"][:, None].astype(self.dtype)
        previous = jnp.concatenate([first, x[:, :-1]], axis=1)
        previous = jnp.where((positions == 0)[..., None], 0.0, previous)
        y = jnp.einsum("btd,de->bte", x, w_a) + jnp.einsum("btd,de->bte", previous, w_b)
        new_cache = None if cache is None else {"last": x[:, -1].astype(cache["last"].dtype)}
        return y, new_cache

    def init_cache(self, batch: int, max_len: int, dtype=jnp.float32) -> dict:
        return {"last": jnp.zeros((batch, self.width), dtype)}


SPEC = MixerSpec(
    "token_shift",
    build=lambda cfg: TokenShift(cfg.d_model, dtype=compute_dtype(cfg)),
    params=lambda cfg: 2 * cfg.d_model**2,
    flops=lambda cfg, seq_len, attention: 2 * 2 * cfg.d_model**2,
    cache_bytes=lambda cfg, context_len, dtype: cfg.d_model * jnp.dtype(dtype).itemsize,
)

if LETTER not in MIXERS:  # importing the module twice registers once
    register_mixer(LETTER, SPEC)
