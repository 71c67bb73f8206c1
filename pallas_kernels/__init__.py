"""Pallas kernels, one op per folder.

Each op folder holds ``reference.py`` (the readable pure-JAX definition and the CPU
path), the Pallas kernel file(s), and ``ops.py`` with the public function, its
``jax.custom_vjp`` and the ``impl=`` switch resolved by :func:`pallas_kernels.backend.resolve_impl`.
"""
