"""Reference grouped matrix multiplication (the dropless-MoE expert matmul).

The rows of ``lhs`` are sorted by group (expert): rows ``[offset_g, offset_g + size_g)``
belong to group g, with ``offset_g = sum_{h < g} size_h``. Megablocks (Gale et al. 2023,
"MegaBlocks: Efficient Sparse Training with Mixture-of-Experts", Sec. 5) calls this a
grouped GEMM; it lets every expert process exactly its tokens, with no padding or
dropping.

  gmm:  out[i]  = lhs[i] @ rhs[group(i)]                       [m, n]
  tgmm: out[g]  = sum_{i in group g} lhs[i]^T rhs2[i]           [g, k, n]
        (the rhs gradient of gmm: d rhs[g] = lhs_g^T d out_g)

Axis letters: m rows (token-slots sorted by group), k contraction, n output columns,
g groups. Rows after ``sum(group_sizes)`` belong to no group: gmm gives 0 there, tgmm
ignores them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Float, Int


def group_ids_of_rows(group_sizes: Int[Array, "g"], m: int) -> Int[Array, "m"]:
    """Group index of each of the m rows (g for rows past ``sum(group_sizes)``)."""
    ends = jnp.cumsum(group_sizes.astype(jnp.int32))
    return jnp.searchsorted(ends, jnp.arange(m, dtype=jnp.int32), side="right").astype(jnp.int32)


def gmm_reference(
    lhs: Float[Array, "m k"],
    rhs: Float[Array, "g k n"],
    group_sizes: Int[Array, "g"],
    *,
    preferred_element_type=None,
) -> Float[Array, "m n"]:
    """Grouped matmul through ``jax.lax.ragged_dot`` (XLA's native ragged dot).

    Differentiable by JAX's own rules; this is the CPU path of :func:`pallas_kernels.gmm.gmm`.
    """
    out_dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
    return jax.lax.ragged_dot(
        lhs, rhs, group_sizes.astype(jnp.int32), preferred_element_type=out_dtype
    )


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
    ends = jnp.cumsum(sizes)
    starts = ends - sizes
    offsets = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends])
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


def gmm_loop_reference(
    lhs: Float[Array, "m k"],
    rhs: Float[Array, "g k n"],
    group_sizes: Int[Array, "g"],
) -> Float[Array, "m n"]:
    """Grouped matmul as a loop over groups: each group's full product, masked to its rows.

    Costs g times a dense matmul; an independent definition for tests.
    """
    row_group = group_ids_of_rows(group_sizes, lhs.shape[0])
    out = jnp.zeros((lhs.shape[0], rhs.shape[2]), jnp.result_type(lhs.dtype, rhs.dtype))
    for g in range(rhs.shape[0]):
        out = jnp.where((row_group == g)[:, None], lhs @ rhs[g], out)
    return out


def tgmm_reference(
    lhs: Float[Array, "m k"],
    rhs: Float[Array, "m n"],
    group_sizes: Int[Array, "g"],
    *,
    preferred_element_type=None,
) -> Float[Array, "g k n"]:
    """Transposed grouped matmul: ``out[g] = lhs[rows of g]^T @ rhs[rows of g]``.

    Written as a one-hot contraction over rows (memory m * g); groups with no rows get 0.
    """
    num_groups = group_sizes.shape[0]
    out_dtype = preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype)
    one_hot = jax.nn.one_hot(group_ids_of_rows(group_sizes, lhs.shape[0]), num_groups, dtype=lhs.dtype)
    return jnp.einsum("mk,mg,mn->gkn", lhs, one_hot, rhs).astype(out_dtype)
