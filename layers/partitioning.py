"""Logical axis names for parameters and activations.

Layers name every parameter dimension with a logical axis ("embed", "heads", "kv", "mlp",
"experts", "vocab", ...) and constrain activations with ("batch", "length", ...). One table
in ``lm/sharding.py`` maps logical names to mesh axes; with no mesh and no rules in
scope both helpers are no-ops, so a single CPU runs the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp


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
