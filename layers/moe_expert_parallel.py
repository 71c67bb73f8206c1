"""Expert parallelism: experts sharded over a mesh axis, tokens exchanged by all-to-all.

GShard (Lepikhin et al. 2021, Sec. 3.2) / Switch (Fedus et al. 2022, Sec. 5.6): the batch
and the experts are both split over the "expert" mesh axis of size D (each device holds
e_l = e / D experts and n_l = n / D tokens). Per device, under ``jax.shard_map``:

  1. route the local tokens (router and shared experts replicated);
  2. write each token-slot into a send buffer [e, C, d] (slot ``position`` of its expert,
     first choices first, as ``capacity_dispatch``);
  3. ``all_to_all`` over the axis: device j receives the buffers of its e_l experts from
     every source, [(D e_l), C, d] -> [e_l, D * C, d];
  4. run the local experts on the filled slots only (sorted by expert, grouped matmul
     ``pallas_kernels.gmm``; empty slots sit past ``sum(group_sizes)`` and cost nothing in
     the kernel);
  5. ``all_to_all`` back and combine with the routing weights.

Capacity: with ``capacity_factor=None`` (default) C = n_l, the most slots one device can
send to one expert (top-k picks distinct experts), so nothing is dropped and the result
equals the single-device dropless layer. With a capacity factor, C = ceil(n_l k / e *
capacity_factor) and overflow is dropped per (source device, expert) pair, which equals
the single-device capacity layer only on one device. Buffers are padded to C slots; a
ragged all-to-all would send only filled slots.

Auxiliary outputs are those of ``MoEFeedForward`` for the global batch: tokens_per_expert
summed over devices, the other statistics averaged over devices (equal shard sizes), and
the load-balance loss with the config's scope over the data and expert axes (micro_batch:
the mean of per-device losses; global_batch: f and P averaged over all devices first).

Axis letters: b batch, t time, n tokens, d model width, e experts, l local experts (e / D),
s source devices (D), c slots per (source, expert), f expert hidden width.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import linen as nn
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float

from layers.mlp import GatedMLP, gated_activation
from layers.moe import MoEConfig, router_logits, route, routing_aux
from layers.moe_dispatch import ExpertWeights, capacity_dispatch, expert_capacity, experts_grouped
from layers.moe_routers import ExpertChoice


def _local_experts(
    buffer: Float[Array, "e c d"],
    filled: Array,
    w_local: ExpertWeights,
    act,
    *,
    axis: str,
    impl: str,
) -> Float[Array, "e c d"]:
    """all_to_all to the experts' devices, local experts on filled slots, all_to_all back."""
    num_local = w_local.w_gate.shape[0]
    recv = jax.lax.all_to_all(buffer, axis, 0, 0, tiled=True)  # [(s l), c, d], s = source
    recv_filled = jax.lax.all_to_all(filled, axis, 0, 0, tiled=True)
    rows = rearrange(recv, "(s l) c d -> (l s c) d", l=num_local)
    valid = rearrange(recv_filled, "(s l) c -> (l s c)", l=num_local)
    num_sources, capacity = recv.shape[0] // num_local, recv.shape[1]
    expert_of_row = jnp.repeat(jnp.arange(num_local, dtype=jnp.int32), num_sources * capacity)
    # Filled rows sorted by local expert; empty rows go last, past sum(group_sizes).
    group = jnp.where(valid, expert_of_row, num_local)
    order = jnp.argsort(group, stable=True)
    group_sizes = jnp.bincount(group, length=num_local + 1)[:num_local].astype(jnp.int32)
    out_sorted = experts_grouped(rows[order], group_sizes, w_local, act, impl=impl)
    out = jnp.zeros_like(out_sorted).at[order].set(out_sorted, unique_indices=True)
    out = rearrange(out, "(l s c) d -> (s l) c d", l=num_local, c=capacity)
    return jax.lax.all_to_all(out, axis, 0, 0, tiled=True)


def expert_parallel_moe(
    config: MoEConfig,
    params,
    x: Float[Array, "b t d"],
    *,
    mesh: Mesh,
    expert_axis: str = "expert",
    data_axes: tuple[str, ...] = (),
    capacity_factor: float | None = None,
    dtype=jnp.float32,
) -> tuple[Float[Array, "b t d"], dict[str, Array]]:
    """``MoEFeedForward`` with experts sharded over ``expert_axis`` (module docstring).

    Args:
      config: the layer's config (token-choice routers only; ``dispatch`` is ignored:
        expert parallelism always uses the buffer + all-to-all scheme above).
      params: the layer's parameters (``MoEFeedForward(config).init(...)``, boxed or not,
        with or without the outer "params" key).
      x: [b, t, d], b divisible by the product of the sizes of ``data_axes`` and ``expert_axis``.
      mesh: a mesh with ``expert_axis`` (and ``data_axes``); e divisible by its size.
      capacity_factor: None for no dropping (C = local tokens), else per-pair capacity.
      dtype: compute dtype of the experts.

    Returns:
      y [b, t, d] and the aux dict of ``MoEFeedForward`` for the whole batch.
    """
    if config.router == "expert_choice":
        raise ValueError("expert_parallel_moe: router='expert_choice' is not supported (token-choice routers only)")
    num_shards = mesh.shape[expert_axis]
    if config.num_experts % num_shards:
        raise ValueError(
            f"expert_parallel_moe: num_experts={config.num_experts} is not divisible by the "
            f"{expert_axis!r} mesh axis size {num_shards}"
        )
    params = nn.meta.unbox(params)
    params = params.get("params", params)
    act = gated_activation(config.activation)
    batch_axes = (*data_axes, expert_axis)
    shared = params.get("shared")
    expert_spec = P(expert_axis)

    def body(x_local, w_router, w_gate, w_up, w_down, shared_params):
        b, t, d = x_local.shape
        tokens = rearrange(x_local, "b t d -> (b t) d")
        logits = router_logits(tokens, w_router)
        routing = route(config, logits)
        assert not isinstance(routing, ExpertChoice)
        w_local = ExpertWeights(*(a.astype(dtype) for a in (w_gate, w_up, w_down)))
        n_local = tokens.shape[0]
        capacity = (
            n_local
            if capacity_factor is None
            else expert_capacity(n_local, config.num_experts, config.top_k, capacity_factor)
        )
        experts_fn = functools.partial(_local_experts, w_local=w_local, act=act, axis=expert_axis, impl=config.gmm_impl)
        y, dropped = capacity_dispatch(
            tokens.astype(dtype), routing, w_local, act, capacity=capacity, experts_fn=experts_fn
        )
        aux = routing_aux(config, logits, routing, dropped, axis_name=batch_axes)
        aux = {
            key: jax.lax.psum(value, batch_axes) if key == "tokens_per_expert" else jax.lax.pmean(value, batch_axes)
            for key, value in aux.items()
        }
        y = rearrange(y, "(b t) d -> b t d", b=b)
        if shared_params is not None:
            mlp = GatedMLP(config.shared_width, config.activation, dtype)
            y = y + mlp.apply({"params": shared_params}, x_local)
        return y, aux

    in_specs = (P(batch_axes), P(), expert_spec, expert_spec, expert_spec, P())
    sharded = jax.shard_map(
        body,
        mesh=mesh,
        in_specs=in_specs,
        out_specs=(P(batch_axes), P()),
        # Pallas kernels (the grouped matmul) declare no varying-axes types.
        check_vma=False,
    )
    args = (x, params["w_router"], params["w_gate"], params["w_up"], params["w_down"], shared)
    if any(kind == AxisType.Explicit for kind in mesh.axis_types):
        # Explicit-sharding meshes (jax.make_mesh's default) want inputs laid out as in_specs.
        args = tuple(
            jax.tree.map(lambda leaf, spec=spec: jax.reshard(leaf, NamedSharding(mesh, spec)), arg)
            for arg, spec in zip(args, in_specs)
        )
    return sharded(*args)
