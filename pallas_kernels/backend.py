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
import re

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


# Custom-call targets of lowered Pallas kernels: Mosaic TPU, Triton, Mosaic GPU.
_KERNEL_CALL = re.compile(r"custom_call @(tpu_custom_call|__gpu\$xla\.gpu\.triton|mosaic_gpu\w*)\(")
_FUNC = re.compile(r"func\.func (?:public |private )?@([\w$.]+)\(")
_CALL = re.compile(r"(?<![\w.])(?:func\.)?call @([\w$.]+)\(")


def count_kernel_calls(lowered_text: str) -> int:
    """Pallas kernel calls a lowered program executes (``jax.stages.Lowered.as_text()``).

    The custom calls in ``main`` plus, through every (nested) function call, those of the
    functions it calls: jax outlines jitted helpers (such as the gmm kernels) once and
    calls them from several places, so counting the text alone undercounts.
    """
    bodies: dict[str, str] = {}
    starts = [(m.start(), m.group(1)) for m in _FUNC.finditer(lowered_text)]
    for (start, name), (end, _) in zip(starts, starts[1:] + [(len(lowered_text), "")]):
        bodies[name] = lowered_text[start:end]
    memo: dict[str, int] = {}

    def count(name: str) -> int:
        if name not in memo:
            memo[name] = 0  # a recursive call (none in jax programs) counts nothing more
            body = bodies.get(name, "")
            memo[name] = len(_KERNEL_CALL.findall(body)) + sum(count(c) for c in _CALL.findall(body))
        return memo[name]

    return count("main")
