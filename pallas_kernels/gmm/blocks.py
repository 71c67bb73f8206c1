"""Tiles of the grouped matmul kernels: block sizes, the tiled shapes, group offsets, the row mask.

Shared by the TPU kernel (``kernel_tpu.py``), the GPU kernel (``kernel_gpu.py``) and the
CPU visit schedule (``tiled.py``), so that they agree on which rows belong to which group.

Axis letters: m rows sorted by group, k contraction, n output columns, g groups.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Int


@dataclasses.dataclass(frozen=True)
class GmmBlockSizes:
    """Tile sizes of the grouped matmul kernels.

    Attributes:
      block_m: rows of lhs per tile (TPU: multiple of 8 for float32, 16 for bfloat16).
      block_k: contraction tile (TPU: multiple of 128 unless it is the whole axis).
      block_n: output-column tile (TPU: multiple of 128 unless it is the whole axis).
    """

    block_m: int = 128
    block_k: int = 128
    block_n: int = 128

    def __post_init__(self):
        for field in ("block_m", "block_k", "block_n"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"GmmBlockSizes.{field}={value!r}: must be a positive int")


class Tiles(NamedTuple):
    """The padded sizes m, k, n of a (t)gmm call and its block sizes (each size a multiple of its block)."""

    m: int
    k: int
    n: int
    bm: int
    bk: int
    bn: int

    @classmethod
    def of(cls, lhs, n: int, block_sizes: GmmBlockSizes) -> "Tiles":
        """The tiles of lhs [m, k] and an output of ``n`` columns."""
        (m, k), b = lhs.shape, block_sizes
        return cls(m, k, n, b.block_m, b.block_k, b.block_n)

    @property
    def tiles_m(self) -> int:
        return self.m // self.bm

    @property
    def tiles_k(self) -> int:
        return self.k // self.bk

    @property
    def tiles_n(self) -> int:
        return self.n // self.bn


def group_offsets(group_sizes: Int[Array, "g"]) -> Int[Array, "g1"]:
    """int32 [g + 1]: the first row of each group, then the end of the last."""
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(group_sizes.astype(jnp.int32))])


def row_mask(offsets, group, m_tile, block_m: int, width: int):
    """bool [block_m, width]: which rows of m tile ``m_tile`` belong to ``group`` (offsets a ref or array)."""
    rows = m_tile * block_m + jax.lax.broadcasted_iota(jnp.int32, (block_m, width), 0)
    return (rows >= offsets[group]) & (rows < offsets[group + 1])
