"""Named model presets: starting points that sweeps and the CLI modify with ``dataclasses.replace``.

Every architecture family registers a preset here. Sizes are small enough to train on a
laptop CPU; scale d_model / num_layers for real runs.
"""

from __future__ import annotations

from lm.config import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # A LLaMA/Gemma-style transformer: GQA-capable attention, GeGLU MLP, RoPE, tied embeddings.
    "transformer": ModelConfig(d_model=256, num_layers=4, pattern="A", num_heads=4, d_ff=1024),
    # The bench_train preset (issue: d_model 512, 8 layers).
    "transformer_512": ModelConfig(d_model=512, num_layers=8, pattern="A", num_heads=8, d_ff=2048),
}


def get_preset(name: str) -> ModelConfig:
    """The ModelConfig of preset ``name``."""
    if name not in PRESETS:
        raise ValueError(f"model preset={name!r} is unknown; allowed presets are {sorted(PRESETS)}")
    return PRESETS[name]
