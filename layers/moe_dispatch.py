"""Mixture-of-Experts dispatch: send token-slots to their experts and combine the results.

Every expert is a gated MLP (Shazeer 2020; ``layers/mlp.py``): FFN_e(x) =
(act(x W_gate[e]) * (x W_up[e])) W_down[e]. A token's output is
y_n = sum_j weights[n, j] * FFN_{experts[n, j]}(x_n) over its kept slots.

Three interchangeable ways to compute it for token-choice routing:
  * ``dense_dispatch``: every expert on every token, combined with a one-hot weight
    matrix (e times the FLOPs; the exact reference and the benchmark baseline).
  * ``capacity_dispatch``: fixed buffers of ``capacity`` slots per expert (GShard,
    Lepikhin et al. 2021, Algorithm 1; Switch, Fedus et al. 2022, Sec. 2.2): slots are
    served first-choices-first, then in token order; slots past the capacity are dropped
    (their contribution is 0; the token keeps its residual path).
  * ``dropless_dispatch``: sort the slots by expert and run grouped matmuls
    (MegaBlocks, Gale et al. 2023) via ``pallas_kernels.gmm``; nothing is dropped
    (impl "auto": the Pallas kernel on GPU/TPU, the tile-visit JAX form on CPU).
and ``expert_choice_dispatch`` for expert-choice routing (gather c tokens per expert).

Axis letters: n tokens, k experts per token, e experts, c capacity (slots per expert),
d model width, f expert hidden width, m token-slots sorted by expert (m = n * k).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Float, Int

from layers.moe_routers import ExpertChoice, TokenChoice
from layers.partitioning import shard_kernel
from pallas_kernels.gmm import gmm

DISPATCHES = ("dropless", "capacity", "dense")


class ExpertWeights(NamedTuple):
    """The stacked gated-MLP weights of e experts: w_gate, w_up [e, d, f], w_down [e, f, d]."""

    w_gate: Float[Array, "e d f"]
    w_up: Float[Array, "e d f"]
    w_down: Float[Array, "e f d"]


def expert_capacity(num_tokens: int, num_experts: int, k: int, capacity_factor: float) -> int:
    """Slots per expert: ceil(n * k / e * capacity_factor) (at least 1)."""
    return max(1, math.ceil(num_tokens * k / num_experts * capacity_factor))


def experts_batched(
    x: Float[Array, "e c d"], w: ExpertWeights, act: Callable
) -> Float[Array, "e c d"]:
    """Each expert's gated MLP on its own buffer of c slots."""
    h = act(jnp.einsum("ecd,edf->ecf", x, w.w_gate)) * jnp.einsum("ecd,edf->ecf", x, w.w_up)
    return jnp.einsum("ecf,efd->ecd", h, w.w_down)


def experts_grouped(
    x: Float[Array, "m d"],
    group_sizes: Int[Array, "e"],
    w: ExpertWeights,
    act: Callable,
    *,
    impl: str = "auto",
) -> Float[Array, "m d"]:
    """Each expert's gated MLP on its contiguous rows of ``x`` (rows sorted by expert).

    Under a mesh (``layers.partitioning.shard_kernel``) the rows split over the "batch"
    axes, each shard taking its slice of the groups, and the hidden width f over "mlp"
    (the down projection's partial sums are added over it, Megatron's row-parallel
    matmul); the expert dimension stays whole (expert parallelism is
    ``layers/moe_expert_parallel.py``).
    """
    rows = jnp.arange(x.shape[0], dtype=jnp.int32)
    fn = shard_kernel(
        functools.partial(_experts_on_rows, act=act, impl=impl),
        (("batch", None), ("batch",), None, (None, None, "mlp"), (None, None, "mlp"), (None, "mlp", None)),
        ("batch", None),
        sum_over=("mlp",),
    )
    return fn(x, rows, group_sizes, *w)


def _experts_on_rows(x, rows, group_sizes, w_gate, w_up, w_down, *, act, impl):
    """The gated MLPs on a contiguous slice of the sorted rows (global row ids ``rows``)."""
    n = x.shape[0]
    start = rows[0] if n else 0
    ends = jnp.cumsum(group_sizes)
    local_sizes = jnp.clip(ends - start, 0, n) - jnp.clip(ends - group_sizes - start, 0, n)
    h = act(gmm(x, w_gate, local_sizes, impl=impl)) * gmm(x, w_up, local_sizes, impl=impl)
    return gmm(h, w_down, local_sizes, impl=impl)


def dense_dispatch(
    x: Float[Array, "n d"], routing: TokenChoice, w: ExpertWeights, act: Callable
) -> Float[Array, "n d"]:
    """All experts on all tokens, combined by the one-hot weight matrix [n, e]."""
    num_experts = w.w_gate.shape[0]
    combine = jnp.einsum(
        "nke,nk->ne", jax.nn.one_hot(routing.experts, num_experts, dtype=x.dtype), routing.weights.astype(x.dtype)
    )
    out = experts_batched(jnp.broadcast_to(x, (num_experts, *x.shape)), w, act)
    return jnp.einsum("ne,end->nd", combine, out)


def capacity_positions(experts: Int[Array, "n k"], num_experts: int) -> Int[Array, "k n"]:
    """Position of each slot in its expert's buffer: first choices of all tokens first,
    then second choices, ..., token order within (GShard Algorithm 1)."""
    flat = rearrange(experts, "n k -> (k n)")
    one_hot = jax.nn.one_hot(flat, num_experts, dtype=jnp.int32)
    position = jnp.sum((jnp.cumsum(one_hot, axis=0) - 1) * one_hot, axis=-1)
    return rearrange(position, "(k n) -> k n", k=experts.shape[1])


def capacity_dispatch(
    x: Float[Array, "n d"],
    routing: TokenChoice,
    w: ExpertWeights,
    act: Callable,
    *,
    capacity: int,
    experts_fn: Callable | None = None,
) -> tuple[Float[Array, "n d"], Float[Array, ""]]:
    """Buffers of ``capacity`` slots per expert; overflowing slots dropped.

    Args:
      experts_fn: ``(buffer [e, c, d], filled bool [e, c]) -> [e, c, d]``, how the
        buffers are processed; default ``experts_batched`` (expert parallelism swaps in
        all-to-all + local experts, ``layers/moe_expert_parallel.py``).

    Returns:
      y: [n, d]; dropped_fraction: float32 [], fraction of the n * k slots dropped.
    """
    n, k = routing.experts.shape
    num_experts = routing.probs.shape[-1]
    position = capacity_positions(routing.experts, num_experts)  # [k, n]
    keep = position < capacity
    experts_kn = routing.experts.T
    tokens_kn = jnp.broadcast_to(jnp.arange(n), (k, n))
    buffer = jnp.zeros((num_experts, capacity, x.shape[-1]), x.dtype)
    # Dropped slots have position >= capacity: out of bounds, so mode="drop" skips them.
    buffer = buffer.at[experts_kn, position].set(x[tokens_kn], mode="drop")
    if experts_fn is None:
        out = experts_batched(buffer, w, act)
    else:
        filled = jnp.zeros((num_experts, capacity), bool).at[experts_kn, position].set(True, mode="drop")
        out = experts_fn(buffer, filled)
    slots = out[experts_kn, jnp.minimum(position, capacity - 1)]  # [k, n, d]
    gate = jnp.where(keep, routing.weights.T, 0.0).astype(x.dtype)
    y = jnp.einsum("knd,kn->nd", slots, gate)
    return y, jnp.mean(jnp.logical_not(keep).astype(jnp.float32))


def dropless_dispatch(
    x: Float[Array, "n d"],
    routing: TokenChoice,
    w: ExpertWeights,
    act: Callable,
    *,
    impl: str = "auto",
) -> Float[Array, "n d"]:
    """Sort the n * k slots by expert, grouped matmuls, unsort and combine (no drops)."""
    n, k = routing.experts.shape
    num_experts = w.w_gate.shape[0]
    flat = rearrange(routing.experts, "n k -> (n k)")
    order = jnp.argsort(flat, stable=True)
    group_sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
    out_sorted = experts_grouped(x[order // k], group_sizes, w, act, impl=impl)
    slots = jnp.zeros_like(out_sorted).at[order].set(out_sorted, unique_indices=True)
    slots = rearrange(slots, "(n k) d -> n k d", k=k)
    return jnp.einsum("nkd,nk->nd", slots, routing.weights.astype(x.dtype))


def expert_choice_dispatch(
    x: Float[Array, "n d"], routing: ExpertChoice, w: ExpertWeights, act: Callable
) -> tuple[Float[Array, "n d"], Float[Array, ""]]:
    """Each expert's gated MLP on its chosen tokens, scatter-added back with the weights.

    Returns:
      y: [n, d]; dropped_fraction: float32 [], fraction of tokens no expert chose.
    """
    out = experts_batched(x[routing.tokens], w, act)  # [e, c, d]
    y = jnp.zeros_like(x).at[routing.tokens].add(out * routing.weights[..., None].astype(x.dtype))
    chosen = jnp.zeros((x.shape[0],), jnp.int32).at[routing.tokens].add(1)
    return y, jnp.mean((chosen == 0).astype(jnp.float32))
