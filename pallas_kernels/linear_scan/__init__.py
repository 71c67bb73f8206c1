"""Diagonal linear scan h_t = a_t * h_{t-1} + x_t (the RG-LRU core, Griffin arXiv 2402.19427).

``linear_scan(x, a, h0=None, *, reverse=False, impl="auto") -> (y, h_last)``; see
:mod:`pallas_kernels.linear_scan.ops`. Reference forms in ``reference.py``, Pallas kernels
in ``kernel_tpu.py`` (time-blocked, VMEM carry) and ``kernel_gpu.py`` (Triton).
"""

from pallas_kernels.linear_scan.ops import IMPLS, linear_scan

__all__ = ["IMPLS", "linear_scan"]
