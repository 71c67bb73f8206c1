"""The Griffin/Hawk recurrent block (temporal-mixing block with an RG-LRU).

De et al. 2024, "Griffin" (arXiv 2402.19427), section 2.4 and figure 2(c), as in the
public recurrentgemma JAX release (params ``linear_y``, ``linear_x``, ``conv_1d``,
``rg_lru``, ``linear_out``, each Dense with ``kernel`` and ``bias``):

  y = linear_out( gelu(linear_y(x)) * RG-LRU(Conv1D(linear_x(x))) )

with the tanh-approximated GeLU; the recurrence width ``lru_width`` may differ from the
model width. Documents restart where ``positions == 0`` (the RG-LRU resets, the conv taps
stop at the boundary); ``segment_ids`` are accepted for the mixer interface but the
positions carry the same information here.

Decode cache (constant size in the context length): {"rg_lru": float32 [b, r],
"conv1d": [b, k - 1, r]} with r = lru_width and k = conv1d_temporal_width.

Axis letters: b batch, t time, d model width, r recurrence (lru) width, k conv taps.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from layers.conv1d import Conv1D
from layers.partitioning import constrain, param
from layers.rg_lru import RGLRU

RecurrentCache = dict[str, jax.Array]
SCAN_IMPLS = ("auto", "reference", "pallas", "interpret", "sequential", "associative")


@dataclasses.dataclass(frozen=True)
class RecurrentConfig:
    """Settings of the "R" mixer (a model's ``ModelConfig.families["rnn"]``); Griffin/Hawk, De et al. 2024.

    Attributes:
      width: RG-LRU width r (None: the model width d).
      heads: blocks of the block-diagonal RG-LRU gates (None: the model's num_heads).
      conv_width: taps of the temporal convolution.
      impl: impl switch of pallas_kernels.linear_scan: "auto" | "reference" | "pallas" | "interpret" |
        "sequential" | "associative".
    """

    width: int | None = None
    heads: int | None = None
    conv_width: int = 4
    impl: str = "auto"

    def __post_init__(self):
        for name in ("width", "heads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"RecurrentConfig.{name}={value!r}: must be None or an int >= 1")
        if not isinstance(self.conv_width, int) or self.conv_width < 1:
            raise ValueError(f"RecurrentConfig.conv_width={self.conv_width!r}: must be an int >= 1")
        if self.impl not in SCAN_IMPLS:
            raise ValueError(f"RecurrentConfig.impl={self.impl!r}: allowed values are {SCAN_IMPLS}")

    def lru_width(self, d_model: int) -> int:
        """The recurrence width r of a model of width ``d_model``."""
        return d_model if self.width is None else self.width

    def gate_heads(self, num_heads: int) -> int:
        """The gate blocks of a model with ``num_heads`` attention heads."""
        return num_heads if self.heads is None else self.heads


class Dense(nn.Module):
    """y = x W + b with logical axis names; fan-in normal init (recurrentgemma's nn.Dense)."""

    features: int
    axes: tuple[str, str]
    w_init_variance_scale: float = 1.0
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Float[Array, "b t i"]) -> Float[Array, "b t o"]:
        init = nn.initializers.variance_scaling(self.w_init_variance_scale, "fan_in", "normal")
        kernel = param(self, "kernel", init, (x.shape[-1], self.features), self.axes, self.param_dtype)
        bias = param(self, "bias", nn.initializers.zeros_init(), (self.features,), self.axes[1:], self.param_dtype)
        return jnp.einsum("bti,io->bto", x.astype(self.dtype), kernel.astype(self.dtype)) + bias.astype(self.dtype)


class RecurrentBlock(nn.Module):
    """Griffin's recurrent temporal-mixing block (a "mixer").

    Attributes:
      width: model width d.
      num_heads: RG-LRU gate blocks (must divide lru_width).
      lru_width: recurrence width r (None: d).
      conv1d_temporal_width: conv taps k.
      final_w_init_variance_scale: init scale of linear_out (Griffin: 2 / num_layers).
      impl: ``linear_scan`` implementation used by the RG-LRU.
    """

    width: int
    num_heads: int
    lru_width: int | None = None
    conv1d_temporal_width: int = 4
    final_w_init_variance_scale: float = 1.0
    impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def __post_init__(self):
        r = self.lru_width or self.width
        if self.num_heads <= 0 or r % self.num_heads:
            raise ValueError(f"RecurrentBlock.num_heads={self.num_heads} must be positive and divide lru_width={r}")
        if self.conv1d_temporal_width < 1:
            raise ValueError(f"RecurrentBlock.conv1d_temporal_width={self.conv1d_temporal_width} must be >= 1")
        super().__post_init__()

    @property
    def rnn_width(self) -> int:
        return self.lru_width or self.width

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t d"],
        *,
        segment_ids: Int[Array, "b t"],
        positions: Int[Array, "b t"],
        cache: RecurrentCache | None = None,
    ) -> tuple[Float[Array, "b t d"], RecurrentCache | None]:
        """Mix t new steps.

        Args:
          x: [b, t, d].
          segment_ids: int32 [b, t] document ids (unused: positions mark document starts).
          positions: int32 [b, t] per-document positions, 0 at each document start.
          cache: None (training) or {"rg_lru": [b, r] float32, "conv1d": [b, k - 1, r]}
            from :meth:`init_cache` or a previous call.

        Returns:
          y [b, t, d] in ``dtype`` and the updated cache (None when cache is None).
        """
        del segment_ids
        r = self.rnn_width
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y_branch = jax.nn.gelu(Dense(r, ("embed", "rnn"), name="linear_y", **kw)(x), approximate=True)
        x_branch = Dense(r, ("embed", "rnn"), name="linear_x", **kw)(x)
        x_branch = constrain(x_branch, ("batch", "length", "rnn"))
        x_branch, conv_cache = Conv1D(r, self.conv1d_temporal_width, name="conv_1d", **kw)(
            x_branch, positions=positions, cache=None if cache is None else cache["conv1d"]
        )
        x_branch, lru_cache = RGLRU(r, self.num_heads, impl=self.impl, name="rg_lru", **kw)(
            x_branch, positions=positions, cache=None if cache is None else cache["rg_lru"]
        )
        linear_out = Dense(
            self.width,
            ("rnn", "embed"),
            w_init_variance_scale=self.final_w_init_variance_scale,
            name="linear_out",
            **kw,
        )
        out = linear_out(x_branch * y_branch)
        new_cache = None if cache is None else {"rg_lru": lru_cache, "conv1d": conv_cache}
        return out, new_cache

    def init_cache(self, batch: int, max_len: int | None = None, dtype=jnp.float32) -> RecurrentCache:
        """Empty cache: RG-LRU state float32 [batch, r] and conv state ``dtype`` [batch, k - 1, r].

        ``max_len`` is unused: the state has a constant size whatever the context length.
        """
        del max_len
        r, k = self.rnn_width, self.conv1d_temporal_width
        return {"rg_lru": jnp.zeros((batch, r), jnp.float32), "conv1d": jnp.zeros((batch, k - 1, r), dtype)}

    def cache_bytes(self, batch: int, dtype=jnp.float32) -> int:
        """Bytes of the decode cache for ``batch`` sequences: constant in the context length."""
        r, k = self.rnn_width, self.conv1d_temporal_width
        return batch * r * 4 + batch * (k - 1) * r * jnp.dtype(dtype).itemsize
