"""The vocabulary of token mixers: one :class:`MixerSpec` per pattern letter.

  A  causal attention (MHA / GQA / MQA by ``num_kv_heads``), full unless ``attention_window`` is set,
     ``layers/attention.py``
  W  local (sliding-window, ``window``) attention, Griffin's local attention block, ``layers/attention.py``
  R  Griffin/Hawk recurrent block (Conv1D + RG-LRU), ``layers/recurrent_block.py``
  L  causal linear attention (plain / RetNet / GLA), ``layers/linear_attention.py``
  M  Multi-head Latent Attention (DeepSeek-V2), ``layers/mla.py``

A mixer is a Flax module called as ``mixer(x, segment_ids=..., positions=..., cache=...)``
returning ``(y, new_cache)``, with ``init_cache(batch, max_len, dtype)``. A family's
settings are one frozen config beside its layer, nested in ``ModelConfig`` (``cfg.rnn``,
``cfg.la``, ``cfg.mla``); its spec says how to build the module from a ``ModelConfig``, check
the config, size the decode cache, and count parameters and FLOPs (the counting functions
of the built-in families live in ``lm/flops.py``). Adding a family with no settings of its own
is one spec and one :func:`register_mixer` call, which may live outside ``lm/``
(``tests/lm/toy_mixer.py`` does); one with settings also needs its field in ``ModelConfig``
(``lm/config.py``) and, if it adds logical axes, their rules in ``lm.sharding.RULES``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax.numpy as jnp

from layers import linear_attention as la
from layers.attention import Attention
from layers.mla import MLA
from layers.recurrent_block import RecurrentBlock
from lm import flops, parametrization

if TYPE_CHECKING:
    from lm.config import ModelConfig


def _no_checks(cfg: ModelConfig) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class MixerSpec:
    """Everything the model, the decoder and the FLOP counter need from one mixer family.

    Attributes:
      name: the family's name ("attention", "recurrent", ...).
      build: ModelConfig -> the Flax mixer module of one block.
      params: ModelConfig -> exact parameters of one mixer (``lm.flops.param_count`` adds them up).
      flops: (ModelConfig, seq_len, attention) -> forward matmul FLOPs per token of one mixer;
        ``attention`` is "causal" or "dense" (see ``lm/flops.py``).
      cache_bytes: (ModelConfig, context_len, dtype) -> bytes of one sequence's decode cache.
      validate: ModelConfig -> None, raising ValueError for settings the family cannot use
        (checks across the model's fields; a family config checks its own fields itself).
    """

    name: str
    build: Callable[[ModelConfig], nn.Module]
    params: Callable[[ModelConfig], int]
    flops: Callable[[ModelConfig, int, str], float]
    cache_bytes: Callable[[ModelConfig, int, Any], int]
    validate: Callable[[ModelConfig], None] = _no_checks

    def init_cache(self, cfg: ModelConfig, batch: int, max_len: int, dtype) -> Any:
        """The empty decode cache of one block (the module's ``init_cache``)."""
        return self.build(cfg).init_cache(batch, max_len, dtype)


def compute_dtype(cfg: ModelConfig):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


def _attention(cfg: ModelConfig, window: int | None) -> Attention:
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


def _recurrent(cfg: ModelConfig) -> RecurrentBlock:
    return RecurrentBlock(
        width=cfg.d_model,
        num_heads=cfg.rnn.gate_heads(cfg.num_heads),
        lru_width=cfg.rnn.lru_width(cfg.d_model),
        conv1d_temporal_width=cfg.rnn.conv_width,
        final_w_init_variance_scale=2.0 / cfg.num_layers,
        impl=cfg.rnn.impl,
        dtype=compute_dtype(cfg),
    )


def _check_recurrent(cfg: ModelConfig) -> None:
    width, heads = cfg.rnn.lru_width(cfg.d_model), cfg.rnn.gate_heads(cfg.num_heads)
    if width % heads:
        raise ValueError(
            f"ModelConfig.rnn.width={width} is not divisible by rnn.heads={heads} "
            "(the RG-LRU gates are block-diagonal with one block per head)"
        )


def _linear_attention(cfg: ModelConfig) -> la.LinearAttention:
    return la.LinearAttention(
        num_heads=cfg.num_heads,
        key_dim=cfg.dim_per_head,
        value_dim=cfg.dim_per_head,
        variant=cfg.la.variant,
        feature_map=cfg.la.feature_map,
        output_norm=cfg.la.output_norm,
        chunk_size=cfg.la.chunk_size,
        impl=cfg.la.impl,
        dtype=compute_dtype(cfg),
        scale=parametrization.score_scale(cfg, lambda c: c.dim_per_head),  # μP; None under SP
    )


def _mla(cfg: ModelConfig) -> MLA:
    m = cfg.mla
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
        score_scale=parametrization.score_scale(cfg, lambda c: c.mla.qk_nope_dim + c.mla.qk_rope_dim),  # μP
    )


MIXERS: dict[str, MixerSpec] = {
    "A": MixerSpec(
        "attention",
        build=lambda cfg: _attention(cfg, cfg.attention_window),
        params=flops.attention_params,
        flops=lambda cfg, t, a: flops.attention_flops(cfg, t, a, cfg.attention_window),
        cache_bytes=lambda cfg, n, dtype: _attention(cfg, cfg.attention_window).cache_bytes(n, dtype),
    ),
    "W": MixerSpec(
        "local_attention",
        build=lambda cfg: _attention(cfg, cfg.window),
        params=flops.attention_params,
        flops=lambda cfg, t, a: flops.attention_flops(cfg, t, a, cfg.window),
        cache_bytes=lambda cfg, n, dtype: _attention(cfg, cfg.window).cache_bytes(n, dtype),
    ),
    "R": MixerSpec(
        "recurrent",
        build=_recurrent,
        params=flops.recurrent_params,
        flops=flops.recurrent_flops,
        cache_bytes=lambda cfg, n, dtype: _recurrent(cfg).cache_bytes(1, dtype),
        validate=_check_recurrent,
    ),
    "L": MixerSpec(
        "linear_attention",
        build=_linear_attention,
        params=flops.linear_attention_params,
        flops=flops.linear_attention_mixer_flops,
        cache_bytes=lambda cfg, n, dtype: _linear_attention(cfg).cache_bytes(1),
    ),
    "M": MixerSpec(
        "mla",
        build=_mla,
        params=flops.mla_params,
        flops=flops.mla_flops,
        cache_bytes=lambda cfg, n, dtype: _mla(cfg).cache_bytes(n, dtype),
    ),
}


def register_mixer(letter: str, spec: MixerSpec) -> None:
    """Add a mixer family under a pattern letter (one character, not already taken)."""
    if not isinstance(letter, str) or len(letter) != 1 or letter in MIXERS:
        raise ValueError(f"register_mixer: letter={letter!r} must be one new character; taken: {sorted(MIXERS)}")
    if not isinstance(spec, MixerSpec):
        raise ValueError(f"register_mixer: spec={spec!r} must be a MixerSpec")
    MIXERS[letter] = spec
