"""A mixer family defined outside ``lm/``, with settings: the token-shift mixer "T" (family "toy").

  h_t = x_t W_a + x_{t-1} W_b     (x_{-1} = 0 at a document start)
  h_t = h_t * sigmoid(x_t W_g)    (only with ``ToyConfig.gate``)
  y_t = h_t W_o

the simplest mixer with a decode cache (the last token), with an inner width and an option.
It exists to test that a family needs nothing but this module and one entry point of group
``scalelab.mixers`` (``T = <module>:SPEC``): ``tests/lm/conftest.py`` installs it as a test-only
distribution, and the model, the decoder, the FLOP counter, the sharding rules (its own
logical axis "toy") and ``experiments.train`` take it, in any process, with no edit under ``lm/``.

Axis letters: b batch, t time, d model width, w the toy's width.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from layers.partitioning import param
from lm.model.families import MixerSpec, settings
from lm.model.mixers import compute_dtype

LETTER = "T"


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """Settings of the "T" mixer (``ModelConfig.families["toy"]``).

    Attributes:
      width: inner width w (scales with d_model under μP).
      gate: multiply by a sigmoid gate of the current token (one more [d, w] matrix).
    """

    width: int = 8
    gate: bool = False

    def __post_init__(self):
        if not isinstance(self.width, int) or isinstance(self.width, bool) or self.width < 1:
            raise ValueError(f"ToyConfig.width={self.width!r}: must be an int >= 1")
        if self.gate not in (False, True):
            raise ValueError(f"ToyConfig.gate={self.gate!r}: allowed values are (False, True)")


class TokenShift(nn.Module):
    """y_t = (x_t W_a + x_{t-1} W_b) [* sigmoid(x_t W_g)] W_o; cache {"last": [b, d]}."""

    model_width: int
    width: int
    gate: bool = False
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
        d, w = self.model_width, self.width
        w_a = param(self, "w_a", nn.initializers.normal(d**-0.5), (d, w), ("embed", "toy")).astype(self.dtype)
        w_b = param(self, "w_b", nn.initializers.normal(d**-0.5), (d, w), ("embed", "toy")).astype(self.dtype)
        w_o = param(self, "w_o", nn.initializers.normal(w**-0.5), (w, d), ("toy", "embed")).astype(self.dtype)
        x = x.astype(self.dtype)
        first = jnp.zeros_like(x[:, :1]) if cache is None else cache["last"][:, None].astype(self.dtype)
        previous = jnp.concatenate([first, x[:, :-1]], axis=1)
        previous = jnp.where((positions == 0)[..., None], 0.0, previous)
        h = jnp.einsum("btd,dw->btw", x, w_a) + jnp.einsum("btd,dw->btw", previous, w_b)
        if self.gate:
            w_g = param(self, "w_g", nn.initializers.normal(d**-0.5), (d, w), ("embed", "toy")).astype(self.dtype)
            h = h * nn.sigmoid(jnp.einsum("btd,dw->btw", x, w_g))
        y = jnp.einsum("btw,wd->btd", h, w_o)
        new_cache = None if cache is None else {"last": x[:, -1].astype(cache["last"].dtype)}
        return y, new_cache

    def init_cache(self, batch: int, max_len: int, dtype=jnp.float32) -> dict:
        return {"last": jnp.zeros((batch, self.model_width), dtype)}


def _module(cfg) -> TokenShift:
    s = settings(cfg, "toy")
    return TokenShift(cfg.d_model, s.width, s.gate, dtype=compute_dtype(cfg))


def params(cfg) -> int:
    """W_a, W_b (d x w), W_o (w x d) and, gated, W_g (d x w)."""
    s = settings(cfg, "toy")
    return (4 if s.gate else 3) * cfg.d_model * s.width


def _check(cfg) -> None:
    if settings(cfg, "toy").width > 4 * cfg.d_model:
        raise ValueError(f"ModelConfig.families['toy'].width={settings(cfg, 'toy').width}: at most 4 * d_model "
                         f"= {4 * cfg.d_model}")


SPEC = MixerSpec(
    "toy",
    build=_module,
    params=params,
    flops=lambda cfg, seq_len, attention: 2 * params(cfg),  # every weight one multiply-add per token
    cache_bytes=lambda cfg, context_len, dtype: cfg.d_model * jnp.dtype(dtype).itemsize,
    validate=_check,
    config=ToyConfig,
    rules=(("toy", ("tensor",)),),
    width_fields=("width",),
)
