"""Autoregressive generation with an explicit decode cache.

Prefill runs the prompt through :func:`lm.model.network.decode_step` on an empty cache; each new
token is one more ``decode_step``. Sampling: greedy, temperature, top-k (Fan et al. 2018)
and nucleus / top-p (Holtzman et al. 2020).

Axis letters: b batch, t time, v vocabulary.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from lm.model import network as lm_model
from lm.model.config import ModelConfig


def sample_logits(
    logits: Float[Array, "b v"],
    rng: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Int[Array, "b"]:
    """Sample one token per row; temperature 0 is greedy (argmax)."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: must be >= 0")
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k={top_k}: must be >= 1")
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p={top_p}: must be in (0, 1]")
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        cutoff = jnp.min(jnp.where(mass_before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "temperature", "top_k", "top_p"))
def generate(
    cfg: ModelConfig,
    params: dict,
    prompt: Int[Array, "b t"],
    rng: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> Int[Array, "b n"]:
    """Continue a one-document prompt by ``max_new_tokens`` sampled tokens.

    Returns:
      The new tokens [b, max_new_tokens] (the prompt is not repeated).
    """
    b, t = prompt.shape
    cache = lm_model.init_cache(cfg, b, t + max_new_tokens)
    seg = jnp.ones((b, t), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    logits, cache = lm_model.decode_step(cfg, params, cache, prompt, seg, pos)
    sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k, top_p=top_p)
    rng, sub = jax.random.split(rng)
    first = sample(logits[:, -1], sub)

    def body(carry, i):
        cache, token, rng = carry
        rng, sub = jax.random.split(rng)
        position = jnp.full((b, 1), t + i, jnp.int32)
        logits, cache = lm_model.decode_step(cfg, params, cache, token[:, None], jnp.ones((b, 1), jnp.int32), position)
        nxt = sample(logits[:, -1], sub)
        return (cache, nxt, rng), token

    _, tokens = jax.lax.scan(body, (cache, first, rng), jnp.arange(max_new_tokens, dtype=jnp.int32))
    return tokens.T
