"""Model assembly: parameter counts, and prefill + token-by-token decode == full forward pass.

Every program here is jitted (an eager forward compiles each of its ops on its own) and each
config's parameters are initialised once (:func:`_params`) for the decode test; the counts read
the shapes ``init_params`` returns (``jax.eval_shape``: traced, not compiled or run).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.linear_attention import LinearAttentionConfig
from layers.mla import MLAConfig
from layers.moe import MoEConfig
from layers.recurrent_block import RecurrentConfig
from lm.model import decode, network as model
from lm.model.config import ModelConfig
from lm.model.counting import param_count
from lm.model.presets import PRESETS

CONFIGS = [
    ModelConfig(d_model=32, num_layers=2, num_heads=4, d_ff=64),
    ModelConfig(d_model=32, num_layers=3, pattern="AW", num_heads=4, num_kv_heads=2, window=3, d_ff=48,
                tie_embeddings=False, logit_softcap=30.0, attn_softcap=20.0),
    ModelConfig(d_model=48, num_layers=2, pattern="W", num_heads=4, num_kv_heads=1, head_dim=8, window=2,
                mlp_activation="swiglu", rope_fraction=0.5),
    # Griffin (recurrent, recurrent, local MQA) and Hawk
    ModelConfig(d_model=32, num_layers=3, pattern="RRW", num_heads=2, num_kv_heads=1, window=3, rope_fraction=0.5,
                d_ff=48, families={"rnn": RecurrentConfig(width=48)}, logit_softcap=30.0),
    ModelConfig(d_model=32, num_layers=2, pattern="R", num_heads=4, d_ff=48),
    # linear attention: GLA and RetNet variants (chunk smaller than the prompt)
    ModelConfig(d_model=32, num_layers=2, pattern="L", num_heads=2, d_ff=48, families={"la": LinearAttentionConfig(chunk_size=4)}),
    ModelConfig(d_model=32, num_layers=1, pattern="L", num_heads=2, d_ff=48,
                families={"la": LinearAttentionConfig(variant="retnet", output_norm="group", feature_map="elu1", chunk_size=4)}),
    # MLA with and without the query low-rank path, both decode paths
    ModelConfig(d_model=32, num_layers=2, pattern="M", num_heads=2, d_ff=48,
                families={"mla": MLAConfig(q_lora_rank=16, kv_lora_rank=16, qk_nope_dim=8, qk_rope_dim=4, v_head_dim=8)}),
    ModelConfig(d_model=32, num_layers=1, pattern="MA", num_heads=2, d_ff=48,
                families={"mla": MLAConfig(kv_lora_rank=16, qk_nope_dim=8, qk_rope_dim=4, v_head_dim=8, decode_path="naive")}),
    # MoE feed-forward every second block (decode with token-choice routing)
    ModelConfig(d_model=32, num_layers=2, pattern="A", num_heads=2, d_ff=48, moe_every=2,
                moe=MoEConfig(num_experts=4, top_k=2, d_ff=16, num_shared_experts=1)),
]


@functools.cache
def _params(index: int) -> dict:
    """``init_params`` of CONFIGS[index] at PRNGKey(0), jitted, shared by the decode tests of this module."""
    cfg = CONFIGS[index]
    return jax.jit(lambda r: model.init_params(cfg, r))(jax.random.PRNGKey(0))


def _size(cfg: ModelConfig) -> int:
    """The number of parameters ``init_params`` returns (their shapes only: traced, not run)."""
    shapes = jax.eval_shape(lambda: model.init_params(cfg, jax.random.PRNGKey(0)))
    return sum(x.size for x in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_param_count(name):
    cfg = PRESETS[name]
    assert _size(cfg) == param_count(cfg)["total"]


@pytest.mark.parametrize("index", range(len(CONFIGS)), ids=[f"cfg{i}" for i in range(len(CONFIGS))])
def test_param_count_is_exact(index):
    cfg = CONFIGS[index]
    counts = param_count(cfg)
    assert _size(cfg) == counts["total"]
    assert counts["total"] - counts["non_embedding"] == cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


@pytest.mark.parametrize("index", range(1, len(CONFIGS)), ids=[f"cfg{i - 1}" for i in range(1, len(CONFIGS))])
def test_prefill_then_decode_equals_forward(index):
    cfg, params = CONFIGS[index], _params(index)
    t = 11
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, t), 0, cfg.vocab_size)
    # the prompt holds a document boundary; decoding continues the second document
    seg = jnp.array([[1] * 4 + [2] * 7, [1] * 11])
    pos = jnp.array([list(range(4)) + list(range(7)), list(range(11))])
    full = jax.jit(functools.partial(model.forward, cfg))(params, tokens, seg, pos)
    cache = model.init_cache(cfg, 2, t)
    step = jax.jit(lambda c, x, s, p: model.decode_step(cfg, params, c, x, s, p))
    logits, cache = step(cache, tokens[:, :6], seg[:, :6], pos[:, :6])
    outs = [logits]
    for i in range(6, t):
        logits, cache = step(cache, tokens[:, i : i + 1], seg[:, i : i + 1], pos[:, i : i + 1])
        outs.append(logits)
    # float32; the full pass may use an associative (reordered) scan, decode a sequential one
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full), rtol=1e-4, atol=1e-4)


def test_greedy_generation_matches_argmax_of_forward():
    cfg, params = CONFIGS[1], _params(1)
    prompt = jnp.array([[5, 6, 7]])
    generate = jax.jit(lambda p, x, r: decode.generate(cfg, p, x, r, max_new_tokens=4, temperature=0.0))
    new = generate(params, prompt, jax.random.PRNGKey(0))
    # One compiled forward of the final length: the model is causal, so the logits at the last
    # real position of a zero-padded sequence are those of the sequence itself.
    last_logits = jax.jit(lambda p, x, n: model.forward(cfg, p, x)[:, n - 1])
    seq = prompt
    for _ in range(4):
        padded = jnp.pad(seq, ((0, 0), (0, 7 - seq.shape[1])))
        nxt = jnp.argmax(last_logits(params, padded, seq.shape[1]), -1)
        seq = jnp.concatenate([seq, nxt[:, None].astype(seq.dtype)], 1)
    np.testing.assert_array_equal(np.asarray(new), np.asarray(seq[:, 3:]))


def test_top_k_and_top_p_restrict_the_support():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    k2 = {int(decode.sample_logits(logits, k, top_k=2)[0]) for k in keys}
    p70 = {int(decode.sample_logits(logits, k, top_p=0.7)[0]) for k in keys}
    assert k2 == {0, 1} and p70 == {0, 1}
    assert {int(decode.sample_logits(logits, k, top_p=0.9)[0]) for k in keys} == {0, 1, 2}
