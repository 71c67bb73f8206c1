"""TPU (Mosaic) driver of the chunked linear-attention forward kernel (chunk math in ``blocks.py``).

Grid (batch*heads, value tiles, chunks); the chunk axis is "arbitrary" (sequential on
one core), so the float32 state lives in a VMEM scratch buffer carried from one grid
step to the next (Lightning Attention-2, Qin et al. 2024, Algorithm 1: the outer loop
over chunks with the KV state kept in SRAM).

Axis letters: x batch*heads, t (padded) time, n chunks, k key dim, v value dim.
"""

from __future__ import annotations

import functools

from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.linear_attention.blocks import F32, BlockSizes, ForwardGrid, chunk_step, head_spec


def _tpu_kernel(*refs, mode, scale, chunk, sub_chunk):
    q_ref, k_ref, v_ref, *decay_refs, s0_ref, o_ref, final_ref, state_ref = refs
    n = pl.program_id(2)
    by_kind = {"q": q_ref, "k": k_ref, "v": v_ref}
    if mode == "scalar":
        by_kind.update(b_col=decay_refs[0], b_row=decay_refs[1])
    elif mode == "per_key":
        by_kind["b"] = decay_refs[0]

    def load(kind, start, size):
        if kind == "b_row":
            return by_kind[kind][:, pl.ds(start, size)].astype(F32)
        return by_kind[kind][pl.ds(start, size), :].astype(F32)

    def store_o(start, size, o):
        o_ref[pl.ds(start, size), :] = o.astype(o_ref.dtype)

    @pl.when(n == 0)
    def _():
        state_ref[...] = s0_ref[...].astype(F32)

    new_state = chunk_step(load, store_o, state_ref[...], mode=mode, scale=scale, chunk=chunk, sub_chunk=sub_chunk)
    state_ref[...] = new_state

    @pl.when(n == pl.num_programs(2) - 1)
    def _():
        final_ref[...] = new_state


def forward(q, k, v, decay, state0_t, *, mode: str, scale: float, block_sizes: BlockSizes, interpret: bool):
    """The TPU (Mosaic) forward; arguments and returns as ``ops.linear_attention_fwd_kernel``."""
    g = ForwardGrid.of(q, v, block_sizes)
    decay_args, decay_specs = [], []
    if mode == "scalar":
        decay_args = [decay[..., None], decay.reshape(g.x, g.n_chunks, 1, g.chunk)]
        decay_specs = [
            head_spec((g.chunk, 1), lambda i, j, n: (i, n, 0)),
            head_spec((pl.squeezed, 1, g.chunk), lambda i, j, n: (i, n, 0, 0)),
        ]
    elif mode == "per_key":
        decay_args, decay_specs = [decay], [head_spec((g.chunk, g.dk), lambda i, j, n: (i, n, 0))]
    kernel = functools.partial(_tpu_kernel, mode=mode, scale=scale, chunk=g.chunk, sub_chunk=g.sub)
    return pl.pallas_call(
        kernel,
        out_shape=g.out_shape(q.dtype),
        grid=(g.x, g.n_v, g.n_chunks),
        in_specs=[
            head_spec((g.chunk, g.dk), lambda i, j, n: (i, n, 0)),
            head_spec((g.chunk, g.dk), lambda i, j, n: (i, n, 0)),
            head_spec((g.chunk, g.bv), lambda i, j, n: (i, n, j)),
            *decay_specs,
            head_spec((g.bv, g.dk), lambda i, j, n: (i, j, 0)),
        ],
        out_specs=[head_spec((g.chunk, g.bv), lambda i, j, n: (i, n, j)),
                   head_spec((g.bv, g.dk), lambda i, j, n: (i, j, 0))],
        scratch_shapes=[pltpu.VMEM((g.bv, g.dk), F32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="linear_attention_fwd_tpu",
    )(q, k, v, *decay_args, state0_t)
