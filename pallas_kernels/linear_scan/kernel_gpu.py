"""Pallas GPU (Triton) kernel for h_t = a_t * h_{t-1} + x_t.

GPU thread blocks of one grid run in no fixed order, so a carry cannot pass between grid
steps along time as it does on TPU. Instead each program owns a [block_w] slice of the
width of one batch row and walks the whole time axis in a loop, holding the float32
carry in registers (the approach of the Triton/CUDA linear-RNN scans). Width is tiled
across the grid (batch, width blocks); loads and stores are [block_w] vectors.

We lower through Triton by passing ``plgpu.CompilerParams`` (jax 0.10: a bare
``pallas_call`` on GPU goes to Mosaic GPU, Hopper only and deprecated for pallas_call);
Triton covers Ampere and Hopper.

Axis letters: b batch, t time, w width.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jaxtyping import Array, Float


@dataclasses.dataclass(frozen=True)
class GpuBlocks:
    """Block sizes of the GPU kernel.

    Attributes:
      block_w: channels per program (power of 2); grid = batch * ceil(w / block_w).
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages for the time loop's loads.
      unroll: time steps unrolled per loop iteration.
    """

    block_w: int = 64
    num_warps: int = 1
    num_stages: int = 2
    unroll: int = 8

    def __post_init__(self):
        if self.block_w <= 0 or self.block_w & (self.block_w - 1):
            raise ValueError(f"GpuBlocks.block_w={self.block_w} must be a power of 2 (Triton loads)")
        if self.num_warps <= 0:
            raise ValueError(f"GpuBlocks.num_warps={self.num_warps} must be positive")
        if self.num_stages <= 0:
            raise ValueError(f"GpuBlocks.num_stages={self.num_stages} must be positive")
        if self.unroll <= 0:
            raise ValueError(f"GpuBlocks.unroll={self.unroll} must be positive")


def _scan_kernel(x_ref, a_ref, h0_ref, y_ref, h_last_ref, *, reverse: bool, unroll: int):
    """One (batch, width block) program; x_ref/a_ref/y_ref are [t, block_w]."""
    t_len = x_ref.shape[0]

    def step(i, h):
        t = t_len - 1 - i if reverse else i
        h = a_ref[t].astype(jnp.float32) * h + x_ref[t].astype(jnp.float32)
        y_ref[t] = h.astype(y_ref.dtype)
        return h

    # Triton lowers only fori_loops with unroll=1, so unroll by hand: `unroll` steps per
    # iteration, then the static remainder.
    def chunk(c, h):
        for u in range(unroll):
            h = step(c * unroll + u, h)
        return h

    n_chunks = t_len // unroll
    h = jax.lax.fori_loop(0, n_chunks, chunk, h0_ref[...].astype(jnp.float32))
    for i in range(n_chunks * unroll, t_len):
        h = step(i, h)
    h_last_ref[...] = h


@functools.partial(jax.jit, static_argnames=("reverse", "interpret", "blocks"))
def linear_scan_gpu(
    x: Float[Array, "b t w"],
    a: Float[Array, "b t w"],
    h0: Float[Array, "b w"],
    *,
    reverse: bool = False,
    interpret: bool = False,
    blocks: GpuBlocks = GpuBlocks(),
) -> tuple[Float[Array, "b t w"], Float[Array, "b w"]]:
    """Pallas scan, one program per (batch, width block); y in x.dtype, h_last float32.

    Args:
      x, a: [b, t, w].
      h0: [b, w] initial state (used in float32).
      reverse: scan from the end.
      interpret: run with the Pallas interpreter (CPU tests).
      blocks: block sizes and Triton parameters.
    """
    b, t, w = x.shape
    block_w = min(blocks.block_w, pl.next_power_of_2(w))
    w_pad = -(-w // block_w) * block_w
    pad = ((0, 0), (0, 0), (0, w_pad - w))
    x_p, a_p = jnp.pad(x, pad), jnp.pad(a, pad, constant_values=1)
    h0_p = jnp.pad(h0.astype(jnp.float32), ((0, 0), (0, w_pad - w)))

    seq_spec = pl.BlockSpec((pl.squeezed, t, block_w), lambda i, k: (i, 0, k))
    state_spec = pl.BlockSpec((pl.squeezed, block_w), lambda i, k: (i, k))
    y, h_last = pl.pallas_call(
        functools.partial(_scan_kernel, reverse=reverse, unroll=blocks.unroll),
        out_shape=(
            jax.ShapeDtypeStruct((b, t, w_pad), x.dtype),
            jax.ShapeDtypeStruct((b, w_pad), jnp.float32),
        ),
        grid=(b, w_pad // block_w),
        in_specs=[seq_spec, seq_spec, state_spec],
        out_specs=(seq_spec, state_spec),
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages),
        interpret=interpret,
        name="linear_scan_gpu",
    )(x_p, a_p, h0_p)
    return y[:, :, :w], h_last[:, :w]
