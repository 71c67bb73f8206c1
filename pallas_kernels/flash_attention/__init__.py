"""Flash attention: causal / sliding-window / grouped-query softmax attention.

``flash_attention(q, k, v, *, causal, window, segment_ids, scale, softcap, impl)`` is the
op every attention layer calls (see ``ops.py`` for the ``impl=`` switch);
``attention_reference`` is its readable definition and the source of truth.
"""

from pallas_kernels.flash_attention.blocked import attention_blocked, attention_causal_blocked
from pallas_kernels.flash_attention.blocks import BlockSizes
from pallas_kernels.flash_attention.ops import IMPLS, flash_attention
from pallas_kernels.flash_attention.reference import attention_mask, attention_reference

__all__ = [
    "IMPLS",
    "BlockSizes",
    "attention_blocked",
    "attention_causal_blocked",
    "attention_mask",
    "attention_reference",
    "flash_attention",
]
