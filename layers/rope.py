"""Rotary position embeddings (RoPE; Su et al. 2021, arXiv 2104.09864), optionally partial.

Only the first ``fraction`` of each head's dimensions is rotated (Griffin rotates the first
half, De et al. 2024; GPT-NeoX uses a fraction too); the rest passes through unchanged.
Inside the rotated part the "rotate-half" pairing is used: dimension i pairs with
i + r/2, with frequency theta_i = max_wavelength ** (-2i / r), i < r/2.

Axis letters: b batch, t time, h heads, d head dim, r rotated dims.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def rotated_dims(head_dim: int, fraction: float) -> int:
    """Number of rotated dimensions r = floor(head_dim * fraction) rounded down to even."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"rope fraction={fraction} must be in [0, 1]")
    return int(head_dim * fraction) // 2 * 2


def apply_rope(
    x: Float[Array, "b t h d"],
    positions: Int[Array, "b t"],
    *,
    fraction: float = 1.0,
    max_wavelength: float = 10_000.0,
) -> Float[Array, "b t h d"]:
    """Rotate the first ``fraction`` of the last axis of x by angle positions * theta_i.

    Args:
      x: [b, t, h, d] queries or keys.
      positions: [b, t] integer positions (per document).
      fraction: share of head dims rotated (1.0 = all).
      max_wavelength: base of the frequencies (10,000 in the paper).

    Returns:
      [b, t, h, d], same dtype as x; angles and rotation computed in float32.
    """
    r = rotated_dims(x.shape[-1], fraction)
    if r == 0:
        return x
    x_rot, x_pass = x[..., :r], x[..., r:]
    freq = jnp.arange(r // 2, dtype=jnp.float32)
    inv_freq = max_wavelength ** (-2.0 * freq / r)
    angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x_rot.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return jnp.concatenate([rotated.astype(x.dtype), x_pass], axis=-1)
