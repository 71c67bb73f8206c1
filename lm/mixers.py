"""The vocabulary of token mixers: one registry entry per pattern letter.

  A  full causal attention (MHA / GQA / MQA), ``layers/attention.py``
  W  local (sliding-window) attention, Griffin's local MQA block, ``layers/attention.py``
  R  Griffin/Hawk recurrent block (Conv1D + RG-LRU), ``layers/recurrent_block.py``
  L  causal linear attention (plain / RetNet / GLA), ``layers/linear_attention.py``
  M  Multi-head Latent Attention (DeepSeek-V2), ``layers/mla.py``

A mixer is a Flax module called as ``mixer(x, segment_ids=..., positions=..., cache=...)``
returning ``(y, new_cache)``, with ``init_cache(batch, max_len, dtype)``. A new family
registers its letter here with a builder (ModelConfig -> module), a validator and its
decode-cache size; its FLOP and parameter counts go in ``lm/flops.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import flax.linen as nn
import jax.numpy as jnp

from layers import linear_attention as la
from layers.attention import Attention
from layers.mla import MLA
from layers.recurrent_block import RecurrentBlock
from lm import parametrization

if TYPE_CHECKING:
    from lm.config import ModelConfig


def _no_checks(cfg: "ModelConfig") -> None:
    return None


@dataclasses.dataclass(frozen=True)
class MixerSpec:
    """How to build and validate the mixer of one pattern letter, and size its cache.

    cache_bytes(cfg, context_len, dtype) -> bytes of one sequence's decode cache.
    """

    name: str
    build: Callable[["ModelConfig"], nn.Module]
    cache_bytes: Callable[["ModelConfig", int, object], int]
    validate: Callable[["ModelConfig"], None] = _no_checks


def compute_dtype(cfg: "ModelConfig"):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def _attention(cfg: "ModelConfig", window: int | None) -> Attention:
    return Attention(
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.kv_heads,
        head_dim=cfg.dim_per_head,
        window=window,
        rope_fraction=cfg.rope_fraction,
        rope_max_wavelength=cfg.rope_max_wavelength,
        softcap=cfg.attn_softcap,
        impl=cfg.attention_impl,
        dtype=compute_dtype(cfg),
        scale=parametrization.score_scale(cfg, lambda c: c.dim_per_head),  # μP; None under SP
    )


def rnn_heads(cfg: "ModelConfig") -> int:
    return cfg.num_heads if cfg.rnn_heads is None else cfg.rnn_heads


def rnn_width(cfg: "ModelConfig") -> int:
    return cfg.d_model if cfg.rnn_width is None else cfg.rnn_width


def _recurrent(cfg: "ModelConfig") -> RecurrentBlock:
    return RecurrentBlock(
        width=cfg.d_model,
        num_heads=rnn_heads(cfg),
        lru_width=rnn_width(cfg),
        conv1d_temporal_width=cfg.conv_width,
        final_w_init_variance_scale=2.0 / cfg.num_layers,
        impl=cfg.scan_impl,
        dtype=compute_dtype(cfg),
    )


def _check_recurrent(cfg: "ModelConfig") -> None:
    if rnn_width(cfg) % rnn_heads(cfg):
        raise ValueError(
            f"ModelConfig.rnn_width={rnn_width(cfg)} is not divisible by rnn_heads={rnn_heads(cfg)} "
            "(the RG-LRU gates are block-diagonal with one block per head)"
        )
    if cfg.conv_width < 1:
        raise ValueError(f"ModelConfig.conv_width={cfg.conv_width}: must be >= 1")


def _linear_attention(cfg: "ModelConfig") -> la.LinearAttention:
    return la.LinearAttention(
        num_heads=cfg.num_heads,
        key_dim=cfg.dim_per_head,
        value_dim=cfg.dim_per_head,
        variant=cfg.la_variant,
        feature_map=cfg.la_feature_map,
        output_norm=cfg.la_output_norm,
        chunk_size=cfg.la_chunk_size,
        impl=cfg.la_impl,
        dtype=compute_dtype(cfg),
        scale=parametrization.score_scale(cfg, lambda c: c.dim_per_head),  # μP; None under SP
    )


def _check_linear_attention(cfg: "ModelConfig") -> None:
    for name, allowed in (("la_variant", la.VARIANTS), ("la_feature_map", tuple(la.FEATURE_MAPS)),
                          ("la_output_norm", la.OUTPUT_NORMS)):
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"ModelConfig.{name}={getattr(cfg, name)!r}: allowed values are {allowed}")
    if cfg.la_chunk_size < 1:
        raise ValueError(f"ModelConfig.la_chunk_size={cfg.la_chunk_size}: must be >= 1")


def _mla(cfg: "ModelConfig") -> MLA:
    return MLA(
        num_heads=cfg.num_heads,
        kv_lora_rank=cfg.mla_kv_lora_rank,
        qk_nope_dim=cfg.mla_qk_nope_dim,
        qk_rope_dim=cfg.mla_qk_rope_dim,
        v_head_dim=cfg.mla_v_head_dim,
        q_lora_rank=cfg.mla_q_lora_rank,
        decode_path=cfg.mla_decode_path,
        rope_max_wavelength=cfg.rope_max_wavelength,
        impl=cfg.attention_impl,
        dtype=compute_dtype(cfg),
        score_scale=parametrization.score_scale(cfg, lambda c: c.mla_qk_nope_dim + c.mla_qk_rope_dim),  # μP
    )


def _check_mla(cfg: "ModelConfig") -> None:
    for name in ("mla_kv_lora_rank", "mla_qk_rope_dim", "mla_v_head_dim"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"ModelConfig.{name}={getattr(cfg, name)}: must be positive")
    for name in ("mla_q_lora_rank", "mla_qk_nope_dim"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"ModelConfig.{name}={getattr(cfg, name)}: must be >= 0")
    if cfg.mla_decode_path not in ("naive", "absorbed"):
        raise ValueError(f"ModelConfig.mla_decode_path={cfg.mla_decode_path!r}: allowed values are ('naive', 'absorbed')")


MIXERS: dict[str, MixerSpec] = {
    "A": MixerSpec(
        "attention",
        lambda cfg: _attention(cfg, cfg.attention_window),
        lambda cfg, n, dtype: _attention(cfg, cfg.attention_window).cache_bytes(n, dtype),
    ),
    "W": MixerSpec(
        "local_attention",
        lambda cfg: _attention(cfg, cfg.window),
        lambda cfg, n, dtype: _attention(cfg, cfg.window).cache_bytes(n, dtype),
    ),
    "R": MixerSpec(
        "recurrent",
        _recurrent,
        lambda cfg, n, dtype: _recurrent(cfg).cache_bytes(1, dtype),
        _check_recurrent,
    ),
    "L": MixerSpec(
        "linear_attention",
        _linear_attention,
        lambda cfg, n, dtype: _linear_attention(cfg).cache_bytes(1),
        _check_linear_attention,
    ),
    "M": MixerSpec(
        "mla",
        _mla,
        lambda cfg, n, dtype: _mla(cfg).cache_bytes(n, dtype),
        _check_mla,
    ),
}


def register_mixer(letter: str, spec: MixerSpec) -> None:
    """Add a mixer letter (one character, not already taken)."""
    if len(letter) != 1 or letter in MIXERS:
        raise ValueError(f"mixer letter {letter!r} must be one new character; taken: {sorted(MIXERS)}")
    MIXERS[letter] = spec
