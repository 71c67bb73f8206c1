"""Blocked pure-JAX sliding-window attention: only the key blocks inside the window.

For a window w, query block i (positions [p, p + bq)) can only see keys in
[p - w, p + bq) (causal) or [p - w, p + bq + w) (non-causal window). Each query block
therefore attends over one fixed-length key slice (``lax.dynamic_slice``) of
bq + w (+ w) keys instead of all s keys: time and memory grow as t (bq + w) rather than
t s. The softmax itself is :func:`attention_reference` applied to each (query block, key
slice) pair with explicit positions, so the masking math keeps its one home; slice slots
outside the sequence get position -1 (empty, never seen).

This is the CPU path of ``flash_attention(impl="auto")`` for windows much shorter than
the sequence, and differentiable by ordinary autodiff.

Axis letters: b batch, t query time, s key time, h query heads, g kv heads, d qk head
dim, e value head dim, n query blocks, c query block length, l key-slice length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Float, Int

from pallas_kernels.flash_attention.reference import attention_reference

# Query blocks computed together per loop step (a cache-sized working set).
BLOCKS_PER_STEP = 4


def blocked_pays(t: int, s: int, window: int, causal: bool, block_q: int = 128) -> bool:
    """True when the key slices cover well under half of the keys (the blocked path wins)."""
    span = min(block_q, t) + window * (1 if causal else 2)
    return t >= 2 * min(block_q, t) and 2 * span <= s


def attention_blocked(
    q: Float[Array, "b t h d"],
    k: Float[Array, "b s g d"],
    v: Float[Array, "b s g e"],
    *,
    causal: bool = True,
    window: int,
    segment_ids: Int[Array, "b t"] | None = None,
    kv_segment_ids: Int[Array, "b s"] | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    block_q: int = 128,
) -> Float[Array, "b t h e"]:
    """Sliding-window attention equal to ``attention_reference`` with default positions.

    Args:
      q, k, v, causal, segment_ids, kv_segment_ids, scale, softcap: as in
        :func:`attention_reference`; the queries are the last t of the s keys (t <= s).
      window: look-back distance w >= 0 (required: without a window nothing is skipped).
      block_q: query block length c.

    Returns:
      o [b, t, h, e] in the dtype of v.
    """
    b, t, h, d = q.shape
    s = k.shape[1]
    if window is None or window < 0:
        raise ValueError(f"attention_blocked: window={window!r} must be an int >= 0")
    if t > s:
        raise ValueError(f"attention_blocked: {t} queries but only {s} keys")
    if segment_ids is not None and kv_segment_ids is None:
        kv_segment_ids = segment_ids
    offset = s - t
    c = max(1, min(block_q, t))
    n = -(-t // c)
    t_pad = n * c
    left, right = window, (0 if causal else window)
    length = c + left + right
    # Key slot j of the padded buffer holds position j - left; query block i's slice
    # starts at slot i * c + offset (position i * c + offset - left).
    back = t_pad - t + right
    k_pad = jnp.pad(k, ((0, 0), (left, back), (0, 0), (0, 0)))
    v_pad = jnp.pad(v, ((0, 0), (left, back), (0, 0), (0, 0)))
    kv_pos = jnp.pad(jnp.arange(s, dtype=jnp.int32), (left, back), constant_values=-1)
    q_pad = jnp.pad(q, ((0, 0), (0, t_pad - t), (0, 0), (0, 0)))
    q_pos = jnp.arange(t_pad, dtype=jnp.int32) + offset
    has_seg = segment_ids is not None
    if has_seg:
        q_seg = jnp.pad(segment_ids, ((0, 0), (0, t_pad - t)))
        kv_seg = jnp.pad(kv_segment_ids, ((0, 0), (left, back)))

    q_blocks = rearrange(q_pad, "b (n c) h d -> n b c h d", c=c)
    q_pos_blocks = rearrange(q_pos, "(n c) -> n c", c=c)
    q_seg_blocks = rearrange(q_seg, "b (n c) -> n b c", c=c) if has_seg else None

    def one_block(i, q_i, q_pos_i, q_seg_i):
        start = i * c + offset
        k_i = jax.lax.dynamic_slice_in_dim(k_pad, start, length, axis=1)
        v_i = jax.lax.dynamic_slice_in_dim(v_pad, start, length, axis=1)
        kv_pos_i = jax.lax.dynamic_slice_in_dim(kv_pos, start, length)
        kv_seg_i = jax.lax.dynamic_slice_in_dim(kv_seg, start, length, axis=1) if has_seg else None
        return attention_reference(
            q_i, k_i, v_i, causal=causal, window=window,
            segment_ids=q_seg_i, kv_segment_ids=kv_seg_i,
            q_positions=jnp.broadcast_to(q_pos_i, (b, c)),
            kv_positions=jnp.broadcast_to(kv_pos_i, (b, length)),
            scale=d**-0.5 if scale is None else scale, softcap=softcap,
        )

    # lax.map keeps the working set at a few blocks (cache-resident), so the time per
    # block stays constant as t grows; batching several blocks amortises loop overhead.
    xs = (jnp.arange(n), q_blocks, q_pos_blocks) + ((q_seg_blocks,) if has_seg else ())
    o = jax.lax.map(lambda x: one_block(*x, *(() if has_seg else (None,))), xs,
                    batch_size=min(n, BLOCKS_PER_STEP))
    return rearrange(o, "n b c h e -> b (n c) h e")[:, :t]
