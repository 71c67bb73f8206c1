"""lm/train/run_lock.py: one process at a time per run directory (the cross-process and kill -9 cases:
tests/experiments/test_stops.py)."""

import fcntl
import os

import pytest

from lm.train import run_lock, solo as train, sweep
from lm.model.config import ModelConfig, RunConfig, TrainConfig
from lm.data.config import DataConfig

RUN = RunConfig(model=ModelConfig(d_model=16, num_layers=1, num_heads=1, d_ff=32),
                data=DataConfig(source="synthetic", seq_len=16, batch_size=2, synthetic_doc_len=64),
                train=TrainConfig(steps=2, progress=False), name="r")


@pytest.fixture
def other_holder(tmp_path):
    """The lock of ``tmp_path/run`` held as another process would: its own open file, a PID written."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fd = os.open(run_dir / run_lock.LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4321\n")
    yield run_dir
    os.close(fd)


def test_a_held_run_directory_is_refused_naming_the_pid(other_holder):
    with pytest.raises(run_lock.RunDirLockedError, match=r"in use by process 4321 \(lock .*\.lock\)") as err:
        with run_lock.hold(other_holder):
            pass
    assert err.value.pid == 4321
    assert (other_holder / run_lock.LOCK).read_text() == "4321\n"  # the holder's file is untouched


def test_the_lock_is_reentrant_in_one_process_and_released_at_the_end(tmp_path):
    with run_lock.hold(tmp_path / "run"):
        with run_lock.hold(tmp_path / "run" / ".." / "run"):  # the same directory, spelled otherwise
            assert run_lock.holder_pid(tmp_path / "run") == os.getpid()
        assert run_lock.holder_pid(tmp_path / "run") == os.getpid()  # still held by the outer block
        fd = os.open(tmp_path / "run" / run_lock.LOCK, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the block ended
    os.close(fd)
    assert run_lock.holder_pid(tmp_path / "run") is None


def test_trainers_refuse_a_held_run_directory_before_writing(other_holder, tmp_path):
    with pytest.raises(run_lock.RunDirLockedError, match="process 4321"):
        train.train(RUN, other_holder)
    free = tmp_path / "free"
    runs = sweep.sweep_runs(RUN, learning_rates=(1e-3, 1e-2))
    with pytest.raises(run_lock.RunDirLockedError, match="process 4321"):
        sweep.train_vmapped(runs, [free, other_holder])
    assert sorted(p.name for p in other_holder.iterdir()) == [run_lock.LOCK]
    assert sorted(p.name for p in free.iterdir()) == [run_lock.LOCK]  # locked and released, nothing written
