"""Logical axis names for parameters and activations, and the one place kernels meet the mesh.

Layers name every parameter dimension with a logical axis ("embed", "heads", "kv", "mlp",
"experts", "vocab", ...) and constrain activations with ("batch", "length", ...). One table
in ``lm/train/sharding.py`` maps logical names to mesh axes; with no mesh and no rules in
scope the names are only metadata and the constraints no-ops, so a single CPU runs the same code.

Pallas kernels (Mosaic on TPU, Triton / Mosaic GPU) cannot be split by the SPMD
partitioner, so every kernel call goes through :func:`shard_kernel`: a ``jax.shard_map``
over the mesh in scope whose in/out specs come from the same logical-axis rules (the
MaxText pattern). Without a mesh in scope (or on one whose axes all have size 1 or are
already manual, as inside a ``shard_map``) it calls the kernel directly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

Axes = Sequence[str | None] | None  # logical names of an array's dimensions (None: replicated)


def param(
    module: nn.Module,
    name: str,
    init_fn: Callable,
    shape: Sequence[int],
    axes: Sequence[str | None],
    dtype=jnp.float32,
):
    """``module.param`` with logical axis names attached (``nn.LogicallyPartitioned``)."""
    if len(axes) != len(shape):
        raise ValueError(f"param {name!r}: {len(axes)} axis names for shape {tuple(shape)}")
    return module.param(name, nn.with_logical_partitioning(init_fn, tuple(axes)), tuple(shape), dtype)


def constrain(x, axes: Sequence[str | None]):
    """Constrain an activation's sharding by logical axis names (no-op outside a mesh)."""
    return nn.with_logical_constraint(x, tuple(axes))


def current_mesh():
    """The abstract mesh in scope with at least one free (non-manual) axis of size > 1, or None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not _free_axes(mesh):
        return None
    return mesh


def _free_axes(mesh) -> tuple[str, ...]:
    manual = set(mesh.manual_axes)
    return tuple(a for a in mesh.axis_names if a not in manual and mesh.shape[a] > 1)


def mesh_axes(name: str, mesh=None) -> tuple[str, ...]:
    """Free mesh axes (size > 1) that the logical-axis rules in scope map ``name`` to."""
    mesh = current_mesh() if mesh is None else mesh
    if mesh is None:
        return ()
    free = _free_axes(mesh)
    out: list[str] = []
    for rule_name, target in nn.get_logical_axis_rules():
        if rule_name != name:
            continue
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        out = [a for a in targets if a in free]
        break
    return tuple(out)


def ways(name: str, size: int) -> int:
    """Into how many shards :func:`shard_kernel` splits a dimension named ``name`` of ``size``."""
    mesh = current_mesh()
    if mesh is None:
        return 1
    spec, _ = _spec(mesh, (name,), (size,))
    entry = spec[0]
    return math.prod(mesh.shape[a] for a in ((entry,) if isinstance(entry, str) else entry or ()))


def _spec(mesh, axes: Axes, shape: Sequence[int]) -> tuple[P, dict[str, tuple[str, ...]]]:
    """PartitionSpec of one array, and the mesh axes each logical name took.

    Each dimension takes the longest prefix of its rule's free mesh axes that is not yet
    used and whose sizes' product divides the dimension (as ``lm.train.sharding.logical_spec``).
    """
    if axes is None:
        return P(), {}
    if len(axes) != len(shape):
        raise ValueError(f"shard_kernel: {len(axes)} logical axes {tuple(axes)} for shape {tuple(shape)}")
    used: set[str] = set()
    entries, taken = [], {}
    for name, size in zip(axes, shape):
        cand = tuple(a for a in (mesh_axes(name, mesh) if name else ()) if a not in used)
        while cand and size % math.prod(mesh.shape[a] for a in cand):
            cand = cand[:-1]
        used.update(cand)
        if name:
            taken[name] = cand
        entries.append(None if not cand else (cand[0] if len(cand) == 1 else cand))
    return P(*entries), taken


def shard_kernel(
    fn: Callable,
    in_axes: Sequence[Axes],
    out_axes,
    *,
    sum_over: Sequence[str] = (),
) -> Callable:
    """``fn`` run per shard under ``jax.shard_map`` over the mesh in scope, specs from logical axes.

    Args:
      fn: a function of positional array arguments (None allowed) returning an array or
        a tuple of arrays (None allowed); per-dimension work must be independent along
        every dimension that a logical name shards (batch rows, heads, channels).
      in_axes: per argument, its logical axis names (one per dimension), or None
        (replicated / a None argument).
      out_axes: the same for the output (a tuple for a tuple output).
      sum_over: logical names along which ``fn`` contracts a sharded dimension: its
        outputs are partial sums and get ``psum``-ed over the mesh axes those names took
        in the inputs (row-parallel matmul, Megatron).

    Returns:
      A function with ``fn``'s signature that looks up the mesh at each call: it calls ``fn``
      directly when no mesh is in scope (or every axis of size > 1 is already manual), else
      runs ``fn``'s ``shard_map``.
    """

    def call(*args):
        mesh = current_mesh()
        if mesh is None:
            return fn(*args)
        if len(args) != len(in_axes):
            raise ValueError(f"shard_kernel: {len(args)} arguments but {len(in_axes)} in_axes")
        in_specs, taken = [], {}
        for arg, axes in zip(args, in_axes):
            spec, names = _spec(mesh, None if arg is None else axes, () if arg is None else arg.shape)
            in_specs.append(spec)
            for name, axs in names.items():
                taken.setdefault(name, set()).update(axs)
        out_shape = jax.eval_shape(fn, *args)
        is_tuple = isinstance(out_shape, tuple)
        outs, o_axes = (out_shape, out_axes) if is_tuple else ((out_shape,), (out_axes,))
        out_specs = tuple(
            P() if o is None else _spec(mesh, a, o.shape)[0] for o, a in zip(outs, o_axes)
        )
        reduce_axes = tuple(sorted({a for name in sum_over for a in taken.get(name, ())}))

        def body(*local):
            out = fn(*local)
            if reduce_axes:
                out = jax.tree.map(lambda y: jax.lax.psum(y, reduce_axes), out)
            return out

        return jax.shard_map(
            body, mesh=mesh, in_specs=tuple(in_specs), out_specs=out_specs if is_tuple else out_specs[0],
            axis_names={a for a in mesh.axis_names if a not in set(mesh.manual_axes)}, check_vma=False,
        )(*args)

    return call
