"""Public grouped matmul: ``gmm`` with its ``custom_vjp`` and ``impl=`` switch, and ``tgmm``.

  gmm(lhs [m, k], rhs [g, k, n], group_sizes [g]) -> out [m, n], out[i] = lhs[i] @ rhs[group(i)]

Backward (the Pallas paths; the reference path uses ``jax.lax.ragged_dot``'s own rules):
  d lhs = gmm(d out, rhs^T)                  (rhs^T = rhs transposed per group, [g, n, k])
  d rhs = tgmm(lhs, d out)                   (d rhs[g] = lhs_g^T d out_g, [g, k, n])
  d group_sizes: none (integer).

Rows after ``sum(group_sizes)`` (allowed, e.g. padded expert-parallel receive buffers)
belong to no group: their output is 0 and they contribute nothing to d rhs.

Axis letters: m rows sorted by group, k contraction, n output columns, g groups.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from pallas_kernels.backend import IMPLS, kernel_variant, resolve_impl
from pallas_kernels.gmm import kernel_gpu, kernel_tpu
from pallas_kernels.gmm.blocks import GmmBlockSizes
from pallas_kernels.gmm.reference import gmm_reference, tgmm_reference
from pallas_kernels.gmm.tiled import gmm_tiled

# impl values: the shared ones (pallas_kernels.backend); "auto" on CPU runs gmm_tiled.
__all__ = ["IMPLS", "gmm", "tgmm"]


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def _tile(dim: int, block: int, minimum: int) -> tuple[int, int]:
    """(tile, padded dim): the block, or the whole axis rounded up to a power of two
    (at least ``minimum``) when it is smaller (Triton tiles must be powers of two and at
    least 16 for ``tl.dot``; a whole-axis block is always valid on TPU)."""
    tile = block if dim > block else max(minimum, 1 << (max(dim, 1) - 1).bit_length())
    return tile, _round_up(dim, tile)


def _pad_to(x, shape):
    return jnp.pad(x, [(0, s - d) for d, s in zip(x.shape, shape)])


# Default tiles: TPU MXU-sized; GPU smaller so that float32 tiles with two pipeline
# stages fit in shared memory.
DEFAULT_BLOCK_SIZES = {"tpu": GmmBlockSizes(128, 128, 128), "gpu": GmmBlockSizes(64, 64, 64)}


def _kernel_name(kernel: str | None) -> str:
    return kernel_variant(kernel, op="gmm")


def _kernel_module(kernel: str | None):
    return kernel_gpu if _kernel_name(kernel) == "gpu" else kernel_tpu


def _gmm_padded(lhs, rhs, group_sizes, block_sizes, out_dtype, interpret, kernel):
    (m, k), n = lhs.shape, rhs.shape[2]
    bm, m_pad = _tile(m, block_sizes.block_m, 16)
    bk, k_pad = _tile(k, block_sizes.block_k, 16)
    bn, n_pad = _tile(n, block_sizes.block_n, 16)
    fn = _kernel_module(kernel).gmm_kernel
    out = fn(
        _pad_to(lhs, (m_pad, k_pad)),
        _pad_to(rhs, (rhs.shape[0], k_pad, n_pad)),
        group_sizes,
        block_sizes=GmmBlockSizes(bm, bk, bn),
        out_dtype=out_dtype,
        interpret=interpret,
    )[:m, :n]
    rows = jnp.arange(m, dtype=jnp.int32)[:, None]
    return jnp.where(rows < jnp.sum(group_sizes), out, jnp.zeros((), out_dtype))


def _tgmm_padded(lhs, rhs, group_sizes, block_sizes, out_dtype, interpret, kernel):
    (m, k), n = lhs.shape, rhs.shape[1]
    bm, m_pad = _tile(m, block_sizes.block_m, 16)
    bk, k_pad = _tile(k, block_sizes.block_k, 16)
    bn, n_pad = _tile(n, block_sizes.block_n, 16)
    fn = _kernel_module(kernel).tgmm_kernel
    out = fn(
        _pad_to(lhs, (m_pad, k_pad)),
        _pad_to(rhs, (m_pad, n_pad)),
        group_sizes,
        block_sizes=GmmBlockSizes(bm, bk, bn),
        out_dtype=out_dtype,
        interpret=interpret,
    )
    return out[:, :k, :n]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _gmm_pallas(lhs, rhs, group_sizes, block_sizes, out_dtype, interpret, kernel):
    return _gmm_padded(lhs, rhs, group_sizes, block_sizes, out_dtype, interpret, kernel)


def _gmm_pallas_fwd(lhs, rhs, group_sizes, block_sizes, out_dtype, interpret, kernel):
    out = _gmm_padded(lhs, rhs, group_sizes, block_sizes, out_dtype, interpret, kernel)
    return out, (lhs, rhs, group_sizes)


def _gmm_pallas_bwd(block_sizes, out_dtype, interpret, kernel, residuals, d_out):
    lhs, rhs, group_sizes = residuals
    d_lhs = _gmm_padded(
        d_out, jnp.swapaxes(rhs, 1, 2), group_sizes, block_sizes, lhs.dtype, interpret, kernel
    )
    d_rhs = _tgmm_padded(lhs, d_out, group_sizes, block_sizes, rhs.dtype, interpret, kernel)
    return d_lhs, d_rhs, None


_gmm_pallas.defvjp(_gmm_pallas_fwd, _gmm_pallas_bwd)


def _check(lhs, rhs_groups: int, rhs_k: int, group_sizes, name: str):
    if lhs.ndim != 2:
        raise ValueError(f"{name}: lhs must be 2-D [m, k], got shape {lhs.shape}")
    if group_sizes.ndim != 1 or group_sizes.shape[0] != rhs_groups:
        raise ValueError(f"{name}: group_sizes shape {group_sizes.shape} must be ({rhs_groups},)")
    if not jnp.issubdtype(group_sizes.dtype, jnp.integer):
        raise ValueError(f"{name}: group_sizes dtype {group_sizes.dtype} must be an integer type")
    if lhs.shape[1] != rhs_k:
        raise ValueError(f"{name}: contraction sizes differ: lhs {lhs.shape} vs rhs k={rhs_k}")


def gmm(
    lhs: Float[Array, "m k"],
    rhs: Float[Array, "g k n"],
    group_sizes: Int[Array, "g"],
    *,
    impl: str = "auto",
    block_sizes: GmmBlockSizes | None = None,
    preferred_element_type=None,
    kernel: str | None = None,
) -> Float[Array, "m n"]:
    """Grouped matmul: ``out[i] = lhs[i] @ rhs[group(i)]`` for rows sorted by group.

    Args:
      lhs: [m, k], rows sorted by group; rows past ``sum(group_sizes)`` give 0.
      rhs: [g, k, n], one matrix per group.
      group_sizes: int [g], rows of each group, ``sum <= m``.
      impl: "auto" | "reference" (``jax.lax.ragged_dot``) | "pallas" | "interpret";
        "auto" is "pallas" on GPU/TPU and ``gmm_tiled`` (plain JAX, the kernel's tile
        schedule) on CPU.
      block_sizes: kernel tiles (default ``DEFAULT_BLOCK_SIZES`` of the kernel; a tile
        larger than its axis shrinks to the axis rounded up to a power of two >= 16).
      preferred_element_type: output dtype (default: promoted input dtype).
      kernel: which Pallas kernel, "tpu" (megablox-style, scalar prefetch) or "gpu"
        (one program per output tile, loop over the groups it holds); default: the
        current platform's, "tpu" on CPU (interpret).

    Returns:
      [m, n].
    """
    if rhs.ndim != 3:
        raise ValueError(f"gmm: rhs must be 3-D [g, k, n], got shape {rhs.shape}")
    _check(lhs, rhs.shape[0], rhs.shape[1], group_sizes, "gmm")
    requested, impl = impl, resolve_impl(impl, op="gmm")
    out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype))
    group_sizes = group_sizes.astype(jnp.int32)
    if impl == "reference" and requested == "auto" and lhs.shape[0] > 0:
        # CPU: the tile-visit form does ~m/bm + g tiles of work, ragged_dot ~g dense products.
        return gmm_tiled(lhs, rhs, group_sizes, preferred_element_type=out_dtype)
    if impl == "reference" or lhs.shape[0] == 0:
        return gmm_reference(lhs, rhs, group_sizes, preferred_element_type=out_dtype)
    block_sizes = block_sizes or DEFAULT_BLOCK_SIZES[_kernel_name(kernel)]
    return _gmm_pallas(lhs, rhs, group_sizes, block_sizes, out_dtype, impl == "interpret", kernel)


def tgmm(
    lhs: Float[Array, "m k"],
    rhs: Float[Array, "m n"],
    group_sizes: Int[Array, "g"],
    *,
    impl: str = "auto",
    block_sizes: GmmBlockSizes | None = None,
    preferred_element_type=None,
    kernel: str | None = None,
) -> Float[Array, "g k n"]:
    """Transposed grouped matmul: ``out[g] = lhs[rows of g]^T @ rhs[rows of g]`` (no VJP).

    The rhs gradient of :func:`gmm`. Arguments as in :func:`gmm`; groups with no rows give 0.
    """
    if rhs.ndim != 2 or rhs.shape[0] != lhs.shape[0]:
        raise ValueError(f"tgmm: rhs must be [m, n] with m={lhs.shape[0]}, got shape {rhs.shape}")
    _check(lhs, group_sizes.shape[0], lhs.shape[1], group_sizes, "tgmm")
    impl = resolve_impl(impl, op="tgmm")
    out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(lhs.dtype, rhs.dtype))
    group_sizes = group_sizes.astype(jnp.int32)
    if impl == "reference" or lhs.shape[0] == 0:
        return tgmm_reference(lhs, rhs, group_sizes, preferred_element_type=out_dtype)
    block_sizes = block_sizes or DEFAULT_BLOCK_SIZES[_kernel_name(kernel)]
    return _tgmm_padded(lhs, rhs, group_sizes, block_sizes, out_dtype, impl == "interpret", kernel)
