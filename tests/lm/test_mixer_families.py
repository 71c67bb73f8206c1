"""Mixer families are specs: one installed outside ``lm/`` (the toy family of ``tests/lm/toy_mixer.py``,
an entry point of a test-only distribution: ``tests/lm/conftest.py``) builds, counts, decodes and trains."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments import train as train_cli
from lm.model import network as model
from lm.train import records
from lm.model.config import ModelConfig
from lm.model.families import MIXERS, register_mixer
from lm.model.counting import param_count, train_flops_per_token

TINY = ["--model.d_model", "16", "--model.num_layers", "2", "--model.d_ff", "32", "--model.num_heads", "2",
        "--data.source", "synthetic", "--data.seq_len", "16", "--data.batch_size", "2",
        "--data.synthetic_doc_len", "24", "--train.steps", "2", "--train.eval_every", "2",
        "--train.eval_batches", "1", "--train.progress", "false", "--sample-tokens", "0"]


def test_every_family_is_one_spec_with_its_counts(toy_family):
    assert set("AWRLMT") <= set(MIXERS)  # the built-in families and the installed one
    for letter, spec in MIXERS.items():
        cfg = ModelConfig(d_model=32, num_layers=1, pattern=letter, num_heads=2, d_ff=48)
        # the shapes init_params returns (traced, not compiled or run)
        leaves = jax.tree.leaves(jax.eval_shape(lambda: model.init_params(cfg, jax.random.PRNGKey(0))))
        assert sum(x.size for x in leaves) == param_count(cfg)["total"], letter
        assert spec.flops(cfg, 16, "causal") > 0 and spec.cache_bytes(cfg, 16, np.float32) > 0


def test_an_installed_family_with_settings_trains_through_experiments_train(tmp_path, toy_family):
    result = train_cli.main(["--out", str(tmp_path), "--name", "toy", "--model.pattern", "TA",
                             "--model.families.toy.width", "12", "--model.families.toy.gate", "true", *TINY])
    assert result["steps"] == 2 and np.isfinite(result["final_val_loss"])
    run = records.read_config(tmp_path / "toy")
    assert run.model.pattern == "TA" and (run.model.families["toy"].width, run.model.families["toy"].gate) == (12, True)
    attention = dataclasses.replace(run.model, pattern="A")
    # T + A = 2 A - A's mixer + T's mixer; T's forward: W_a, W_b, W_g (16 x 12) and W_o (12 x 16), 2 FLOPs each
    toy = 3 * (2 * 4 * 16 * 12 - MIXERS["A"].flops(run.model, 16, "causal"))
    assert result["flops"] == pytest.approx(result["tokens"] * (train_flops_per_token(attention, 16) + toy))
    assert param_count(run.model)["total"] == param_count(attention)["total"] - MIXERS["A"].params(run.model) + 768


@pytest.mark.parametrize("gate", [False, True])
def test_the_new_family_decodes_like_its_forward(toy_family, gate):
    toy = MIXERS.family("toy").config(width=6, gate=gate)
    cfg = ModelConfig(d_model=16, num_layers=2, pattern="TA", num_heads=2, d_ff=32, vocab_size=40,
                      families={"toy": toy})
    # jitted: an eager forward / decode step compiles each of its ops on its own
    params = jax.jit(lambda r: model.init_params(cfg, r))(jax.random.PRNGKey(1))
    tokens = jax.random.randint(jax.random.PRNGKey(2), (1, 7), 0, 40)
    seg, pos = np.ones((1, 7), np.int32), np.arange(7, dtype=np.int32)[None]
    full = jax.jit(lambda p, x: model.forward(cfg, p, x, seg, pos))(params, tokens)
    cache = model.init_cache(cfg, 1, 8)
    decode_step = jax.jit(lambda p, c, x, s, q: model.decode_step(cfg, p, c, x, s, q))
    logits, cache = decode_step(params, cache, tokens[:, :4], seg[:, :4], pos[:, :4])
    steps = [logits]
    for i in range(4, 7):
        logits, cache = decode_step(params, cache, tokens[:, i:i + 1], seg[:, i:i + 1], pos[:, i:i + 1])
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)
    assert model.cache_bytes(cfg, 8) == 16 * 4 + MIXERS["A"].cache_bytes(cfg, 8, np.float32)


def test_register_mixer_refuses_a_taken_or_long_letter():
    with pytest.raises(ValueError, match="must be one new character"):
        register_mixer("A", MIXERS["W"])
    with pytest.raises(ValueError, match="must be one new character"):
        register_mixer("TT", MIXERS["W"])
    with pytest.raises(ValueError, match="must be a MixerSpec"):
        register_mixer("Q", object())


@pytest.mark.parametrize("field, value, message", [
    ("rnn", dict(width=0), r"RecurrentConfig.width=0: must be None or an int >= 1"),
    ("rnn", dict(impl="fast"), r"RecurrentConfig.impl='fast': allowed values are"),
    ("la", dict(variant="mamba"), r"LinearAttentionConfig.variant='mamba': allowed values are \('plain', 'retnet'"),
    ("la", dict(chunk_size=0), r"LinearAttentionConfig.chunk_size=0: must be an int >= 1"),
    ("mla", dict(decode_path="fast"), r"MLAConfig.decode_path='fast': allowed values are \('naive', 'absorbed'\)"),
    ("mla", dict(qk_rope_dim=3), r"MLAConfig.qk_rope_dim=3: must be even"),
])
def test_family_configs_name_the_bad_field(field, value, message):
    kind = MIXERS.family(field).config
    with pytest.raises(ValueError, match=message):
        kind(**value)


def test_recurrent_width_must_split_into_heads():
    from layers.recurrent_block import RecurrentConfig

    with pytest.raises(ValueError, match=r"ModelConfig.families\['rnn'\].width=30 is not divisible by rnn.heads=4"):
        ModelConfig(d_model=32, num_heads=4, pattern="R", families={"rnn": RecurrentConfig(width=30)})
    ModelConfig(d_model=32, num_heads=4, pattern="A", families={"rnn": RecurrentConfig(width=30)})  # no "R" block: not checked
