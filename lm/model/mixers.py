"""The built-in mixer families: one :class:`lm.model.families.MixerSpec` per pattern letter.

  A  causal attention (MHA / GQA / MQA by ``num_kv_heads``), full unless ``attention_window`` is set,
     ``layers/attention.py``
  W  local (sliding-window, ``window``) attention, Griffin's local attention block, ``layers/attention.py``
  R  Griffin/Hawk recurrent block (Conv1D + RG-LRU), ``layers/recurrent_block.py``; settings
     ``families["rnn"]``: ``layers.recurrent_block.RecurrentConfig``
  L  causal linear attention (plain / RetNet / GLA), ``layers/linear_attention.py``; settings
     ``families["la"]``: ``layers.linear_attention.LinearAttentionConfig``
  M  Multi-head Latent Attention (DeepSeek-V2), ``layers/mla.py``; settings
     ``families["mla"]``: ``layers.mla.MLAConfig``

A family's settings are one frozen config beside its layer, held in ``ModelConfig.families``
under the family's name; its spec says how to build the module from a ``ModelConfig``, check
the config, size the decode cache, count parameters and FLOPs (the counting functions live in
``lm/model/counting.py``) and which logical axes its layers add to the sharding rules. The registry
(``lm/model/families.py``) finds these specs through the entry points it lists in :data:`lm.model.families.BUILTIN`;
a family outside ``lm/`` is one spec and one entry point of group ``scalelab.mixers``
(``tests/lm/toy_mixer.py`` is one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax.numpy as jnp

from layers import linear_attention as la
from layers.attention import Attention
from layers.linear_attention import LinearAttentionConfig
from layers.mla import MLA, MLAConfig
from layers.recurrent_block import RecurrentBlock, RecurrentConfig
from lm.model import counting as flops, parametrization
from lm.model.families import MixerSpec, settings

if TYPE_CHECKING:
    from lm.model.config import ModelConfig


def compute_dtype(cfg: ModelConfig):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def _attention(cfg: ModelConfig, window: int | None, query_multiplier=None) -> Attention:
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
        scale=_score_scale(cfg, "attention", query_multiplier),
        query_multiplier=query_multiplier,
    )


def attention_spec(name: str, window: Callable[[ModelConfig], int | None]) -> MixerSpec:
    """The spec of softmax attention whose look-back is ``window(cfg)`` (None: full causal).

    "A" (``cfg.attention_window``) and "W" (``cfg.window``) are this one family at two windows.
    """
    return MixerSpec(
        name,
        build=lambda cfg, query_multiplier=None: _attention(cfg, window(cfg), query_multiplier),
        params=flops.attention_params,
        flops=lambda cfg, t, a: flops.attention_flops(cfg, t, a, window(cfg)),
        cache_bytes=lambda cfg, n, dtype: _attention(cfg, window(cfg)).cache_bytes(n, dtype),
    )


def _recurrent(cfg: ModelConfig) -> RecurrentBlock:
    rnn = settings(cfg, "rnn")
    return RecurrentBlock(
        width=cfg.d_model,
        num_heads=rnn.gate_heads(cfg.num_heads),
        lru_width=rnn.lru_width(cfg.d_model),
        conv1d_temporal_width=rnn.conv_width,
        final_w_init_variance_scale=2.0 / cfg.num_layers,
        impl=rnn.impl,
        dtype=compute_dtype(cfg),
    )


def _check_recurrent(cfg: ModelConfig) -> None:
    rnn = settings(cfg, "rnn")
    width, heads = rnn.lru_width(cfg.d_model), rnn.gate_heads(cfg.num_heads)
    if width % heads:
        raise ValueError(
            f"ModelConfig.families['rnn'].width={width} is not divisible by rnn.heads={heads} "
            "(the RG-LRU gates are block-diagonal with one block per head)"
        )


def _linear_attention(cfg: ModelConfig, query_multiplier=None) -> la.LinearAttention:
    s = settings(cfg, "la")
    return la.LinearAttention(
        num_heads=cfg.num_heads,
        key_dim=cfg.dim_per_head,
        value_dim=cfg.dim_per_head,
        variant=s.variant,
        feature_map=s.feature_map,
        output_norm=s.output_norm,
        chunk_size=s.chunk_size,
        impl=s.impl,
        dtype=compute_dtype(cfg),
        scale=_score_scale(cfg, "la", query_multiplier),
        query_multiplier=query_multiplier,
    )


def _mla_head_dim(cfg: ModelConfig) -> int:
    return settings(cfg, "mla").qk_nope_dim + settings(cfg, "mla").qk_rope_dim


def _mla(cfg: ModelConfig, query_multiplier=None) -> MLA:
    m = settings(cfg, "mla")
    return MLA(
        num_heads=cfg.num_heads,
        kv_lora_rank=m.kv_lora_rank,
        qk_nope_dim=m.qk_nope_dim,
        qk_rope_dim=m.qk_rope_dim,
        v_head_dim=m.v_head_dim,
        q_lora_rank=m.q_lora_rank,
        decode_path=m.decode_path,
        rope_max_wavelength=cfg.rope_max_wavelength,
        impl=cfg.attention_impl,
        dtype=compute_dtype(cfg),
        score_scale=_score_scale(cfg, "mla", query_multiplier),
        query_multiplier=query_multiplier,
    )


# The q·k dimension of each family's score scale (μP's d0^1/2 / d_head, lm/model/parametrization.py).
SCORE_DIMS = {"attention": lambda c: c.dim_per_head, "local_attention": lambda c: c.dim_per_head,
              "la": lambda c: c.dim_per_head, "mla": _mla_head_dim}


def _score_scale(cfg: ModelConfig, family: str, query_multiplier) -> float | None:
    """The layer's static score scale: μP's, or None (the layer's d_head^-1/2: SP's, or with a traced
    ``query_multiplier``, :attr:`lm.model.parametrization.Multipliers.score`, which replaces μP's)."""
    return None if query_multiplier is not None else parametrization.score_scale(cfg, SCORE_DIMS[family])


# The entry points of lm.model.families.BUILTIN name these.
ATTENTION = attention_spec("attention", lambda cfg: cfg.attention_window)
LOCAL_ATTENTION = attention_spec("local_attention", lambda cfg: cfg.window)
RECURRENT = MixerSpec(
    "rnn",
    build=_recurrent,
    params=flops.recurrent_params,
    flops=flops.recurrent_flops,
    cache_bytes=lambda cfg, n, dtype: _recurrent(cfg).cache_bytes(1, dtype),
    validate=_check_recurrent,
    config=RecurrentConfig,
    rules=(("rnn", ("tensor",)), ("conv", ())),
    width_fields=("width",),
)
LINEAR_ATTENTION = MixerSpec(
    "la",
    build=_linear_attention,
    params=flops.linear_attention_params,
    flops=flops.linear_attention_mixer_flops,
    cache_bytes=lambda cfg, n, dtype: _linear_attention(cfg).cache_bytes(1),
    config=LinearAttentionConfig,
)
MLA_SPEC = MixerSpec(
    "mla",
    build=_mla,
    params=flops.mla_params,
    flops=flops.mla_flops,
    cache_bytes=lambda cfg, n, dtype: _mla(cfg).cache_bytes(n, dtype),
    config=MLAConfig,
    rules=(("kv_lora", ()), ("q_lora", ())),
    width_fields=("q_lora_rank", "kv_lora_rank", "qk_nope_dim", "v_head_dim"),
)
