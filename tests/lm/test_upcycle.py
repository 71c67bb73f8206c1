"""Sparse upcycling: the upcycled MoE reproduces the dense model at step 0, and trains on."""

import dataclasses
import functools

import jax
import numpy as np
import pytest

from layers.moe import MoEConfig
from lm.model import network as model
from lm.train import solo as train
from lm.train.records import read_metrics
from lm.model.config import ModelConfig, RunConfig, TrainConfig
from lm.data.config import DataConfig
from lm.model.upcycle import upcycle_params, upcycle_run

DENSE = ModelConfig(d_model=32, num_layers=2, num_heads=2, d_ff=48)
MOE = dataclasses.replace(DENSE, moe_every=1, moe=MoEConfig(num_experts=4, top_k=2, d_ff=48, activation="geglu"))


@pytest.mark.parametrize("router", ["zero", "fresh"])
def test_upcycled_model_reproduces_dense_outputs(router):
    # jitted: op by op, the init and the two forwards compile every op on its own (13.7 s of CPU vs ~3)
    dense_params = jax.jit(lambda r: model.init_params(DENSE, r))(jax.random.PRNGKey(0))
    moe_params = upcycle_params(DENSE, dense_params, MOE, jax.random.PRNGKey(1), router=router)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 9), 0, DENSE.vocab_size)
    forward = {cfg: jax.jit(functools.partial(model.forward, cfg)) for cfg in (DENSE, MOE)}
    np.testing.assert_allclose(
        np.asarray(forward[MOE](moe_params, tokens)), np.asarray(forward[DENSE](dense_params, tokens)),
        rtol=1e-5, atol=1e-5,
    )


def test_incompatible_configs_are_refused():
    with pytest.raises(ValueError, match="d_ff=16"):
        upcycle_params(DENSE, {}, dataclasses.replace(MOE, moe=MoEConfig(d_ff=16, activation="geglu")),
                       jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="differs.*d_model"):
        upcycle_params(DENSE, {}, dataclasses.replace(MOE, d_model=64), jax.random.PRNGKey(0))


def test_training_continues_from_the_upcycled_checkpoint(tmp_path):
    data = DataConfig(source="synthetic", seq_len=32, batch_size=4, synthetic_doc_len=64)
    tc = TrainConfig(steps=2, eval_every=2, eval_batches=1, log_every=1, checkpoint_every=2, progress=False)
    dense_run = RunConfig(model=DENSE, data=data, train=tc, name="dense")
    train.train(dense_run, tmp_path / "dense")
    moe_run = dataclasses.replace(dense_run, model=MOE, name="moe")
    upcycle_run(tmp_path / "dense", moe_run, tmp_path / "moe")
    _, params0 = train.load_params(tmp_path / "moe", 0)
    _, dense_params = train.load_params(tmp_path / "dense")
    np.testing.assert_array_equal(np.asarray(params0["block_0"]["moe"]["w_up"][3]),
                                  np.asarray(dense_params["block_0"]["mlp"]["w_up"]))
    result = train.train(moe_run, tmp_path / "moe")
    assert result["resumed_from"] == 0 and np.isfinite(result["final_val_loss"])
    records = read_metrics(tmp_path / "moe")
    assert "moe" in records[-1] and len(records[-1]["moe"]["layers"]["0"]["tokens_per_expert"]) == 4
