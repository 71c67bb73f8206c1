"""Grouped matrix multiplication for dropless Mixture-of-Experts (MegaBlocks, Gale et al. 2023).

``gmm(lhs [m, k], rhs [g, k, n], group_sizes [g], *, impl="auto") -> [m, n]`` with
``out[i] = lhs[i] @ rhs[group(i)]`` for rows sorted by group; ``tgmm`` is its rhs gradient.
"""

from pallas_kernels.gmm.blocks import GmmBlockSizes
from pallas_kernels.gmm.ops import IMPLS, gmm, tgmm
from pallas_kernels.gmm.reference import gmm_loop_reference, gmm_reference, tgmm_reference
from pallas_kernels.gmm.tiled import gmm_tiled

__all__ = [
    "IMPLS",
    "GmmBlockSizes",
    "gmm",
    "gmm_loop_reference",
    "gmm_reference",
    "gmm_tiled",
    "tgmm",
    "tgmm_reference",
]
