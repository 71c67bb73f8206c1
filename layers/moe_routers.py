"""Mixture-of-Experts routers: which experts process each token, with which weights.

All routers take float32 logits (the router matmul is done in float32 for stability, as in
Switch Transformer, Fedus et al. 2022, Sec. 2.4 "selective precision") and return the full
softmax ``probs`` too, which the load-balance loss needs.

Axis letters: n tokens (batch * time, flattened), e experts, k experts per token,
c tokens per expert (expert-choice capacity), d model width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

ROUTERS = ("softmax_topk", "topk_softmax", "expert_choice")


class TokenChoice(NamedTuple):
    """Token-choice routing: each token picks k experts.

    Attributes:
      experts: int32 [n, k], chosen experts in decreasing router score.
      weights: float32 [n, k], combine weights of the chosen experts.
      probs: float32 [n, e], softmax over all experts (for the load-balance loss).
    """

    experts: Int[Array, "n k"]
    weights: Float[Array, "n k"]
    probs: Float[Array, "n e"]


class ExpertChoice(NamedTuple):
    """Expert-choice routing: each expert picks c tokens.

    Attributes:
      tokens: int32 [e, c], the tokens each expert takes, in decreasing score.
      weights: float32 [e, c], their combine weights (the token's router probability).
      probs: float32 [n, e], softmax over experts for each token.
    """

    tokens: Int[Array, "e c"]
    weights: Float[Array, "e c"]
    probs: Float[Array, "n e"]


def apply_jitter(
    x: Float[Array, "n d"], rng: jax.Array, eps: float
) -> Float[Array, "n d"]:
    """Multiplicative jitter on the router input, x * U(1 - eps, 1 + eps).

    Switch Transformer (Fedus et al. 2022, Sec. 2.4 and Table 9) uses it during training
    for exploration and stability; not applied at evaluation.
    """
    noise = jax.random.uniform(rng, x.shape, jnp.float32, 1.0 - eps, 1.0 + eps)
    return x * noise


def softmax_then_topk(
    logits: Float[Array, "n e"], k: int, *, renormalize: bool = True
) -> TokenChoice:
    """Softmax over all experts, then keep the k largest probabilities.

    GShard (Lepikhin et al. 2021, Algorithm 1, top-2 with weights renormalised over the
    two) and DeepSeekMoE (Dai et al. 2024, Eq. 3-5, no renormalisation): the combine
    weight of a chosen expert is its probability p_e = softmax(logits)_e, optionally
    divided by the sum over the k chosen.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, k)
    if renormalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return TokenChoice(experts.astype(jnp.int32), weights, probs)


def topk_then_softmax(logits: Float[Array, "n e"], k: int) -> TokenChoice:
    """Keep the k largest logits, then softmax over those k only.

    Shazeer et al. 2017 ("Outrageously Large Neural Networks", Eq. 3-5, KeepTopK then
    softmax, without the noise) and Mixtral (Jiang et al. 2024, Eq. 1-2). The weights sum
    to 1 over the k chosen; equal to softmax-then-top-k with renormalisation.
    """
    logits = logits.astype(jnp.float32)
    top_logits, experts = jax.lax.top_k(logits, k)
    return TokenChoice(experts.astype(jnp.int32), jax.nn.softmax(top_logits, axis=-1), jax.nn.softmax(logits, axis=-1))


def expert_choice_capacity(num_tokens: int, num_experts: int, k: int, capacity_factor: float) -> int:
    """Tokens per expert in expert choice: c = ceil(n * k * capacity_factor / e), at most n."""
    return min(num_tokens, max(1, math.ceil(num_tokens * k * capacity_factor / num_experts)))


def expert_choice(logits: Float[Array, "n e"], capacity: int) -> ExpertChoice:
    """Each expert takes the ``capacity`` tokens with the highest router probability.

    Zhou et al. 2022 ("Mixture-of-Experts with Expert Choice Routing", Sec. 3.1, Eq. 1):
    S = softmax(X W_g) over experts, then G, I = TopK(S^T, c) per expert; token i's output
    is sum over experts that chose it of G * FFN_e(x_i). Load is balanced by construction,
    and a token may be taken by 0 or up to e experts.

    Not causal: whether a token is chosen depends on the other tokens of the batch,
    including later ones, so it cannot be used for autoregressive decoding (the MoE layer
    refuses it with ``decode=True``); kept for encoders and analysis.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, tokens = jax.lax.top_k(probs.T, capacity)
    return ExpertChoice(tokens.astype(jnp.int32), weights, probs)
