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
