"""The CPU form of the grouped matmul: the Pallas kernel's (group, m-tile) visit schedule in plain JAX.

``visit_schedule`` is shared with the TPU kernel (``kernel_tpu.py``, scalar-prefetched
grid indices); :func:`gmm_tiled` runs the same visits as one batched matmul on CPU, what
``gmm(impl="auto")`` runs there. Definitions in ``reference.py``.

Axis letters: m rows sorted by group, k contraction, n output columns, g groups, v visits,
t m tiles, r rows of a tile.
"""

from __future__ import annotations

import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Float, Int

from pallas_kernels.gmm.blocks import group_offsets


def visit_schedule(
    group_sizes: Int[Array, "g"], *, m: int, block_m: int, visit_empty_groups: bool
) -> tuple[Int[Array, "g1"], Int[Array, "v"], Int[Array, "v"], Int[Array, "1"]]:
    """The (group, m-tile) visits of the grid, in row order.

    Group g with rows [start, end) visits tiles floor(start / bm) .. ceil(end / bm) - 1;
    an empty group visits nothing, or (``visit_empty_groups``, needed by tgmm to zero its
    output) one tile. Total visits <= tiles_m + g - 1 = v (static).

    Returns:
      offsets: int32 [g + 1], start row of each group and the end of the last.
      group_ids: int32 [v], group of each visit (padding visits repeat the last).
      m_tile_ids: int32 [v], m tile of each visit.
      num_visits: int32 [1], the number of real visits.
    """
    num_groups = group_sizes.shape[0]
    tiles_m = m // block_m
    num_slots = tiles_m + num_groups - 1
    sizes = group_sizes.astype(jnp.int32)
    offsets = group_offsets(sizes)
    starts, ends = offsets[:-1], offsets[1:]
    first_tile = jnp.minimum(starts // block_m, tiles_m - 1)
    tiles = (ends + block_m - 1) // block_m - starts // block_m
    tiles = jnp.where(sizes > 0, tiles, 1 if visit_empty_groups else 0)
    visit_ends = jnp.cumsum(tiles)
    num_visits = visit_ends[-1]
    slot = jnp.clip(jnp.arange(num_slots, dtype=jnp.int32), 0, jnp.maximum(num_visits - 1, 0))
    group_ids = jnp.minimum(jnp.searchsorted(visit_ends, slot, side="right"), num_groups - 1).astype(jnp.int32)
    m_tile_ids = first_tile[group_ids] + slot - (visit_ends - tiles)[group_ids]
    return offsets, group_ids, m_tile_ids.astype(jnp.int32), num_visits[None].astype(jnp.int32)


def gmm_tiled(
    lhs: Float[Array, "m k"],
    rhs: Float[Array, "g k n"],
    group_sizes: Int[Array, "g"],
    *,
    block_m: int = 128,
    preferred_element_type=None,
) -> Float[Array, "m n"]:
    """Grouped matmul by (group, m-tile) visits in plain JAX: the Pallas kernel's schedule.

    Every visit multiplies one ``block_m``-row tile of lhs by its group's matrix
    (a batched matmul over visits) and keeps its group's rows, so the work is
    (m / block_m + g - 1) tiles instead of the g dense products of a masked loop; XLA's
    CPU ``ragged_dot`` costs about g dense products. The fastest form on CPU ("auto");
    differentiable by JAX's rules. Extra memory: the gathered rhs, (m / block_m + g) k n.
    """
    m = lhs.shape[0]
    out_dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
    bm = min(block_m, max(m, 1))
    m_pad = -(-m // bm) * bm
    offsets, group_ids, m_tile_ids, num_visits = visit_schedule(
        group_sizes, m=m_pad, block_m=bm, visit_empty_groups=False
    )
    tiles = rearrange(jnp.pad(lhs, ((0, m_pad - m), (0, 0))), "(t r) k -> t r k", r=bm)
    products = jnp.einsum(
        "vrk,vkn->vrn", tiles[m_tile_ids], rhs[group_ids], preferred_element_type=jnp.float32
    )
    rows = m_tile_ids[:, None] * bm + jnp.arange(bm, dtype=jnp.int32)[None, :]
    keep = (rows >= offsets[group_ids][:, None]) & (rows < offsets[group_ids + 1][:, None])
    keep &= (jnp.arange(group_ids.shape[0]) < num_visits[0])[:, None]
    out = jnp.zeros((m_pad // bm, bm, rhs.shape[2]), jnp.float32)
    out = out.at[m_tile_ids].add(jnp.where(keep[..., None], products, 0.0))
    return rearrange(out, "t r n -> (t r) n")[:m].astype(out_dtype)
