"""Linear-attention token mixer ("L"): plain, RetNet and GLA variants with a constant-size cache.

    q = φ(x W_q), k = φ(x W_k), v = x W_v                         per head, φ = identity | elu+1
    S_t = exp(g_t) diag(exp(gk_t)) S_{t-1} + k_t^T v_t,  o_t = scale q_t S_t   (the op)
    y = (Norm(o) ⊙ swish(x W_r)) W_o

Variants (the decay parameterisation):
  * "plain": Katharopoulos et al. 2020 (arXiv 2006.16236), no decay, φ = elu+1 in the
    paper. The paper's denominator φ(q) Σ φ(k) is replaced by the output normalisation,
    which TransNormer (Qin et al. 2022, arXiv 2210.10340) showed to be more stable.
  * "retnet": RetNet (Sun et al. 2023, arXiv 2307.08621, eq. 5 and Section 2.2): a fixed
    scalar decay per head, gamma_h = 1 - 2^(-5 - h), h = 0..H-1; GroupNorm per head and a
    swish gate.
  * "gla": Gated Linear Attention (Yang et al. 2024, arXiv 2312.06635, eq. 6 / Section 4.4):
    a data-dependent per-key-dimension decay from a low-rank projection,
    gk = logsigmoid(x W_1 W_2 + b) / 16 with W_1: d -> 16, W_2: 16 -> H*K; RMSNorm per head
    and a swish output gate.

Packed documents: at a document start (``positions == 0``) the state must forget the
previous document. The layer adds a log-decay of ``RESET_LOG_DECAY`` (-100) to g at those
steps, so the carried state is multiplied by exp(-100) < 4e-44, below float32's smallest
normal number: the previous document's contribution is zero to float32 precision. (An
exact -inf cannot be used: cumulative sums of log-decays would become -inf - -inf = NaN,
and very large finite values would lose the precision of the ordinary decays in the same
chunk.) ``segment_ids`` are not needed for this and are accepted only for the mixer
interface.

Decode: the cache is ``{"state": float32 [b, h, k, v]}``, independent of the sequence
length; calling with a cache continues the recurrence from it and returns the new one.

Axis letters: b batch, t time, d model width, h heads, k key dim per head, v value dim
per head, r rank of the GLA gate projection.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from layers.partitioning import constrain, param, shard_kernel
from layers.rmsnorm import rms_normalize
from pallas_kernels.backend import IMPLS
from pallas_kernels.linear_attention import linear_attention

VARIANTS = ("plain", "retnet", "gla")
FEATURE_MAPS = {"identity": lambda x: x, "elu1": lambda x: jax.nn.elu(x) + 1.0}
OUTPUT_NORMS = ("rms", "group", "none")
RESET_LOG_DECAY = -100.0


@dataclasses.dataclass(frozen=True)
class LinearAttentionConfig:
    """Settings of the "L" mixer (a model's ``ModelConfig.families["la"]``); heads and head dims follow the model.

    Attributes:
      variant: "plain" | "retnet" | "gla": the decay of linear attention (module docstring).
      feature_map: "identity" | "elu1" feature map of queries and keys.
      output_norm: "rms" | "group" | "none" normalisation of the output.
      chunk_size: chunk length of the chunked linear-attention form.
      impl: impl switch of pallas_kernels.linear_attention: "auto" | "reference" | "pallas" | "interpret".
    """

    variant: str = "gla"
    feature_map: str = "identity"
    output_norm: str = "rms"
    chunk_size: int = 64
    impl: str = "auto"

    def __post_init__(self):
        for name, allowed in (("variant", VARIANTS), ("feature_map", tuple(FEATURE_MAPS)),
                              ("output_norm", OUTPUT_NORMS), ("impl", IMPLS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"LinearAttentionConfig.{name}={getattr(self, name)!r}: allowed values are {allowed}")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"LinearAttentionConfig.chunk_size={self.chunk_size!r}: must be an int >= 1")


def retnet_log_gamma(num_heads: int) -> Float[Array, "h"]:
    """log gamma_h with gamma_h = 1 - 2^(-5 - h), h = 0..H-1 (RetNet Section 2.2)."""
    return jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(num_heads, dtype=jnp.float32))))


def document_reset_log_decay(positions: Int[Array, "b t"]) -> Float[Array, "b t"]:
    """RESET_LOG_DECAY where a document starts (position 0), else 0."""
    return jnp.where(positions == 0, RESET_LOG_DECAY, 0.0).astype(jnp.float32)


def cache_bytes(batch: int, *, num_heads: int, key_dim: int, value_dim: int) -> int:
    """Bytes of the decode cache: one float32 [b, h, k, v] state, whatever the length."""
    return 4 * batch * num_heads * key_dim * value_dim


def group_norm_heads(o: Float[Array, "b t h v"], eps: float) -> Float[Array, "b t h v"]:
    """GroupNorm with one group per head (mean and variance over v), no affine, float32."""
    o = o.astype(jnp.float32)
    centred = o - jnp.mean(o, axis=-1, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + eps)


def _dense_init(in_axis, out_axis):
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis)


class LinearAttention(nn.Module):
    """Causal linear attention mixer.

    Attributes:
      num_heads: H.
      key_dim, value_dim: K and V per head (RetNet uses V = 2K).
      variant: "plain" | "retnet" | "gla" (see the module docstring).
      feature_map: "identity" | "elu1" applied to q and k.
      output_norm: "rms" (RMSNorm over v in each head, gain shared by the heads, GLA) |
        "group" (GroupNorm with one group per head, per-channel affine, RetNet) | "none".
      output_gate: multiply the normalised output by swish(x W_r) (GLA, RetNet).
      gate_rank: rank r of GLA's gate projection (16 in the paper).
      gate_normalizer: GLA's tau in logsigmoid(.) / tau (16 in the paper).
      chunk_size: chunk of the chunked op.
      impl: the op's implementation switch ("auto" | "reference" | "pallas" | "interpret").
      norm_eps: epsilon of the output normalisation.
      scale: the op's scale of q S; None = key_dim^-1/2 (μP passes its 1/key_dim form).
      query_multiplier: None, or a float32 [] array (traced) multiplying q after the feature map, i.e.
        the op's scale, which stays static (μP's ratio in a program shared with SP).
    """

    num_heads: int
    key_dim: int = 64
    value_dim: int = 64
    variant: str = "gla"
    feature_map: str = "identity"
    output_norm: str = "rms"
    output_gate: bool = True
    gate_rank: int = 16
    gate_normalizer: float = 16.0
    chunk_size: int = 64
    impl: str = "auto"
    norm_eps: float = 1e-5
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scale: float | None = None
    query_multiplier: Any = None

    def __post_init__(self):
        for name in ("num_heads", "key_dim", "value_dim", "gate_rank", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"LinearAttention: {name}={getattr(self, name)} must be >= 1")
        if self.variant not in VARIANTS:
            raise ValueError(f"LinearAttention: variant={self.variant!r} is not one of {VARIANTS}")
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"LinearAttention: feature_map={self.feature_map!r} is not one of {tuple(FEATURE_MAPS)}")
        if self.output_norm not in OUTPUT_NORMS:
            raise ValueError(f"LinearAttention: output_norm={self.output_norm!r} is not one of {OUTPUT_NORMS}")
        if self.gate_normalizer <= 0:
            raise ValueError(f"LinearAttention: gate_normalizer={self.gate_normalizer} must be > 0")
        super().__post_init__()

    def init_cache(self, batch: int, max_len: int | None = None, dtype=jnp.float32) -> dict:
        """Empty decode cache {"state": zeros float32 [b, h, k, v]}; max_len and dtype are
        unused (the state has a fixed size and is always float32)."""
        del max_len, dtype
        return {"state": jnp.zeros((batch, self.num_heads, self.key_dim, self.value_dim), jnp.float32)}

    def cache_bytes(self, batch: int, max_len: int | None = None) -> int:
        """Bytes of :meth:`init_cache`'s cache (independent of max_len)."""
        del max_len
        return cache_bytes(batch, num_heads=self.num_heads, key_dim=self.key_dim, value_dim=self.value_dim)

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t d"],
        *,
        segment_ids: Int[Array, "b t"] | None = None,
        positions: Int[Array, "b t"] | None = None,
        cache: dict | None = None,
    ) -> tuple[Float[Array, "b t d"], dict | None]:
        """Mix tokens causally; returns (y [b, t, d], new cache or None).

        ``positions`` restart at 0 at each document start, where the state is reset (None:
        no resets). With ``cache`` the recurrence continues from ``cache["state"]``.
        """
        del segment_ids  # document starts are read from positions
        b, t, d = x.shape
        h, dk, dv = self.num_heads, self.key_dim, self.value_dim
        in_proj = lambda name, width: param(
            self, name, _dense_init(0, (1, 2)), (d, h, width), ("embed", "heads", "head_dim"), self.param_dtype
        )
        w_q, w_k, w_v = in_proj("w_q", dk), in_proj("w_k", dk), in_proj("w_v", dv)
        w_o = param(self, "w_o", _dense_init((0, 1), 2), (h, dv, d), ("heads", "head_dim", "embed"), self.param_dtype)
        x = x.astype(self.dtype)
        project = lambda w: jnp.einsum("btd,dhk->bthk", x, w.astype(self.dtype))
        phi = FEATURE_MAPS[self.feature_map]
        q, k, v = phi(project(w_q)), phi(project(w_k)), project(w_v)
        if self.query_multiplier is not None:  # o = scale q S is linear in q
            q = q * jnp.asarray(self.query_multiplier, q.dtype)
        q, k, v = (constrain(y, ("batch", "length", "heads", "head_dim")) for y in (q, k, v))

        g = None
        if positions is not None:
            g = jnp.broadcast_to(document_reset_log_decay(positions)[..., None], (b, t, h))
        if self.variant == "retnet":
            g = retnet_log_gamma(h) + (0.0 if g is None else g)
            g = jnp.broadcast_to(g, (b, t, h))
        gk = None
        if self.variant == "gla":
            w_g1 = param(self, "w_decay_down", _dense_init(0, 1), (d, self.gate_rank), ("embed", None), self.param_dtype)
            w_g2 = param(
                self, "w_decay_up", _dense_init(0, (1, 2)), (self.gate_rank, h, dk), (None, "heads", "head_dim"),
                self.param_dtype,
            )
            b_g = param(self, "b_decay", nn.initializers.zeros_init(), (h, dk), ("heads", "head_dim"), self.param_dtype)
            low_rank = jnp.einsum("btd,dr->btr", x, w_g1.astype(self.dtype))
            logits = jnp.einsum("btr,rhk->bthk", low_rank, w_g2.astype(self.dtype)).astype(jnp.float32) + b_g
            gk = jax.nn.log_sigmoid(logits) / self.gate_normalizer

        # A call shorter than one chunk (decode) gains nothing from the kernel.
        short = t < self.chunk_size
        op = lambda q, k, v, g, gk, s0: linear_attention(  # noqa: E731
            q, k, v, g=g, gk=gk, scale=self.scale, initial_state=s0, output_final_state=cache is not None,
            chunk_size=t if short else self.chunk_size, impl="reference" if short else self.impl,
        )
        qkv = ("batch", "length", "heads", None)
        state_axes = ("batch", "heads", None, None)
        o, state = shard_kernel(op, (qkv, qkv, qkv, ("batch", "length", "heads"), qkv, state_axes), (qkv, state_axes))(
            q, k, v, g, gk, None if cache is None else cache["state"]
        )
        if self.output_norm == "rms":
            scale = param(self, "norm_scale", nn.initializers.zeros_init(), (dv,), ("head_dim",), self.param_dtype)
            o = rms_normalize(o, self.norm_eps) * (1.0 + scale)
        elif self.output_norm == "group":
            axes = ("heads", "head_dim")
            scale = param(self, "norm_scale", nn.initializers.ones_init(), (h, dv), axes, self.param_dtype)
            bias = param(self, "norm_bias", nn.initializers.zeros_init(), (h, dv), axes, self.param_dtype)
            o = group_norm_heads(o, self.norm_eps) * scale + bias
        o = o.astype(self.dtype)
        if self.output_gate:
            w_r = in_proj("w_out_gate", dv)
            o = o * jax.nn.silu(project(w_r))
        y = jnp.einsum("bthv,hvd->btd", o, w_o.astype(self.dtype))
        y = constrain(y, ("batch", "length", "embed"))
        return y, (None if cache is None else {"state": state})
