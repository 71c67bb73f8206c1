"""Pallas TPU (Mosaic) kernel for h_t = a_t * h_{t-1} + x_t.

Layout: the width is split into lanes of 128 (``w = (r l)``, l = 128) so that one time
step of a block is a [block_r, 128] tile (one (8, 128) vreg when block_r = 8) and the
time index is a leading, cheaply indexed dimension (as in the recurrentgemma Pallas
scan). Grid = (batch, width blocks, time blocks); the time axis is last and sequential
("arbitrary"), the float32 carry lives in a VMEM scratch buffer between time blocks.
Inputs are padded to whole blocks with x = 0, a = 1, which carries the state through
unchanged, so the final carry is h_last also when running in reverse.

Axis letters: b batch, t time, w width, r rows of 128 lanes, l lanes (128).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from einops import rearrange
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jaxtyping import Array, Float

LANES = 128
SUBLANES = 8


@dataclasses.dataclass(frozen=True)
class TpuBlocks:
    """Block sizes of the TPU kernel.

    Attributes:
      block_t: time steps per grid step (multiple of 8; shorter inputs use one block).
      block_r: rows of 128 lanes per grid step (multiple of 8; at least 16 for 16-bit
        dtypes); the width block is block_r * 128 channels. Narrower inputs use the full
        width in one block.
    """

    block_t: int = 256
    block_r: int = 8

    def __post_init__(self):
        if self.block_t <= 0 or self.block_t % SUBLANES:
            raise ValueError(f"TpuBlocks.block_t={self.block_t} must be a positive multiple of {SUBLANES}")
        if self.block_r <= 0 or self.block_r % SUBLANES:
            raise ValueError(f"TpuBlocks.block_r={self.block_r} must be a positive multiple of {SUBLANES}")


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _scan_kernel(x_ref, a_ref, h0_ref, y_ref, h_last_ref, carry_ref, *, reverse: bool):
    """One (batch, width block, time block) grid step; refs are [block_t, block_r, 128]."""
    j = pl.program_id(2)
    block_t = x_ref.shape[0]

    @pl.when(j == 0)
    def _():
        carry_ref[...] = h0_ref[...].astype(jnp.float32)

    def step(i, h):
        t = block_t - 1 - i if reverse else i
        h = a_ref[t].astype(jnp.float32) * h + x_ref[t].astype(jnp.float32)
        y_ref[t] = h.astype(y_ref.dtype)
        return h

    h = jax.lax.fori_loop(0, block_t, step, carry_ref[...], unroll=min(8, block_t))
    carry_ref[...] = h

    @pl.when(j == pl.num_programs(2) - 1)
    def _():
        h_last_ref[...] = h


@functools.partial(jax.jit, static_argnames=("reverse", "interpret", "blocks"))
def linear_scan_tpu(
    x: Float[Array, "b t w"],
    a: Float[Array, "b t w"],
    h0: Float[Array, "b w"],
    *,
    reverse: bool = False,
    interpret: bool = False,
    blocks: TpuBlocks = TpuBlocks(),
) -> tuple[Float[Array, "b t w"], Float[Array, "b w"]]:
    """Blocked Pallas scan; same contract as the reference (y in x.dtype, h_last float32).

    Args:
      x, a: [b, t, w].
      h0: [b, w] initial state (any float dtype; used in float32).
      reverse: scan from the end.
      interpret: run the kernel with the Pallas interpreter (CPU tests).
      blocks: block sizes.
    """
    b, t, w = x.shape
    rows = _round_up(w, LANES) // LANES
    # 16-bit dtypes pack two rows per sublane: their native tile is (16, 128).
    max_block_r = max(blocks.block_r, SUBLANES * 4 // min(jnp.dtype(x.dtype).itemsize, 4))
    block_r = rows if rows <= max_block_r else max_block_r
    rows = _round_up(rows, block_r)
    block_t = min(blocks.block_t, _round_up(t, SUBLANES))
    t_pad, w_pad = _round_up(t, block_t), rows * LANES

    pad = ((0, 0), (0, t_pad - t), (0, w_pad - w))
    x4 = rearrange(jnp.pad(x, pad), "b t (r l) -> b t r l", l=LANES)
    a4 = rearrange(jnp.pad(a, pad, constant_values=1), "b t (r l) -> b t r l", l=LANES)
    h04 = rearrange(jnp.pad(h0.astype(jnp.float32), ((0, 0), (0, w_pad - w))), "b (r l) -> b r l", l=LANES)

    n_t = t_pad // block_t
    if reverse:
        time_block = lambda j: n_t - 1 - j  # noqa: E731
    else:
        time_block = lambda j: j  # noqa: E731
    seq_spec = pl.BlockSpec((pl.squeezed, block_t, block_r, LANES), lambda i, k, j: (i, time_block(j), k, 0))
    state_spec = pl.BlockSpec((pl.squeezed, block_r, LANES), lambda i, k, j: (i, k, 0))

    y4, h_last4 = pl.pallas_call(
        functools.partial(_scan_kernel, reverse=reverse),
        out_shape=(
            jax.ShapeDtypeStruct((b, t_pad, rows, LANES), x.dtype),
            jax.ShapeDtypeStruct((b, rows, LANES), jnp.float32),
        ),
        grid=(b, rows // block_r, n_t),
        in_specs=[seq_spec, seq_spec, state_spec],
        out_specs=(seq_spec, state_spec),
        scratch_shapes=[pltpu.VMEM((block_r, LANES), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        interpret=interpret,
        name="linear_scan_tpu",
    )(x4, a4, h04)
    y = rearrange(y4, "b t r l -> b t (r l)")[:, :t, :w]
    h_last = rearrange(h_last4, "b r l -> b (r l)")[:, :w]
    return y, h_last
