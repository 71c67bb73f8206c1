"""Mixture-of-Experts feed-forward layer (token-choice or expert-choice routing).

y = sum_{j < k} g_{n,j} FFN_{e_{n,j}}(x_n) + sum_s FFN^shared_s(x_n)

Routed experts are gated MLPs (Shazeer 2020) of width ``d_ff`` each, chosen independently
of the dense MLP width (fine-grained experts, DeepSeekMoE, Dai et al. 2024, Sec. 3.1);
optional shared experts are always active (DeepSeekMoE Sec. 3.2) and are computed as one
``GatedMLP`` of width ``num_shared_experts * shared_d_ff`` (identical to a sum of
``num_shared_experts`` separate gated MLPs: the hidden units are independent).

Routers (``layers/moe_routers.py``), losses (``layers/moe_losses.py``), dispatch
(``layers/moe_dispatch.py``) and expert parallelism (``layers/moe_expert_parallel.py``)
live in their own files; this file assembles them. Parameters and FLOPs are counted in
``lm/model/counting.py``.

Auxiliary outputs are returned explicitly, ``y, aux = layer.apply(params, x)``, so the
training loss adds ``w_lb * aux["load_balance_loss"] + w_z * aux["router_z_loss"]`` with
its own weights (Switch: w_lb = 1e-2; ST-MoE: w_z = 1e-3) and logs the rest:
  load_balance_loss  float32 []   Switch loss e * sum_e f_e P_e (scope: see moe_losses)
  router_z_loss      float32 []   ST-MoE mean logsumexp(logits)^2
  dropped_fraction   float32 []   token-slots dropped by capacity (expert choice: tokens
                                  no expert chose); 0 for "dropless" and "dense"
  tokens_per_expert  float32 [e]  token-slots routed to each expert (before dropping)
  router_entropy     float32 []   mean entropy of the router softmax, nats

Axis letters: b batch, t time, n tokens (b * t), d model width, e experts, k experts per
token, f expert hidden width.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from einops import rearrange
from jaxtyping import Array, Float

from layers.mlp import ACTIVATIONS, GatedMLP, dense_init, gated_activation
from layers.moe_dispatch import (
    DISPATCHES,
    ExpertWeights,
    capacity_dispatch,
    dense_dispatch,
    dropless_dispatch,
    expert_capacity,
    expert_choice_dispatch,
)
from layers.moe_losses import SCOPES, load_balance_loss, router_entropy, router_z_loss
from layers.moe_routers import (
    ROUTERS,
    ExpertChoice,
    TokenChoice,
    apply_jitter,
    expert_choice,
    expert_choice_capacity,
    softmax_then_topk,
    topk_then_softmax,
)
from layers.partitioning import constrain, param
from pallas_kernels.backend import IMPLS

AUX_KEYS = ("load_balance_loss", "router_z_loss", "dropped_fraction", "tokens_per_expert", "router_entropy")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-Experts feed-forward hyperparameters.

    Attributes:
      num_experts: routed experts e.
      top_k: experts per token k (expert choice: average experts per token before the
        capacity factor, c = ceil(n * k * capacity_factor / e)).
      d_ff: hidden width f of each routed expert.
      num_shared_experts: always-active experts (DeepSeekMoE); 0 for none.
      shared_d_ff: hidden width of each shared expert (default: d_ff).
      activation: "swiglu" or "geglu" (``layers/mlp.py``).
      router: "softmax_topk", "topk_softmax" or "expert_choice".
      renormalize: softmax_topk only: renormalise the k weights to sum to 1.
      router_jitter: multiplicative jitter eps on the router input in training (0: off).
      dispatch: "dropless" (sort + grouped matmul), "capacity" (buffers, dropping) or
        "dense" (all experts on all tokens); expert choice needs "capacity".
      capacity_factor: slots per expert = ceil(n * k / e * capacity_factor).
      load_balance_scope: "micro_batch" or "global_batch" (``layers/moe_losses.py``).
      gmm_impl: ``impl`` of the grouped matmul in dropless dispatch.
      load_balance_weight: weight of the Switch load-balance loss in the training loss
        (``layers/moe_losses.py``; Fedus et al. 2022), summed over the MoE blocks.
      router_z_weight: weight of the router z-loss (Zoph et al. 2022, ST-MoE), summed alike.
    """

    num_experts: int = 8
    top_k: int = 2
    d_ff: int = 256
    num_shared_experts: int = 0
    shared_d_ff: int | None = None
    activation: str = "swiglu"
    router: str = "softmax_topk"
    renormalize: bool = True
    router_jitter: float = 0.0
    dispatch: str = "dropless"
    capacity_factor: float = 1.25
    load_balance_scope: str = "micro_batch"
    gmm_impl: str = "auto"
    load_balance_weight: float = 0.01
    router_z_weight: float = 0.001

    def __post_init__(self):
        def check(ok: bool, field: str, allowed: str):
            if not ok:
                raise ValueError(f"MoEConfig.{field}={getattr(self, field)!r}: must be {allowed}")

        def is_int(value, low: int) -> bool:
            return isinstance(value, int) and value >= low

        check(is_int(self.num_experts, 1), "num_experts", "an int >= 1")
        check(is_int(self.top_k, 1) and self.top_k <= self.num_experts, "top_k", "an int in [1, num_experts]")
        check(is_int(self.d_ff, 1), "d_ff", "an int >= 1")
        check(is_int(self.num_shared_experts, 0), "num_shared_experts", "an int >= 0")
        check(self.shared_d_ff is None or is_int(self.shared_d_ff, 1), "shared_d_ff", "None or an int >= 1")
        check(self.activation in ACTIVATIONS, "activation", f"one of {tuple(ACTIVATIONS)}")
        check(self.router in ROUTERS, "router", f"one of {ROUTERS}")
        check(0.0 <= self.router_jitter < 1.0, "router_jitter", "in [0, 1)")
        check(self.dispatch in DISPATCHES, "dispatch", f"one of {DISPATCHES}")
        check(
            self.router != "expert_choice" or self.dispatch == "capacity",
            "dispatch",
            "'capacity' with router='expert_choice' (each expert takes a fixed number of tokens)",
        )
        check(self.capacity_factor > 0, "capacity_factor", "> 0")
        check(self.load_balance_scope in SCOPES, "load_balance_scope", f"one of {SCOPES}")
        check(self.gmm_impl in IMPLS, "gmm_impl", f"one of {IMPLS}")
        for name in ("load_balance_weight", "router_z_weight"):
            value = getattr(self, name)
            check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and value >= 0, name, "a finite number >= 0")

    @property
    def shared_width(self) -> int:
        """Total hidden width of the shared experts (0 without them)."""
        return self.num_shared_experts * (self.shared_d_ff or self.d_ff)


def route(config: MoEConfig, logits: Float[Array, "n e"]) -> TokenChoice | ExpertChoice:
    """The configured router on float32 logits."""
    if config.router == "softmax_topk":
        return softmax_then_topk(logits, config.top_k, renormalize=config.renormalize)
    if config.router == "topk_softmax":
        return topk_then_softmax(logits, config.top_k)
    capacity = expert_choice_capacity(logits.shape[0], config.num_experts, config.top_k, config.capacity_factor)
    return expert_choice(logits, capacity)


def routing_aux(
    config: MoEConfig,
    logits: Float[Array, "n e"],
    routing: TokenChoice | ExpertChoice,
    dropped_fraction: Float[Array, ""],
    *,
    axis_name: str | tuple[str, ...] | None = None,
) -> dict[str, Array]:
    """The auxiliary losses and routing statistics of the module docstring."""
    e = config.num_experts
    if isinstance(routing, ExpertChoice):
        # Balanced by construction: every expert takes c slots, so f = 1/e and the loss is 1.
        tokens_per_expert = jnp.full((e,), routing.tokens.shape[1], jnp.float32)
        balance = jnp.sum(jnp.mean(routing.probs, axis=0))
    else:
        tokens_per_expert = jnp.sum(jax.nn.one_hot(routing.experts, e, dtype=jnp.float32), axis=(0, 1))
        balance = load_balance_loss(
            routing.probs, routing.experts, scope=config.load_balance_scope, axis_name=axis_name
        )
    return {
        "load_balance_loss": balance,
        "router_z_loss": router_z_loss(logits),
        "dropped_fraction": jnp.asarray(dropped_fraction, jnp.float32),
        "tokens_per_expert": tokens_per_expert,
        "router_entropy": router_entropy(routing.probs),
    }


def moe_tokens(
    config: MoEConfig,
    tokens: Float[Array, "n d"],
    logits: Float[Array, "n e"],
    w: ExpertWeights,
    *,
    axis_name: str | tuple[str, ...] | None = None,
) -> tuple[Float[Array, "n d"], dict[str, Array]]:
    """Route, dispatch and combine the routed experts for a flat list of tokens."""
    act = gated_activation(config.activation)
    routing = route(config, logits)
    if isinstance(routing, ExpertChoice):
        y, dropped = expert_choice_dispatch(tokens, routing, w, act)
    elif config.dispatch == "dense":
        y, dropped = dense_dispatch(tokens, routing, w, act), 0.0
    elif config.dispatch == "dropless":
        y, dropped = dropless_dispatch(tokens, routing, w, act, impl=config.gmm_impl), 0.0
    else:
        capacity = expert_capacity(tokens.shape[0], config.num_experts, config.top_k, config.capacity_factor)
        y, dropped = capacity_dispatch(tokens, routing, w, act, capacity=capacity)
    return y, routing_aux(config, logits, routing, dropped, axis_name=axis_name)


def router_logits(tokens: Float[Array, "n d"], w_router: Float[Array, "d e"]) -> Float[Array, "n e"]:
    """Router logits in float32 at full matmul precision (Switch selective precision)."""
    return jnp.einsum(
        "nd,de->ne", tokens.astype(jnp.float32), w_router.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )


class MoEFeedForward(nn.Module):
    """Mixture-of-Experts feed-forward: routed gated-MLP experts (+ shared experts).

    Parameters: w_router [d, e] ("embed", None); w_gate, w_up [e, d, f] ("experts",
    "embed", "mlp"); w_down [e, f, d] ("experts", "mlp", "embed"); shared experts under
    "shared" (a ``GatedMLP``).

    Call: ``y, aux = layer.apply(params, x, deterministic=..., decode=..., axis_name=...)``
    with x [b, t, d] -> y [b, t, d] and ``aux`` as in the module docstring. Jitter
    (training, ``deterministic=False``) draws from the "jitter" rng stream.
    """

    config: MoEConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        x: Float[Array, "b t d"],
        *,
        deterministic: bool = True,
        decode: bool = False,
        axis_name: str | tuple[str, ...] | None = None,
    ) -> tuple[Float[Array, "b t d"], dict[str, Array]]:
        """Args: x [b, t, d]; deterministic: no jitter; decode: autoregressive decoding
        (expert choice refused); axis_name: data axis for the global-batch balance loss.

        Returns: y [b, t, d] in ``dtype``, aux dict (module docstring).
        """
        cfg = self.config
        if decode and cfg.router == "expert_choice":
            raise ValueError(
                "MoEFeedForward: router='expert_choice' is not causal (an expert's choice of a "
                "token depends on later tokens) and cannot be used for autoregressive decoding; "
                "use router='softmax_topk' or 'topk_softmax'"
            )
        b, t, d = x.shape
        e, f = cfg.num_experts, cfg.d_ff
        w_router = param(self, "w_router", dense_init(d), (d, e), ("embed", None), self.param_dtype)
        w = ExpertWeights(
            param(self, "w_gate", dense_init(d), (e, d, f), ("experts", "embed", "mlp"), self.param_dtype),
            param(self, "w_up", dense_init(d), (e, d, f), ("experts", "embed", "mlp"), self.param_dtype),
            param(self, "w_down", dense_init(f), (e, f, d), ("experts", "mlp", "embed"), self.param_dtype),
        )
        tokens = rearrange(x, "b t d -> (b t) d")
        router_in = tokens.astype(jnp.float32)
        if cfg.router_jitter > 0 and not deterministic:
            router_in = apply_jitter(router_in, self.make_rng("jitter"), cfg.router_jitter)
        logits = router_logits(router_in, w_router)
        w = ExpertWeights(*(a.astype(self.dtype) for a in w))
        y, aux = moe_tokens(cfg, tokens.astype(self.dtype), logits, w, axis_name=axis_name)
        y = rearrange(y, "(b t) d -> b t d", b=b)
        if cfg.num_shared_experts:
            shared = GatedMLP(cfg.shared_width, cfg.activation, self.dtype, self.param_dtype, name="shared")
            y = y + shared(x)
        return constrain(y, ("batch", "length", "embed")), aux
