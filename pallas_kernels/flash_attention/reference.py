"""Reference scaled dot-product attention: the one home of the project's attention math.

Every attention layer (full, sliding-window/local, multi-query, MLA prefill and decode)
computes softmax attention through :func:`attention_reference` or the Pallas kernel that
reproduces it, never with softmax code of its own.

Axis letters: b batch, t query time, s key/value time, h query heads, g kv heads,
r query heads per kv head (h = g * r), d qk head dim, e value head dim.

Masking follows three rules, combined with AND:
  * causal: query at position i sees keys at positions j <= i;
  * window w (Beltagy et al. 2020; Griffin's local attention): also i - j <= w, so each
    query sees itself and the w previous tokens (w = 0: only itself);
  * documents: a query sees only keys with the same segment id (packed sequences);
  * empty cache slots: keys with a negative position are never seen.
Positions are indices in the packed buffer (or absolute cache indices during decode), not
the per-document RoPE positions; within one document the two differ by a constant.
"""

from __future__ import annotations

import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Bool, Float, Int

# Finite "minus infinity": exp underflows to exactly 0 and no inf - inf NaN can occur.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def attention_mask(
    q_positions: Int[Array, "b t"],
    kv_positions: Int[Array, "b s"],
    q_segment_ids: Int[Array, "b t"] | None = None,
    kv_segment_ids: Int[Array, "b s"] | None = None,
    *,
    causal: bool = True,
    window: int | None = None,
) -> Bool[Array, "b t s"]:
    """Boolean mask of which keys each query may attend to (True = visible)."""
    qp = q_positions[:, :, None]
    kp = kv_positions[:, None, :]
    mask = jnp.broadcast_to(kp >= 0, (qp.shape[0], qp.shape[1], kp.shape[2]))  # [b, t, s] whatever applies
    if causal:
        mask &= kp <= qp
    if window is not None:
        mask &= (qp - kp) <= window
        if not causal:
            mask &= (kp - qp) <= window
    if q_segment_ids is not None:
        mask &= q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    return mask


def default_positions(
    q: Float[Array, "b t h d"], k: Float[Array, "b s g d"]
) -> tuple[Int[Array, "b t"], Int[Array, "b s"]]:
    """Queries are the last t of the s key positions (t == s for self-attention)."""
    b, t = q.shape[:2]
    s = k.shape[1]
    q_pos = jnp.broadcast_to(jnp.arange(s - t, s, dtype=jnp.int32), (b, t))
    kv_pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    return q_pos, kv_pos


def attention_reference(
    q: Float[Array, "b t h d"],
    k: Float[Array, "b s g d"],
    v: Float[Array, "b s g e"],
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: Int[Array, "b t"] | None = None,
    kv_segment_ids: Int[Array, "b s"] | None = None,
    q_positions: Int[Array, "b t"] | None = None,
    kv_positions: Int[Array, "b s"] | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    return_lse: bool = False,
) -> Float[Array, "b t h e"] | tuple[Float[Array, "b t h e"], Float[Array, "b h t"]]:
    """Masked softmax attention with grouped-query heads (Vaswani et al. 2017; GQA, Ainslie et al. 2023).

    Query head n uses kv head n // (h // g): h == g is multi-head, g == 1 multi-query.
    Scores and softmax statistics are float32 whatever the input dtype; the output has
    the dtype of ``v``.

    Args:
      q: queries [b, t, h, d].
      k: keys [b, s, g, d], h divisible by g.
      v: values [b, s, g, e] (e may differ from d, as in MLA).
      causal: keys after the query are masked.
      window: look-back distance w (query sees itself and w previous positions); None = unbounded.
      segment_ids: document ids of the queries [b, t]; None = one document.
      kv_segment_ids: document ids of the keys [b, s]; defaults to ``segment_ids`` (t == s).
      q_positions, kv_positions: buffer positions [b, t], [b, s]; default: queries are the
        last t of s consecutive positions. A negative key position marks an empty slot.
      scale: score scale, default d ** -0.5.
      softcap: if set, scores become softcap * tanh(scores / softcap) (Gemma 2) before masking.
      return_lse: also return the float32 log-sum-exp of the masked scores [b, h, t].

    Returns:
      o [b, t, h, e] (and lse [b, h, t]). Rows with no visible key give zeros.
    """
    b, t, h, d = q.shape
    g = k.shape[2]
    if h % g:
        raise ValueError(f"query heads ({h}) must be a multiple of kv heads ({g})")
    if segment_ids is not None and kv_segment_ids is None:
        if k.shape[1] != t:
            raise ValueError("kv_segment_ids is required when key and query lengths differ")
        kv_segment_ids = segment_ids
    if segment_ids is None and kv_segment_ids is not None:
        raise ValueError("kv_segment_ids given without segment_ids")
    if q_positions is None or kv_positions is None:
        dq, dk = default_positions(q, k)
        q_positions = dq if q_positions is None else q_positions
        kv_positions = dk if kv_positions is None else kv_positions
    scale = d**-0.5 if scale is None else scale

    # The r query heads of a kv head are folded into the query axis (q = r t) so that every
    # contraction, forward and backward, runs over a single axis: XLA:CPU lowers those to
    # plain batched GEMMs (a contraction over (r, t) is about 2x slower in the backward).
    r = h // g
    qg = rearrange(q, "b t (g r) d -> b g (r t) d", g=g).astype(jnp.float32)
    scores = jnp.einsum("bgqd,bsgd->bgqs", qg, k.astype(jnp.float32)) * scale
    if softcap is not None:
        scores = softcap * jnp.tanh(scores / softcap)
    mask = attention_mask(
        q_positions, kv_positions, segment_ids, kv_segment_ids, causal=causal, window=window
    )
    mask = jnp.tile(mask, (1, r, 1))[:, None]  # [b, 1, (r t), s], r-major like qg
    scores = jnp.where(mask, scores, MASK_VALUE)
    m = jnp.max(scores, axis=-1, keepdims=True)
    p = jnp.exp(scores - m) * mask
    denom = jnp.sum(p, axis=-1, keepdims=True)
    probs = p / jnp.maximum(denom, jnp.finfo(jnp.float32).tiny)
    o = jnp.einsum("bgqs,bsge->bgqe", probs, v.astype(jnp.float32))
    o = rearrange(o, "b g (r t) e -> b t (g r) e", r=r).astype(v.dtype)
    if not return_lse:
        return o
    lse = jnp.log(jnp.maximum(denom, jnp.finfo(jnp.float32).tiny)) + m
    lse = rearrange(lse, "b g (r t) 1 -> b (g r) t", r=r)
    return o, lse
