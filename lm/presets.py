"""Named model presets: starting points that sweeps and the CLI modify with ``dataclasses.replace``.

Sizes are small enough to train on a laptop CPU (about 3-4M parameters, d_model 256);
scale d_model / num_layers for real runs. The families:

  transformer      LLaMA/Gemma-style: attention (RoPE), GeGLU MLP, tied embeddings.
  transformer_512  the bench_train preset (d_model 512, 8 layers).
  griffin          De et al. 2024: (recurrent, recurrent, local MQA attention) repeated,
                   RoPE on half of each head, MLP expansion 3, logit soft-cap 30.
  hawk             De et al. 2024: recurrent blocks only.
  gla              gated linear attention (Yang et al. 2024) in every block.
  retnet           RetNet-style fixed per-head decay (Sun et al. 2023) with group norm.
  mla              DeepSeek-V2 Multi-head Latent Attention; its decode cache is 1/8 of the
                   transformer's (kv_lora_rank + qk_rope_dim = 64 vs 2 x 8 heads x 32).
  moe              the transformer with a top-2 of 8 fine-grained experts MoE feed-forward.
"""

from __future__ import annotations

import dataclasses

from layers.linear_attention import LinearAttentionConfig
from layers.mla import MLAConfig
from layers.moe import MoEConfig
from lm.config import ModelConfig

_TRANSFORMER = ModelConfig(d_model=256, num_layers=4, pattern="A", num_heads=4, d_ff=1024)
_GRIFFIN = ModelConfig(
    d_model=256, num_layers=6, pattern="RRW", num_heads=4, num_kv_heads=1, window=256, rope_fraction=0.5,
    d_ff=768, logit_softcap=30.0,
)

PRESETS: dict[str, ModelConfig] = {
    "transformer": _TRANSFORMER,
    "transformer_512": ModelConfig(d_model=512, num_layers=8, pattern="A", num_heads=8, d_ff=2048),
    "griffin": _GRIFFIN,
    "hawk": dataclasses.replace(_GRIFFIN, pattern="R"),
    "gla": dataclasses.replace(_TRANSFORMER, pattern="L", la=LinearAttentionConfig(variant="gla", output_norm="rms")),
    "retnet": dataclasses.replace(_TRANSFORMER, pattern="L",
                                  la=LinearAttentionConfig(variant="retnet", output_norm="group")),
    "mla": dataclasses.replace(
        _TRANSFORMER, pattern="M", num_heads=8,
        mla=MLAConfig(kv_lora_rank=48, qk_nope_dim=32, qk_rope_dim=16, v_head_dim=32),
    ),
    "moe": dataclasses.replace(
        _TRANSFORMER, moe_every=1, moe=MoEConfig(num_experts=8, top_k=2, d_ff=256, activation="geglu"),
    ),
}


def get_preset(name: str) -> ModelConfig:
    """The ModelConfig of preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f"model preset={name!r} is unknown; allowed presets are {sorted(PRESETS)}")
    return PRESETS[name]
