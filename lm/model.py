"""The decoder-only language model: embedding, pre-norm residual blocks, final norm, logits.

Block i is ``x + mixer(RMSNorm(x))`` then ``x + MLP(RMSNorm(x))`` (pre-norm, Xiong et al.
2020; the residual block of Griffin, De et al. 2024), with the mixer chosen by the i-th
letter of the config's pattern. Embeddings are scaled by sqrt(d) (Gemma/Griffin) and the
head is tied to the embedding unless asked otherwise.

Axis letters: b batch, t time, d model width, v vocabulary.

Public functions are pure: ``init_params(cfg, rng)``, ``forward(cfg, params, tokens, ...)``,
``init_cache(cfg, batch, max_len)``, ``decode_step(cfg, params, cache, tokens, ...)``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from layers.mlp import GatedMLP
from layers.moe import MoEFeedForward
from layers.partitioning import constrain, param
from layers.rmsnorm import RMSNorm
from lm import parametrization
from lm.config import ModelConfig
from lm.mixers import MIXERS, compute_dtype


class Block(nn.Module):
    """Pre-norm residual block: temporal mixer then gated MLP (or MoE feed-forward).

    Returns (x, new_cache, aux) where aux holds the MoE auxiliary outputs ({} for a dense MLP).
    """

    cfg: ModelConfig
    letter: str
    moe: bool = False

    @nn.compact
    def __call__(self, x, *, segment_ids, positions, cache=None, deterministic=True):
        cfg = self.cfg
        mixer = MIXERS[self.letter].build(cfg)
        h, new_cache = mixer(RMSNorm(name="norm_mixer")(x), segment_ids=segment_ids, positions=positions, cache=cache)
        x = x + h.astype(x.dtype)
        normed = RMSNorm(name="norm_mlp")(x)
        aux = {}
        if self.moe:
            ff = MoEFeedForward(cfg.moe, dtype=compute_dtype(cfg), name="moe")
            h, aux = ff(normed, deterministic=deterministic, decode=cache is not None)
        else:
            h = GatedMLP(cfg.ff_dim, cfg.mlp_activation, dtype=compute_dtype(cfg), name="mlp")(normed)
        x = x + h.astype(x.dtype)
        return constrain(x, ("batch", "length", "embed")), new_cache, aux


class LanguageModel(nn.Module):
    """Embedding -> blocks -> RMSNorm -> logits (float32)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: Int[Array, "b t"],
        segment_ids: Int[Array, "b t"] | None = None,
        positions: Int[Array, "b t"] | None = None,
        cache: list | None = None,
        deterministic: bool = True,
    ) -> tuple[Float[Array, "b t v"], list | None, dict]:
        cfg = self.cfg
        dtype = compute_dtype(cfg)
        b, t = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((b, t), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        embed = param(
            self, "embed", nn.initializers.normal(cfg.d_model**-0.5), (cfg.vocab_size, cfg.d_model),
            ("vocab", "embed"),
        )
        x = (jnp.take(embed, tokens, axis=0) * jnp.sqrt(cfg.d_model)).astype(dtype)
        x = constrain(x, ("batch", "length", "embed"))
        new_caches, moe_aux = [], {}
        for i, letter in enumerate(cfg.block_letters):
            block_cache = None if cache is None else cache[i]
            x, c, aux = Block(cfg, letter, cfg.is_moe_block(i), name=f"block_{i}")(
                x, segment_ids=segment_ids, positions=positions, cache=block_cache, deterministic=deterministic
            )
            new_caches.append(c)
            if aux:
                moe_aux[i] = aux
        x = RMSNorm(name="final_norm")(x)
        if cfg.tie_embeddings:
            head = embed.T
        else:
            head = param(self, "head", nn.initializers.normal(cfg.d_model**-0.5), (cfg.d_model, cfg.vocab_size),
                         ("embed", "vocab"))
        logits = jnp.einsum("btd,dv->btv", x, head.astype(dtype)).astype(jnp.float32)
        if cfg.parametrization == "mup":  # μP output multiplier (lm/parametrization.py)
            logits = logits * parametrization.output_multiplier(cfg)
        if cfg.logit_softcap is not None:
            logits = cfg.logit_softcap * jnp.tanh(logits / cfg.logit_softcap)
        logits = constrain(logits, ("batch", "length", "vocab"))
        return logits, (None if cache is None else new_caches), moe_aux


def init_params(cfg: ModelConfig, rng: jax.Array, seq_len: int = 8) -> dict:
    """Parameters (unboxed float32 pytree) of a model built from ``cfg`` (μP: rescaled, see below)."""
    params = nn.unbox(init_boxed(cfg, rng, seq_len))
    if cfg.parametrization == "mup":  # μP init multipliers (lm/parametrization.py)
        params = parametrization.scale_init(params, param_rules(cfg))
    return params


def boxed_shapes(cfg: ModelConfig) -> dict:
    """Abstract parameters (shapes and logical axis names) of a model built from ``cfg``."""
    return jax.eval_shape(lambda: init_boxed(cfg, jax.random.PRNGKey(0)))


def param_rules(cfg: ModelConfig):
    """Each parameter's :class:`lm.parametrization.ParamRule` (class and μP multipliers)."""
    return parametrization.param_rules(cfg, boxed_shapes)


def init_boxed(cfg: ModelConfig, rng: jax.Array, seq_len: int = 8) -> dict:
    """Parameters with their logical axis names (``nn.LogicallyPartitioned`` leaves)."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    return LanguageModel(cfg).init({"params": rng, "jitter": rng}, tokens)["params"]


def forward(
    cfg: ModelConfig,
    params: dict,
    tokens: Int[Array, "b t"],
    segment_ids: Int[Array, "b t"] | None = None,
    positions: Int[Array, "b t"] | None = None,
) -> Float[Array, "b t v"]:
    """Float32 logits of every position (training / scoring path, no cache)."""
    return forward_with_aux(cfg, params, tokens, segment_ids, positions)[0]


def forward_with_aux(
    cfg: ModelConfig,
    params: dict,
    tokens: Int[Array, "b t"],
    segment_ids: Int[Array, "b t"] | None = None,
    positions: Int[Array, "b t"] | None = None,
    rng: jax.Array | None = None,
) -> tuple[Float[Array, "b t v"], dict]:
    """Logits and the MoE auxiliary outputs {block index: aux dict} (empty without MoE).

    ``rng`` (training) enables the router jitter of MoE layers that use it.
    """
    rngs = None if rng is None else {"jitter": rng}
    logits, _, aux = LanguageModel(cfg).apply(
        {"params": params}, tokens, segment_ids, positions, None, rng is None, rngs=rngs
    )
    return logits, aux


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> list:
    """Empty decode cache: one pytree per block, in block order."""
    dtype = compute_dtype(cfg) if dtype is None else dtype
    return [MIXERS[letter].build(cfg).init_cache(batch, max_len, dtype) for letter in cfg.block_letters]


def decode_step(
    cfg: ModelConfig,
    params: dict,
    cache: list,
    tokens: Int[Array, "b t"],
    segment_ids: Int[Array, "b t"],
    positions: Int[Array, "b t"],
) -> tuple[Float[Array, "b t v"], list]:
    """Logits of ``tokens`` continuing from ``cache``, and the updated cache.

    Prefill is a call with the whole prompt (t > 1) on an empty cache; decoding calls it
    with one token at a time. Same function as the training forward, with a cache.
    """
    logits, new_cache, _ = LanguageModel(cfg).apply({"params": params}, tokens, segment_ids, positions, cache)
    return logits, new_cache


def cache_bytes(cfg: ModelConfig, context_len: int, dtype=None) -> int:
    """Decode-cache bytes of one sequence after ``context_len`` tokens, summed over blocks."""
    dtype = compute_dtype(cfg) if dtype is None else dtype
    return sum(MIXERS[letter].cache_bytes(cfg, context_len, dtype) for letter in cfg.block_letters)
