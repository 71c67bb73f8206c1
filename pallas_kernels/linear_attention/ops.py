"""Public chunked linear attention: the ``impl=`` switch and the kernel's ``custom_vjp``.

Backward: the kernel computes only the forward. Its ``custom_vjp`` backward is the
chunked reference's hand-written backward (:func:`reference.linear_attention_chunked_bwd`,
the same code that differentiates :func:`reference.linear_attention_chunked`: one home for
the math): a state-only pass recomputes the state entering every chunk from the saved
inputs (no O(T) activations are saved beyond q, k, v and the decays), then a reverse pass
over the chunks carries the state gradient. This is the documented reference fallback
that DESIGN.md allows; a backward kernel is future work.

Axis letters: b batch, t time, h heads, k key dim, v value dim, x batch*heads.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Float

from pallas_kernels.backend import IMPLS, kernel_variant, resolve_impl
from pallas_kernels.linear_attention.kernel import BlockSizes, linear_attention_fwd_kernel
from pallas_kernels.linear_attention.reference import (
    _check_shapes,
    chunk_cumsum,
    decay_mode,
    linear_attention_chunked,
    linear_attention_chunked_bwd,
    pad_to_chunks,
)


def _kernel_forward(q, k, v, g, gk, s0, *, scale, block_sizes, kernel, interpret):
    b, t, h, dk = q.shape
    chunk = block_sizes.chunk_size
    mode = decay_mode(g, gk)
    heads_major = lambda x: rearrange(pad_to_chunks(x, chunk), "b t h ... -> (b h) t ...")
    decay = None
    if mode != "none":
        a = g.astype(jnp.float32) if mode == "scalar" else gk.astype(jnp.float32)
        if mode == "per_key" and g is not None:
            a = a + g.astype(jnp.float32)[..., None]
        decay = heads_major(chunk_cumsum(pad_to_chunks(a, chunk), chunk))
    o, final_t = linear_attention_fwd_kernel(
        heads_major(q),
        heads_major(k),
        heads_major(v),
        decay,
        rearrange(s0.astype(jnp.float32), "b h k v -> (b h) v k"),
        mode=mode,
        scale=scale,
        block_sizes=block_sizes,
        kernel=kernel,
        interpret=interpret,
    )
    o = rearrange(o, "(b h) t v -> b t h v", b=b)[:, :t]
    return o, rearrange(final_t, "(b h) v k -> b h k v", b=b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _linear_attention_kernel(q, k, v, g, gk, s0, scale, block_sizes, kernel, interpret):
    config = dict(scale=scale, block_sizes=block_sizes, kernel=kernel, interpret=interpret)
    return _kernel_forward(q, k, v, g, gk, s0, **config)


def _kernel_fwd(q, k, v, g, gk, s0, scale, block_sizes, kernel, interpret):
    config = dict(scale=scale, block_sizes=block_sizes, kernel=kernel, interpret=interpret)
    out = _kernel_forward(q, k, v, g, gk, s0, **config)
    return out, (q, k, v, g, gk, s0)


def _kernel_bwd(scale, block_sizes, kernel, interpret, residuals, cotangents):
    del kernel, interpret
    return linear_attention_chunked_bwd(
        *residuals, cotangents, scale=scale, chunk_size=block_sizes.chunk_size
    )


_linear_attention_kernel.defvjp(_kernel_fwd, _kernel_bwd)


def linear_attention_pallas(
    q: Float[Array, "b t h k"],
    k: Float[Array, "b t h k"],
    v: Float[Array, "b t h v"],
    g: Float[Array, "b t h"] | None = None,
    gk: Float[Array, "b t h k"] | None = None,
    *,
    scale: float | None = None,
    initial_state: Float[Array, "b h k v"] | None = None,
    block_sizes: BlockSizes = BlockSizes(),
    kernel: str | None = None,
    interpret: bool = False,
) -> tuple[Float[Array, "b t h v"], Float[Array, "b h k v"]]:
    """The Pallas kernel with its ``custom_vjp``; returns (o, final_state float32).

    ``kernel`` picks the driver ("tpu" or "gpu", see :mod:`kernel`; default the
    platform's, "tpu" on CPU); both run on CPU with
    ``interpret=True``. Lengths that are not a multiple of the chunk are zero-padded.
    """
    _check_shapes(q, k, v, g, gk, initial_state)
    b, _, h, dk = q.shape
    scale = dk**-0.5 if scale is None else float(scale)
    if initial_state is None:
        initial_state = jnp.zeros((b, h, dk, v.shape[-1]), jnp.float32)
    kernel = kernel_variant(kernel, op="linear_attention")
    return _linear_attention_kernel(q, k, v, g, gk, initial_state, scale, block_sizes, kernel, interpret)


def linear_attention(
    q: Float[Array, "b t h k"],
    k: Float[Array, "b t h k"],
    v: Float[Array, "b t h v"],
    *,
    g: Float[Array, "b t h"] | None = None,
    gk: Float[Array, "b t h k"] | None = None,
    scale: float | None = None,
    initial_state: Float[Array, "b h k v"] | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
    impl: str = "auto",
    kernel: str | None = None,
) -> tuple[Float[Array, "b t h v"], Float[Array, "b h k v"] | None]:
    """Causal linear attention with optional scalar (g) and per-key (gk) log-space decay.

    S_t = exp(g_t) * diag(exp(gk_t)) S_{t-1} + k_t^T v_t,  o_t = scale * q_t S_t
    (Katharopoulos et al. 2020; RetNet, Sun et al. 2023; GLA, Yang et al. 2024), computed
    chunk by chunk (Lightning Attention-2, Qin et al. 2024).

    Args:
      q, k: [b, t, h, k]; v: [b, t, h, v].
      g: [b, t, h] log-space scalar decay per step (<= 0), or None.
      gk: [b, t, h, k] log-space decay per key dimension (<= 0), or None.
      scale: multiplies q S (default k ** -0.5).
      initial_state: [b, h, k, v] state before step 0 (zeros if None).
      output_final_state: also return S_{T-1}.
      chunk_size: C of the chunked algorithm (t need not be a multiple of it).
      impl: "auto" | "reference" (chunked pure JAX) | "pallas" | "interpret".
      kernel: "tpu" | "gpu" kernel body for "pallas"/"interpret" (default: the
        platform's; the TPU body on CPU).

    Returns:
      (o [b, t, h, v] in q's dtype, final state [b, h, k, v] float32 or None).
    """
    impl = resolve_impl(impl, op="linear_attention")
    if impl == "reference":
        o, final = linear_attention_chunked(
            q, k, v, g, gk, scale=scale, initial_state=initial_state, chunk_size=chunk_size
        )
    else:
        o, final = linear_attention_pallas(
            q,
            k,
            v,
            g,
            gk,
            scale=scale,
            initial_state=initial_state,
            block_sizes=BlockSizes(chunk_size=chunk_size, sub_chunk=math.gcd(16, chunk_size)),
            kernel=kernel,
            interpret=impl == "interpret",
        )
    return o, (final if output_final_state else None)
