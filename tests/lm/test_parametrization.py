"""μP (lm/model/parametrization.py): classes and multipliers per family, SP untouched, μP = SP at the base width."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from layers.mla import MLAConfig
from layers.moe import MoEConfig
from lm.model import mup_options, network as model, parametrization
from lm.train import step, solo as train
from lm.model.config import ModelConfig, OptimizerConfig, RunConfig, TrainConfig
from lm.model.families import MIXERS
from lm.data.packing import random_batch

BASE = 16
_COMMON = dict(d_model=BASE, num_layers=1, vocab_size=40, num_heads=2, parametrization="mup", base_width=BASE)
FAMILIES = {
    "transformer": ModelConfig(pattern="A", tie_embeddings=False, **_COMMON),
    "griffin": ModelConfig(pattern="R", **_COMMON),
    "gla": ModelConfig(pattern="L", **_COMMON),
    "mla": ModelConfig(pattern="M", families={"mla": MLAConfig(q_lora_rank=16, kv_lora_rank=16, qk_nope_dim=8, qk_rope_dim=4,
                                                   v_head_dim=8)}, **_COMMON),
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


def _batch(vocab, b=2, t=8):
    return random_batch(b, t, vocab, seed=1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_classes_and_multipliers_per_family(family):
    m = 4
    cfg = parametrization.at_width(FAMILIES[family], m * BASE)
    rows = _rows(cfg)
    for suffix, kind in EXPECTED[family].items():
        row = _find(rows, suffix)
        assert row["kind"] == kind, (suffix, row)
        # the untied readout starts at 0; a tied embedding has the tied head's default base-width constants
        c, k = (mup_options.TIED_EMBEDDING_INIT, mup_options.TIED_EMBEDDING_LR) if cfg.tie_embeddings else (1.0, 1.0)
        expected = {"vector": (1, 1), "input": (1, 1), "embedding": (c, k * m**-0.5), "hidden": (1, 1 / m),
                    "output": (m**-0.5, 1 / m), "readout": (0, 1)}[kind]
        assert (row["init_mult"], row["lr_mult"]) == pytest.approx(expected), (suffix, row)
    assert {r["kind"] for r in rows.values()} <= set(parametrization.KINDS)
    tuned = _find(_rows(dataclasses.replace(cfg, mup_embedding_init=0.25, mup_embedding_lr=4.0)), "embed")
    assert (tuned["init_mult"], tuned["lr_mult"]) == pytest.approx((0.25, 4.0 * m**-0.5))  # constants x width's
    former = dataclasses.replace(cfg, **mup_options.SP_OPTIONS)  # random readout, embedding constants 1
    assert _find(_rows(former), "embed" if cfg.tie_embeddings else "head")["init_mult"] == pytest.approx(
        1 if cfg.tie_embeddings else m**0.5)
    # at the base width every multiplier is exactly 1 but the defaults' zero readout or embedding constants
    base = FAMILIES[family]
    changed = {"embed"} if base.tie_embeddings else {"head"}
    assert all(r["init_mult"] == r["lr_mult"] == 1.0 for p, r in _rows(base).items() if p not in changed)
    neutral = base.tie_embeddings and (mup_options.TIED_EMBEDDING_INIT, mup_options.TIED_EMBEDDING_LR) == (1.0, 1.0)
    assert parametrization.equals_sp(base, model.param_rules(base)) == neutral
    random_base = dataclasses.replace(base, **mup_options.SP_OPTIONS)
    assert all(r["init_mult"] == r["lr_mult"] == 1.0 for r in _rows(random_base).values())
    assert parametrization.equals_sp(random_base, model.param_rules(random_base))
    assert not parametrization.equals_sp(cfg, model.param_rules(cfg))


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


@pytest.mark.parametrize("family", ["transformer", "gla", "mla"])
def test_traced_multipliers_equal_the_static_program(family):
    """SP's config with μP's ``Multipliers`` as inputs (one program for both) gives μP's logits to round-off,
    training forward and a prefill on an empty cache (MLA: its absorbed path); SP's multipliers, SP's bitwise."""
    mup = dataclasses.replace(parametrization.at_width(FAMILIES[family], 4 * BASE), mup_zero_readout=False)
    sp = parametrization.sp_config(mup)
    batch = _batch(mup.vocab_size)
    tokens, seg, pos = batch["tokens"], batch["segment_ids"], batch["positions"]
    cache = model.init_cache(mup, tokens.shape[0], tokens.shape[1])

    def logits(cfg, params, mults=None):
        lm = model.LanguageModel(cfg, mults)
        return [lm.apply({"params": params}, tokens, seg, pos, c)[0] for c in (None, cache)]

    def both(rng, mults):
        params = model.init_params(mup, rng)
        return logits(mup, params), logits(sp, params, mults), logits(sp, params), logits(sp, params, sp_mults)

    sp_mults = model.multipliers(sp)
    assert all(float(x) == 1.0 for x in jax.tree.leaves(sp_mults))
    mults = model.multipliers(mup)
    assert float(mults.output) == pytest.approx(1 / 2 if mup.tie_embeddings else 1 / 4)
    assert set(mults.score) == {MIXERS[mup.pattern].name}
    static, traced, sp_static, sp_traced = jax.jit(both)(jax.random.PRNGKey(0), mults)
    for want, got in zip(static, traced, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert not np.allclose(np.asarray(static[0]), np.asarray(sp_static[0]), rtol=1e-3)  # μP is not SP here
    for want, got in zip(sp_static, sp_traced, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def _flat(params) -> dict:
    return {"/".join(str(k.key) for k in path): np.asarray(v) for path, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sp_init_is_fan_in_scaled(family):
    """The premise of the init column: SP's init std falls as fan_in^-1/2 exactly where μP's class says."""
    wide_cfg = parametrization.at_width(FAMILIES[family], 2 * BASE)
    rows = _rows(wide_cfg)
    sp = [dataclasses.replace(c, parametrization="sp") for c in (FAMILIES[family], wide_cfg)]
    base, wide = map(_flat, jax.jit(lambda r: [model.init_params(c, r) for c in sp])(jax.random.PRNGKey(0)))
    for path, row in rows.items():
        if row["kind"] in ("vector", "readout", "embedding") or base[path].size < 64:
            continue
        ratio = wide[path].std() / base[path].std()
        expected = 2**-0.5 if row["kind"] in ("hidden", "output") else 1.0
        assert ratio == pytest.approx(expected, rel=0.15), (path, row, ratio)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_mup_equals_sp_at_base_width(family):
    """Bitwise: init and logits of every family at the base width (one program per family), with a random readout
    and the embedding constants 1 (``SP_OPTIONS``)."""
    cfgs = [dataclasses.replace(FAMILIES[family], parametrization=p, **mup_options.SP_OPTIONS)
            for p in ("sp", "mup")]
    tokens = _batch(cfgs[0].vocab_size)["tokens"]

    def both(rng):
        out = []
        for c in cfgs:
            params = model.init_params(c, rng)
            out.append((params, model.forward(c, params, tokens)))
        return out

    sp, mup = jax.jit(both)(jax.random.PRNGKey(0))
    for a, b in zip(jax.tree.leaves(sp), jax.tree.leaves(mup), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mup_step_equals_sp_at_base_width():
    """Bitwise: one AdamW step (weight decay on) of the transformer at the base width."""
    batch = _batch(BASE)
    news = []
    for p in ("sp", "mup"):
        run = RunConfig(model=dataclasses.replace(FAMILIES["transformer"], parametrization=p, vocab_size=BASE,
                                                  mup_zero_readout=False),
                        optimizer=OptimizerConfig(weight_decay=0.1))
        state = jax.jit(step.init_state, static_argnums=0)(run)
        news.append(jax.jit(step.make_train_step(run))(state, batch, jnp.float32(1e-2), jnp.float32(0.1))[0])
    for a, b in zip(jax.tree.leaves(news[0]), jax.tree.leaves(news[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mup_init_and_updates_are_sp_times_multipliers():
    tuned = dataclasses.replace(FAMILIES["moe"], mup_embedding_init=0.25, mup_embedding_lr=4.0)  # tied embedding
    cfg = parametrization.at_width(tuned, 4 * BASE)
    sp_cfg = dataclasses.replace(cfg, parametrization="sp", mup_embedding_init=None, mup_embedding_lr=None)
    rules = model.param_rules(cfg)
    opt = OptimizerConfig()

    def both(rng):
        mup_params, sp_params = model.init_params(cfg, rng), model.init_params(sp_cfg, rng)
        grads = jax.tree.map(lambda p: jnp.cos(p * 7.0), sp_params)
        updates, states = [], []
        for c in (cfg, sp_cfg):
            tx = step.make_optimizer(opt, model=c)
            state = tx.init(sp_params)
            updates.append(tx.update(grads, state, sp_params)[0])
            states.append(state)
        return mup_params, sp_params, updates, states

    mup_params, sp_params, (u_mup, u_sp), (s_mup, s_sp) = jax.jit(both)(jax.random.PRNGKey(3))
    assert jax.tree.structure(s_mup) == jax.tree.structure(s_sp)  # checkpoints / shardings unchanged
    is_rule = lambda x: isinstance(x, parametrization.ParamRule)
    leaves = jax.tree.leaves(rules, is_leaf=is_rule)
    assert {r.lr_mult for r in leaves} == {1.0, 0.25, 4.0 * 0.5}  # the tied embedding: 4 m^-1/2
    assert {r.init_mult for r in leaves} == {1.0, 0.5, 0.25}
    for p, s, a, b, r in zip(*map(jax.tree.leaves, (mup_params, sp_params, u_mup, u_sp)), leaves, strict=True):
        np.testing.assert_allclose(np.asarray(p), np.asarray(s) * r.init_mult, rtol=1e-6)
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
    # fields of families the model does not use are not scaled (MoE d_ff 256 * 30/100 is not an integer)
    assert ModelConfig(d_model=100, num_heads=5, d_ff=400, parametrization="mup", base_width=30).moe.d_ff == 256
    wide = parametrization.at_width(FAMILIES["mla"], 3 * BASE)
    assert (wide.d_model, wide.families["mla"].kv_lora_rank, wide.families["mla"].qk_rope_dim) == (48, 48, 4)


def test_zero_readout_and_query_options():
    """Tensor Programs V's zero-initialised readout / query projections: exactly zero, everything else unchanged."""
    for family, queries in (("transformer", ("wq",)), ("gla", ("w_q",)), ("mla", ("w_uq",))):
        cfg = parametrization.at_width(dataclasses.replace(FAMILIES[family], mup_zero_readout=False), 2 * BASE)
        zero = dataclasses.replace(cfg, mup_zero_query=True, mup_zero_readout=not cfg.tie_embeddings)
        plain, zeroed = (_flat(model.init_params(c, jax.random.PRNGKey(0))) for c in (cfg, zero))
        zeroed_names = {p for p in plain if p.split("/")[-1] in queries or (p == "head" and zero.mup_zero_readout)}
        assert len(zeroed_names) == 1 + (family == "transformer"), zeroed_names
        for path in plain:
            if path in zeroed_names:
                assert plain[path].std() > 0 and not zeroed[path].any(), path
            else:
                np.testing.assert_array_equal(plain[path], zeroed[path], err_msg=path)
        # the lr multipliers do not change
        assert [r["lr_mult"] for r in _rows(cfg).values()] == [r["lr_mult"] for r in _rows(zero).values()]
    with pytest.raises(ValueError, match="mup_zero_readout=True: needs an untied head"):
        dataclasses.replace(FAMILIES["gla"], mup_zero_readout=True)
    for name in ("mup_zero_readout", "mup_zero_query"):
        with pytest.raises(ValueError, match=f"{name}=True: only with parametrization='mup'"):
            ModelConfig(tie_embeddings=False, **{name: True})
        with pytest.raises(ValueError, match=f"{name}=.yes.: allowed values"):
            dataclasses.replace(FAMILIES["transformer"], **{name: "yes"})


def test_zero_readout_is_the_default_of_an_untied_mup_head_and_old_configs_keep_theirs():
    """``mup_zero_readout=None``: on for μP with an untied head only; a saved config without the field
    (or with False) rebuilds its random readout; False where it changes nothing is stored as None."""
    untied = parametrization.at_width(FAMILIES["transformer"], 2 * BASE)
    assert untied.mup_zero_readout is None and parametrization.zero_readout(untied)
    assert not parametrization.zero_readout(FAMILIES["gla"])  # tied
    assert not parametrization.zero_readout(dataclasses.replace(untied, parametrization="sp"))
    assert ModelConfig(mup_zero_readout=False) == ModelConfig()  # SP
    assert dataclasses.replace(FAMILIES["gla"], mup_zero_readout=False) == FAMILIES["gla"]  # tied
    assert dataclasses.replace(untied, mup_zero_readout=False).mup_zero_readout is False
    saved = RunConfig(model=untied).to_dict()
    del saved["model"]["mup_zero_readout"]  # a config.json written before the field existed
    old = RunConfig.from_dict(saved).model
    assert old.mup_zero_readout is False
    assert RunConfig.from_dict(RunConfig(model=untied).to_dict()).model == untied
    heads = [model.init_params(c, jax.random.PRNGKey(0))["head"] for c in (old, untied)]
    assert np.asarray(heads[0]).std() > 0 and not np.asarray(heads[1]).any()


def test_tied_embedding_constants_are_the_default_of_a_tied_mup_head_and_old_configs_keep_theirs():
    """``mup_embedding_init`` / ``mup_embedding_lr`` (None: the tied head's constants for μP with a tied head, 1
    otherwise), one rule on plain values for every μP option; validated; a saved config without them rebuilds
    constants 1."""
    tied, untied = FAMILIES["gla"], FAMILIES["transformer"]
    c, k = mup_options.TIED_EMBEDDING_INIT, mup_options.TIED_EMBEDDING_LR
    defaults = {("sp", True): (False, 1.0, 1.0), ("sp", False): (False, 1.0, 1.0),
                ("mup", True): (False, c, k), ("mup", False): (True, 1.0, 1.0)}
    for (par, tie), expected in defaults.items():
        assert tuple(mup_options.resolve(n, None, par, tie) for n in mup_options.MUP_OPTIONS) == expected
    assert parametrization.embedding_multipliers(tied) == (c, k)
    assert parametrization.embedding_multipliers(dataclasses.replace(tied, mup_embedding_init=0.25,
                                                                     mup_embedding_lr=4)) == (0.25, 4.0)
    assert parametrization.embedding_multipliers(untied) == (1.0, 1.0)
    assert parametrization.embedding_multipliers(dataclasses.replace(tied, parametrization="sp")) == (1.0, 1.0)
    assert parametrization.embedding_multipliers(dataclasses.replace(untied, mup_embedding_init=0.5)) == (0.5, 1.0)
    # explicit values are kept as floats; one equal to the default is stored as None (equal models, equal configs)
    assert dataclasses.replace(tied, mup_embedding_lr=2).mup_embedding_lr == 2.0
    assert dataclasses.replace(tied, mup_embedding_init=c, mup_embedding_lr=k) == tied
    assert dataclasses.replace(untied, mup_embedding_lr=1.0) == untied
    assert ModelConfig(mup_embedding_init=1) == ModelConfig()
    saved = RunConfig(model=tied).to_dict()
    for name in ("mup_embedding_init", "mup_embedding_lr"):
        del saved["model"][name]  # a config.json written before the fields existed
    old = RunConfig.from_dict(saved).model
    assert parametrization.embedding_multipliers(old) == (1.0, 1.0)
    assert (old.mup_embedding_init, old.mup_embedding_lr) == ((1.0, 1.0) if (c, k) != (1.0, 1.0) else (None, None))
    assert RunConfig.from_dict(RunConfig(model=tied).to_dict()).model == tied
    for name in ("mup_embedding_init", "mup_embedding_lr"):
        for bad in (0, -1.0, float("nan"), "big", True):
            with pytest.raises(ValueError, match=f"ModelConfig.{name}=.*: allowed values are None"):
                dataclasses.replace(tied, **{name: bad})
        with pytest.raises(ValueError, match=f"{name}=2: only with parametrization='mup'"):
            ModelConfig(**{name: 2})


class _Interrupt(Exception):
    pass


def test_mup_run_on_a_mesh_resumes_from_its_checkpoint(tmp_path):
    """μP through lm.train.solo.train: a sharded (one-device mesh) run killed after its checkpoint resumes to the
    parameters of an uninterrupted single-device run."""
    from lm.data.config import DataConfig
    from lm.train.sharding import make_mesh

    cfg = parametrization.at_width(dataclasses.replace(FAMILIES["moe"], vocab_size=259), 2 * BASE)
    run = RunConfig(model=cfg, data=DataConfig(source="synthetic", seq_len=16, batch_size=2, synthetic_doc_len=50),
                    train=TrainConfig(steps=4, eval_every=4, eval_batches=1, log_every=1, checkpoint_every=2,
                                      progress=False), name="mup")
    train.train(run, tmp_path / "full")

    def crash_after_3(done, total, metrics):
        if done == 3:
            raise _Interrupt

    mesh = make_mesh()
    with pytest.raises(_Interrupt):
        train.train(run, tmp_path / "resumed", progress=crash_after_3, mesh=mesh)
    assert train.train(run, tmp_path / "resumed", mesh=mesh)["resumed_from"] == 2
    full, resumed = train.load_params(tmp_path / "full")[1], train.load_params(tmp_path / "resumed")[1]
    # the mesh program fuses differently: float32 rounding, amplified where Adam normalises a near-zero
    # gradient, stays far below one step's update (peak lr 3e-3)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)
