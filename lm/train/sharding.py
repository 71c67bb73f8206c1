"""Sharding: one named device mesh, one table of logical-axis rules, the shardings of every array.

JAX's SPMD partitioner (GSPMD, Xu et al. 2021) does all communication; this module only
says where every array lives. The mesh has four named axes:

  data    pure data parallelism: the batch is split, parameters are replicated;
  fsdp    fully-sharded data parallelism (ZeRO-3, Rajbhandari et al. 2020): the batch is
          split and every parameter's largest free dimension is split as well;
  tensor  tensor parallelism (Megatron, Shoeybi et al. 2019): heads, kv heads, MLP and
          recurrence widths and the vocabulary are split;
  expert  expert parallelism (GShard, Lepikhin et al. 2021): experts are split, and the
          batch too, so that dense layers between the MoE layers are not duplicated.

Layers name their dimensions with logical axes (``layers/partitioning.py``); :func:`rules`
is the one table that maps them to mesh axes: :data:`RULES`, the axes every model shares, and
those each mixer family's spec declares (``MixerSpec.rules``, :mod:`lm.model.families`). Changing
the strategy changes the table, not the layers. A mesh axis of size 1 is dropped from every spec, so one CPU device (the
mesh (1, 1, 1, 1)) runs exactly the code path of a pod.

Multi-host (joining a job, each host's slice of the batch, the data state in a
checkpoint) is :mod:`lm.train.multihost`.

The pieces, in the order a run uses them (``lm.train.multihost`` marked *):
  maybe_initialize_distributed()        * join a multi-host job (no-op on one process)
  make_mesh(mesh_shape)                   the mesh; -1 = the remaining devices
  single_device_mesh()                    the mesh (1, 1, 1, 1) of a run on one device
  state_shardings(run, mesh)              NamedShardings of {"step", "params", "opt_state"}
  init_sharded_state(run, mesh)           a fresh state created in its shards
  abstract_state(run, mesh)               restore target: ``Checkpointer.restore(step, it)``
  make_host_iterator(run, mesh)         * this host's slice of every global batch
  global_batch(local, mesh, b)          * host slices -> global [b, t] arrays
  gather_data_states / local_data_state * every host's data-iterator state in a checkpoint

``lm.train.compiled`` jits the steps with these shardings, compiles and caches them; ``lm.train.loop``
drives them.

Limitation: the "length" axis is never sharded (no sequence parallelism); Griffin's
RG-LRU scan and the convolution would need a cross-device carry for that.

Axis letters: b batch (global rows), t time, B per-host rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lm.model import families
from lm.model import network as lm_model
from lm.train import step as lm_step
from lm.model.config import ModelConfig, RunConfig

MESH_AXES = ("data", "fsdp", "tensor", "expert")
FSDP_AXIS = "fsdp"

# The shared part of the one table (rules()): logical axis name -> mesh axes, in order. Names
# not listed (and the size-1 mesh axes) are replicated. Parameters additionally get FSDP (see
# param_spec). A family's own axes (the recurrence width, MLA's latents, ...) are in its spec.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # activations
    ("batch", ("data", "fsdp", "expert")),
    ("length", ()),  # no sequence parallelism (module docstring)
    # tensor parallelism
    ("heads", ("tensor",)),
    ("kv", ("tensor",)),
    ("mlp", ("tensor",)),
    ("vocab", ("tensor",)),
    # expert parallelism
    ("experts", ("expert",)),
    # replicated (FSDP may still pick them for parameters)
    ("embed", ()),
    ("head_dim", ()),
    ("layers", ()),  # the stacked-block axis of ModelConfig.scan_layers
)

BATCH_KEYS = ("tokens", "targets", "weights", "segment_ids", "positions")


# ----------------------------------------------------------------------------- mesh


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, int, int, int]:
    """Mesh sizes (data, fsdp, tensor, expert) for ``num_devices``, with one -1 = "the rest".

    Raises:
      ValueError: wrong length, an entry that is neither positive nor -1, more than one
        -1, or sizes whose product is not ``num_devices``.
    """
    shape = tuple(int(s) for s in mesh_shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh_shape={tuple(mesh_shape)}: needs {len(MESH_AXES)} sizes for the axes {MESH_AXES}")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh_shape={shape}: every size must be a positive integer or -1 (the rest)")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh_shape={shape}: at most one size may be -1 (the rest)")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(
                f"mesh_shape={shape}: the fixed sizes (product {known}) do not divide the {num_devices} devices"
            )
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ValueError(
            f"mesh_shape={shape}: product {math.prod(shape)} differs from the {num_devices} devices available"
        )
    return shape  # type: ignore[return-value]


def make_mesh(mesh_shape: Sequence[int] = (-1, 1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The named mesh (data, fsdp, tensor, expert) over ``devices`` (default: all, every host).

    ``mesh_shape`` as in :func:`resolve_mesh_shape`; the default is pure data parallelism.
    Axes are "Auto" (GSPMD propagates shardings from the constraints the layers place).
    """
    devices = jax.devices() if devices is None else list(devices)
    shape = resolve_mesh_shape(mesh_shape, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def single_device_mesh(device: jax.Device | None = None) -> Mesh:
    """The mesh (1, 1, 1, 1) over one device (default: this process's first): a run "without" a mesh."""
    return make_mesh((1, 1, 1, 1), [jax.local_devices()[0] if device is None else device])


def _live(mesh: Mesh, axes: Sequence[str]) -> tuple[str, ...]:
    """``axes`` without the mesh axes of size 1 (they shard nothing)."""
    return tuple(a for a in axes if mesh.shape[a] > 1)


def rules() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The one table: :data:`RULES` and the logical axes of every registered mixer family.

    Raises:
      ValueError: a family maps an axis of :data:`RULES` to other mesh axes.
    """
    shared = dict(RULES)
    for axis, mesh_axes in families.logical_rules():
        if shared.get(axis, mesh_axes) != mesh_axes:
            raise ValueError(f"a mixer family maps the logical axis {axis!r} to {mesh_axes}; lm.train.sharding.RULES "
                             f"maps it to {shared[axis]}")
    return RULES + tuple(rule for rule in families.logical_rules() if rule[0] not in shared)


def logical_rules(mesh: Mesh) -> tuple[tuple[str, Any], ...]:
    """:func:`rules` in Flax's format for this mesh (size-1 axes dropped)."""
    out = []
    for name, axes in rules():
        live = _live(mesh, axes)
        out.append((name, live if len(live) > 1 else (live[0] if live else None)))
    return tuple(out)


@contextlib.contextmanager
def mesh_context(mesh: Mesh):
    """Trace inside this so that the layers' logical constraints become sharding constraints."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(logical_rules(mesh)):
        yield


# ----------------------------------------------------------------------- shardings


def _spec_entry(axes: tuple[str, ...]):
    return None if not axes else (axes[0] if len(axes) == 1 else axes)


def _fitting(mesh: Mesh, axes: tuple[str, ...], size: int, used: set[str]) -> tuple[str, ...]:
    """The longest prefix of ``axes`` (unused, size > 1) whose total size divides ``size``."""
    axes = tuple(a for a in _live(mesh, axes) if a not in used)
    while axes and size % math.prod(mesh.shape[a] for a in axes):
        axes = axes[:-1]
    return axes


def logical_spec(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int]) -> P:
    """PartitionSpec of an array whose dimensions have logical ``names`` (activations, batch).

    Each dimension takes the mesh axes of its rule that divide its size and are not taken
    by an earlier dimension; other dimensions are replicated.
    """
    table = dict(rules())
    used: set[str] = set()
    entries = []
    for name, size in zip(names, shape):
        axes = _fitting(mesh, table.get(name, ()) if name else (), size, used)
        used.update(axes)
        entries.append(axes)
    return P(*(_spec_entry(a) for a in entries))


def param_spec(mesh: Mesh, names: Sequence[str | None], shape: Sequence[int]) -> P:
    """PartitionSpec of a parameter: :func:`logical_spec` plus FSDP.

    FSDP (ZeRO-3) splits the largest dimension that the table left unsharded and whose
    size the fsdp axis divides (the first such if tied); a parameter without one stays
    replicated over fsdp.
    """
    spec = list(logical_spec(mesh, names, shape))
    spec += [None] * (len(shape) - len(spec))
    fsdp = mesh.shape[FSDP_AXIS]
    if fsdp > 1 and not any(FSDP_AXIS in (e if isinstance(e, tuple) else (e,)) for e in spec):
        free = [i for i, size in enumerate(shape) if spec[i] is None and size % fsdp == 0]
        if free:
            spec[max(free, key=lambda i: (shape[i], -i))] = FSDP_AXIS
    return P(*spec)


def _is_boxed(x) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def param_specs(mesh: Mesh, boxed_params) -> Any:
    """PartitionSpec tree (unboxed structure) of ``nn.LogicallyPartitioned`` parameters."""
    return jax.tree.map(
        lambda b: param_spec(mesh, b.names, b.value.shape) if _is_boxed(b) else P(),
        boxed_params,
        is_leaf=_is_boxed,
    )


def _state_key(run: RunConfig) -> tuple:
    """What of ``run`` the train state's structure and its init program depend on."""
    return run.model, dataclasses.replace(run.optimizer, learning_rate=1.0, weight_decay=0.0)


_ABSTRACT: dict[tuple, Any] = {}  # _state_key -> ShapeDtypeStruct tree of lm.train.step.init_state
_INIT: dict[tuple, Any] = {}  # (_state_key, mesh) -> the jitted init: one program per model


def _abstract_init(run: RunConfig) -> dict:
    """``lm.train.step.init_state(run)``'s ShapeDtypeStruct tree, from the model's cached abstract
    parameters (``lm.model.network.boxed_shapes``: no second trace of the model's init)."""
    key = _state_key(run)
    if key not in _ABSTRACT:
        boxed = lm_model.boxed_shapes(run.model)  # unboxed under the trace, as init_params does
        _ABSTRACT[key] = jax.eval_shape(lambda b: lm_step.state_from_params(run, nn.unbox(b)), boxed)
    return _ABSTRACT[key]


def _stack_spec(spec: P) -> P:
    """The spec of K stacked copies (a leading run axis, replicated)."""
    return P(None, *spec)


def state_specs(run: RunConfig, mesh: Mesh, *, stacked: bool = False) -> dict:
    """PartitionSpecs of the train state {"step", "params", "opt_state"} of ``lm.train.step``.

    Optimiser moments mirror their parameters (``optax.tree_map_params``); the step and
    the optimiser's scalars are replicated. ``stacked``: the specs of K states stacked on
    a leading axis (``lm.train.sweep``), which stays unsharded.
    """
    p_specs = param_specs(mesh, lm_model.boxed_shapes(run.model))
    abstract = _abstract_init(run)
    o_specs = optax.tree_map_params(
        lm_step.make_optimizer(run.optimizer),
        lambda _, spec: spec,
        abstract["opt_state"],
        p_specs,
        transform_non_params=lambda _: P(),
        is_leaf=lambda x: isinstance(x, P),
    )
    specs = {"step": P(), "params": p_specs, "opt_state": o_specs}
    return jax.tree.map(_stack_spec, specs, is_leaf=lambda x: isinstance(x, P)) if stacked else specs


def to_shardings(mesh: Mesh, specs) -> Any:
    """NamedShardings of a PartitionSpec tree."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def state_shardings(run: RunConfig, mesh: Mesh, *, stacked: bool = False) -> dict:
    """NamedShardings of the train state (:func:`state_specs`)."""
    return to_shardings(mesh, state_specs(run, mesh, stacked=stacked))


def param_shardings(model_cfg: ModelConfig, mesh: Mesh) -> Any:
    """NamedShardings of the (unboxed) parameters of ``model_cfg`` on ``mesh``."""
    return to_shardings(mesh, param_specs(mesh, lm_model.boxed_shapes(model_cfg)))


def abstract_state(run: RunConfig, mesh: Mesh) -> dict:
    """``jax.ShapeDtypeStruct`` tree of the train state with its shardings on ``mesh``.

    The target of a sharded checkpoint restore (``Checkpointer.restore(step,
    abstract_state(run, mesh))``), onto any mesh, whatever mesh saved it.
    """
    shapes = _abstract_init(run)
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, state_shardings(run, mesh)
    )


def batch_spec(mesh: Mesh, batch_size: int) -> P:
    """PartitionSpec of a [b, t] batch array: rows over the "batch" rule's axes.

    Raises:
      ValueError: b is not divisible by the product of those axes' sizes.
    """
    axes = _live(mesh, dict(RULES)["batch"])
    ways = math.prod(mesh.shape[a] for a in axes)
    if batch_size % ways:
        raise ValueError(
            f"DataConfig.batch_size={batch_size}: must be divisible by {ways}, the product of the mesh axes "
            f"{axes} that split the batch (mesh {dict(mesh.shape)})"
        )
    return P(_spec_entry(axes), None)


def batch_sharding(mesh: Mesh, batch_size: int) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(mesh, batch_size))


def init_sharded_state(run: RunConfig, mesh: Mesh, rng: jax.Array | None = None) -> dict:
    """``lm.train.step.init_state`` created directly in its shards (no full copy on one device)."""
    rng = jax.random.PRNGKey(run.train.seed) if rng is None else rng
    key = (_state_key(run), mesh)
    if key not in _INIT:
        _INIT[key] = jax.jit(lambda r: lm_step.init_state(run, r), out_shardings=state_shardings(run, mesh))
    with mesh_context(mesh):
        return _INIT[key](rng)
