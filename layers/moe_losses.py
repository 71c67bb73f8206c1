"""Auxiliary Mixture-of-Experts losses and routing statistics.

Axis letters: n tokens, e experts, k experts per token.

Load-balance loss (Switch Transformer, Fedus et al. 2022, Eq. 4-6, generalised to k):
  f_e = (token-slots routed to e) / (n * k),   P_e = mean_n probs[n, e],
  L_balance = e * sum_e f_e * P_e              (= 1 for perfectly uniform routing).

Scope ("Demons in the Detail", Qiu et al. 2025, Sec. 3): with "micro_batch" f and P are
taken over the tokens of this call (on a data-parallel shard under ``shard_map``, its own
micro-batch), and the per-shard losses are then averaged like any loss; with
"global_batch" f and P are first averaged over the whole global batch, then multiplied,
which lets experts specialise by domain within a sequence. Under plain ``jit`` with
global arrays the call already sees the global batch; under ``shard_map`` / ``vmap`` /
``pmap`` pass the data axis name and f, P are ``pmean``-ed over it. With gradient
accumulation over micro-batches, accumulate (f, P) from :func:`load_balance_stats` and
use :func:`load_balance_from_stats`.

Router z-loss (ST-MoE, Zoph et al. 2022, Eq. 5): mean_n (logsumexp_e logits[n, e])^2.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

SCOPES = ("micro_batch", "global_batch")


def load_balance_stats(
    probs: Float[Array, "n e"], experts: Int[Array, "n k"]
) -> tuple[Float[Array, "e"], Float[Array, "e"]]:
    """(f, P): fraction of token-slots routed to each expert and mean router probability."""
    num_experts = probs.shape[-1]
    counts = jnp.sum(jax.nn.one_hot(experts, num_experts, dtype=jnp.float32), axis=(0, 1))
    return counts / experts.size, jnp.mean(probs.astype(jnp.float32), axis=0)


def load_balance_from_stats(f: Float[Array, "e"], p: Float[Array, "e"]) -> Float[Array, ""]:
    """Switch load-balance loss e * sum_e f_e P_e from (already reduced) statistics."""
    return f.shape[0] * jnp.sum(f * p)


def load_balance_loss(
    probs: Float[Array, "n e"],
    experts: Int[Array, "n k"],
    *,
    scope: str = "micro_batch",
    axis_name: str | tuple[str, ...] | None = None,
) -> Float[Array, ""]:
    """Switch load-balance loss (module docstring) with a micro- or global-batch scope.

    Args:
      probs: float32 [n, e], router softmax over all experts.
      experts: int [n, k], chosen experts of each token.
      scope: "micro_batch" or "global_batch".
      axis_name: data-parallel axis (or axes) over which "global_batch" averages f and P;
        None when this call already holds the global batch. Ignored for "micro_batch".
    """
    if scope not in SCOPES:
        raise ValueError(f"load_balance scope={scope!r} is not one of {SCOPES}")
    f, p = load_balance_stats(probs, experts)
    if scope == "global_batch" and axis_name is not None:
        f, p = jax.lax.pmean((f, p), axis_name)
    return load_balance_from_stats(f, p)


def router_z_loss(logits: Float[Array, "n e"]) -> Float[Array, ""]:
    """ST-MoE router z-loss mean_n logsumexp(logits_n)^2 (Zoph et al. 2022, Eq. 5)."""
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)))


def router_entropy(probs: Float[Array, "n e"]) -> Float[Array, ""]:
    """Mean over tokens of the router distribution's entropy, in nats (0 = one expert)."""
    return jnp.mean(-jnp.sum(jnp.where(probs > 0, probs * jnp.log(probs), 0.0), axis=-1))
