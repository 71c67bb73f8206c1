"""Causal linear attention with scalar / per-key decay, chunked (Lightning Attention-2).

``linear_attention(q, k, v, *, g, gk, scale, initial_state, output_final_state,
chunk_size, impl)`` is the public op; the three reference forms (recurrent, parallel,
chunked) are exported by name for tests, with the chunked form's hand-written backward
(:func:`linear_attention_chunked_bwd`, also the kernel's backward). Its FLOPs are counted
in ``lm/flops.py`` (``linear_attention_flops``).
"""

from pallas_kernels.linear_attention.kernel import BlockSizes
from pallas_kernels.linear_attention.ops import linear_attention, linear_attention_pallas
from pallas_kernels.linear_attention.reference import (
    linear_attention_chunked,
    linear_attention_chunked_bwd,
    linear_attention_parallel,
    linear_attention_recurrent,
)

__all__ = [
    "BlockSizes",
    "linear_attention",
    "linear_attention_chunked",
    "linear_attention_chunked_bwd",
    "linear_attention_pallas",
    "linear_attention_parallel",
    "linear_attention_recurrent",
]
