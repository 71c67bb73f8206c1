"""Chunked causal linear attention with decay: the CPU form and the hand-written backward.

Lightning Attention-2 (Qin et al. 2024, arXiv 2401.04658, Algorithm 1) and GLA's chunkwise
form (Yang et al. 2024, Section 4.2): masked attention inside each chunk of C steps plus a
state carried between chunks; same definition as ``reference.py`` (recurrent / parallel).

Backward of the chunked form (a ``jax.custom_vjp``; Lightning Attention-2 Algorithm 2,
GLA Section 4.2). Per chunk, with dO the output cotangent times ``scale``, S_n the state
entering the chunk (saved by the forward) and dS_{n+1} the gradient w.r.t. the state
leaving it (dS_N = the final state's cotangent):
    dS_n = exp(B_last) ⊙ dS_{n+1} + (Q ⊙ exp(B))^T dO           (reverse recurrence)
    dA   = mask(dO V^T) ⊙ decay,   A = the forward's masked decayed scores (recomputed)
    dQ   = dA K + (dO S_n^T) ⊙ exp(B)
    dK   = dA^T Q + (V dS_{n+1}^T) ⊙ exp(B_last - B)
    dV   = A^T dO + (K ⊙ exp(B_last - B)) dS_{n+1}
Decay gradient: with G_t = sum_{s<=t} a_s the global cumulative log-decay (a = g, gk or
gk + g), S_t = exp(G_t) ⊙ (S_{-1} + sum_{s<=t} (k_s ⊙ exp(-G_s))^T v_s) and
o_t = scale (q_t ⊙ exp(G_t)) (S_{-1} + sum_{s<=t} ...), so G reaches the loss only through
q_t exp(G_t), k_s exp(-G_s) and the factor exp(G_{T-1}) of the final state:
    dL/dG_t = q_t ⊙ dq_t - k_t ⊙ dk_t  (+ sum_v dS_final ⊙ S_final at t = T-1),
    dL/da_t = sum_{s>=t} dL/dG_s
(summed over k for a scalar decay; GLA, Yang et al. 2024, the memory-efficient
d log alpha computation). exp(-G) appears only in this derivation; the code forms dq and
dk from the chunk-local factors above, all <= 1.

Overflow: the chunked and parallel forms never exponentiate a positive number. Decay
differences G_t - G_s are masked (set to -inf) where s > t BEFORE ``exp``, so the
upper-triangular entries, which may be huge and positive under strong decay, are never
exponentiated. (The naive trick q_t exp(G_t) · k_s exp(-G_s) overflows for long chunks.)

Axis letters: b batch, t time (query), s time (key), h heads, k key dim, v value dim,
n number of chunks, c position inside a chunk (query), r position inside a chunk (key),
p outer step of the chunked form (a group of n chunks).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Float

from pallas_kernels.linear_attention.reference import _prepare, decay_mode


def pad_to_chunks(x: Array | None, chunk_size: int) -> Array | None:
    """Zero-pad axis 1 (time) up to a multiple of ``chunk_size``.

    Zero k and v add nothing to the state and a zero log-decay multiplies it by 1, so the
    state after the padded steps equals the state after the last real step.
    """
    if x is None:
        return None
    pad = -x.shape[1] % chunk_size
    return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2)) if pad else x


def chunk_cumsum(a: Array, chunk_size: int) -> Array:
    """Inclusive cumulative sum of a log-decay [b, t, h(, k)] restarted at every chunk."""
    chunked = rearrange(a, "b (n c) ... -> b n c ...", c=chunk_size)
    return rearrange(jnp.cumsum(chunked, axis=2), "b n c ... -> b (n c) ...")


def _chunk_decays(cum, mode: str, chunk_size: int):
    """Decay factors of the chunks of one group, every exponent <= 0.

    Args:
      cum: None ("none"), [b n c h] ("scalar") or [b n c h k] ("per_key"): the inclusive
        cumulative log-decay B restarted at each chunk.

    Returns (intra, e_b, e_tail, e_last):
      intra: the score mask: bool [c r] ("none"), exp(mask(B_c - B_r)) [b n h c r]
        ("scalar") or [b n c r h k] ("per_key"), masked (-inf) before ``exp``;
      e_b = exp(B), e_tail = exp(B_last - B): [b n c h 1|k] (None for "none");
      e_last = exp(B_last): [n b h 1|k 1], chunk-major for the state scans (None for "none").
    """
    causal = jnp.tril(jnp.ones((chunk_size, chunk_size), bool))  # [c r]
    if mode == "none":
        return causal, None, None, None
    if mode == "scalar":
        cum_h = rearrange(cum, "b n c h -> b n h c")
        intra = jnp.exp(jnp.where(causal, cum_h[..., :, None] - cum_h[..., None, :], -jnp.inf))
        cum = cum[..., None]  # [b n c h 1], broadcasts over k
    else:
        diff = cum[:, :, :, None] - cum[:, :, None, :]  # [b n c r h k]
        intra = jnp.exp(jnp.where(causal[:, :, None, None], diff, -jnp.inf))
    last = cum[:, :, -1:]  # [b n 1 h 1|k]
    return intra, jnp.exp(cum), jnp.exp(last - cum), rearrange(jnp.exp(last), "b n 1 h k -> n b h k 1")


def _intra_scores(qc, kc, intra, mode: str):
    """Masked, decayed intra-chunk scores A_cr = sum_k Q_ck K_rk exp(B_ck - B_rk): [b n h c r]."""
    if mode == "per_key":
        return jnp.einsum("bnchk,bnrhk,bncrhk->bnhcr", qc, kc, intra)
    return _mask_scores(jnp.einsum("bnchk,bnrhk->bnhcr", qc, kc), intra, mode)


def _mask_scores(scores, intra, mode: str):
    """Apply the scalar / no-decay score mask to [b n h c r] scores."""
    return jnp.where(intra, scores, 0.0) if mode == "none" else scores * intra


def _rows(x, factor):
    """x ⊙ factor, or x where there is no decay (factor None)."""
    return x if factor is None else x * factor


def _state_scan(state, e_last, increments, *, reverse: bool = False):
    """The chunk recurrence S_{n+1} = e_last_n ⊙ S_n + U_n over the chunks of a group.

    Reversed it is the state-gradient recurrence dS_n = e_last_n ⊙ dS_{n+1} + U_n.
    state [b h k v]; e_last [n b h k|1 1] or None (no decay); increments U [n b h k v].
    Returns (state after the last chunk visited, state before each chunk [n b h k v]):
    forward, the states entering the chunks; reversed, the gradients w.r.t. the states
    leaving them.
    """

    def step(carry, xs):
        decay_n, increment_n = xs
        return increment_n + _rows(carry, decay_n), carry

    return jax.lax.scan(step, state, (e_last, increments), reverse=reverse)


def _group_states(state, kc, vc, e_tail, e_last):
    """States entering each chunk of a group: (state after the group, [n b h k v])."""
    contrib = jnp.einsum("bnrhk,bnrhv->nbhkv", _rows(kc, e_tail), vc)  # (K ⊙ e^{B_last - B})^T V
    return _state_scan(state, e_last, contrib)


def _group_forward(state, qc, kc, vc, ac, mode: str, scale: float):
    """Forward of the chunks n of one group (time-major, as the inputs come).

    qc, kc: [b n c h k]; vc: [b n c h v]; ac: None, [b n c h] or [b n c h k] the per-step
    log-decay; state [b h k v] entering the group.
    Returns (state after the group, (o [b n c h v], states entering the chunks [n b h k v])).
    """
    cum = None if ac is None else jnp.cumsum(ac, axis=2)
    intra, e_b, e_tail, e_last = _chunk_decays(cum, mode, qc.shape[2])
    state, entering = _group_states(state, kc, vc, e_tail, e_last)
    o = jnp.einsum("bnhcr,bnrhv->bnchv", _intra_scores(qc, kc, intra, mode), vc)
    o += jnp.einsum("bnchk,nbhkv->bnchv", _rows(qc, e_b), entering)
    return state, (scale * o, entering)


def _group_backward(carry, qc, kc, vc, ac, doc, entering, mode: str, scale: float):
    """Backward of the chunks of one group (the forward's chunk equations transposed).

    carry: (dS [b h k v], the gradient w.r.t. the state leaving the group; dG_after [b h]
    or [b h k] (None for "none"), the sum of dL/dG_s over every step s after the group,
    final-state term included). doc: [b n c h v] the output cotangent; entering: the
    forward's states entering the chunks [n b h k v]; other arguments as
    :func:`_group_forward`.
    Returns (carry entering the group, (dq, dk, dv, da)), da the gradient w.r.t. ac.
    """
    d_state, dg_after = carry
    cum = None if ac is None else jnp.cumsum(ac, axis=2)
    intra, e_b, e_tail, e_last = _chunk_decays(cum, mode, qc.shape[2])
    doc = scale * doc  # gradient w.r.t. the unscaled output
    # dS_n = e^{B_last} ⊙ dS_{n+1} + (Q ⊙ e^B)^T dO; d_exit[n] = dS_{n+1}, leaving chunk n
    increments = jnp.einsum("bnchk,bnchv->nbhkv", _rows(qc, e_b), doc)
    d_state, d_exit = _state_scan(d_state, e_last, increments, reverse=True)
    d_scores = jnp.einsum("bnchv,bnrhv->bnhcr", doc, vc)  # dL/dA, unmasked
    if mode == "per_key":
        dq = jnp.einsum("bnhcr,bnrhk,bncrhk->bnchk", d_scores, kc, intra)
        dk = jnp.einsum("bnhcr,bnchk,bncrhk->bnrhk", d_scores, qc, intra)
    else:
        d_scores = _mask_scores(d_scores, intra, mode)
        dq = jnp.einsum("bnhcr,bnrhk->bnchk", d_scores, kc)
        dk = jnp.einsum("bnhcr,bnchk->bnrhk", d_scores, qc)
    dq += _rows(jnp.einsum("bnchv,nbhkv->bnchk", doc, entering), e_b)
    dk += _rows(jnp.einsum("bnrhv,nbhkv->bnrhk", vc, d_exit), e_tail)
    dv = jnp.einsum("bnhcr,bnchv->bnrhv", _intra_scores(qc, kc, intra, mode), doc)
    dv += jnp.einsum("bnrhk,nbhkv->bnrhv", _rows(kc, e_tail), d_exit)
    if mode == "none":
        return (d_state, None), (dq, dk, dv, None)
    # dL/dG_t = q_t ⊙ dq_t - k_t ⊙ dk_t (module docstring); da_t = sum over s >= t of it
    dg = qc * dq - kc * dk
    if mode == "scalar":
        dg = dg.sum(-1)  # [b n c h]
    local = jax.lax.cumsum(dg, axis=2, reverse=True)  # within the chunk, steps >= t
    through = jax.lax.cumsum(local[:, :, 0], axis=1, reverse=True)  # chunks >= n of the group
    after = jnp.concatenate([through[:, 1:], jnp.zeros_like(through[:, :1])], axis=1) + dg_after[:, None]
    return (d_state, dg_after + through[:, 0]), (dq, dk, dv, local + after[:, :, None])


def _group_of(x, p, chunk_size: int, group: int):
    """Time slice p of x [b, T, ...] as chunks [b, n, c, ...] (None stays None).

    Slicing the time axis in place keeps every full-length array in its [b, t, ...]
    layout: no transposed copy of q, k, v is made for the loop over groups.
    """
    if x is None:
        return None
    length = chunk_size * group
    x = jax.lax.dynamic_slice_in_dim(x, p * length, length, axis=1)
    return rearrange(x, "b (n c) ... -> b n c ...", c=chunk_size)


def _put_group(buffer, y, p):
    """Writes the chunks y [b, n, c, ...] into time slice p of buffer [b, T, ...] (in place in a loop)."""
    if buffer is None:
        return None
    y = rearrange(y, "b n c ... -> b (n c) ...")
    return jax.lax.dynamic_update_slice_in_dim(buffer, y, p * y.shape[1], axis=1)


def _loop_groups(step, carry, n_steps: int, xs=None, *, reverse: bool = False):
    """``lax.scan`` of step(carry, (p, xs[p])) over the groups p; one group is called directly."""
    if n_steps == 1:  # short sequences: no loop to compile
        carry, ys = step(carry, (0, jax.tree.map(lambda x: x[0], xs)))
        return carry, jax.tree.map(lambda y: y[None], ys)
    return jax.lax.scan(step, carry, (jnp.arange(n_steps), xs), reverse=reverse)


def _chunked_forward(q, k, v, a, s0, mode, scale, chunk_size, group):
    """(o [b t h v], final [b h k v], entering states [p n b h k v]) of padded float32 inputs."""

    def step(carry, xs):
        p, _ = xs
        state, o = carry
        group_in = (_group_of(x, p, chunk_size, group) for x in (q, k, v, a))
        state, (o_p, entering) = _group_forward(state, *group_in, mode, scale)
        return (state, _put_group(o, o_p, p)), entering

    n_steps = q.shape[1] // (chunk_size * group)
    (final, o), states = _loop_groups(step, (s0, jnp.zeros(v.shape, jnp.float32)), n_steps)
    return o, final, states


def _chunked_states(k, v, a, s0, mode, chunk_size, group):
    """State-only pass: (entering states [p n b h k v], final [b h k v]); no outputs, no scores."""

    def step(state, xs):
        p, _ = xs
        kc, vc, ac = (_group_of(x, p, chunk_size, group) for x in (k, v, a))
        cum = None if ac is None else jnp.cumsum(ac, axis=2)
        _, _, e_tail, e_last = _chunk_decays(cum, mode, chunk_size)
        return _group_states(state, kc, vc, e_tail, e_last)

    final, states = _loop_groups(step, s0, k.shape[1] // (chunk_size * group))
    return states, final


def _chunked_backward(q, k, v, a, states, final, do, d_final, mode, scale, chunk_size, group):
    """(dq, dk, dv, da, ds0) of padded float32 inputs, from the forward's entering states and final state."""
    # G_{T-1} scales the final state: dL/dG_{T-1} gains sum_v dS_final ⊙ S_final
    dg_final = None
    if mode != "none":
        dg_final = jnp.sum(d_final * final, axis=-1)  # [b h k]
        dg_final = dg_final.sum(-1) if mode == "scalar" else dg_final

    def step(carry, xs):
        p, entering = xs
        d_state, dg_after, grads = carry
        group_in = (_group_of(x, p, chunk_size, group) for x in (q, k, v, a, do))
        (d_state, dg_after), group_grads = _group_backward((d_state, dg_after), *group_in, entering, mode, scale)
        return (d_state, dg_after, tuple(map(_put_group, grads, group_grads, (p,) * 4))), None

    zeros = lambda x: None if x is None else jnp.zeros(x.shape, jnp.float32)
    carry = (d_final, dg_final, tuple(map(zeros, (q, k, v, a))))
    (ds0, _, grads), _ = _loop_groups(step, carry, q.shape[1] // (chunk_size * group), states, reverse=True)
    return (*grads, ds0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _chunked(q, k, v, a, s0, mode, scale, chunk_size, group):
    o, final, _ = _chunked_forward(q, k, v, a, s0, mode, scale, chunk_size, group)
    return o, final


def _chunked_fwd(q, k, v, a, s0, mode, scale, chunk_size, group):
    o, final, states = _chunked_forward(q, k, v, a, s0, mode, scale, chunk_size, group)
    return (o, final), (q, k, v, a, states, final)


def _chunked_bwd(mode, scale, chunk_size, group, residuals, cotangents):
    q, k, v, a, states, final = residuals
    do, d_final = cotangents
    return _chunked_backward(q, k, v, a, states, final, do, d_final, mode, scale, chunk_size, group)


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def _chunks_per_group(t: int, chunk_size: int, tokens_per_step: int) -> int:
    """Chunks per outer step, balanced so that group padding is < one chunk per step."""
    if chunk_size < 1:
        raise ValueError(f"linear_attention: chunk_size={chunk_size} must be >= 1")
    if tokens_per_step < 1:
        raise ValueError(f"linear_attention: tokens_per_step={tokens_per_step} must be >= 1")
    n_chunks = -(-t // chunk_size)
    n_steps = -(-n_chunks // max(1, tokens_per_step // chunk_size))
    return -(-n_chunks // n_steps)


def linear_attention_chunked(
    q: Float[Array, "b t h k"],
    k: Float[Array, "b t h k"],
    v: Float[Array, "b t h v"],
    g: Float[Array, "b t h"] | None = None,
    gk: Float[Array, "b t h k"] | None = None,
    *,
    scale: float | None = None,
    initial_state: Float[Array, "b h k v"] | None = None,
    chunk_size: int = 64,
    tokens_per_step: int = 256,
) -> tuple[Float[Array, "b t h v"], Float[Array, "b h k v"]]:
    """Chunked form (Lightning Attention-2 Algorithm 1; GLA Section 4.2), hand-written backward.

    With B_c the cumulative log-decay inside chunk n (restarting at 0 before its first step)
    and S_n the state entering chunk n:
      intra  O_c = ((Q_c K_r^T) ⊙ exp(mask(B_c - B_r))) V_r          (masked before exp)
      inter  O_c += (Q_c ⊙ exp(B_c)) S_n
      state  S_{n+1} = exp(B_last) ⊙ S_n + (K_r ⊙ exp(B_last - B_r))^T V_r
    The intra and state-contribution terms of a group of chunks are computed at once; only
    the cheap state recurrence (one [K, V] multiply-add per chunk) is a scan. Groups of
    about ``tokens_per_step`` tokens are visited by an outer ``lax.scan`` so that the
    working set stays cache-sized; this changes nothing but speed. T is zero-padded to
    whole chunks (and groups; see :func:`pad_to_chunks`).

    Backward (``jax.custom_vjp``; see the module docstring): a reverse scan over the groups
    carrying the state gradient dS, the transposed chunk equations (Lightning Attention-2
    Algorithm 2; GLA Section 4.2) and the decay gradient from dL/dG_t = q_t ⊙ dq_t -
    k_t ⊙ dk_t. The forward saves the state entering every chunk (K V floats per chunk and
    head); the backward recomputes the intra-chunk scores, so training costs about 3.25x
    the forward FLOPs (autodiff of a checkpointed forward: 4x).
    """
    group = _chunks_per_group(q.shape[1], chunk_size, tokens_per_step)
    out_dtype = q.dtype
    t = q.shape[1]
    q, k, v, a, mode, scale, s0 = _prepare(q, k, v, g, gk, scale, initial_state)
    pad = lambda x: pad_to_chunks(x, chunk_size * group)
    o, final = _chunked(pad(q), pad(k), pad(v), pad(a), s0, mode, float(scale), chunk_size, group)
    return o[:, :t].astype(out_dtype), final


def linear_attention_chunked_bwd(
    q: Float[Array, "b t h k"],
    k: Float[Array, "b t h k"],
    v: Float[Array, "b t h v"],
    g: Float[Array, "b t h"] | None,
    gk: Float[Array, "b t h k"] | None,
    initial_state: Float[Array, "b h k v"] | None,
    cotangents: tuple[Float[Array, "b t h v"], Float[Array, "b h k v"]],
    *,
    scale: float | None = None,
    chunk_size: int = 64,
    tokens_per_step: int = 256,
) -> tuple:
    """The backward of :func:`linear_attention_chunked` without its forward outputs.

    For a forward computed elsewhere (the Pallas kernel): the states entering the chunks
    are recomputed by a state-only pass ((K ⊙ e^{B_last - B})^T V per chunk and the chunk
    recurrence, about a quarter of the forward's FLOPs), then the same backward runs.

    Args:
      q, k, v, g, gk, initial_state: the forward's inputs (as
        :func:`linear_attention_chunked`; None where absent).
      cotangents: (do [b t h v], d_final [b h k v]) of (o, final state).

    Returns:
      (dq, dk, dv, dg, dgk, d_initial_state), each in its input's dtype, None where the
      input is None.
    """
    group = _chunks_per_group(q.shape[1], chunk_size, tokens_per_step)
    mode = decay_mode(g, gk)
    pad = lambda x: pad_to_chunks(x, chunk_size * group)

    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)

    def prepare(q, k, v, g, gk, initial_state):
        q, k, v, a, _, _, s0 = _prepare(q, k, v, g, gk, scale, initial_state)
        return pad(q), pad(k), pad(v), pad(a), s0

    (q_p, k_p, v_p, a_p, s0), prepare_vjp = jax.vjp(prepare, q, k, v, g, gk, initial_state)
    do, d_final = cotangents
    states, final = _chunked_states(k_p, v_p, a_p, s0, mode, chunk_size, group)
    grads = _chunked_backward(
        q_p, k_p, v_p, a_p, states, final, pad(do.astype(jnp.float32)), d_final.astype(jnp.float32),
        mode, scale, chunk_size, group,
    )
    return prepare_vjp(grads)
