"""Pallas GPU (Triton) grouped matmul (gmm) and transposed grouped matmul (tgmm).

The Triton backend has no scalar prefetch, so instead of the TPU kernel's visit list
(``kernel_tpu.py``) each program owns one output tile and loops over the groups present
in it:

  gmm  grid (tiles_m, tiles_n): program (i, j) loops over groups first[i] .. last[i]
       (precomputed per m-tile), computes the [bm, bn] product with that group's rhs
       over k tiles, and keeps the rows of that group (row mask).
  tgmm grid (g, tiles_k, tiles_n): program (e, a, b) loops over the m-tiles that group e
       touches and accumulates masked lhs_tile^T rhs_tile.

Inputs are whole-array blocks (pointers in global memory) sliced with ``pl.ds`` tiles of
power-of-two size, as the Triton lowering requires. Accumulation is float32. Operands must
already be padded to multiples of the block sizes (``ops.py`` does it).

Not compiled in this repository's CI (no GPU there): exercised in interpret mode on CPU.

Axis letters: m rows, k contraction, n columns, g groups.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton
from jaxtyping import Array, Float, Int

from pallas_kernels.gmm.blocks import GmmBlockSizes, Tiles, group_offsets, row_mask


def _whole(shape):
    return pl.BlockSpec(shape, lambda *_: (0,) * len(shape))


@functools.partial(jax.jit, static_argnames=("block_sizes", "out_dtype", "interpret"))
def gmm_gpu(
    lhs: Float[Array, "m k"],
    rhs: Float[Array, "g k n"],
    group_sizes: Int[Array, "g"],
    *,
    block_sizes: GmmBlockSizes,
    out_dtype,
    interpret: bool = False,
) -> Float[Array, "m n"]:
    """out[i] = lhs[i] @ rhs[group(i)] (rows past ``sum(group_sizes)`` unspecified)."""
    _, _, _, bm, bk, bn = tiles = Tiles.of(lhs, rhs.shape[2], block_sizes)
    num_groups, tiles_m, tiles_k = rhs.shape[0], tiles.tiles_m, tiles.tiles_k
    offsets = group_offsets(group_sizes)
    ends = offsets[1:]
    tile_starts = jnp.arange(tiles_m, dtype=jnp.int32) * bm
    # first group ending after the tile's first row .. first group ending at/after its last row
    first = jnp.searchsorted(ends, tile_starts, side="right").astype(jnp.int32)
    last = jnp.searchsorted(ends, tile_starts + bm - 1, side="right").astype(jnp.int32)
    first, last = jnp.minimum(first, num_groups - 1), jnp.minimum(last, num_groups - 1)

    def kernel(offsets_ref, first_ref, last_ref, lhs_ref, rhs_ref, out_ref):
        i, j = pl.program_id(0), pl.program_id(1)

        def group_body(group, out):
            def k_body(kk, acc):
                x = lhs_ref[pl.ds(i * bm, bm), pl.ds(kk * bk, bk)]
                w = rhs_ref[group, pl.ds(kk * bk, bk), pl.ds(j * bn, bn)]
                return acc + jnp.dot(x, w, preferred_element_type=jnp.float32)

            acc = jax.lax.fori_loop(0, tiles_k, k_body, jnp.zeros((bm, bn), jnp.float32))
            return jnp.where(row_mask(offsets_ref, group, i, bm, bn), acc, out)

        out = jax.lax.fori_loop(first_ref[i], last_ref[i] + 1, group_body, jnp.zeros((bm, bn), jnp.float32))
        out_ref[...] = out.astype(out_ref.dtype)

    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((tiles.m, tiles.n), out_dtype),
        grid=(tiles_m, tiles.tiles_n),
        in_specs=[_whole(offsets.shape), _whole(first.shape), _whole(last.shape), _whole(lhs.shape), _whole(rhs.shape)],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="gmm_gpu",
    )(offsets, first, last, lhs, rhs)


@functools.partial(jax.jit, static_argnames=("block_sizes", "out_dtype", "interpret"))
def tgmm_gpu(
    lhs: Float[Array, "m k"],
    rhs: Float[Array, "m n"],
    group_sizes: Int[Array, "g"],
    *,
    block_sizes: GmmBlockSizes,
    out_dtype,
    interpret: bool = False,
) -> Float[Array, "g k n"]:
    """out[e] = lhs[rows of e]^T @ rhs[rows of e]; groups with no rows give 0."""
    _, k, n, bm, bk, bn = tiles = Tiles.of(lhs, rhs.shape[1], block_sizes)
    num_groups = group_sizes.shape[0]
    offsets = group_offsets(group_sizes)

    def kernel(offsets_ref, lhs_ref, rhs_ref, out_ref):
        e, a, b = pl.program_id(0), pl.program_id(1), pl.program_id(2)
        start, end = offsets_ref[e], offsets_ref[e + 1]

        def tile_body(t, acc):
            keep = row_mask(offsets_ref, e, t, bm, 1)
            x = jnp.where(keep, lhs_ref[pl.ds(t * bm, bm), pl.ds(a * bk, bk)], 0)
            y = jnp.where(keep, rhs_ref[pl.ds(t * bm, bm), pl.ds(b * bn, bn)], 0)
            return acc + jnp.dot(x.T, y, preferred_element_type=jnp.float32)

        first_tile = jnp.minimum(start // bm, tiles.tiles_m)
        last_tile = jnp.minimum((end + bm - 1) // bm, tiles.tiles_m)
        acc = jax.lax.fori_loop(first_tile, last_tile, tile_body, jnp.zeros((bk, bn), jnp.float32))
        out_ref[...] = acc.astype(out_ref.dtype)

    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((num_groups, k, n), out_dtype),
        grid=(num_groups, tiles.tiles_k, tiles.tiles_n),
        in_specs=[_whole(offsets.shape), _whole(lhs.shape), _whole(rhs.shape)],
        out_specs=pl.BlockSpec((None, bk, bn), lambda e, a, b: (e, a, b)),
        compiler_params=pl_triton.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="tgmm_gpu",
    )(offsets, lhs, rhs)


gmm_kernel = gmm_gpu
tgmm_kernel = tgmm_gpu
