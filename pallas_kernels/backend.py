"""Which implementation of an op runs: the shared ``impl=`` switch of every kernel.

``impl`` values:
  "reference"  the pure-JAX definition in ``<op>/reference.py`` (CPU path, source of truth);
  "pallas"     the Pallas kernel compiled for the current accelerator (TPU: Mosaic, GPU);
  "interpret"  the same Pallas kernel run by the Pallas interpreter (CPU tests);
  "auto"       "pallas" on TPU/GPU, the op's fastest reference form on CPU.
"""

from __future__ import annotations

import jax

IMPLS = ("auto", "reference", "pallas", "interpret")


def platform() -> str:
    """The default backend's platform: "cpu", "gpu" or "tpu"."""
    return jax.default_backend()


def has_accelerator() -> bool:
    """True when the default backend is a GPU or a TPU."""
    return platform() in ("gpu", "tpu")


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
            "use impl='interpret' to run the kernel on CPU or impl='reference'"
        )
    return impl
