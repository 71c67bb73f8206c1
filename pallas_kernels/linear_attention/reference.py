"""Reference causal linear attention with decay: recurrent, parallel and chunked forms.

The definition (Katharopoulos et al. 2020, eq. 5-6, with the decays of RetNet, Sun et al.
2023, eq. 1-3, and of Gated Linear Attention, Yang et al. 2024, eq. 3):

    S_t = exp(g_t) * diag(exp(gk_t)) S_{t-1} + k_t^T v_t,    o_t = scale * q_t S_t,

S_{-1} = initial_state (zeros if None), final state S_{T-1}. ``g`` is a log-space scalar
decay per step and head (RetNet: log gamma; GLA with scalar gates), ``gk`` a log-space decay
per key dimension (GLA). Both are <= 0 for a decay; nothing here requires it except the
overflow-freedom of the chunked form, which relies on cumulative decays being <= 0.

Three forms compute the same thing:
  * recurrent: a scan over time (eq. above, O(T K V) work, O(T) sequential steps);
  * parallel: the quadratic masked form o = scale * ((q k^T) ⊙ D) v with the decay matrix
    D_ts = exp(G_t - G_s) for s <= t (G the cumulative log-decay), O(T^2) memory;
  * chunked: Lightning Attention-2 (Qin et al. 2024, arXiv 2401.04658, Algorithm 1) and
    GLA's chunkwise form (Yang et al. 2024, Section 4.2): masked attention inside each chunk
    of C steps plus a state carried between chunks, O(T C (K + V) + T K V) work.
All three compute in float32 and return o in q's dtype and the state in float32.

The chunked form, the CPU path and the kernels' backward, is in ``chunked.py``.

Axis letters: b batch, t time (query), s time (key), h heads, k key dim, v value dim,
n number of chunks, c position inside a chunk (query), r position inside a chunk (key),
p outer step of the chunked form (a group of n chunks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Float

DECAY_MODES = ("none", "scalar", "per_key")


def decay_mode(g, gk) -> str:
    """"none" (no g, no gk), "scalar" (only g) or "per_key" (gk, with or without g)."""
    if gk is not None:
        return "per_key"
    return "none" if g is None else "scalar"


def _check_shapes(q, k, v, g, gk, initial_state) -> None:
    if q.ndim != 4 or k.shape != q.shape:
        raise ValueError(f"linear_attention: q {q.shape} and k {k.shape} must both be [b, t, h, k]")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"linear_attention: v {v.shape} must be [b, t, h, v] with b, t, h of q {q.shape}")
    if g is not None and g.shape != q.shape[:3]:
        raise ValueError(f"linear_attention: g {g.shape} must be [b, t, h] = {q.shape[:3]}")
    if gk is not None and gk.shape != q.shape:
        raise ValueError(f"linear_attention: gk {gk.shape} must be [b, t, h, k] = {q.shape}")
    want = (q.shape[0], q.shape[2], q.shape[3], v.shape[3])
    if initial_state is not None and initial_state.shape != want:
        raise ValueError(f"linear_attention: initial_state {initial_state.shape} must be [b, h, k, v] = {want}")


def _prepare(q, k, v, g, gk, scale, initial_state):
    """float32 copies, the default scale, the zero initial state and the combined log-decay.

    Returns (q, k, v, log_decay, mode, scale, s0) with log_decay None ("none"), [b, t, h]
    ("scalar") or [b, t, h, k] ("per_key", g broadcast into gk).
    """
    _check_shapes(q, k, v, g, gk, initial_state)
    b, _, h, dk = q.shape
    dv = v.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    f32 = lambda x: None if x is None else x.astype(jnp.float32)
    q, k, v, g, gk = map(f32, (q, k, v, g, gk))
    mode = decay_mode(g, gk)
    log_decay = gk if mode == "per_key" else g
    if mode == "per_key" and g is not None:
        log_decay = gk + g[..., None]
    s0 = jnp.zeros((b, h, dk, dv), jnp.float32) if initial_state is None else f32(initial_state)
    return q, k, v, log_decay, mode, scale, s0


def linear_attention_recurrent(
    q: Float[Array, "b t h k"],
    k: Float[Array, "b t h k"],
    v: Float[Array, "b t h v"],
    g: Float[Array, "b t h"] | None = None,
    gk: Float[Array, "b t h k"] | None = None,
    *,
    scale: float | None = None,
    initial_state: Float[Array, "b h k v"] | None = None,
) -> tuple[Float[Array, "b t h v"], Float[Array, "b h k v"]]:
    """The recurrence itself: a ``lax.scan`` over time, one rank-1 state update per step."""
    out_dtype = q.dtype
    q, k, v, a, mode, scale, s0 = _prepare(q, k, v, g, gk, scale, initial_state)
    if mode == "none":
        a = jnp.zeros(q.shape[:3], jnp.float32)
    if a.ndim == 3:
        a = a[..., None]  # broadcasts over k

    def step(state, xs):
        q_t, k_t, v_t, a_t = xs  # [b h k], [b h k], [b h v], [b h k|1]
        state = jnp.exp(a_t)[..., None] * state + jnp.einsum("bhk,bhv->bhkv", k_t, v_t)
        return state, scale * jnp.einsum("bhk,bhkv->bhv", q_t, state)

    time_major = lambda x: rearrange(x, "b t ... -> t b ...")
    final, o = jax.lax.scan(step, s0, tuple(map(time_major, (q, k, v, a))))
    return rearrange(o, "t b h v -> b t h v").astype(out_dtype), final


def linear_attention_parallel(
    q: Float[Array, "b t h k"],
    k: Float[Array, "b t h k"],
    v: Float[Array, "b t h v"],
    g: Float[Array, "b t h"] | None = None,
    gk: Float[Array, "b t h k"] | None = None,
    *,
    scale: float | None = None,
    initial_state: Float[Array, "b h k v"] | None = None,
) -> tuple[Float[Array, "b t h v"], Float[Array, "b h k v"]]:
    """Quadratic form: o = scale * (((q k^T) ⊙ D) v + (q ⊙ exp(G)) S_{-1}).

    D_ts = exp(G_t - G_s) for s <= t, else 0, with G the inclusive cumulative log-decay
    (RetNet eq. 5; for per-key decay D has a k axis and the product is taken inside the
    contraction over k, GLA eq. 4). Memory O(T^2) (O(T^2 K) with per-key decay).
    """
    out_dtype = q.dtype
    q, k, v, a, mode, scale, s0 = _prepare(q, k, v, g, gk, scale, initial_state)
    t = q.shape[1]
    causal = jnp.tril(jnp.ones((t, t), bool))
    if mode == "none":
        scores = jnp.where(causal, jnp.einsum("bthk,bshk->bhts", q, k), 0.0)
        o = jnp.einsum("bhts,bshv->bthv", scores, v) + jnp.einsum("bthk,bhkv->bthv", q, s0)
        final = s0 + jnp.einsum("bshk,bshv->bhkv", k, v)
    elif mode == "scalar":
        cum = jnp.cumsum(a, axis=1)  # [b t h]
        cum_h = rearrange(cum, "b t h -> b h t")
        diff = cum_h[..., :, None] - cum_h[..., None, :]  # [b h t s]
        scores = jnp.einsum("bthk,bshk->bhts", q, k) * jnp.exp(jnp.where(causal, diff, -jnp.inf))
        o = jnp.einsum("bhts,bshv->bthv", scores, v)
        o += jnp.einsum("bthk,bhkv->bthv", q * jnp.exp(cum)[..., None], s0)
        to_end = jnp.exp(cum[:, -1:] - cum)  # [b s h]
        final = jnp.exp(cum[:, -1])[..., None, None] * s0
        final += jnp.einsum("bshk,bshv->bhkv", k * to_end[..., None], v)
    else:
        cum = jnp.cumsum(a, axis=1)  # [b t h k]
        diff = cum[:, :, None] - cum[:, None, :]  # [b t s h k]
        decay = jnp.exp(jnp.where(causal[None, :, :, None, None], diff, -jnp.inf))
        scores = jnp.einsum("bthk,bshk,btshk->bhts", q, k, decay)
        o = jnp.einsum("bhts,bshv->bthv", scores, v)
        o += jnp.einsum("bthk,bhkv->bthv", q * jnp.exp(cum), s0)
        final = jnp.exp(cum[:, -1])[..., None] * s0
        final += jnp.einsum("bshk,bshv->bhkv", k * jnp.exp(cum[:, -1:] - cum), v)
    return (scale * o).astype(out_dtype), final
