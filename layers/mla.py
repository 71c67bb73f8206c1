"""Multi-head Latent Attention (MLA; DeepSeek-V2, arXiv 2405.04434, Section 2.1).

Queries (eq. 12-13, or a direct projection when q_lora_rank = 0):
  c_q = RMSNorm(x W_dq)              [b, t, q]      q_lora_rank q
  [q_nope | q_rope] = c_q W_uq        [b, t, h, n + p], q_rope <- RoPE(q_rope)
Keys and values (eq. 9-11, 14-15):
  c_kv = RMSNorm(x W_dkv)             [b, t, c]      kv_lora_rank c (the cached latent)
  k_rope = RoPE(x W_kr)               [b, t, p]      one decoupled key shared by all heads
  k_nope = c_kv W_uk, v = c_kv W_uv   [b, t, h, n], [b, t, h, e]
Attention (eq. 16-19): score = (q_nope . k_nope + q_rope . k_rope) / sqrt(n + p), causal
softmax within each document, o = softmax V, y = o W_o.

Decode cache (explicit pytree, :meth:`MLA.init_cache`): only c_kv and k_rope per token,
c + p numbers instead of 2 h (n + e) for MHA, plus slot positions / document ids and
the write index. Two decode paths over the same cache:
  * "naive": expand k_nope and v of every cached token from the latent, then attend;
  * "absorbed" (Section 2.1.2): fold W_uk into the query (q_lat = q_nope W_uk^T, [b, t, h, c])
    and W_uv into the output, so attention runs over the latent directly as multi-query
    attention with key [c_kv | k_rope] (dim c + p) and value c_kv (dim c):
    q_nope . (c_kv W_uk) = (q_nope W_uk^T) . c_kv, and sum_j P_j c_kv_j W_uv = (P c_kv) W_uv.
Both call ``flash_attention`` (reference softmax) with an explicit score scale.

Axis letters: b batch, t query time, s key time (cache slots), d model width, h heads,
q q_lora_rank, c kv_lora_rank, n qk_nope_dim, p qk_rope_dim, e v_head_dim.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from layers.attention import sharded_flash_attention
from layers.mlp import dense_init
from layers.partitioning import constrain, param
from layers.rmsnorm import RMSNorm
from layers.rope import apply_rope

Cache = dict[str, Array]
DECODE_PATHS = ("naive", "absorbed")


@dataclasses.dataclass(frozen=True)
class MLAConfig:
    """Settings of the "M" mixer (a model's ``ModelConfig.families["mla"]``); heads follow the model.

    Attributes:
      q_lora_rank: rank of the query projection (0: a direct projection).
      kv_lora_rank: rank of the compressed KV latent (cached).
      qk_nope_dim: per-head query/key dims without RoPE.
      qk_rope_dim: per-head dims of the decoupled RoPE key (even).
      v_head_dim: per-head value dims.
      decode_path: "naive" | "absorbed" (absorbed-weight) decode.
    """

    q_lora_rank: int = 0
    kv_lora_rank: int = 64
    qk_nope_dim: int = 32
    qk_rope_dim: int = 16
    v_head_dim: int = 32
    decode_path: str = "absorbed"

    def __post_init__(self):
        for name, low in (("q_lora_rank", 0), ("kv_lora_rank", 1), ("qk_nope_dim", 0), ("qk_rope_dim", 2),
                          ("v_head_dim", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"MLAConfig.{name}={value!r}: must be an int >= {low}")
        if self.qk_rope_dim % 2:
            raise ValueError(f"MLAConfig.qk_rope_dim={self.qk_rope_dim}: must be even (RoPE rotates pairs)")
        if self.decode_path not in DECODE_PATHS:
            raise ValueError(f"MLAConfig.decode_path={self.decode_path!r}: allowed values are {DECODE_PATHS}")


def mla_cache_bytes_per_token(kv_lora_rank: int, qk_rope_dim: int, dtype=jnp.bfloat16) -> int:
    """Bytes cached per token: the latent c_kv and the shared RoPE key (kv_lora_rank + qk_rope_dim)."""
    return (kv_lora_rank + qk_rope_dim) * jnp.dtype(dtype).itemsize


class MLA(nn.Module):
    """Multi-head Latent Attention mixer (DeepSeek-V2), causal within documents.

    Attributes:
      num_heads: heads h.
      kv_lora_rank: latent width c (cached).
      qk_nope_dim: per-head query/key dims without RoPE n.
      qk_rope_dim: per-head RoPE dims p (the shared decoupled key has p dims).
      v_head_dim: per-head value dims e.
      q_lora_rank: query latent width; 0 = direct query projection.
      decode_path: "naive" or "absorbed": how calls with a cache attend.
      rope_max_wavelength: RoPE base.
      impl: ``flash_attention`` implementation switch (training / no-cache path).
      eps: RMSNorm epsilon of the two latents.
      score_scale: None = (n + p)^-1/2; μP passes its 1/(n + p) form.
      query_multiplier: None, or a float32 [] array (traced) multiplying the queries [q_nope | q_rope],
        i.e. the score scale, which stays static (μP's ratio in a program shared with SP).
    """

    num_heads: int
    kv_lora_rank: int
    qk_nope_dim: int
    qk_rope_dim: int
    v_head_dim: int
    q_lora_rank: int = 0
    decode_path: str = "absorbed"
    rope_max_wavelength: float = 10_000.0
    impl: str = "auto"
    eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    score_scale: float | None = None
    query_multiplier: Any = None

    def __post_init__(self):
        for name in ("num_heads", "kv_lora_rank", "qk_rope_dim", "v_head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"MLA.{name}={getattr(self, name)} must be > 0")
        if self.qk_nope_dim < 0 or self.q_lora_rank < 0:
            raise ValueError(
                f"MLA.qk_nope_dim={self.qk_nope_dim} and q_lora_rank={self.q_lora_rank} must be >= 0"
            )
        if self.qk_rope_dim % 2:
            raise ValueError(f"MLA.qk_rope_dim={self.qk_rope_dim} must be even (RoPE rotates pairs)")
        if self.decode_path not in DECODE_PATHS:
            raise ValueError(f"MLA.decode_path={self.decode_path!r} must be one of {DECODE_PATHS}")
        super().__post_init__()

    @property
    def scale(self) -> float:
        """Score scale (n + p) ** -0.5 (eq. 17) unless ``score_scale`` is set (μP); also the absorbed path's."""
        return (self.qk_nope_dim + self.qk_rope_dim) ** -0.5 if self.score_scale is None else self.score_scale

    def init_cache(self, batch: int, max_len: int, dtype=jnp.float32) -> Cache:
        """Empty cache of ``max_len`` slots: latents, RoPE keys, slot positions (-1 empty), ids."""
        return {
            "c_kv": jnp.zeros((batch, max_len, self.kv_lora_rank), dtype),
            "k_rope": jnp.zeros((batch, max_len, self.qk_rope_dim), dtype),
            "pos": jnp.full((batch, max_len), -1, jnp.int32),
            "seg": jnp.zeros((batch, max_len), jnp.int32),
            "index": jnp.zeros((), jnp.int32),
        }

    def cache_bytes_per_token(self, dtype=jnp.bfloat16) -> int:
        """Bytes cached per token (latent + RoPE key; slot bookkeeping excluded)."""
        return mla_cache_bytes_per_token(self.kv_lora_rank, self.qk_rope_dim, dtype)

    def cache_bytes(self, context_len: int, dtype=jnp.float32) -> int:
        """Bytes of latents and RoPE keys cached for one sequence after ``context_len`` tokens."""
        return context_len * self.cache_bytes_per_token(dtype)

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t d"],
        *,
        segment_ids: Int[Array, "b t"],
        positions: Int[Array, "b t"],
        cache: Cache | None = None,
    ) -> tuple[Float[Array, "b t d"], Cache | None]:
        """Causal MLA over x; with a cache, continue after the cached tokens.

        Args:
          x: [b, t, d] inputs.
          segment_ids: [b, t] document ids (no attention across documents).
          positions: [b, t] per-document RoPE positions.
          cache: None (training) or a cache from :meth:`init_cache` / a previous call; the
            t new tokens occupy slots [index, index + t) (index + t <= max_len).

        Returns:
          y [b, t, d] and the updated cache (None without a cache).
        """
        d = x.shape[-1]
        h, n, p, e, c = self.num_heads, self.qk_nope_dim, self.qk_rope_dim, self.v_head_dim, self.kv_lora_rank
        dt = self.dtype
        x = x.astype(dt)
        if self.q_lora_rank > 0:
            r = self.q_lora_rank
            w_dq = param(self, "w_dq", dense_init(d), (d, r), ("embed", "q_lora"), self.param_dtype)
            c_q = RMSNorm(self.eps, axis_name="q_lora", param_dtype=self.param_dtype, name="q_norm")(
                jnp.einsum("btd,dq->btq", x, w_dq.astype(dt))
            )
            w_uq = param(self, "w_uq", dense_init(r), (r, h, n + p), ("q_lora", "heads", "head_dim"), self.param_dtype)
            q = jnp.einsum("btq,qhk->bthk", c_q, w_uq.astype(dt))
        else:
            w_q = param(self, "w_q", dense_init(d), (d, h, n + p), ("embed", "heads", "head_dim"), self.param_dtype)
            q = jnp.einsum("btd,dhk->bthk", x, w_q.astype(dt))
        if self.query_multiplier is not None:  # both paths' scores, the absorbed one's too, are linear in q
            q = q * jnp.asarray(self.query_multiplier, q.dtype)
        q_nope, q_rope = q[..., :n], apply_rope(q[..., n:], positions, max_wavelength=self.rope_max_wavelength)

        w_dkv = param(self, "w_dkv", dense_init(d), (d, c), ("embed", "kv_lora"), self.param_dtype)
        w_kr = param(self, "w_kr", dense_init(d), (d, p), ("embed", "head_dim"), self.param_dtype)
        c_kv = RMSNorm(self.eps, axis_name="kv_lora", param_dtype=self.param_dtype, name="kv_norm")(
            jnp.einsum("btd,dc->btc", x, w_dkv.astype(dt))
        )
        k_rope = apply_rope(
            jnp.einsum("btd,dp->btp", x, w_kr.astype(dt))[:, :, None, :], positions,
            max_wavelength=self.rope_max_wavelength,
        )[:, :, 0, :]
        w_uk = param(self, "w_uk", dense_init(c), (c, h, n), ("kv_lora", "heads", "head_dim"), self.param_dtype)
        w_uv = param(self, "w_uv", dense_init(c), (c, h, e), ("kv_lora", "heads", "head_dim"), self.param_dtype)
        w_o = param(
            self, "w_o", nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2),
            (h, e, d), ("heads", "head_dim", "embed"), self.param_dtype,
        )

        new_cache = None
        if cache is None:
            o = self._attend_expanded(q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, segment_ids=segment_ids)
        else:
            b, t = x.shape[:2]
            q_pos = jnp.broadcast_to(cache["index"] + jnp.arange(t, dtype=jnp.int32), (b, t))
            start = (0, cache["index"])
            new_cache = {
                "c_kv": jax.lax.dynamic_update_slice(cache["c_kv"], c_kv.astype(cache["c_kv"].dtype), (*start, 0)),
                "k_rope": jax.lax.dynamic_update_slice(cache["k_rope"], k_rope.astype(cache["k_rope"].dtype), (*start, 0)),
                "pos": jax.lax.dynamic_update_slice(cache["pos"], q_pos, start),
                "seg": jax.lax.dynamic_update_slice(cache["seg"], segment_ids.astype(jnp.int32), start),
                "index": cache["index"] + t,
            }
            mask_kw = dict(segment_ids=segment_ids, kv_segment_ids=new_cache["seg"], q_positions=q_pos,
                           kv_positions=new_cache["pos"])
            all_c, all_r = new_cache["c_kv"].astype(dt), new_cache["k_rope"].astype(dt)
            if self.decode_path == "naive":
                o = self._attend_expanded(q_nope, q_rope, all_c, all_r, w_uk, w_uv, **mask_kw)
            else:
                o = self._attend_absorbed(q_nope, q_rope, all_c, all_r, w_uk, w_uv, **mask_kw)
        o = constrain(o, ("batch", "length", "heads", "head_dim"))
        return jnp.einsum("bthe,hed->btd", o, w_o.astype(dt)), new_cache

    def _attend_expanded(self, q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, **mask_kw):
        """Expand per-head keys [k_nope | k_rope] and values from the latent, then attend: o [b, t, h, e]."""
        dt = self.dtype
        k_nope = jnp.einsum("bsc,chn->bshn", c_kv, w_uk.astype(dt))
        v = jnp.einsum("bsc,che->bshe", c_kv, w_uv.astype(dt))
        k_rope_h = jnp.broadcast_to(k_rope[:, :, None, :], (*k_nope.shape[:3], self.qk_rope_dim))
        q = constrain(jnp.concatenate([q_nope, q_rope], axis=-1), ("batch", "length", "heads", "head_dim"))
        k = jnp.concatenate([k_nope, k_rope_h], axis=-1)
        return sharded_flash_attention(q, k, v, causal=True, scale=self.scale, impl=self.impl, **mask_kw)

    def _attend_absorbed(self, q_nope, q_rope, c_kv, k_rope, w_uk, w_uv, **mask_kw):
        """Attend over the latent with W_uk folded into the query and W_uv into the output: o [b, t, h, e].

        The latent is one shared key/value head (multi-query attention, g = 1): key
        [c_kv | k_rope] of dim c + p, value c_kv of dim c; the score scale stays (n + p)^-0.5.
        """
        dt = self.dtype
        q_lat = jnp.einsum("bthn,chn->bthc", q_nope, w_uk.astype(dt))
        q = jnp.concatenate([q_lat, q_rope], axis=-1)
        k = jnp.concatenate([c_kv, k_rope], axis=-1)[:, :, None, :]
        o_lat = sharded_flash_attention(
            q, k, c_kv[:, :, None, :], causal=True, scale=self.scale, impl=self.impl, **mask_kw
        )
        return jnp.einsum("bthc,che->bthe", o_lat, w_uv.astype(dt))
