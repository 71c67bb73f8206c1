"""lm.train.checkpoint: resuming falls back to the newest intact checkpoint, says so, deletes nothing."""

from __future__ import annotations

import json
import shutil

import pytest

from lm.train import step as lm_step
from lm.train import solo as train
from lm.train.checkpoint import Checkpointer, CheckpointError, CheckpointFallbackWarning
from lm.model.config import ModelConfig, RunConfig, TrainConfig
from lm.data.config import DataConfig

RUN = RunConfig(model=ModelConfig(d_model=16, num_layers=1, num_heads=1, d_ff=32),
                data=DataConfig(seq_len=16, batch_size=2, source="synthetic", synthetic_doc_len=64),
                train=TrainConfig(steps=4, eval_every=4, eval_batches=1, log_every=1, checkpoint_every=2,
                                  keep_checkpoints=None, progress=False),
                name="fallback")


def truncate(step_dir):
    """Cut every array file of a checkpoint's state to 10 bytes (a disk that lost the tail)."""
    files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and "ocdbt.process_0" in str(f)]
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:10])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    rd = tmp_path_factory.mktemp("finished") / RUN.name
    return rd, train.train(RUN, rd)


@pytest.mark.parametrize("damage", ["truncated", "item deleted"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(finished, damage, tmp_path):
    src, result = finished
    rd = tmp_path / RUN.name
    shutil.copytree(src, rd)
    (rd / "result.json").unlink()  # as if killed after the last save, before the result
    if damage == "truncated":
        truncate(rd / "checkpoints" / "4")
    else:
        shutil.rmtree(rd / "checkpoints" / "4" / "state")
    with pytest.warns(CheckpointFallbackWarning, match=r"resuming from step 2, the newest intact checkpoint"):
        again = train.train(RUN, rd)
    assert again["resumed_from"] == 2
    assert again["final_val_loss"] == result["final_val_loss"]  # steps 3-4 retrained bit for bit
    records = [json.loads(line) for line in (rd / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # the unreadable checkpoint is kept aside for inspection, and step 4 was saved again
    assert sorted(p.name for p in (rd / "checkpoints").iterdir()) == ["2", "4", "unreadable-4"]


def test_no_readable_checkpoint_is_an_error_that_deletes_nothing(finished, tmp_path):
    src, _ = finished
    rd = tmp_path / RUN.name
    shutil.copytree(src, rd)
    for step in ("2", "4"):
        truncate(rd / "checkpoints" / step)
    before = sorted(str(p) for p in rd.rglob("*"))
    ckpt = Checkpointer(rd, max_to_keep=None)
    with pytest.raises(CheckpointError, match=r"none of the checkpoints .* \(steps \[2, 4\]\) can be read"):
        ckpt.restore(None, lm_step.init_state(RUN))
    with pytest.raises(CheckpointError, match=r"checkpoints/4 could not be read"):
        ckpt.restore(4, lm_step.init_state(RUN))  # an explicit step never falls back
    ckpt.close()
    assert sorted(str(p) for p in rd.rglob("*")) == before
