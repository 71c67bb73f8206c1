"""The vocabulary of token mixers: one registry entry per pattern letter.

A mixer is a Flax module called as ``mixer(x, segment_ids=..., positions=..., cache=...)``
returning ``(y, new_cache)``, with ``init_cache(batch, max_len, dtype)`` and
``cache_bytes(context_len, dtype)``. A new family registers its letter here with a builder
(ModelConfig -> module) and a validator; its FLOP and parameter counts go in ``lm/flops.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import flax.linen as nn
import jax.numpy as jnp

from layers.attention import Attention

if TYPE_CHECKING:
    from lm.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class MixerSpec:
    """How to build and validate the mixer of one pattern letter."""

    name: str
    build: Callable[["ModelConfig"], nn.Module]
    validate: Callable[["ModelConfig"], None] = lambda cfg: None


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
    )


MIXERS: dict[str, MixerSpec] = {
    "A": MixerSpec("attention", lambda cfg: _attention(cfg, cfg.attention_window)),
    "W": MixerSpec("local_attention", lambda cfg: _attention(cfg, cfg.window)),
}


def register_mixer(letter: str, spec: MixerSpec) -> None:
    """Add a mixer letter (one character, not already taken)."""
    if len(letter) != 1 or letter in MIXERS:
        raise ValueError(f"mixer letter {letter!r} must be one new character; taken: {sorted(MIXERS)}")
    MIXERS[letter] = spec
