"""Block tiling of flash attention: block sizes, visible block ranges, the math of one tile.

Shared by the Pallas kernels (``kernel_tpu.py``, ``kernel_gpu.py``) and the blocked
pure-JAX path (``blocked.py``) so that the three agree on which (query block, key block)
pairs are skipped. The mask rules are those of
:func:`pallas_kernels.flash_attention.reference.attention_mask`, specialised to default
positions: query row i sits at buffer position i + q_offset (q_offset = s - t, the
queries are the last t of the s keys) and key column j at position j.

A key block is skipped when no (query, key) pair in it can be visible: keys after the
last query of the block (causal), keys more than ``window`` before its first query, and,
for non-causal windows, keys more than ``window`` after its last query.

Axis letters: t query time, s key time, bq / bk query / key block lengths.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

NT = (((1,), (1,)), ((), ()))  # dot_general numbers of a @ b.T
TN = (((0,), (0,)), ((), ()))  # a.T @ b
NN = (((1,), (0,)), ((), ()))  # a @ b


def dot(a, b, dims):
    """2-D matmul with float32 accumulation (lowers on Mosaic TPU and Triton GPU)."""
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile lengths of the flash-attention kernels (forward and backward share them).

    Attributes:
      block_q: query rows per tile (TPU: multiple of 8; GPU Triton: power of 2 >= 16).
      block_k: key rows per tile (TPU: multiple of 128 for lane-dense scores on device;
        GPU Triton: power of 2 >= 16). The interpreter accepts any positive size.
    """

    block_q: int = 128
    block_k: int = 128

    def __post_init__(self):
        for name in ("block_q", "block_k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"BlockSizes.{name}={value!r} must be a positive int")


def _min(a, b):
    return jnp.minimum(a, b) if not (isinstance(a, int) and isinstance(b, int)) else min(a, b)


def _max(a, b):
    return jnp.maximum(a, b) if not (isinstance(a, int) and isinstance(b, int)) else max(a, b)


def div(a, b: int):
    """a // b for a >= 0: truncating division on traced values (no sign logic in the
    scalar code of index maps and kernels), Python's // on ints."""
    return a // b if isinstance(a, int) else jax.lax.div(a, jnp.asarray(b, a.dtype))


def kv_block_range(qi, *, block_q: int, block_k: int, num_kv_blocks: int, q_offset: int,
                   causal: bool, window: int | None):
    """Key blocks [lo, hi) that query block ``qi`` may see (ints or traced int32 scalars)."""
    first = qi * block_q + q_offset
    last = first + block_q - 1
    lo = 0 if window is None else div(_max(first - window, 0), block_k)
    if causal:
        hi = _min(div(last, block_k) + 1, num_kv_blocks)
    elif window is not None:
        hi = _min(div(last + window, block_k) + 1, num_kv_blocks)
    else:
        hi = num_kv_blocks
    return lo, hi


def q_block_range(ki, *, block_q: int, block_k: int, num_q_blocks: int, q_offset: int,
                  causal: bool, window: int | None):
    """Query blocks [lo, hi) that may see key block ``ki`` (ints or traced int32 scalars)."""
    first = ki * block_k
    last = first + block_k - 1
    if causal:
        lo = div(_max(first - q_offset, 0), block_q)
    elif window is not None:
        lo = div(_max(first - window - q_offset, 0), block_q)
    else:
        lo = 0
    if window is None:
        hi = num_q_blocks
    else:
        # floor(x / bq) + 1 for the last visible query row x, as a division of a value >= 0.
        hi = _min(div(_max(last + window - q_offset + block_q, 0), block_q), num_q_blocks)
    lo = _min(lo, num_q_blocks - 1)
    return lo, hi


def clamp_block(index, lo, hi):
    """``index`` clamped into [lo, hi - 1]: skipped steps re-use a fetched block (no new DMA)."""
    return jnp.minimum(jnp.maximum(index, lo), jnp.maximum(hi - 1, lo))


def block_mask(q_pos, kv_pos, q_seg, kv_seg, *, kv_len: int, causal: bool, window: int | None):
    """Visible (query, key) pairs of a tile, True = visible.

    Args:
      q_pos: [bq, 1] int32 buffer positions of the tile's queries.
      kv_pos: [1, bk] int32 positions of its keys; keys at or past ``kv_len`` are padding.
      q_seg, kv_seg: [bq, 1] and [1, bk] int32 segment ids, or None (one document).
    Returns:
      [bq, bk] bool.
    """
    mask = kv_pos < kv_len
    if causal:
        mask = mask & (kv_pos <= q_pos)
    if window is not None:
        mask = mask & (q_pos - kv_pos <= window)
        if not causal:
            mask = mask & (kv_pos - q_pos <= window)
    if q_seg is not None:
        mask = mask & (q_seg == kv_seg)
    return mask


def tile_scores(q, k, q_pos, kv_pos, q_seg, kv_seg, cfg):
    """Scores of one tile, their mask, and tanh(scores / softcap) for the soft-cap gradient.

    Args:
      q: [bq, d] queries, k: [bk, d] keys; q_pos [bq, 1], kv_pos [1, bk] int32 positions;
      q_seg [bq, 1], kv_seg [1, bk] int32 or None.
      cfg: the kernel configuration dict (scale, softcap, kv_len, causal, window).
    Returns:
      s [bq, bk] float32 = softcap * tanh(q k^T scale / softcap) (or q k^T scale), mask
      [bq, bk] bool, tanh [bq, bk] or None.
    """
    s = dot(q, k, NT) * cfg["scale"]
    tanh = None
    if cfg["softcap"] is not None:
        tanh = jnp.tanh(s / cfg["softcap"])
        s = cfg["softcap"] * tanh
    mask = block_mask(q_pos, kv_pos, q_seg, kv_seg, kv_len=cfg["kv_len"], causal=cfg["causal"],
                      window=cfg["window"])
    return s, mask, tanh


def tile_grads(q, k, v, do, lse, delta, q_pos, kv_pos, q_seg, kv_seg, cfg):
    """P and dS of one tile, recomputed from the saved log-sum-exp (FlashAttention-2 Alg. 2).

    P = exp(S - lse) on visible pairs, dS = P * (dO V^T - delta) times the soft-cap
    derivative (1 - tanh^2) and the score scale, so that dQ = dS K and dK = dS^T Q.

    Args:
      q [bq, d], k [bk, d], v [bk, e], do [bq, e]; lse, delta [bq, 1] float32.
    Returns:
      p, ds: [bq, bk] float32.
    """
    s, mask, tanh = tile_scores(q, k, q_pos, kv_pos, q_seg, kv_seg, cfg)
    p = jnp.where(mask, jnp.exp(s - lse), 0.0)
    ds = p * (dot(do, v, NT) - delta)
    if tanh is not None:
        ds = ds * (1.0 - tanh * tanh)
    return p, ds * cfg["scale"]
