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


def causal_blocked_pays(t: int, s: int, window: int | None, causal: bool, block_q: int = 128) -> bool:
    """True when :func:`attention_causal_blocked` applies and wins on CPU: causal
    self-attention (t == s) without a window shorter than t, at least 4 query blocks
    (measured with ``python -m experiments.bench_attention``)."""
    return causal and t == s and (window is None or window >= t) and t >= 4 * block_q


def _tiles(x, size: int, fill):
    """Pad the time axis (1) of x to a multiple of 2 * size, split it into pairs of tiles:
    [b, n, ...] -> [b, m, 2, size, ...] (m pairs)."""
    n = x.shape[1]
    pad = -n % (2 * size)
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, pad)
    x = jnp.pad(x, widths, constant_values=fill)
    return x.reshape(x.shape[0], -1, 2, size, *x.shape[2:])


def attention_causal_blocked(
    q: Float[Array, "b t h d"],
    k: Float[Array, "b t g d"],
    v: Float[Array, "b t g e"],
    *,
    segment_ids: Int[Array, "b t"] | None = None,
    kv_segment_ids: Int[Array, "b t"] | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    block_q: int = 128,
) -> Float[Array, "b t h e"]:
    """Causal self-attention that skips the key blocks after each query block (t == s).

    The lower triangle of (query block, key block) pairs is covered once by tiles that
    need no causal mask except on the diagonal: the c x c diagonal tiles (causal), and at
    level l = 0, 1, ... the pairs of super-blocks of B = c 2^l positions (2m, 2m + 1),
    whose queries (odd super-block) see every key of the even one. A query block P and an
    earlier key block J < P meet at exactly one level: the highest bit where P and J
    differ. Each tile is :func:`attention_reference` with explicit positions (one home of
    the masking) returning its log-sum-exp; the partial outputs are merged with softmax
    weights exp(lse_l - logsumexp_l lse_l) (FlashAttention's rescaling). Work is about
    t^2 / 2 scores instead of t^2, with ordinary autodiff.

    Args:
      q: [b, t, h, d]; k: [b, t, g, d]; v: [b, t, g, e]; h divisible by g.
      segment_ids, kv_segment_ids, scale, softcap: as in :func:`attention_reference`.
      block_q: diagonal tile length c.

    Returns:
      o [b, t, h, e] in the dtype of v.
    """
    b, t, h, d = q.shape
    if k.shape[1] != t:
        raise ValueError(f"attention_causal_blocked: {t} queries but {k.shape[1]} keys (self-attention only)")
    if segment_ids is not None and kv_segment_ids is None:
        kv_segment_ids = segment_ids
    scale = d**-0.5 if scale is None else scale
    c = max(1, min(block_q, t))
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    seg = segment_ids if segment_ids is not None else jnp.zeros((b, t), jnp.int32)
    kv_seg = kv_segment_ids if kv_segment_ids is not None else seg
    common = dict(causal=True, scale=scale, softcap=softcap, return_lse=True)
    outs, lses = [], []

    def attend(qs, ks, vs, q_pos, kv_pos, q_seg, k_seg):
        """Tiles [b, m, size, ...] with the tile axis folded into the batch; o and lse back in [b, t]."""
        m, size = qs.shape[1], qs.shape[2]
        fold = lambda x: rearrange(x, "b m c ... -> (b m) c ...")  # noqa: E731
        o, lse = attention_reference(fold(qs), fold(ks), fold(vs), segment_ids=fold(q_seg),
                                     kv_segment_ids=fold(k_seg), q_positions=fold(q_pos),
                                     kv_positions=fold(kv_pos), **common)
        return (rearrange(o, "(b m) c h e -> b m c h e", m=m), rearrange(lse, "(b m) h c -> b m c h", m=m), size)

    # Diagonal tiles: causal within each block of c positions.
    n_pad = -(-t // c) * c
    diag = lambda x, fill: _tiles(x, c, fill).reshape(b, -1, c, *x.shape[2:])[:, : n_pad // c]  # noqa: E731
    o, lse, _ = attend(diag(q, 0), diag(k, 0), diag(v, 0), diag(pos, -1), diag(pos, -1), diag(seg, 0),
                       diag(kv_seg, 0))
    outs.append(rearrange(o, "b m c h e -> b (m c) h e")[:, :t])
    lses.append(rearrange(lse, "b m c h -> b (m c) h")[:, :t])
    size = c
    while size < t:
        # Pairs (2m, 2m + 1) of super-blocks: queries of the odd one, keys of the even one.
        qs, qp, qg = (_tiles(x, size, f)[:, :, 1] for x, f in ((q, 0), (pos, -1), (seg, 0)))
        ks, vs, kp, kg = (_tiles(x, size, f)[:, :, 0] for x, f in ((k, 0), (v, 0), (pos, -1), (kv_seg, 0)))
        o, lse, _ = attend(qs, ks, vs, qp, kp, qg, kg)
        m = o.shape[1]
        # Queries of the even super-blocks have no tile at this level: zero output, lse -inf.
        o = jnp.stack([jnp.zeros_like(o), o], axis=2).reshape(b, 2 * m * size, h, -1)[:, :t]
        lse = jnp.stack([jnp.full_like(lse, -jnp.inf), lse], axis=2).reshape(b, 2 * m * size, h)[:, :t]
        outs.append(o)
        lses.append(lse)
        size *= 2
    lse_all = jnp.stack(lses)  # [levels, b, t, h]
    total = jax.scipy.special.logsumexp(lse_all, axis=0)
    weights = jnp.exp(lse_all - jnp.where(jnp.isfinite(total), total, 0.0))
    o = sum(w[..., None] * x.astype(jnp.float32) for w, x in zip(weights, outs))
    return o.astype(v.dtype)
