"""Analytic FLOPs against XLA's own count of a compiled train step (forward + backward)."""

import jax
import pytest

from layers.linear_attention import LinearAttentionConfig
from layers.mla import MLAConfig
from layers.moe import MoEConfig
from layers.recurrent_block import RecurrentConfig
from lm.model import network as model
from lm.model.config import ModelConfig
from lm.model.counting import train_flops_per_token, visible_keys_per_query
from lm.data.packing import random_batch
from lm.train.step import loss_fn

CONFIGS = [
    ModelConfig(d_model=128, num_layers=2, num_heads=4, d_ff=512, attention_impl="reference"),
    ModelConfig(d_model=96, num_layers=3, num_heads=6, num_kv_heads=2, d_ff=256, tie_embeddings=False,
                attention_impl="reference"),
    ModelConfig(d_model=128, num_layers=2, pattern="AW", num_heads=2, num_kv_heads=1, window=16, d_ff=384,
                mlp_activation="swiglu", attention_impl="reference"),
    ModelConfig(d_model=128, num_layers=3, pattern="RRW", num_heads=2, num_kv_heads=1, window=16, d_ff=384,
                attention_impl="reference", families={"rnn": RecurrentConfig(impl="reference")}),
    ModelConfig(d_model=128, num_layers=2, pattern="L", num_heads=2, d_ff=384,
                families={"la": LinearAttentionConfig(chunk_size=32, impl="reference")}),
    ModelConfig(d_model=128, num_layers=2, pattern="M", num_heads=4, d_ff=384,
                families={"mla": MLAConfig(q_lora_rank=64, kv_lora_rank=64, qk_nope_dim=32, qk_rope_dim=16, v_head_dim=32)},
                attention_impl="reference"),
    ModelConfig(d_model=128, num_layers=2, pattern="A", num_heads=4, d_ff=384, moe_every=1,
                moe=MoEConfig(num_experts=4, top_k=2, d_ff=128, dispatch="dense"), attention_impl="reference"),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_train_flops_match_xla_cost_analysis(cfg):
    b, t = 2, 64
    # XLA counts the FLOPs of the compiled program, which depends on the parameters' shapes
    # only: lowered from abstract parameters, no eager (op-by-op) initialisation runs.
    params = jax.eval_shape(lambda: model.init_params(cfg, jax.random.PRNGKey(0)))
    batch = random_batch(b, t, cfg.vocab_size)
    grad = jax.jit(jax.grad(lambda p: loss_fn(cfg, 0.0, p, batch)[0]))
    cost = grad.lower(params).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla = cost["flops"]
    # the reference attention computes every (query, key) pair of the square, then masks;
    # the dense MoE dispatch runs every expert on every token
    ours = train_flops_per_token(cfg, t, attention="dense") * b * t
    if cfg.moe_every:
        ours += 3 * b * t * cfg.num_layers * 2 * 3 * cfg.d_model * cfg.moe.d_ff * (cfg.moe.num_experts - cfg.moe.top_k)
    assert abs(ours - xla) / xla < 0.05, (ours, xla)


def test_visible_keys():
    assert visible_keys_per_query(4, None) == (1 + 2 + 3 + 4) / 4
    assert visible_keys_per_query(5, 1) == (1 + 2 + 2 + 2 + 2) / 5
    assert visible_keys_per_query(8, 0) == 1
    assert visible_keys_per_query(8, None, "dense") == 8
