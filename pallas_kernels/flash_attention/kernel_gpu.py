"""Flash-attention Pallas kernels in the GPU (Triton) form: the key loop is in the kernel.

FlashAttention-2 (Dao 2023, arXiv 2307.08691, Algorithms 1 and 2), written like
``jax.experimental.pallas.ops.gpu.attention``: every grid step owns one query block (or
one key block in the dK/dV kernel) and loops with ``lax.fori_loop`` over only the blocks
that the causal/window mask leaves visible (dynamic loop bounds from
:mod:`pallas_kernels.flash_attention.blocks`), so fully masked tiles cost nothing. The
running max and sum stay in float32 registers. Triton grid steps cannot share scratch
across steps, hence the loop form rather than the TPU grid form.

Kernels (grids):
  forward (b, h, query block): o and the log-sum-exp;
  dq      (b, h, query block): dQ = sum over visible key blocks of dS K scale;
  dkv     (b, g, key block): loops over the r query heads of the group and their visible
          query blocks, so GQA gradients are summed in the kernel.
The kv, dO, lse and delta operands are whole rows per (batch, head) in the block spec and
are sliced with ``pl.ds`` inside; the query side of the dkv kernel is viewed as
[b, g, r * T, d] (a free reshape) so one program reads all heads of its group.

Layouts in and out match ``kernel_tpu.py``: q [b, h, T, d], k [b, g, S, d], v [b, g, S, e],
q_seg [b, T, 1], kv_seg [b, 1, S], lse / delta [b, h, T, 1]. ``ops.py`` pads d and e to
powers of two and the time axes to whole blocks (Triton block shapes are powers of two).
Axis letters: b batch, h query heads, g kv heads, r = h / g, T / S padded query / key
time, d qk head dim, e value head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.flash_attention.blocks import NN, TN, div, dot, kv_block_range, q_block_range, tile_grads, tile_scores
from pallas_kernels.flash_attention.reference import MASK_VALUE

_TINY = float(jnp.finfo(jnp.float32).tiny)


def _params(interpret: bool, num_warps: int = 4, num_stages: int = 2):
    if interpret:
        return {"interpret": True}
    return {"compiler_params": plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages)}


def _q_pos(qi, cfg):
    return qi * cfg["block_q"] + cfg["q_offset"] + jnp.arange(cfg["block_q"], dtype=jnp.int32)[:, None]


def _kv_pos(ki, cfg):
    return ki * cfg["block_k"] + jnp.arange(cfg["block_k"], dtype=jnp.int32)[None, :]


def _kv_range(qi, cfg, nk):
    return kv_block_range(qi, block_q=cfg["block_q"], block_k=cfg["block_k"], num_kv_blocks=nk,
                          q_offset=cfg["q_offset"], causal=cfg["causal"], window=cfg["window"])


def _q_range(ki, cfg, nq):
    return q_block_range(ki, block_q=cfg["block_q"], block_k=cfg["block_k"], num_q_blocks=nq,
                         q_offset=cfg["q_offset"], causal=cfg["causal"], window=cfg["window"])


def _fwd_kernel(*refs, cfg, nk):
    if cfg["has_seg"]:
        q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, o_ref, lse_ref = refs
    else:
        (q_ref, k_ref, v_ref, o_ref, lse_ref), q_seg_ref, kv_seg_ref = refs, None, None
    bq, bk = cfg["block_q"], cfg["block_k"]
    qi = pl.program_id(2)
    q = q_ref[...]
    q_pos = _q_pos(qi, cfg)
    q_seg = None if q_seg_ref is None else q_seg_ref[...][:, None]

    def body(ki, carry):
        acc, m_prev, l_prev = carry
        kv = pl.ds(ki * bk, bk)
        kv_seg = None if kv_seg_ref is None else kv_seg_ref[kv][None, :]
        s, mask, _ = tile_scores(q, k_ref[kv, :], q_pos, _kv_pos(ki, cfg), q_seg, kv_seg, cfg)
        s = jnp.where(mask, s, MASK_VALUE)
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1))
        p = jnp.where(mask, jnp.exp(s - m_next[:, None]), 0.0)
        alpha = jnp.exp(m_prev - m_next)
        v = v_ref[kv, :]
        acc = alpha[:, None] * acc + dot(p.astype(v.dtype), v, NN)
        return acc, m_next, alpha * l_prev + jnp.sum(p, axis=1)

    lo, hi = _kv_range(qi, cfg, nk)
    init = (jnp.zeros((bq, v_ref.shape[-1]), jnp.float32), jnp.full((bq,), MASK_VALUE, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    acc, m, l = jax.lax.fori_loop(lo, hi, body, init)
    denom = jnp.maximum(l, _TINY)
    o_ref[...] = (acc / denom[:, None]).astype(o_ref.dtype)
    lse_ref[...] = m + jnp.log(denom)


def forward(q, k, v, q_seg, kv_seg, *, cfg, interpret: bool):
    """Forward kernel: (o [b, h, T, e], lse [b, h, T, 1] float32)."""
    b, h, t_pad, d = q.shape
    g, s_pad, e = k.shape[1], k.shape[2], v.shape[3]
    bq, r = cfg["block_q"], h // g
    nq, nk = t_pad // bq, s_pad // cfg["block_k"]
    in_specs = [
        pl.BlockSpec((None, None, bq, d), lambda bi, hi_, qi: (bi, hi_, qi, 0)),
        pl.BlockSpec((None, None, s_pad, d), lambda bi, hi_, qi: (bi, div(hi_, r), 0, 0)),
        pl.BlockSpec((None, None, s_pad, e), lambda bi, hi_, qi: (bi, div(hi_, r), 0, 0)),
    ]
    args = [q, k, v]
    if cfg["has_seg"]:
        in_specs += [pl.BlockSpec((None, bq), lambda bi, hi_, qi: (bi, qi)),
                     pl.BlockSpec((None, s_pad), lambda bi, hi_, qi: (bi, 0))]
        args += [q_seg[:, :, 0], kv_seg[:, 0, :]]
    o, lse = pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg, nk=nk),
        grid=(b, h, nq),
        in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, None, bq, e), lambda bi, hi_, qi: (bi, hi_, qi, 0)),
                   pl.BlockSpec((None, None, bq), lambda bi, hi_, qi: (bi, hi_, qi))],
        out_shape=[jax.ShapeDtypeStruct((b, h, t_pad, e), v.dtype),
                   jax.ShapeDtypeStruct((b, h, t_pad), jnp.float32)],
        name="flash_attention_fwd",
        **_params(interpret, num_warps=4 if d <= 64 else 8),
    )(*args)
    return o, lse[..., None]


def _dq_kernel(*refs, cfg, nk):
    if cfg["has_seg"]:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, kv_seg_ref, dq_ref = refs
    else:
        (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref), q_seg_ref, kv_seg_ref = refs, None, None
    bk = cfg["block_k"]
    qi = pl.program_id(2)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
    q_pos = _q_pos(qi, cfg)
    q_seg = None if q_seg_ref is None else q_seg_ref[...][:, None]

    def body(ki, dq):
        kv = pl.ds(ki * bk, bk)
        kv_seg = None if kv_seg_ref is None else kv_seg_ref[kv][None, :]
        k = k_ref[kv, :]
        _, ds = tile_grads(q, k, v_ref[kv, :], do, lse, delta, q_pos, _kv_pos(ki, cfg), q_seg, kv_seg, cfg)
        return dq + dot(ds.astype(k.dtype), k, NN)

    lo, hi = _kv_range(qi, cfg, nk)
    dq = jax.lax.fori_loop(lo, hi, body, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(*refs, cfg, nq, r, t_pad):
    if cfg["has_seg"]:
        q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, q_seg_ref, kv_seg_ref, dk_ref, dv_ref = refs
    else:
        (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref), q_seg_ref, kv_seg_ref = refs, None, None
    bq = cfg["block_q"]
    ki = pl.program_id(2)
    k, v = k_ref[...], v_ref[...]
    kv_pos = _kv_pos(ki, cfg)
    kv_seg = None if kv_seg_ref is None else kv_seg_ref[...][None, :]
    lo, hi = _q_range(ki, cfg, nq)

    def head_body(rr, carry):
        def block_body(qi, carry):
            dk, dv = carry
            rows = pl.ds(rr * t_pad + qi * bq, bq)
            q, do = q_ref[rows, :], do_ref[rows, :]
            q_seg = None if q_seg_ref is None else q_seg_ref[pl.ds(qi * bq, bq)][:, None]
            p, ds = tile_grads(q, k, v, do, lse_ref[rows][:, None], delta_ref[rows][:, None],
                               _q_pos(qi, cfg), kv_pos, q_seg, kv_seg, cfg)
            return dk + dot(ds.astype(q.dtype), q, TN), dv + dot(p.astype(do.dtype), do, TN)

        return jax.lax.fori_loop(lo, hi, block_body, carry)

    init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    dk, dv = jax.lax.fori_loop(0, r, head_body, init)
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def backward(q, k, v, q_seg, kv_seg, do, lse, delta, *, cfg, interpret: bool):
    """Backward kernels: (dq [b, h, T, d], dk [b, g, S, d], dv [b, g, S, e])."""
    b, h, t_pad, d = q.shape
    g, s_pad, e = k.shape[1], k.shape[2], v.shape[3]
    bq, bk, r = cfg["block_q"], cfg["block_k"], h // g
    nq, nk = t_pad // bq, s_pad // bk
    lse, delta = lse[..., 0], delta[..., 0]
    seg_args = [q_seg[:, :, 0], kv_seg[:, 0, :]] if cfg["has_seg"] else []

    row = lambda bi, hi_, qi: (bi, hi_, qi, 0)
    kv_row = lambda bi, hi_, qi: (bi, div(hi_, r), 0, 0)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, nk=nk),
        grid=(b, h, nq),
        in_specs=[
            pl.BlockSpec((None, None, bq, d), row),
            pl.BlockSpec((None, None, s_pad, d), kv_row),
            pl.BlockSpec((None, None, s_pad, e), kv_row),
            pl.BlockSpec((None, None, bq, e), row),
            pl.BlockSpec((None, None, bq), lambda bi, hi_, qi: (bi, hi_, qi)),
            pl.BlockSpec((None, None, bq), lambda bi, hi_, qi: (bi, hi_, qi)),
        ] + ([pl.BlockSpec((None, bq), lambda bi, hi_, qi: (bi, qi)),
              pl.BlockSpec((None, s_pad), lambda bi, hi_, qi: (bi, 0))] if cfg["has_seg"] else []),
        out_specs=pl.BlockSpec((None, None, bq, d), row),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        name="flash_attention_dq",
        **_params(interpret),
    )(q, k, v, do, lse, delta, *seg_args)

    group = lambda x: rearrange(x, "b (g r) t ... -> b g (r t) ...", r=r)
    whole = lambda bi, gi, ki: (bi, gi, 0, 0)
    own = lambda bi, gi, ki: (bi, gi, ki, 0)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, nq=nq, r=r, t_pad=t_pad),
        grid=(b, g, nk),
        in_specs=[
            pl.BlockSpec((None, None, r * t_pad, d), whole),
            pl.BlockSpec((None, None, bk, d), own),
            pl.BlockSpec((None, None, bk, e), own),
            pl.BlockSpec((None, None, r * t_pad, e), whole),
            pl.BlockSpec((None, None, r * t_pad), lambda bi, gi, ki: (bi, gi, 0)),
            pl.BlockSpec((None, None, r * t_pad), lambda bi, gi, ki: (bi, gi, 0)),
        ] + ([pl.BlockSpec((None, t_pad), lambda bi, gi, ki: (bi, 0)),
              pl.BlockSpec((None, bk), lambda bi, gi, ki: (bi, ki))] if cfg["has_seg"] else []),
        out_specs=[pl.BlockSpec((None, None, bk, d), own), pl.BlockSpec((None, None, bk, e), own)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        name="flash_attention_dkv",
        **_params(interpret),
    )(group(q), k, v, group(do), group(lse), group(delta), *seg_args)
    return dq, dk, dv
