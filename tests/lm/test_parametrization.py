"""μP (lm/parametrization.py): classes and multipliers per family, SP untouched, μP = SP at the base width."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.moe import MoEConfig
from lm import model, parametrization, train
from lm.config import ModelConfig, OptimizerConfig, RunConfig
from lm.mixers import MIXERS

BASE = 16
_COMMON = dict(d_model=BASE, num_layers=1, vocab_size=40, num_heads=2, parametrization="mup", base_width=BASE)
FAMILIES = {
    "transformer": ModelConfig(pattern="A", tie_embeddings=False, **_COMMON),
    "griffin": ModelConfig(pattern="R", **_COMMON),
    "gla": ModelConfig(pattern="L", **_COMMON),
    "mla": ModelConfig(pattern="M", mla_q_lora_rank=16, mla_kv_lora_rank=16, mla_qk_nope_dim=8, mla_qk_rope_dim=4,
                       mla_v_head_dim=8, **_COMMON),
    "moe": ModelConfig(pattern="A", moe_every=1, moe=MoEConfig(num_experts=4, d_ff=16), **_COMMON),
}
# expected class of named parameters (path suffix -> kind), per family
EXPECTED = {
    "transformer": {"Attention_0/wq": "hidden", "Attention_0/wo": "hidden", "mlp/w_down": "hidden",
                    "embed": "embedding", "head": "readout", "norm_mixer/scale": "vector"},
    "griffin": {"rg_lru/a_gate/w": "hidden", "rg_lru/input_gate/w": "hidden", "rg_lru/a_param": "vector",
                "conv_1d/w": "input", "conv_1d/b": "vector", "linear_x/kernel": "hidden",
                "linear_out/kernel": "hidden", "linear_out/bias": "vector"},
    "gla": {"w_q": "hidden", "w_o": "hidden", "w_decay_down": "output", "w_decay_up": "input", "b_decay": "vector"},
    "mla": {"w_dkv": "hidden", "w_dq": "hidden", "w_uk": "hidden", "w_uv": "hidden", "w_uq": "hidden",
            "w_kr": "output", "kv_norm/scale": "vector"},
    "moe": {"moe/w_gate": "hidden", "moe/w_down": "hidden", "moe/w_router": "output"},
}


def _rows(cfg):
    return {r["path"]: r for r in parametrization.rules_table(model.param_rules(cfg))}


def _find(rows, suffix):
    hits = [r for p, r in rows.items() if p == suffix or p.endswith("/" + suffix)]
    assert hits, suffix
    return hits[0]


def _init(cfg, rng):
    return jax.jit(model.init_params, static_argnums=0)(cfg, rng)  # eager init dispatches op by op: slow


def _batch(vocab, b=2, t=8):
    tokens = jax.random.randint(jax.random.PRNGKey(1), (b, t + 1), 0, vocab)
    return {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "weights": jnp.ones((b, t)),
            "segment_ids": jnp.ones((b, t), jnp.int32), "positions": jnp.broadcast_to(jnp.arange(t), (b, t))}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_classes_and_multipliers_per_family(family):
    m = 4
    cfg = parametrization.at_width(FAMILIES[family], m * BASE)
    rows = _rows(cfg)
    for suffix, kind in EXPECTED[family].items():
        row = _find(rows, suffix)
        assert row["kind"] == kind, (suffix, row)
        expected = {"vector": (1, 1), "input": (1, 1), "embedding": (1, m**-0.5), "hidden": (1, 1 / m),
                    "output": (m**-0.5, 1 / m), "readout": (1, 1)}[kind]
        assert (row["init_mult"], row["lr_mult"]) == pytest.approx(expected), (suffix, row)
    assert {r["kind"] for r in rows.values()} <= set(parametrization.KINDS)
    # at the base width every multiplier is exactly 1
    assert all(r["init_mult"] == r["lr_mult"] == 1.0 for r in _rows(FAMILIES[family]).values())


def test_forward_multipliers():
    cfg = parametrization.at_width(FAMILIES["transformer"], 4 * BASE)
    assert parametrization.output_multiplier(cfg) == pytest.approx(1 / 4)
    assert parametrization.output_multiplier(dataclasses.replace(cfg, tie_embeddings=True)) == pytest.approx(1 / 2)
    d0, d = BASE // 2, 4 * BASE // 2  # head dims at the base width and here
    assert MIXERS["A"].build(cfg).scale == pytest.approx(1 / (d0**0.5) * d0 / d)
    assert MIXERS["L"].build(cfg).scale == pytest.approx(1 / (d0**0.5) * d0 / d)
    mla = parametrization.at_width(FAMILIES["mla"], 4 * BASE)
    assert MIXERS["M"].build(mla).scale == pytest.approx((8 + 4) ** -0.5 * (8 + 4) / (32 + 4))
    sp = dataclasses.replace(cfg, parametrization="sp")
    assert parametrization.output_multiplier(sp) is None and MIXERS["A"].build(sp).scale is None
    assert MIXERS["M"].build(dataclasses.replace(mla, parametrization="sp")).scale == pytest.approx((32 + 4) ** -0.5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sp_init_is_fan_in_scaled(family):
    """The premise of the init column: SP's init std falls as fan_in^-1/2 exactly where μP's class says."""
    wide_cfg = parametrization.at_width(FAMILIES[family], 2 * BASE)
    rows = _rows(wide_cfg)
    sp = lambda c: _init(dataclasses.replace(c, parametrization="sp"), jax.random.PRNGKey(0))  # noqa: E731
    flat = lambda p: {"/".join(str(k.key) for k in path): np.asarray(v)  # noqa: E731
                      for path, v in jax.tree_util.tree_flatten_with_path(p)[0]}
    base, wide = flat(sp(FAMILIES[family])), flat(sp(wide_cfg))
    for path, row in rows.items():
        if row["kind"] in ("vector", "readout", "embedding") or base[path].size < 64:
            continue
        ratio = wide[path].std() / base[path].std()
        expected = 2**-0.5 if row["kind"] in ("hidden", "output") else 1.0
        assert ratio == pytest.approx(expected, rel=0.15), (path, row, ratio)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_mup_equals_sp_at_base_width(family):
    """Bitwise: init, logits and one AdamW step (weight decay on)."""
    cfg = FAMILIES[family]
    runs = [RunConfig(model=dataclasses.replace(cfg, parametrization=p), optimizer=OptimizerConfig(weight_decay=0.1))
            for p in ("sp", "mup")]
    batch = _batch(cfg.vocab_size)
    outs = []
    for run in runs:
        state = jax.jit(train.init_state, static_argnums=0)(run)
        logits = model.forward(run.model, state["params"], batch["tokens"])
        new, _ = jax.jit(train.make_train_step(run))(state, batch, jnp.float32(1e-2), jnp.float32(0.1))
        outs.append((state["params"], logits, new["params"]))
    for a, b in zip(jax.tree.leaves(outs[0]), jax.tree.leaves(outs[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mup_init_and_updates_are_sp_times_multipliers():
    cfg = parametrization.at_width(FAMILIES["moe"], 4 * BASE)
    sp_cfg = dataclasses.replace(cfg, parametrization="sp")
    rules = model.param_rules(cfg)
    rng = jax.random.PRNGKey(3)
    mup_params, sp_params = _init(cfg, rng), _init(sp_cfg, rng)
    is_rule = lambda x: isinstance(x, parametrization.ParamRule)  # noqa: E731
    for p, s, r in zip(jax.tree.leaves(mup_params), jax.tree.leaves(sp_params), jax.tree.leaves(rules, is_leaf=is_rule)):
        np.testing.assert_allclose(np.asarray(p), np.asarray(s) * r.init_mult, rtol=1e-6)
    opt = OptimizerConfig()
    tx_mup, tx_sp = train.make_optimizer(opt, sp_params, cfg), train.make_optimizer(opt, sp_params, sp_cfg)
    state_mup, state_sp = tx_mup.init(sp_params), tx_sp.init(sp_params)
    assert jax.tree.structure(state_mup) == jax.tree.structure(state_sp)  # checkpoints / shardings unchanged
    grads = jax.tree.map(lambda p: jnp.cos(p * 7.0), sp_params)
    u_mup, _ = jax.jit(tx_mup.update)(grads, state_mup, sp_params)
    u_sp, _ = jax.jit(tx_sp.update)(grads, state_sp, sp_params)
    lr_mults = {r.lr_mult for r in jax.tree.leaves(rules, is_leaf=is_rule)}
    assert lr_mults == {1.0, 0.5, 0.25}
    for a, b, r in zip(jax.tree.leaves(u_mup), jax.tree.leaves(u_sp), jax.tree.leaves(rules, is_leaf=is_rule)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b) * r.lr_mult, rtol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="parametrization"):
        ModelConfig(parametrization="ntk")
    with pytest.raises(ValueError, match="base_width=None"):
        ModelConfig(parametrization="mup")
    with pytest.raises(ValueError, match="base_width"):
        ModelConfig(parametrization="mup", base_width=0)
    with pytest.raises(ValueError, match=r"d_ff=90: not divisible"):
        ModelConfig(d_model=64, d_ff=90, parametrization="mup", base_width=16)
    assert ModelConfig(base_width=64).parametrization == "sp"  # base_width alone changes nothing
    wide = parametrization.at_width(FAMILIES["mla"], 3 * BASE)
    assert (wide.d_model, wide.mla_kv_lora_rank, wide.mla_qk_rope_dim) == (48, 48, 4)
