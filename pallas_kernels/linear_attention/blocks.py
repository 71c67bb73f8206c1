"""Chunked linear attention kernels: block sizes and the math of one chunk (shared).

The math of one chunk (:func:`chunk_step`) lives here; two drivers walk the chunks
(``kernel_tpu.py``, ``kernel_gpu.py``; ``ops.linear_attention_fwd_kernel`` picks one):
  * TPU (Mosaic): grid (batch*heads, value tiles, chunks); the chunk axis is "arbitrary"
    (sequential on one core), so the float32 state lives in a VMEM scratch buffer carried
    from one grid step to the next (Lightning Attention-2, Qin et al. 2024, Algorithm 1:
    the outer loop over chunks with the KV state kept in SRAM).
  * GPU (Triton lowering, Ampere and newer): grid (batch*heads, value tiles); GPU grid
    programs run in parallel, so each program loops over the chunks with ``fori_loop`` and
    carries the float32 state as a loop value. Triton needs power-of-two tile sizes
    (chunk, key dim, value tile).
Both run under the Pallas interpreter on CPU (``interpret=True``), and the tests lower
both for their targets from CPU (Mosaic TPU MLIR, Triton IR); they have not yet been
compiled and run on a real TPU or GPU.

Inside a chunk of C steps (B the inclusive cumulative log-decay from the chunk start):
  O = (Q K^T ⊙ exp(mask(B_c - B_r))) V + (Q ⊙ exp(B)) S,
  S <- exp(B_last) ⊙ S + (K ⊙ exp(B_last - B))^T V.
With per-key decay the masked C x C x K decay tensor is avoided by GLA's secondary
chunking (Yang et al. 2024, Section 4.3): sub-chunks of c steps; for a key sub-chunk J
strictly before a query sub-chunk I both factors are taken relative to the last step of J,
q exp(B_i - B_ref) and k exp(B_ref - B_j), each <= 1, so a plain matmul is exact and
overflow-free; inside the diagonal sub-chunk each key column r is taken relative to B_r
and masked before ``exp``. Values are never sliced in registers (Triton cannot): every
sub-block is loaded from its ref.

The state is stored transposed, S^T [V, K], so the per-key decay exp(B_last) [1, K]
scales it by broadcasting along rows (no in-kernel transpose of a vector).

Axis letters: x batch*heads, t (padded) time, n chunks, c chunk position, k key dim,
v value dim (a tile of it in a block).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

F32 = jnp.float32
_HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes of the kernel.

    Attributes:
      chunk_size: C, steps per chunk (the intra-chunk block is C x C).
      block_v: value-dim tile per program (None: the whole value dim). Smaller tiles give
        more parallel programs but recompute the C x C scores once per tile.
      sub_chunk: c, secondary chunk for per-key decay; must divide chunk_size.
    """

    chunk_size: int = 64
    block_v: int | None = None
    sub_chunk: int = 16

    def __post_init__(self):
        if self.chunk_size < 1:
            raise ValueError(f"BlockSizes: chunk_size={self.chunk_size} must be >= 1")
        if self.block_v is not None and self.block_v < 1:
            raise ValueError(f"BlockSizes: block_v={self.block_v} must be >= 1 or None")
        if self.sub_chunk < 1 or self.chunk_size % self.sub_chunk:
            raise ValueError(
                f"BlockSizes: sub_chunk={self.sub_chunk} must be >= 1 and divide chunk_size={self.chunk_size}"
            )


class ForwardGrid(NamedTuple):
    """The sizes both forward drivers derive from their operands and block sizes."""

    x: int  # batch*heads
    t: int  # padded time
    dk: int
    dv: int
    chunk: int  # C, steps per chunk
    bv: int  # value tile
    sub: int  # c, secondary chunk (per-key decay)
    n_chunks: int
    n_v: int  # value tiles

    @classmethod
    def of(cls, q, v, block_sizes: BlockSizes) -> "ForwardGrid":
        """The grid of q [x, t, k], v [x, t, v] (t a multiple of the chunk, v of the tile)."""
        (x, t, dk), dv = q.shape, v.shape[-1]
        chunk = block_sizes.chunk_size
        bv = block_sizes.block_v or dv
        return cls(x, t, dk, dv, chunk, bv, min(block_sizes.sub_chunk, chunk), t // chunk, dv // bv)

    def out_shape(self, dtype):
        """(o [x, t, v] in ``dtype``, final state transposed [x, v, k] float32)."""
        return (jax.ShapeDtypeStruct((self.x, self.t, self.dv), dtype),
                jax.ShapeDtypeStruct((self.x, self.dv, self.dk), F32))


def head_spec(shape, index_map) -> pl.BlockSpec:
    """A block of one batch*heads row (its x axis squeezed out of the kernel's view)."""
    return pl.BlockSpec((pl.squeezed, *shape), index_map)


def _dot(a, b, contract):
    """Float32 matmul contracting axis ``contract[0]`` of a with ``contract[1]`` of b."""
    dims = (((contract[0],), (contract[1],)), ((), ()))
    return lax.dot_general(a, b, dims, precision=_HIGHEST, preferred_element_type=F32)


def _causal(rows: int, cols: int):
    r = lax.broadcasted_iota(jnp.int32, (rows, cols), 0)
    c = lax.broadcasted_iota(jnp.int32, (rows, cols), 1)
    return r >= c


def chunk_step(load, store_o, state_t, *, mode: str, scale: float, chunk: int, sub_chunk: int):
    """One chunk of the chunked algorithm; returns S^T [v, k] leaving the chunk (float32).

    Blocks are read with ``load(kind, start, size)``, the float32 rows [start, start + size)
    of the current chunk: kind "q", "k" [size, k]; "v" [size, v]; "b" [size, k] (per-key
    decay) or "b_col" [size, 1] and "b_row" [1, size] (scalar decay), the inclusive
    cumulative log-decay from the chunk start. Outputs go out with ``store_o(start, size,
    o)``. Values are never sliced or concatenated in registers (Triton cannot), only refs.
    ``state_t`` is S^T [v, k] entering the chunk.
    """
    if mode in ("none", "scalar"):
        q, k, v = load("q", 0, chunk) * scale, load("k", 0, chunk), load("v", 0, chunk)
        scores = _dot(q, k, (1, 1))
        if mode == "none":
            scores = jnp.where(_causal(chunk, chunk), scores, 0.0)
            store_o(0, chunk, _dot(scores, v, (1, 0)) + _dot(q, state_t, (1, 1)))
            return state_t + _dot(v, k, (0, 0))
        b_col, b_row = load("b_col", 0, chunk), load("b_row", 0, chunk)
        scores = scores * jnp.exp(jnp.where(_causal(chunk, chunk), b_col - b_row, -jnp.inf))
        store_o(0, chunk, _dot(scores, v, (1, 0)) + _dot(q * jnp.exp(b_col), state_t, (1, 1)))
        last = load("b_col", chunk - 1, 1)  # [1 1]
        return state_t * jnp.exp(last) + _dot(v, k * jnp.exp(last - b_col), (0, 0))

    # Per-key decay: GLA's secondary chunking into sub-chunks of c steps.
    sub = sub_chunk
    n_sub = chunk // sub
    qs = [load("q", i * sub, sub) * scale for i in range(n_sub)]
    ks = [load("k", i * sub, sub) for i in range(n_sub)]
    vs = [load("v", i * sub, sub) for i in range(n_sub)]
    bs = [load("b", i * sub, sub) for i in range(n_sub)]
    rows = lax.broadcasted_iota(jnp.int32, (sub, 1), 0)
    cols = lax.broadcasted_iota(jnp.int32, (1, sub), 1)
    for i in range(n_sub):
        acc = _dot(qs[i] * jnp.exp(bs[i]), state_t, (1, 1))  # inter-chunk
        for j in range(i):
            ref = load("b", (j + 1) * sub - 1, 1)  # [1 k], last step of sub-chunk j
            scores = _dot(qs[i] * jnp.exp(bs[i] - ref), ks[j] * jnp.exp(ref - bs[j]), (1, 1))
            acc += _dot(scores, vs[j], (1, 0))
        scores = jnp.zeros((sub, sub), F32)
        for r in range(sub):  # diagonal sub-chunk, one key column at a time
            b_r, k_r = load("b", i * sub + r, 1), load("k", i * sub + r, 1)  # [1 k]
            decay = jnp.exp(jnp.where(rows >= r, bs[i] - b_r, -jnp.inf))  # [c k]
            col = jnp.sum(qs[i] * decay * k_r, axis=1, keepdims=True)  # [c 1]
            scores += jnp.where(cols == r, col, 0.0)
        store_o(i * sub, sub, acc + _dot(scores, vs[i], (1, 0)))
    last = load("b", chunk - 1, 1)  # [1 k]
    new_state_t = state_t * jnp.exp(last)
    for j in range(n_sub):
        new_state_t += _dot(vs[j], ks[j] * jnp.exp(last - bs[j]), (0, 0))
    return new_state_t
