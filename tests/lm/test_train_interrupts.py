"""Training stopped part-way resumes to the uninterrupted run, bitwise: a signal, a full disk, a failed evaluation."""

import dataclasses
import logging
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lm.train import loop, preemption, records, step, solo as train
from lm.train.checkpoint import Checkpointer
from lm.model.config import ModelConfig, RunConfig, TrainConfig
from lm.data.config import DataConfig
from lm.train.records import DiskFullError

# log_every 2 and checkpoint_every 3: a checkpoint (3) in the middle of a training window, so a
# resume must restore the window to write the uninterrupted run's records
RUN = RunConfig(
    model=ModelConfig(d_model=32, num_layers=2, num_heads=2, d_ff=64),
    data=DataConfig(source="synthetic", seq_len=32, batch_size=4, synthetic_doc_len=100),
    train=TrainConfig(steps=6, eval_every=4, eval_batches=1, log_every=2, checkpoint_every=3, progress=False,
                      keep_checkpoints=None),
    name="tiny",
)
TIMING = ("tokens_per_s",)  # wall-clock fields: the only ones allowed to differ


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The uninterrupted run: its result, metric records and final parameters."""
    run_dir = tmp_path_factory.mktemp("full")
    result = train.train(RUN, run_dir)
    return result, records.read_metrics(run_dir), train.load_params(run_dir)[1]


def assert_same_run(run_dir, full):
    result, metrics, params = full
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(train.load_params(run_dir)[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    got = records.read_metrics(run_dir)
    strip = lambda recs: [{k: v for k, v in r.items() if k not in TIMING} for r in recs]  # noqa: E731
    assert strip(got) == strip(metrics)  # the same records, losses bitwise, none twice
    again = records.read_result(run_dir)
    for key in ("final_train_loss", "final_val_loss", "final_val_bpb"):
        assert again[key] == result[key]


def test_sigterm_stops_at_the_next_step_with_a_checkpoint_and_resumes_bitwise(full, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    save = Checkpointer.save

    def signal_at_4(done, total, metrics):
        if done == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # recorded by the handler; the loop stops after step 5

    def impatient_save(self, step, *args):
        if step == 5:
            os.kill(os.getpid(), signal.SIGINT)  # a second signal while saving: the save finishes
        save(self, step, *args)

    monkeypatch.setattr(Checkpointer, "save", impatient_save)
    with preemption.handle_signals(), pytest.raises(preemption.Preempted) as stop:
        train.train(RUN, run_dir, progress=signal_at_4)
    monkeypatch.undo()
    assert stop.value.step == 5 and stop.value.signum == signal.SIGTERM and stop.value.saved
    assert str(stop.value).startswith("preempted at step 5 of run 'tiny' (SIGTERM), checkpoint saved in ")
    assert Checkpointer(run_dir).steps() == [3, 5]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are gone with the block
    assert not (run_dir / "result.json").exists()
    resumed = train.train(RUN, run_dir)
    assert resumed["resumed_from"] == 5
    assert_same_run(run_dir, full)


def test_a_full_disk_at_a_checkpoint_keeps_the_earlier_ones_and_resumes(full, tmp_path, monkeypatch, caplog):
    run_dir = tmp_path / "run"
    save = ocp.CheckpointManager.save
    message = ("RESOURCE_EXHAUSTED: Error writing \"params\" in OCDBT database: Failed to write 4096 bytes: "
               "No space left on device [os_error_code='28']")

    def full_at_6(self, step, *args, **kwargs):
        if step == 6:
            (self.directory / "6.orbax-checkpoint-tmp").mkdir()  # what orbax leaves half-written
            logging.getLogger("absl").error("_SignalingThread.run() raised an exception: %s", message)
            raise ValueError(message)
        return save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_6)
    with pytest.raises(DiskFullError) as err:
        train.train(RUN, run_dir)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{run_dir.absolute() / 'checkpoints'}: no space left on device (")
    assert "MB free) while saving the checkpoint of step 6" in text
    assert "RESOURCE_EXHAUSTED" not in caplog.text  # orbax's per-thread tracebacks are not shown
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["3"]  # intact; the partial one gone
    assert not (run_dir / "result.json").exists()
    monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    assert train.train(RUN, run_dir)["resumed_from"] == 3
    assert_same_run(run_dir, full)


def test_a_failed_final_evaluation_loses_no_training(full, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    evaluate = loop.evaluate

    def broken_at_the_end(run, params, *args, **kwargs):
        if records.read_metrics(run_dir)[-1]["step"] >= 4:  # the evaluation of the last step
            raise RuntimeError("evaluation crashed")
        return evaluate(run, params, *args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", broken_at_the_end)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        train.train(RUN, run_dir)
    assert Checkpointer(run_dir).latest_step() == 6  # saved before the evaluation
    monkeypatch.setattr(loop, "evaluate", evaluate)
    assert train.train(RUN, run_dir)["resumed_from"] == 6  # no step trained again
    assert_same_run(run_dir, full)


def test_checkpoints_without_the_window_still_resume(tmp_path):
    """A checkpoint written before the training window was kept in its meta (only "step" and "config")."""
    run = dataclasses.replace(RUN, train=dataclasses.replace(RUN.train, log_every=1, checkpoint_every=3))
    run_dir = tmp_path / "run"

    class Stop(Exception):
        pass

    def stop_at_3(done, total, metrics):
        if done == 3:
            raise Stop

    with pytest.raises(Stop):
        train.train(run, run_dir, progress=stop_at_3)
    ckpt = Checkpointer(run_dir)
    state, data, meta = ckpt.restore(3, step.init_state(run))
    ckpt.manager.delete(3)
    ckpt.save(3, state, data, {"step": 3, "config": meta["config"]})  # the former meta
    ckpt.close()
    result = train.train(run, run_dir)
    assert result["resumed_from"] == 3 and [r["step"] for r in records.read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]


def test_a_vmapped_group_stops_at_the_next_step_and_writes_no_result(tmp_path):
    from lm.train import sweep

    runs = sweep.sweep_runs(RUN, learning_rates=(1e-3, 1e-2))
    dirs = [tmp_path / r.name for r in runs]

    def signal_at_1(done, total, metrics):
        if done == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # reported after step 1's records: the group stops after step 2

    with preemption.handle_signals(), pytest.raises(preemption.Preempted, match=(
            r"preempted at step 2 of the vmapped group tiny-lr0.001, tiny-lr0.01 \(SIGTERM\); groups keep no "
            "checkpoints")) as stop:
        sweep.train_vmapped(runs, dirs, progress=signal_at_1)
    assert not stop.value.saved
    for d in dirs:
        assert not (d / "result.json").exists() and [r["step"] for r in records.read_metrics(d)] == [2]
