"""Pallas TPU grouped matmul (gmm) and transposed grouped matmul (tgmm).

Follows the design of JAX's megablox kernels (``jax.experimental.pallas.ops.tpu.megablox``,
after MegaBlocks, Gale et al. 2023): the m axis is cut into tiles of ``block_m`` rows, and
the grid walks a list of *visits* (group, m-tile): every tile is visited once by each
group that has rows in it, so a tile holding a group boundary is visited twice (or more)
and each visit stores only its group's rows (row mask). Visits of one tile are
consecutive, so the output block stays resident in VMEM between them. The visit list
is computed outside the kernel and handed to the index maps by scalar prefetch (SMEM).

The grid has a static length ``tiles_m + g - 1`` (the most visits any grouping needs);
visits past the real count repeat the last one and skip their compute.

Operands must already be padded: m, k, n multiples of the block sizes (``ops.py`` pads
with zeros and slices the result). Accumulation is float32.

Axis letters: m rows, k contraction, n columns, g groups, v visits.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jaxtyping import Array, Float, Int

from pallas_kernels.gmm.blocks import GmmBlockSizes, Tiles, row_mask
from pallas_kernels.gmm.tiled import visit_schedule


@functools.partial(jax.jit, static_argnames=("block_sizes", "out_dtype", "interpret"))
def gmm_tpu(
    lhs: Float[Array, "m k"],
    rhs: Float[Array, "g k n"],
    group_sizes: Int[Array, "g"],
    *,
    block_sizes: GmmBlockSizes,
    out_dtype,
    interpret: bool = False,
) -> Float[Array, "m n"]:
    """out[i] = lhs[i] @ rhs[group(i)], m/k/n multiples of the block sizes.

    Rows past ``sum(group_sizes)`` are left unspecified (the caller slices them off).
    """
    m, _, n, bm, bk, bn = tiles = Tiles.of(lhs, rhs.shape[2], block_sizes)
    tiles_k = tiles.tiles_k
    offsets, group_ids, m_tile_ids, num_visits = visit_schedule(
        group_sizes, m=m, block_m=bm, visit_empty_groups=False
    )

    def kernel(offsets_ref, group_ids_ref, m_tile_ids_ref, num_visits_ref, lhs_ref, rhs_ref, out_ref, acc_ref):
        visit, k_i = pl.program_id(1), pl.program_id(2)
        real = visit < num_visits_ref[0]

        @pl.when(k_i == 0)
        def _zero():
            acc_ref[...] = jnp.zeros_like(acc_ref)

        @pl.when(real)
        def _accumulate():
            acc_ref[...] += jnp.dot(lhs_ref[...], rhs_ref[...], preferred_element_type=jnp.float32)

        @pl.when(real & (k_i == tiles_k - 1))
        def _store():
            mask = row_mask(offsets_ref, group_ids_ref[visit], m_tile_ids_ref[visit], bm, bn)
            out_ref[...] = jnp.where(mask, acc_ref[...], out_ref[...].astype(jnp.float32)).astype(out_ref.dtype)

    def lhs_map(n_i, visit, k_i, offsets, group_ids, m_tile_ids, num_visits):
        return m_tile_ids[visit], k_i

    def rhs_map(n_i, visit, k_i, offsets, group_ids, m_tile_ids, num_visits):
        return group_ids[visit], k_i, n_i

    def out_map(n_i, visit, k_i, offsets, group_ids, m_tile_ids, num_visits):
        return m_tile_ids[visit], n_i

    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4,
            grid=(tiles.tiles_n, group_ids.shape[0], tiles_k),
            in_specs=[pl.BlockSpec((bm, bk), lhs_map), pl.BlockSpec((None, bk, bn), rhs_map)],
            out_specs=pl.BlockSpec((bm, bn), out_map),
            scratch_shapes=[pltpu.VMEM((bm, bn), jnp.float32)],
        ),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary", "arbitrary")),
        interpret=interpret,
        name="gmm",
    )(offsets, group_ids, m_tile_ids, num_visits, lhs, rhs)


@functools.partial(jax.jit, static_argnames=("block_sizes", "out_dtype", "interpret"))
def tgmm_tpu(
    lhs: Float[Array, "m k"],
    rhs: Float[Array, "m n"],
    group_sizes: Int[Array, "g"],
    *,
    block_sizes: GmmBlockSizes,
    out_dtype,
    interpret: bool = False,
) -> Float[Array, "g k n"]:
    """out[g] = lhs[rows of g]^T @ rhs[rows of g], m/k/n multiples of the block sizes."""
    m, k, n, bm, bk, bn = tiles = Tiles.of(lhs, rhs.shape[1], block_sizes)
    num_groups = group_sizes.shape[0]
    offsets, group_ids, m_tile_ids, num_visits = visit_schedule(
        group_sizes, m=m, block_m=bm, visit_empty_groups=True
    )
    last_visit = group_ids.shape[0] - 1

    def kernel(offsets_ref, group_ids_ref, m_tile_ids_ref, num_visits_ref, lhs_ref, rhs_ref, out_ref, acc_ref):
        visit = pl.program_id(2)
        group, m_tile = group_ids_ref[visit], m_tile_ids_ref[visit]
        prev_group = group_ids_ref[jnp.maximum(visit - 1, 0)]
        next_group = group_ids_ref[jnp.minimum(visit + 1, last_visit)]

        @pl.when((visit == 0) | (group != prev_group))
        def _zero():
            acc_ref[...] = jnp.zeros_like(acc_ref)

        @pl.when(visit < num_visits_ref[0])
        def _accumulate():
            x = jnp.where(row_mask(offsets_ref, group, m_tile, bm, bk), lhs_ref[...].astype(jnp.float32), 0.0)
            y = jnp.where(row_mask(offsets_ref, group, m_tile, bm, bn), rhs_ref[...].astype(jnp.float32), 0.0)
            acc_ref[...] += jnp.dot(
                x.T.astype(lhs_ref.dtype), y.astype(rhs_ref.dtype), preferred_element_type=jnp.float32
            )

        @pl.when((visit == last_visit) | (group != next_group))
        def _store():
            out_ref[...] = acc_ref[...].astype(out_ref.dtype)

    def lhs_map(k_i, n_i, visit, offsets, group_ids, m_tile_ids, num_visits):
        return m_tile_ids[visit], k_i

    def rhs_map(k_i, n_i, visit, offsets, group_ids, m_tile_ids, num_visits):
        return m_tile_ids[visit], n_i

    def out_map(k_i, n_i, visit, offsets, group_ids, m_tile_ids, num_visits):
        return group_ids[visit], k_i, n_i

    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((num_groups, k, n), out_dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4,
            grid=(tiles.tiles_k, tiles.tiles_n, group_ids.shape[0]),
            in_specs=[pl.BlockSpec((bm, bk), lhs_map), pl.BlockSpec((bm, bn), rhs_map)],
            out_specs=pl.BlockSpec((None, bk, bn), out_map),
            scratch_shapes=[pltpu.VMEM((bk, bn), jnp.float32)],
        ),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="tgmm",
    )(offsets, group_ids, m_tile_ids, num_visits, lhs, rhs)


# The names ops.py dispatches to (kernel_gpu.py exports the same two).
gmm_kernel = gmm_tpu
tgmm_kernel = tgmm_tpu
