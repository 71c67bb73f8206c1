"""Training runs: bitwise resume, NaN guard, checkpoint errors, WSD branches."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from lm.train import records, step, solo as train
from lm.train.checkpoint import Checkpointer, CheckpointError
from lm.model.config import ModelConfig, OptimizerConfig, RunConfig, ScheduleConfig, TrainConfig
from lm.data.config import DataConfig
from lm.data.packing import random_batch

RUN = RunConfig(
    model=ModelConfig(d_model=32, num_layers=2, num_heads=2, d_ff=64),
    data=DataConfig(source="synthetic", seq_len=32, batch_size=4, synthetic_doc_len=100),
    train=TrainConfig(steps=6, eval_every=3, eval_batches=1, log_every=1, checkpoint_every=3, progress=False),
    name="tiny",
)


class Interrupt(Exception):
    pass


def _params(run_dir):
    return train.load_params(run_dir)[1]


def test_interrupted_run_resumes_bitwise(tmp_path):
    full = train.train(RUN, tmp_path / "full")

    def crash_after_4(done, total, metrics):
        if done == 4:  # step 3 was checkpointed; step 4 is lost
            raise Interrupt

    with pytest.raises(Interrupt):
        train.train(RUN, tmp_path / "resumed", progress=crash_after_4)
    assert Checkpointer(tmp_path / "resumed").steps() == [3]
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "tokens": 6')  # a kill while appending leaves a partial last line
    resumed = train.train(RUN, tmp_path / "resumed")
    assert resumed["resumed_from"] == 3
    for a, b in zip(jax.tree.leaves(_params(tmp_path / "full")), jax.tree.leaves(_params(tmp_path / "resumed"))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed["final_val_loss"] == full["final_val_loss"]
    # the metrics log has one record per step, none duplicated by the resume, the partial line dropped
    steps = [r["step"] for r in records.read_metrics(tmp_path / "resumed")]
    assert steps == [r["step"] for r in records.read_metrics(tmp_path / "full")] == [1, 2, 3, 4, 5, 6]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    bad = dataclasses.replace(
        RUN,
        optimizer=OptimizerConfig(learning_rate=1e30, clip_norm=None, weight_decay=0.0),
        schedule=ScheduleConfig(kind="constant", warmup_steps=0),
        train=dataclasses.replace(RUN.train, checkpoint_every=1),
    )
    with pytest.raises(train.NonFiniteLossError, match=r"non-finite at step \d+.*last good checkpoint") as err:
        train.train(bad, tmp_path / "bad")
    steps = Checkpointer(tmp_path / "bad").steps()
    assert steps, "the checkpoints written before the failure are kept"
    # the one divergence record: result.json says "diverged" at the step the error names, no loss
    result = records.read_result(tmp_path / "bad")
    assert result["status"] == "diverged" and f"non-finite at step {result['diverged_at']} " in str(err.value)
    assert result["final_val_loss"] is None and result["diverged_at"] >= max(steps)


def test_checkpoint_errors_are_clear_and_delete_nothing(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        train.load_params(tmp_path / "missing") if False else Checkpointer(tmp_path / "missing", read_only=True)
    run_dir = tmp_path / "run"
    train.train(dataclasses.replace(RUN, train=dataclasses.replace(RUN.train, steps=3)), run_dir)
    step_dir = run_dir / "checkpoints" / "3"
    # partial: an item is missing
    shutil.move(step_dir / "data", tmp_path / "data_backup")
    with pytest.raises(CheckpointError, match="partial"):
        train.load_params(run_dir)
    assert step_dir.exists()
    shutil.move(tmp_path / "data_backup", step_dir / "data")
    # corrupted: array files overwritten with garbage
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and f.suffix != ".json":
            f.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupted"):
        train.load_params(run_dir)
    assert step_dir.exists() and any((step_dir / "state").rglob("*"))


def test_wsd_decay_branch_starts_from_a_stable_checkpoint(tmp_path):
    stable = dataclasses.replace(
        RUN,
        schedule=ScheduleConfig(kind="wsd", warmup_steps=1, decay_start=10**6),
        train=dataclasses.replace(RUN.train, steps=6, checkpoint_every=2, keep_checkpoints=None),
    )
    train.train(stable, tmp_path / "stable")
    branch = dataclasses.replace(
        stable,
        schedule=ScheduleConfig(kind="wsd", warmup_steps=1, decay_start=4, min_ratio=0.0),
        train=dataclasses.replace(stable.train, steps=6, init_from=(str(tmp_path / "stable"), 4)),
        name="branch",
    )
    result = train.train(branch, tmp_path / "branch")
    recs = records.read_metrics(tmp_path / "branch")
    assert [r["step"] for r in recs] == [5, 6]
    assert recs[-1]["lr"] == pytest.approx(0.0)
    assert result["steps"] == 6
    assert json.loads((tmp_path / "branch" / "config.json").read_text())["train"]["init_from"][1] == 4


def test_checkpoint_steps_save_exactly_there_and_at_the_end(tmp_path):
    """TrainConfig.checkpoint_steps: a WSD stable run saves at its branch points, not at every gcd of them."""
    run = dataclasses.replace(RUN, train=dataclasses.replace(RUN.train, steps=6, checkpoint_every=6,
                                                             checkpoint_steps=(1, 4), keep_checkpoints=None))
    train.train(run, tmp_path / "run")
    ckpt = Checkpointer(tmp_path / "run", max_to_keep=None, read_only=True)
    assert ckpt.steps() == [1, 4, 6]
    ckpt.close()
    for bad in ((4, 1), (0, 2), (2, 7), (2, 2), [1, 4]):
        with pytest.raises(ValueError, match="checkpoint_steps"):
            TrainConfig(steps=6, checkpoint_steps=bad)
    # read back from config.json (a JSON list) as the tuple it was
    assert RunConfig.from_dict(json.loads((tmp_path / "run" / "config.json").read_text())) == run


def test_train_step_update_equals_optax_adamw():
    """The step's p - lr * (adam + wd * p * mask) is optax.adamw with the same mask."""
    import jax.numpy as jnp
    import optax

    # eps large enough that Adam's first step g / (|g| + eps) is not dominated by the
    # rounding noise of near-zero gradients; decay large enough to be seen
    run = dataclasses.replace(RUN, optimizer=OptimizerConfig(eps=1e-4))
    state = step.init_state(run)
    b, t = 2, 16
    batch = random_batch(b, t, 256, seed=1)
    lr, wd = 1e-2, 1.0
    new_state, _ = jax.jit(step.make_train_step(run))(state, batch, jnp.float32(lr), jnp.float32(wd))
    params = state["params"]
    grads = jax.grad(lambda p: step.loss_fn(run.model, 0.0, p, batch)[0])(params)
    tx = optax.chain(optax.clip_by_global_norm(run.optimizer.clip_norm),
                     optax.adamw(lr, b1=run.optimizer.b1, b2=run.optimizer.b2, eps=run.optimizer.eps,
                                 weight_decay=wd, mask=step.weight_decay_mask(params, run.optimizer)))
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = optax.apply_updates(params, updates)
    for a, e in zip(jax.tree.leaves(new_state["params"]), jax.tree.leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-6)
    assert not step.weight_decay_mask(params, run.optimizer)["embed"]
