"""The public ``flash_attention`` op: the ``impl=`` switch and the kernels' ``custom_vjp``.

Same masking and numerics as :func:`pallas_kernels.flash_attention.reference.attention_reference`
(causal, sliding window, documents, GQA, soft-cap; float32 softmax statistics).

impl:
  "reference"  :func:`attention_reference` (dense masked softmax, O(t s) memory);
  "blocked"    :func:`attention_blocked`, the pure-JAX form that only computes the key
               blocks inside the window (time and memory linear in t for a fixed window;
               without a window or with explicit positions it is the reference);
  "pallas"     the FlashAttention-2 kernel compiled for the accelerator (TPU: the grid
               form in ``kernel_tpu.py``; GPU: the Triton loop form in ``kernel_gpu.py``);
  "interpret"  the same kernel run by the Pallas interpreter (CPU tests);
  "auto"       "pallas" on an accelerator; on CPU "blocked" when a window makes most key
               blocks invisible, else "reference".

The kernels assume default positions (queries are the last t of s consecutive keys, so
t <= s). Calls with explicit ``q_positions``/``kv_positions`` (decode with a cache), or
t > s, run the reference instead, whatever ``impl`` says; that is the documented fallback.
Lengths that are not a multiple of the block are padded; padded keys are masked by
position and padded query rows sliced away. On GPU the head dims are padded to a power
of two (a Triton requirement); zero padding changes no score.

Axis letters: b batch, t query time, s key time, h query heads, g kv heads, d qk head
dim, e value head dim; T / S padded t / s.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
from einops import rearrange
from jax.experimental import pallas as pl
from jaxtyping import Array, Float, Int

from pallas_kernels.backend import IMPLS as BASE_IMPLS
from pallas_kernels.backend import kernel_variant, resolve_impl
from pallas_kernels.flash_attention import kernel_gpu, kernel_tpu
from pallas_kernels.flash_attention.blocked import attention_blocked, blocked_pays
from pallas_kernels.flash_attention.blocks import BlockSizes
from pallas_kernels.flash_attention.reference import attention_reference

KERNELS = {"tpu": kernel_tpu, "gpu": kernel_gpu}
# The values of ``impl``: the shared ones plus "blocked" (module docstring).
IMPLS = (*BASE_IMPLS, "blocked")


def default_block_sizes(variant: str) -> BlockSizes:
    """Tiles that suit each backend: 128 x 128 on TPU (MXU/lane width), 64 x 64 on GPU."""
    return BlockSizes(128, 128) if variant == "tpu" else BlockSizes(64, 64)


def flash_attention(
    q: Float[Array, "b t h d"],
    k: Float[Array, "b s g d"],
    v: Float[Array, "b s g e"],
    *,
    causal: bool = True,
    window: int | None = None,
    segment_ids: Int[Array, "b t"] | None = None,
    kv_segment_ids: Int[Array, "b s"] | None = None,
    q_positions: Int[Array, "b t"] | None = None,
    kv_positions: Int[Array, "b s"] | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    impl: str = "auto",
    block_sizes: BlockSizes | None = None,
    kernel: str | None = None,
) -> Float[Array, "b t h e"]:
    """Softmax attention (FlashAttention-2, Dao 2023, arXiv 2307.08691) with an ``impl=`` switch.

    Args:
      q: queries [b, t, h, d]; k: keys [b, s, g, d]; v: values [b, s, g, e]; h divisible by g
        (query head n uses kv head n // (h / g)).
      causal, window, segment_ids, kv_segment_ids, q_positions, kv_positions, scale,
        softcap: as in :func:`attention_reference` (window w: a query sees itself and the
        w previous positions).
      impl: "auto" | "reference" | "blocked" | "pallas" | "interpret" (module docstring).
      block_sizes: kernel tiles (default per backend); for "blocked" only block_q is used.
      kernel: "tpu" | "gpu": which kernel form "pallas"/"interpret" runs; default the
        platform's ("gpu" on GPU, else "tpu"). Tests run both forms in the interpreter.

    Returns:
      o [b, t, h, e] in the dtype of v.
    """
    b, t, h, d = q.shape
    s, g = k.shape[1], k.shape[2]
    if k.shape[0] != b or v.shape[:3] != k.shape[:3] or k.shape[3] != d:
        raise ValueError(f"flash_attention: incompatible shapes q{q.shape} k{k.shape} v{v.shape}")
    if h % g:
        raise ValueError(f"flash_attention: query heads ({h}) must be a multiple of kv heads ({g})")
    if window is not None and (not isinstance(window, numbers.Integral) or window < 0):
        raise ValueError(f"flash_attention: window={window!r} must be None or an int >= 0")
    window = None if window is None else int(window)
    variant = kernel_variant(kernel, op="flash_attention")
    ref_kwargs = dict(causal=causal, window=window, segment_ids=segment_ids, kv_segment_ids=kv_segment_ids,
                      q_positions=q_positions, kv_positions=kv_positions, scale=scale, softcap=softcap)
    default_pos = q_positions is None and kv_positions is None and t <= s
    if impl == "blocked" or (impl == "auto" and resolve_impl("auto", op="flash_attention") == "reference"):
        block_q = (block_sizes or BlockSizes()).block_q
        if default_pos and window is not None and (impl == "blocked" or blocked_pays(t, s, window, causal, block_q)):
            return attention_blocked(q, k, v, causal=causal, window=window, segment_ids=segment_ids,
                                     kv_segment_ids=kv_segment_ids, scale=scale, softcap=softcap,
                                     block_q=block_q)
        return attention_reference(q, k, v, **ref_kwargs)
    resolved = resolve_impl(impl, op="flash_attention")
    if resolved == "reference" or not default_pos:
        return attention_reference(q, k, v, **ref_kwargs)

    blocks = block_sizes or default_block_sizes(variant)
    if segment_ids is not None and kv_segment_ids is None:
        if s != t:
            raise ValueError("flash_attention: kv_segment_ids is required when key and query lengths differ")
        kv_segment_ids = segment_ids
    if segment_ids is None and kv_segment_ids is not None:
        raise ValueError("flash_attention: kv_segment_ids given without segment_ids")

    round_len = pl.next_power_of_2 if variant == "gpu" else (lambda n: -(-n // 8) * 8)
    bq = min(blocks.block_q, round_len(t))
    bk = min(blocks.block_k, round_len(s))
    t_pad, s_pad = -(-t // bq) * bq, -(-s // bk) * bk
    d_pad = pl.next_power_of_2(d) if variant == "gpu" else d
    e = v.shape[3]
    e_pad = pl.next_power_of_2(e) if variant == "gpu" else e

    def pad(x, length, width, pattern):
        widths = [(0, 0)] * 4
        widths[1], widths[3] = (0, length - x.shape[1]), (0, width - x.shape[3])
        return rearrange(jnp.pad(x, widths), pattern)

    qp = pad(q, t_pad, d_pad, "b t h d -> b h t d")
    kp = pad(k, s_pad, d_pad, "b s g d -> b g s d")
    vp = pad(v, s_pad, e_pad, "b s g e -> b g s e")
    q_seg = kv_seg = None
    if segment_ids is not None:
        q_seg = jnp.pad(segment_ids.astype(jnp.int32), ((0, 0), (0, t_pad - t)))[:, :, None]
        kv_seg = jnp.pad(kv_segment_ids.astype(jnp.int32), ((0, 0), (0, s_pad - s)))[:, None, :]
    cfg = dict(causal=causal, window=window, scale=float(d**-0.5 if scale is None else scale),
               softcap=None if softcap is None else float(softcap), q_offset=s - t, kv_len=s,
               block_q=bq, block_k=bk, has_seg=segment_ids is not None)
    o = _kernel_attention(qp, kp, vp, q_seg, kv_seg, tuple(sorted(cfg.items())), variant, resolved == "interpret")
    return rearrange(o, "b h t e -> b t h e")[:, :t, :, :e]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _kernel_attention(q, k, v, q_seg, kv_seg, cfg_items, variant, interpret):
    """Kernel attention on padded [b, h, T, d] / [b, g, S, d] layouts; returns o [b, h, T, e]."""
    o, _ = KERNELS[variant].forward(q, k, v, q_seg, kv_seg, cfg=dict(cfg_items), interpret=interpret)
    return o


def _kernel_attention_fwd(q, k, v, q_seg, kv_seg, cfg_items, variant, interpret):
    o, lse = KERNELS[variant].forward(q, k, v, q_seg, kv_seg, cfg=dict(cfg_items), interpret=interpret)
    return o, (q, k, v, q_seg, kv_seg, o, lse)


def _kernel_attention_bwd(cfg_items, variant, interpret, res, do):
    q, k, v, q_seg, kv_seg, o, lse = res
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1, keepdims=True)
    dq, dk, dv = KERNELS[variant].backward(q, k, v, q_seg, kv_seg, do.astype(v.dtype), lse, delta,
                                           cfg=dict(cfg_items), interpret=interpret)
    return dq, dk, dv, None, None


_kernel_attention.defvjp(_kernel_attention_fwd, _kernel_attention_bwd)
