"""Which implementation of an op runs: the shared ``impl=`` switch of every kernel.

``impl`` values:
  "reference"  the pure-JAX definition in ``<op>/reference.py`` (CPU path, source of truth);
  "pallas"     the Pallas kernel compiled for the current accelerator (TPU: Mosaic, GPU);
  "interpret"  the same Pallas kernel run by the Pallas interpreter (CPU tests);
  "auto"       "pallas" on TPU/GPU, the op's fastest CPU form on CPU.

The kernel-variant argument of every op is ``kernel=`` ("tpu" | "gpu" | None): which
kernel body "pallas" / "interpret" runs; None means the platform's (:func:`kernel_variant`).

The platform is the default backend's, or, inside :func:`target_platform`, the platform a
program is being lowered for: ``jax.jit(f).trace(...).lower(lowering_platforms=("tpu",))``
under ``target_platform("tpu")`` resolves "auto" and "pallas" to the TPU kernel on a
machine without a TPU (how the pod path is tested from a CPU).
"""

from __future__ import annotations

import contextlib
import contextvars

import jax

IMPLS = ("auto", "reference", "pallas", "interpret")
PLATFORMS = ("tpu", "gpu")
KERNELS = PLATFORMS

_TARGET: contextvars.ContextVar[str | None] = contextvars.ContextVar("pallas_target_platform", default=None)


@contextlib.contextmanager
def target_platform(name: str):
    """Resolve ``impl`` as if running on ``name`` ("tpu" | "gpu"), for lowering without a device.

    Raises:
      ValueError: ``name`` is not "tpu" or "gpu".
    """
    if name not in PLATFORMS:
        raise ValueError(f"target_platform: name={name!r} is not one of {PLATFORMS}")
    token = _TARGET.set(name)
    try:
        yield name
    finally:
        _TARGET.reset(token)


def platform() -> str:
    """The platform kernels are chosen for: the :func:`target_platform` in scope, else the
    default backend's ("cpu", "gpu" or "tpu")."""
    return _TARGET.get() or jax.default_backend()


def has_accelerator() -> bool:
    """True when the platform (:func:`platform`) is a GPU or a TPU."""
    return platform() in PLATFORMS


def kernel_variant(kernel: str | None, *, op: str) -> str:
    """The kernel body to run: ``kernel`` if given, else the platform's ("tpu" on CPU).

    Raises:
      ValueError: ``kernel`` is not None, "tpu" or "gpu".
    """
    if kernel is None:
        return "gpu" if platform() == "gpu" else "tpu"
    if kernel not in KERNELS:
        raise ValueError(f"{op}: kernel={kernel!r} is not one of {KERNELS} or None")
    return kernel


def resolve_impl(impl: str, *, op: str) -> str:
    """Validate ``impl`` and resolve "auto".

    Args:
      impl: one of :data:`IMPLS`.
      op: name of the op, used in error messages.

    Returns:
      "reference", "pallas" or "interpret".

    Raises:
      ValueError: unknown ``impl``, or "pallas" requested with no GPU/TPU present.
    """
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl={impl!r} is not one of {IMPLS}")
    if impl == "auto":
        return "pallas" if has_accelerator() else "reference"
    if impl == "pallas" and not has_accelerator():
        raise ValueError(
            f"{op}: impl='pallas' needs a GPU or TPU but the backend is {platform()!r}; "
            "use impl='interpret' to run the kernel on CPU, impl='reference', or lower under "
            "pallas_kernels.backend.target_platform('tpu' | 'gpu')"
        )
    return impl
