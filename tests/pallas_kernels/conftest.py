"""Kernel tests run the Pallas kernels in interpret mode on CPU and compiled on a device.

Use the ``kernel_impl`` fixture: it yields "interpret" everywhere, and also "pallas"
(``interpret=False``) when a GPU or TPU is the default backend.
"""

import pytest

from pallas_kernels.backend import has_accelerator

KERNEL_IMPLS = ["interpret"] + (["pallas"] if has_accelerator() else [])


@pytest.fixture(params=KERNEL_IMPLS)
def kernel_impl(request):
    return request.param
