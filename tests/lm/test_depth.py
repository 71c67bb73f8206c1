"""Depth: the layer scan (ModelConfig.scan_layers) and rematerialisation (ModelConfig.remat).

The scan runs the same blocks as the per-block model: with the per-block parameters
stacked (``lm.model.network.stack_layers``) the logits and gradients agree to float32 rounding
(highest matmul precision; the scan only changes the order XLA schedules the same ops,
observed gaps ~1e-6 on logits of size ~1, so atol 1e-5). Remat recomputes the same forward
in the backward pass: its gradients agree with no remat at the same tolerance.

Each model's parameters, its reference loss and gradients and its forward program are built
once for the module (:func:`_init`, :func:`_reference`, :func:`_forward`): the scan, remat and
checkpoint tests of one model read the same ones.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm.model import network as model
from lm.train import step, solo as train
from lm.model.config import ModelConfig, RunConfig, TrainConfig
from lm.data.config import DataConfig

TINY = ModelConfig(d_model=32, num_layers=5, num_heads=4, d_ff=64)
# RRW repeated over 4 blocks: one scanned period of 3 and the remainder block 3 unscanned;
# MoE every 2nd block makes the period lcm(3, 2) = 6 for 7 blocks.
GRIFFIN = ModelConfig(d_model=32, num_layers=4, pattern="RRW", num_heads=4, num_kv_heads=1, window=8, d_ff=64)
TOKENS = jax.random.randint(jax.random.PRNGKey(1), (2, 16), 0, 256)


@pytest.fixture(autouse=True)
def _highest_precision():
    with jax.default_matmul_precision("highest"):
        yield


def _loss_and_grads(cfg, params):
    fn = jax.jit(jax.value_and_grad(lambda p: model.forward(cfg, p, TOKENS).astype(jnp.float32).std()))
    return fn(params)


@functools.cache
def _init(cfg):
    """``init_params`` of ``cfg`` at PRNGKey(0), jitted (eager init is op by op)."""
    return jax.jit(lambda r: model.init_params(cfg, r))(jax.random.PRNGKey(0))


@functools.cache
def _reference(cfg):
    """Loss and gradients of ``cfg`` at :func:`_init`, the side every comparison shares."""
    return _loss_and_grads(cfg, _init(cfg))


@functools.cache
def _forward(cfg):
    """The jitted forward of ``cfg``: logits of TOKENS for any parameters of its layout."""
    return jax.jit(lambda p: model.forward(cfg, p, TOKENS))


@pytest.fixture(scope="module", autouse=True)
def _one_process():
    """The caches above live in one process: under xdist this module is one unit (tests/conftest.py)."""
    yield
    for cache in (_init, _reference, _forward):
        cache.cache_clear()


def test_scan_shape_follows_the_pattern_and_moe_period():
    assert model.scan_shape(TINY) == (1, 5)
    assert model.scan_shape(GRIFFIN) == (3, 1)
    assert model.scan_shape(dataclasses.replace(GRIFFIN, num_layers=7, moe_every=2)) == (6, 1)


@pytest.mark.parametrize("cfg", [TINY, GRIFFIN], ids=["transformer", "griffin"])
def test_scanned_model_equals_per_block_model(cfg):
    scanned = dataclasses.replace(cfg, scan_layers=True)
    params = _init(cfg)
    stacked = model.stack_layers(scanned, params)
    # the stacked tree is exactly the scanned model's parameter structure and shapes
    want = jax.eval_shape(lambda: model.init_params(scanned, jax.random.PRNGKey(0)))
    assert jax.tree.structure(stacked) == jax.tree.structure(want)
    assert [x.shape for x in jax.tree.leaves(stacked)] == [x.shape for x in jax.tree.leaves(want)]
    loss_a, grads_a = _reference(cfg)
    loss_b, grads_b = _loss_and_grads(scanned, stacked)
    np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(model.stack_layers(scanned, grads_a)), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
    # the conversion is lossless both ways
    back = model.unstack_layers(scanned, stacked)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_weight_decay_mask_ignores_the_layer_axis():
    scanned = dataclasses.replace(TINY, scan_layers=True)
    opt = RunConfig().optimizer
    params = jax.eval_shape(lambda: model.init_params(TINY, jax.random.PRNGKey(0)))
    mask = step.weight_decay_mask(params, opt)
    stacked_mask = step.weight_decay_mask(jax.eval_shape(lambda p: model.stack_layers(scanned, p), params), opt)
    want = model.stack_layers(scanned, mask)  # the per-block decisions, stacked
    assert jax.tree.structure(want) == jax.tree.structure(stacked_mask)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(stacked_mask)):
        assert np.all(np.asarray(a) == b)
    assert not stacked_mask["blocks"]["block_0"]["norm_mixer"]["scale"] and stacked_mask["blocks"]["block_0"]["mlp"]["w_up"]


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_keeps_loss_and_gradients(remat):
    params = _init(GRIFFIN)
    loss_a, grads_a = _reference(GRIFFIN)
    loss_b, grads_b = _loss_and_grads(dataclasses.replace(GRIFFIN, remat=remat), params)
    assert float(loss_b) == pytest.approx(float(loss_a), rel=1e-6)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)


def test_remat_and_scan_are_validated():
    with pytest.raises(ValueError, match=r"ModelConfig.remat='some'.*'dots_saveable'"):
        ModelConfig(remat="some")
    with pytest.raises(ValueError, match="ModelConfig.scan_layers"):
        ModelConfig(scan_layers="yes")
    with pytest.raises(ValueError, match=r"differ in \['d_model'"):
        model.convert_layers({}, TINY, dataclasses.replace(TINY, d_model=64, scan_layers=True))


@pytest.mark.parametrize("saved_scanned", [False, True], ids=["per_block_to_scanned", "scanned_to_per_block"])
def test_a_checkpoint_loads_in_either_layout(tmp_path, saved_scanned):
    saved = dataclasses.replace(GRIFFIN, scan_layers=saved_scanned)
    run = RunConfig(model=saved, data=DataConfig(source="synthetic", seq_len=16, batch_size=2, synthetic_doc_len=40),
                    train=TrainConfig(steps=2, eval_batches=1, log_every=1, progress=False), name="depth")
    train.train(run, tmp_path / "run")
    _, params = train.load_params(tmp_path / "run")
    other = dataclasses.replace(saved, scan_layers=not saved_scanned)
    run_other, converted = train.load_params(tmp_path / "run", model=other)
    assert run_other.model == other
    logits = _forward(saved)(params)
    np.testing.assert_allclose(np.asarray(_forward(other)(converted)), np.asarray(logits),
                               rtol=1e-5, atol=1e-5)
