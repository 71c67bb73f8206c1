"""GPU (Triton) driver of the chunked linear-attention forward kernel (chunk math in ``blocks.py``).

Grid (batch*heads, value tiles); GPU grid programs run in parallel, so each program
loops over the chunks with ``fori_loop`` and carries the float32 state as a loop value.
Triton needs power-of-two tile sizes (chunk, key dim, value tile); Ampere and newer.

Axis letters: x batch*heads, t (padded) time, n chunks, k key dim, v value dim.
"""

from __future__ import annotations

import functools

from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.linear_attention.blocks import F32, BlockSizes, ForwardGrid, chunk_step, head_spec


def _gpu_kernel(*refs, mode, scale, chunk, sub_chunk, n_chunks):
    q_ref, k_ref, v_ref, *decay_refs, s0_ref, o_ref, final_ref = refs
    by_kind = {"q": q_ref, "k": k_ref, "v": v_ref, "b": decay_refs[0] if decay_refs else None}

    def body(n, state_t):
        base = pl.multiple_of(n * chunk, chunk)

        def load(kind, start, size):
            rows = pl.ds(base + start, size)
            if kind in ("b_col", "b_row"):
                b = decay_refs[0][rows].astype(F32)  # [size], from the 1-D scalar decay
                return b[:, None] if kind == "b_col" else b[None, :]
            return by_kind[kind][rows, :].astype(F32)

        def store_o(start, size, o):
            o_ref[pl.ds(base + start, size), :] = o.astype(o_ref.dtype)

        return chunk_step(load, store_o, state_t, mode=mode, scale=scale, chunk=chunk, sub_chunk=sub_chunk)

    final_ref[...] = lax.fori_loop(0, n_chunks, body, s0_ref[...].astype(F32))


def forward(q, k, v, decay, state0_t, *, mode: str, scale: float, block_sizes: BlockSizes, interpret: bool):
    """The GPU (Triton) forward; arguments and returns as ``ops.linear_attention_fwd_kernel``."""
    g = ForwardGrid.of(q, v, block_sizes)
    decay_args, decay_specs = [], []
    if mode == "scalar":
        decay_args, decay_specs = [decay], [head_spec((g.t,), lambda i, j: (i, 0))]
    elif mode == "per_key":
        decay_args, decay_specs = [decay], [head_spec((g.t, g.dk), lambda i, j: (i, 0, 0))]
    kernel = functools.partial(
        _gpu_kernel, mode=mode, scale=scale, sub_chunk=g.sub, chunk=g.chunk, n_chunks=g.n_chunks
    )
    return pl.pallas_call(
        kernel,
        out_shape=g.out_shape(q.dtype),
        grid=(g.x, g.n_v),
        in_specs=[
            head_spec((g.t, g.dk), lambda i, j: (i, 0, 0)),
            head_spec((g.t, g.dk), lambda i, j: (i, 0, 0)),
            head_spec((g.t, g.bv), lambda i, j: (i, 0, j)),
            *decay_specs,
            head_spec((g.bv, g.dk), lambda i, j: (i, j, 0)),
        ],
        out_specs=[head_spec((g.t, g.bv), lambda i, j: (i, 0, j)), head_spec((g.bv, g.dk), lambda i, j: (i, j, 0))],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=1),
        interpret=interpret,
        name="linear_attention_fwd_gpu",
    )(q, k, v, *decay_args, state0_t)
