"""Causal self-attention: multi-head, grouped-query and multi-query, optional sliding window.

Vaswani et al. 2017 (multi-head); Shazeer 2019 (multi-query); Ainslie et al. 2023 (GQA);
sliding-window/local attention as in Griffin (De et al. 2024, arXiv 2402.19427) with RoPE
(Su et al. 2021) on a configurable fraction of each head. The softmax itself is the op
``pallas_kernels.flash_attention`` (reference = the project's single attention function).

Axis letters: b batch, t new (query) time, n = b t tokens, s cached key time, d model width, h query heads,
g kv heads, k head dim.

Decode cache (explicit pytree, :meth:`Attention.init_cache`): keys/values of the last
``size`` positions (size = max_len for full attention; window + 1 for local attention, a
ring buffer whose memory does not grow with context), the buffer position of each slot
(-1 = empty) and its document id, and the number of positions written so far.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Float, Int

from layers.mlp import dense_init
from layers.partitioning import constrain, param, shard_kernel, ways
from layers.rope import apply_rope
from pallas_kernels.flash_attention import flash_attention

Cache = dict[str, Array]

_QKV = ("batch", "length", "heads", None)
_ROWS = ("batch", "length")


def sharded_flash_attention(
    q: Float[Array, "b t h k"],
    k: Float[Array, "b s g k"],
    v: Float[Array, "b s g e"],
    *,
    segment_ids: Int[Array, "b t"] | None = None,
    kv_segment_ids: Int[Array, "b s"] | None = None,
    q_positions: Int[Array, "b t"] | None = None,
    kv_positions: Int[Array, "b s"] | None = None,
    **static,
) -> Float[Array, "b t h e"]:
    """``flash_attention`` under the mesh in scope (``layers.partitioning.shard_kernel``).

    Rows go over the "batch" axes and heads over "heads". Grouped-query heads stay
    grouped when the kv heads split the same way as the query heads, or when there is
    one kv head (replicated); otherwise (kv heads not divisible by the tensor axis) k and
    v are repeated to one head per query head before the split.
    """
    h, g = q.shape[2], k.shape[2]
    kv_axes = ("batch", "length", "kv", None)
    if g == 1:
        kv_axes = ("batch", "length", None, None)
    elif ways("heads", h) != ways("kv", g):
        k, v = jnp.repeat(k, h // g, axis=2), jnp.repeat(v, h // g, axis=2)
        kv_axes = _QKV

    def attend(q, k, v, segment_ids, kv_segment_ids, q_positions, kv_positions):
        return flash_attention(q, k, v, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                               q_positions=q_positions, kv_positions=kv_positions, **static)

    fn = shard_kernel(attend, (_QKV, kv_axes, kv_axes, _ROWS, _ROWS, _ROWS, _ROWS), _QKV)
    return fn(q, k, v, segment_ids, kv_segment_ids, q_positions, kv_positions)


def cache_size(max_len: int, window: int | None) -> int:
    """Slots of the decode cache: the window plus the query itself, or the whole context."""
    return max_len if window is None else min(max_len, window + 1)


class Attention(nn.Module):
    """Multi-head / grouped-query / multi-query self-attention with RoPE.

    Attributes:
      num_heads: query heads h.
      num_kv_heads: key/value heads g (h % g == 0; g == 1 is multi-query).
      head_dim: per-head width k.
      window: look-back w (each query sees itself and w previous tokens of its document);
        None = full causal attention.
      rope_fraction: share of each head's dims rotated by RoPE.
      rope_max_wavelength: RoPE base.
      softcap: optional tanh soft-cap of the attention scores.
      impl: ``flash_attention`` implementation switch.
      scale: score scale; None = head_dim^-1/2 (μP passes its 1/head_dim form).
      query_multiplier: None, or a float32 [] array (traced) that multiplies the queries, i.e. the score
        scale, while ``scale`` stays static (μP's ratio in a program shared with SP; the kernels take
        a static scale).
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    window: int | None = None
    rope_fraction: float = 1.0
    rope_max_wavelength: float = 10_000.0
    softcap: float | None = None
    impl: str = "auto"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scale: float | None = None
    query_multiplier: Any = None

    def init_cache(self, batch: int, max_len: int, dtype=jnp.float32) -> Cache:
        """Empty cache for ``batch`` sequences of up to ``max_len`` positions."""
        size = cache_size(max_len, self.window)
        kv_shape = (batch, size, self.num_kv_heads, self.head_dim)
        return {
            "k": jnp.zeros(kv_shape, dtype),
            "v": jnp.zeros(kv_shape, dtype),
            "pos": jnp.full((batch, size), -1, jnp.int32),
            "seg": jnp.zeros((batch, size), jnp.int32),
            "index": jnp.zeros((), jnp.int32),
        }

    def cache_bytes(self, context_len: int, dtype=jnp.float32) -> int:
        """Bytes of keys and values cached for one sequence after ``context_len`` tokens."""
        slots = cache_size(context_len, self.window)
        return 2 * slots * self.num_kv_heads * self.head_dim * jnp.dtype(dtype).itemsize

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t d"],
        *,
        segment_ids: Int[Array, "b t"],
        positions: Int[Array, "b t"],
        cache: Cache | None = None,
    ) -> tuple[Float[Array, "b t d"], Cache | None]:
        d = x.shape[-1]
        h, g, k = self.num_heads, self.num_kv_heads, self.head_dim
        if h % g:
            raise ValueError(f"num_heads={h} must be a multiple of num_kv_heads={g}")
        wq = param(self, "wq", dense_init(d), (d, h, k), ("embed", "heads", "head_dim"), self.param_dtype)
        wk = param(self, "wk", dense_init(d), (d, g, k), ("embed", "kv", "head_dim"), self.param_dtype)
        wv = param(self, "wv", dense_init(d), (d, g, k), ("embed", "kv", "head_dim"), self.param_dtype)
        wo = param(
            self, "wo", nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2),
            (h, k, d), ("heads", "head_dim", "embed"), self.param_dtype,
        )
        # Projections on tokens flattened to n = b t: XLA:CPU runs their weight gradients
        # (contractions over n) as plain GEMMs, about 2x faster than over (b, t).
        b = x.shape[0]
        xn = rearrange(x.astype(self.dtype), "b t d -> (b t) d")
        unflat = lambda y: rearrange(y, "(b t) h k -> b t h k", b=b)  # noqa: E731
        q = unflat(jnp.einsum("nd,dhk->nhk", xn, wq.astype(self.dtype)))
        key = unflat(jnp.einsum("nd,dgk->ngk", xn, wk.astype(self.dtype)))
        val = unflat(jnp.einsum("nd,dgk->ngk", xn, wv.astype(self.dtype)))
        rope = dict(fraction=self.rope_fraction, max_wavelength=self.rope_max_wavelength)
        q = apply_rope(q, positions, **rope)
        if self.query_multiplier is not None:
            q = q * jnp.asarray(self.query_multiplier, q.dtype)
        key = apply_rope(key, positions, **rope)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))

        common = dict(causal=True, window=self.window, scale=k**-0.5 if self.scale is None else self.scale, softcap=self.softcap, impl=self.impl)
        if cache is None:
            o = sharded_flash_attention(q, key, val, segment_ids=segment_ids, **common)
            new_cache = None
        else:
            o, new_cache = self._attend_with_cache(q, key, val, segment_ids, cache, common)
        o = constrain(o, ("batch", "length", "heads", "head_dim"))
        y = jnp.einsum("nhk,hkd->nd", rearrange(o, "b t h k -> (b t) h k"), wo.astype(self.dtype))
        return rearrange(y, "(b t) d -> b t d", b=b), new_cache

    def _attend_with_cache(self, q, key, val, segment_ids, cache, common):
        """Attend over cached + new keys and return the cache holding the new ones too.

        Full attention writes the new keys into their slots first and attends over the
        cache in place (no copy of the cache in a decode loop that donates it). A ring
        buffer attends over (cache, new) first, because a prompt longer than the window
        would overwrite keys that its own earlier queries still need, then stores the tail.
        """
        b, t = q.shape[:2]
        size = cache["k"].shape[1]
        q_pos = jnp.broadcast_to(cache["index"] + jnp.arange(t, dtype=jnp.int32), (b, t))
        key, val = key.astype(cache["k"].dtype), val.astype(cache["v"].dtype)
        if self.window is None:
            at = (0, cache["index"])
            new_cache = {
                "k": jax.lax.dynamic_update_slice(cache["k"], key, (*at, 0, 0)),
                "v": jax.lax.dynamic_update_slice(cache["v"], val, (*at, 0, 0)),
                "pos": jax.lax.dynamic_update_slice(cache["pos"], q_pos, at),
                "seg": jax.lax.dynamic_update_slice(cache["seg"], segment_ids, at),
                "index": cache["index"] + t,
            }
            kv = (new_cache["k"], new_cache["v"], new_cache["pos"], new_cache["seg"])
        else:
            kv = (
                jnp.concatenate([cache["k"], key], axis=1),
                jnp.concatenate([cache["v"], val], axis=1),
                jnp.concatenate([cache["pos"], q_pos], axis=1),
                jnp.concatenate([cache["seg"], segment_ids], axis=1),
            )
            keep = min(t, size)
            slots = q_pos[0, t - keep:] % size
            new_cache = {
                "k": cache["k"].at[:, slots].set(key[:, t - keep:]),
                "v": cache["v"].at[:, slots].set(val[:, t - keep:]),
                "pos": cache["pos"].at[:, slots].set(q_pos[:, t - keep:]),
                "seg": cache["seg"].at[:, slots].set(segment_ids[:, t - keep:]),
                "index": cache["index"] + t,
            }
        all_k, all_v, kv_pos, kv_seg = kv
        o = sharded_flash_attention(
            q, all_k, all_v, segment_ids=segment_ids, kv_segment_ids=kv_seg,
            q_positions=q_pos, kv_positions=kv_pos, **common,
        )
        return o, new_cache
