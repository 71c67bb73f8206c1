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

Two families of sizes for the studies: the size ladder of the isoFLOP studies
(:data:`LADDER`, :func:`ladder_model`: transformers ``d<width>L<layers>``) and every family at a
μP base width (:func:`mup_family_model`, widened with ``lm.model.parametrization.at_width``).
"""

from __future__ import annotations

import dataclasses

from layers.linear_attention import LinearAttentionConfig
from layers.mla import MLAConfig
from layers.moe import MoEConfig
from lm.model.config import ModelConfig
from lm.data.tokenizer import VOCAB_SIZE

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
    "gla": dataclasses.replace(_TRANSFORMER, pattern="L",
                               families={"la": LinearAttentionConfig(variant="gla", output_norm="rms")}),
    "retnet": dataclasses.replace(_TRANSFORMER, pattern="L",
                                  families={"la": LinearAttentionConfig(variant="retnet", output_norm="group")}),
    "mla": dataclasses.replace(
        _TRANSFORMER, pattern="M", num_heads=8,
        families={"mla": MLAConfig(kv_lora_rank=48, qk_nope_dim=32, qk_rope_dim=16, v_head_dim=32)},
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


# ------------------------------------------------------------------------ size ladder


def ladder_model(d_model: int, num_layers: int, dtype: str = "float32", vocab_size: int = VOCAB_SIZE) -> ModelConfig:
    """The ladder's transformer of width ``d_model`` and depth ``num_layers``.

    Heads of 16 dimensions up to width 128 and of 64 above (so tiny models keep several
    heads); gated (GeGLU) MLP of width 4d; RoPE; tied embeddings; ``vocab_size`` tokens (259 bytes).
    """
    head_dim = 16 if d_model <= 128 else 64
    if d_model % head_dim:
        raise ValueError(f"d_model={d_model}: must be a multiple of the ladder's head dim {head_dim}")
    return ModelConfig(d_model=d_model, num_layers=num_layers, pattern="A", num_heads=d_model // head_dim,
                       d_ff=4 * d_model, dtype=dtype, vocab_size=vocab_size)


# name -> (d_model, num_layers). Widths grow ~1.5x per rung, depth with width (aspect ratio
# d/L between 16 and 64, as in the small models of Kaplan et al. 2020, Fig. 5).
LADDER: dict[str, tuple[int, int]] = {
    f"d{d}L{L}": (d, L)
    for d, L in [
        (16, 1), (32, 1), (32, 2), (48, 2), (64, 2), (64, 3), (96, 3), (128, 4),  # CPU rungs
        (256, 4), (384, 6), (512, 8), (640, 10), (768, 12), (1024, 16), (1280, 20),  # GPU/TPU rungs
    ]
}


# -------------------------------------------------------------- families at a μP base width

FAMILIES = ("transformer", "griffin", "hawk", "gla", "mla", "moe")
PARAMETRIZATIONS = ("sp", "mup")


def mup_family_model(family: str, base_width: int, num_layers: int, parametrization_: str = "mup") -> ModelConfig:
    """The ``family``'s model at its base width (μP's width multipliers are 1); widen with ``parametrization.at_width``.

    Four heads (their width grows with d), MLP 4d; Griffin = (recurrent, local attention),
    Hawk = recurrent only; GLA; MLA with latent ranks d/2 and RoPE key 8 (fixed); MoE with 4
    experts of width 2d, top-2. Untied head for the transformer (the readout class), tied
    elsewhere (the tied-embedding multiplier).
    """
    base = ModelConfig(d_model=base_width, num_layers=num_layers, pattern="A", num_heads=4,
                       parametrization=parametrization_, base_width=base_width)
    if family == "transformer":
        return dataclasses.replace(base, tie_embeddings=False)
    if family in ("griffin", "hawk"):
        return dataclasses.replace(base, pattern="RW" if family == "griffin" else "R", num_kv_heads=1, window=64)
    if family == "gla":
        return dataclasses.replace(base, pattern="L")
    if family == "mla":
        return dataclasses.replace(base, pattern="M", families={"mla": MLAConfig(
            q_lora_rank=base_width // 2, kv_lora_rank=base_width // 2, qk_nope_dim=base_width // 4, qk_rope_dim=8,
            v_head_dim=base_width // 4)})
    if family == "moe":
        return dataclasses.replace(base, moe_every=1, moe=MoEConfig(num_experts=4, top_k=2, d_ff=2 * base_width))
    raise ValueError(f"family={family!r}: allowed families are {FAMILIES}")
