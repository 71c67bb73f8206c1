"""Flash-attention Pallas kernels in the TPU (Mosaic) form: the key loop is a grid axis.

FlashAttention-2 (Dao 2023, arXiv 2307.08691, Algorithm 1 forward, Algorithm 2 backward).
The forward grid is (b, h, query block, key block); the key-block axis is sequential
("arbitrary") and carries the float32 running max m, running sum l and the unnormalised
output in VMEM scratch; the output and the log-sum-exp are written at its last step.
Tiles that the causal/window mask hides entirely are skipped with ``pl.when`` and their
index maps are clamped into the visible range, so a skipped step fetches no new block.
Grouped-query attention is an index map: query head n reads kv head n // r.

Backward: delta = rowsum(dO * O) is computed outside (elementwise); then
  * dq kernel, grid (b, h, query block, key block): dQ += dS K scale;
  * dkv kernel, grid (b, g, key block, r * query block): for each kv head, the r query
    heads of its group and the visible query blocks are one sequential axis, so dK and dV
    are reduced over the group inside the kernel (dV += P^T dO, dK += dS^T Q scale).
P is recomputed from the saved log-sum-exp: P = exp(S - lse), dS = P * (dP - delta).

Layouts (prepared by ``ops.py``; time axes padded to whole blocks):
  q [b, h, T, d], k [b, g, S, d], v [b, g, S, e], q_seg [b, T, 1], kv_seg [b, 1, S] int32,
  o [b, h, T, e], lse and delta [b, h, T, 1] float32.
Axis letters: b batch, h query heads, g kv heads, r = h / g, T / S padded query / key
time, d qk head dim, e value head dim.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.flash_attention.blocks import (
    NN,
    TN,
    clamp_block,
    div,
    dot,
    kv_block_range,
    q_block_range,
    tile_grads,
    tile_scores,
)
from pallas_kernels.flash_attention.reference import MASK_VALUE


_TINY = float(jnp.finfo(jnp.float32).tiny)


def _positions(qi, ki, cfg):
    bq, bk = cfg["block_q"], cfg["block_k"]
    q_pos = qi * bq + cfg["q_offset"] + jax.lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
    kv_pos = ki * bk + jax.lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    return q_pos, kv_pos


def _ranges(cfg, nq, nk):
    kw = dict(block_q=cfg["block_q"], block_k=cfg["block_k"], q_offset=cfg["q_offset"],
              causal=cfg["causal"], window=cfg["window"])
    return (functools.partial(kv_block_range, num_kv_blocks=nk, **kw),
            functools.partial(q_block_range, num_q_blocks=nq, **kw))


def _split_refs(refs, n_in, has_seg):
    ins = list(refs[:n_in])
    q_seg_ref = kv_seg_ref = None
    if has_seg:
        q_seg_ref, kv_seg_ref = ins[-2:]
        ins = ins[:-2]
    return ins, q_seg_ref, kv_seg_ref, refs[n_in:]


def _fwd_kernel(*refs, cfg, nk, kv_range):
    has_seg = cfg["has_seg"]
    (q_ref, k_ref, v_ref), q_seg_ref, kv_seg_ref, rest = _split_refs(refs, 3 + 2 * has_seg, has_seg)
    o_ref, lse_ref, m_sc, l_sc, acc_sc = rest
    qi, ki = pl.program_id(2), pl.program_id(3)
    lo, hi = kv_range(qi)

    @pl.when(ki == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, MASK_VALUE, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    @pl.when((ki >= lo) & (ki < hi))
    def _step():
        q_seg = None if q_seg_ref is None else q_seg_ref[...]
        kv_seg = None if kv_seg_ref is None else kv_seg_ref[...]
        s, mask, _ = tile_scores(q_ref[...], k_ref[...], *_positions(qi, ki, cfg), q_seg, kv_seg, cfg)
        s = jnp.where(mask, s, MASK_VALUE)
        m_prev = m_sc[...]
        m_next = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        p = jnp.where(mask, jnp.exp(s - m_next), 0.0)
        alpha = jnp.exp(m_prev - m_next)
        l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
        acc_sc[...] = alpha * acc_sc[...] + dot(p.astype(v_ref.dtype), v_ref[...], NN)
        m_sc[...] = m_next

    @pl.when(ki == nk - 1)
    def _finish():
        denom = jnp.maximum(l_sc[...], _TINY)
        o_ref[...] = (acc_sc[...] / denom).astype(o_ref.dtype)
        lse_ref[...] = m_sc[...] + jnp.log(denom)


def _dq_kernel(*refs, cfg, nk, kv_range):
    has_seg = cfg["has_seg"]
    ins, q_seg_ref, kv_seg_ref, rest = _split_refs(refs, 6 + 2 * has_seg, has_seg)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
    dq_ref, dq_sc = rest
    qi, ki = pl.program_id(2), pl.program_id(3)
    lo, hi = kv_range(qi)

    @pl.when(ki == 0)
    def _init():
        dq_sc[...] = jnp.zeros(dq_sc.shape, jnp.float32)

    @pl.when((ki >= lo) & (ki < hi))
    def _step():
        q_seg = None if q_seg_ref is None else q_seg_ref[...]
        kv_seg = None if kv_seg_ref is None else kv_seg_ref[...]
        k = k_ref[...]
        _, ds = tile_grads(q_ref[...], k, v_ref[...], do_ref[...], lse_ref[...], delta_ref[...],
                           *_positions(qi, ki, cfg), q_seg, kv_seg, cfg)
        dq_sc[...] += dot(ds.astype(k.dtype), k, NN)

    @pl.when(ki == nk - 1)
    def _finish():
        dq_ref[...] = dq_sc[...].astype(dq_ref.dtype)


def _dkv_kernel(*refs, cfg, nq, q_range):
    has_seg = cfg["has_seg"]
    ins, q_seg_ref, kv_seg_ref, rest = _split_refs(refs, 6 + 2 * has_seg, has_seg)
    q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref = ins
    dk_ref, dv_ref, dk_sc, dv_sc = rest
    ki, j = pl.program_id(2), pl.program_id(3)
    qi = jax.lax.rem(j, nq)
    lo, hi = q_range(ki)

    @pl.when(j == 0)
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

    @pl.when((qi >= lo) & (qi < hi))
    def _step():
        q_seg = None if q_seg_ref is None else q_seg_ref[...]
        kv_seg = None if kv_seg_ref is None else kv_seg_ref[...]
        q, do = q_ref[...], do_ref[...]
        p, ds = tile_grads(q, k_ref[...], v_ref[...], do, lse_ref[...], delta_ref[...],
                           *_positions(qi, ki, cfg), q_seg, kv_seg, cfg)
        dv_sc[...] += dot(p.astype(do.dtype), do, TN)
        dk_sc[...] += dot(ds.astype(q.dtype), q, TN)

    @pl.when(j == pl.num_programs(3) - 1)
    def _finish():
        dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _params(interpret: bool, semantics):
    if interpret:
        return {"interpret": True}
    return {"compiler_params": pltpu.CompilerParams(dimension_semantics=semantics)}


def _seg_specs(cfg, q_map, kv_map):
    if not cfg["has_seg"]:
        return []
    return [pl.BlockSpec((None, cfg["block_q"], 1), q_map), pl.BlockSpec((None, 1, cfg["block_k"]), kv_map)]


def forward(q, k, v, q_seg, kv_seg, *, cfg, interpret: bool):
    """Forward kernel: (o [b, h, T, e], lse [b, h, T, 1] float32); see the module docstring."""
    b, h, t_pad, d = q.shape
    g, s_pad, e = k.shape[1], k.shape[2], v.shape[3]
    bq, bk, r = cfg["block_q"], cfg["block_k"], h // g
    nq, nk = t_pad // bq, s_pad // bk
    kv_range, _ = _ranges(cfg, nq, nk)

    def kv_block(qi, ki):
        lo, hi = kv_range(qi)
        return clamp_block(ki, lo, hi)

    q_map = lambda bi, hi_, qi, ki: (bi, hi_, qi, 0)
    kv_map = lambda bi, hi_, qi, ki: (bi, div(hi_, r), kv_block(qi, ki), 0)
    in_specs = [
        pl.BlockSpec((None, None, bq, d), q_map),
        pl.BlockSpec((None, None, bk, d), kv_map),
        pl.BlockSpec((None, None, bk, e), kv_map),
    ] + _seg_specs(cfg, lambda bi, hi_, qi, ki: (bi, qi, 0), lambda bi, hi_, qi, ki: (bi, 0, kv_block(qi, ki)))
    args = [q, k, v] + ([q_seg, kv_seg] if cfg["has_seg"] else [])
    return pl.pallas_call(
        functools.partial(_fwd_kernel, cfg=cfg, nk=nk, kv_range=kv_range),
        grid=(b, h, nq, nk),
        in_specs=in_specs,
        out_specs=[pl.BlockSpec((None, None, bq, e), q_map), pl.BlockSpec((None, None, bq, 1), q_map)],
        out_shape=[jax.ShapeDtypeStruct((b, h, t_pad, e), v.dtype),
                   jax.ShapeDtypeStruct((b, h, t_pad, 1), jnp.float32)],
        scratch_shapes=[pltpu.VMEM((bq, 1), jnp.float32), pltpu.VMEM((bq, 1), jnp.float32),
                        pltpu.VMEM((bq, e), jnp.float32)],
        name="flash_attention_fwd",
        **_params(interpret, ("parallel", "parallel", "parallel", "arbitrary")),
    )(*args)


def backward(q, k, v, q_seg, kv_seg, do, lse, delta, *, cfg, interpret: bool):
    """Backward kernels: (dq [b, h, T, d], dk [b, g, S, d], dv [b, g, S, e])."""
    b, h, t_pad, d = q.shape
    g, s_pad, e = k.shape[1], k.shape[2], v.shape[3]
    bq, bk, r = cfg["block_q"], cfg["block_k"], h // g
    nq, nk = t_pad // bq, s_pad // bk
    kv_range, q_range = _ranges(cfg, nq, nk)
    seg_args = [q_seg, kv_seg] if cfg["has_seg"] else []

    def kv_block(qi, ki):
        lo, hi = kv_range(qi)
        return clamp_block(ki, lo, hi)

    q_map = lambda bi, hi_, qi, ki: (bi, hi_, qi, 0)
    kv_map = lambda bi, hi_, qi, ki: (bi, div(hi_, r), kv_block(qi, ki), 0)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, cfg=cfg, nk=nk, kv_range=kv_range),
        grid=(b, h, nq, nk),
        in_specs=[
            pl.BlockSpec((None, None, bq, d), q_map),
            pl.BlockSpec((None, None, bk, d), kv_map),
            pl.BlockSpec((None, None, bk, e), kv_map),
            pl.BlockSpec((None, None, bq, e), q_map),
            pl.BlockSpec((None, None, bq, 1), q_map),
            pl.BlockSpec((None, None, bq, 1), q_map),
        ] + _seg_specs(cfg, lambda bi, hi_, qi, ki: (bi, qi, 0),
                       lambda bi, hi_, qi, ki: (bi, 0, kv_block(qi, ki))),
        out_specs=pl.BlockSpec((None, None, bq, d), q_map),
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)],
        name="flash_attention_dq",
        **_params(interpret, ("parallel", "parallel", "parallel", "arbitrary")),
    )(q, k, v, do, lse, delta, *seg_args)

    def q_block(ki, j):
        lo, hi = q_range(ki)
        return clamp_block(jax.lax.rem(j, nq), lo, hi)

    gq_map = lambda bi, gi, ki, j: (bi, gi * r + div(j, nq), q_block(ki, j), 0)
    gkv_map = lambda bi, gi, ki, j: (bi, gi, ki, 0)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg=cfg, nq=nq, q_range=q_range),
        grid=(b, g, nk, r * nq),
        in_specs=[
            pl.BlockSpec((None, None, bq, d), gq_map),
            pl.BlockSpec((None, None, bk, d), gkv_map),
            pl.BlockSpec((None, None, bk, e), gkv_map),
            pl.BlockSpec((None, None, bq, e), gq_map),
            pl.BlockSpec((None, None, bq, 1), gq_map),
            pl.BlockSpec((None, None, bq, 1), gq_map),
        ] + _seg_specs(cfg, lambda bi, gi, ki, j: (bi, q_block(ki, j), 0),
                       lambda bi, gi, ki, j: (bi, 0, ki)),
        out_specs=[pl.BlockSpec((None, None, bk, d), gkv_map), pl.BlockSpec((None, None, bk, e), gkv_map)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, e), jnp.float32)],
        name="flash_attention_dkv",
        **_params(interpret, ("parallel", "parallel", "parallel", "arbitrary")),
    )(q, k, v, do, lse, delta, *seg_args)
    return dq, dk, dv
