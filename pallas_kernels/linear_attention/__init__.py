"""Causal linear attention with scalar / per-key decay, chunked (Lightning Attention-2).

``linear_attention(q, k, v, *, g, gk, scale, initial_state, output_final_state,
chunk_size, impl)`` is the public op; the three reference forms (recurrent, parallel,
chunked) are exported by name for tests, with the chunked form's hand-written backward
(:func:`linear_attention_chunked_bwd`, also the kernel's backward). Its FLOPs are counted
in ``lm/model/counting.py`` (``linear_attention_flops``). Files: ``reference.py`` (definition: recurrent and parallel forms),
``chunked.py`` (the CPU form and the backward), ``blocks.py`` (tiles, one chunk's math),
``kernel_tpu.py`` / ``kernel_gpu.py`` (the Pallas drivers), ``ops.py`` (the op).
"""

from pallas_kernels.linear_attention.blocks import BlockSizes
from pallas_kernels.linear_attention.chunked import linear_attention_chunked, linear_attention_chunked_bwd
from pallas_kernels.linear_attention.ops import IMPLS, linear_attention, linear_attention_pallas
from pallas_kernels.linear_attention.reference import (
    linear_attention_parallel,
    linear_attention_recurrent,
)

__all__ = [
    "IMPLS",
    "BlockSizes",
    "linear_attention",
    "linear_attention_chunked",
    "linear_attention_chunked_bwd",
    "linear_attention_pallas",
    "linear_attention_parallel",
    "linear_attention_recurrent",
]
