"""Stops of ``experiments.train`` and of a sweep: SIGTERM, Ctrl-C, a run directory in use, a full disk.

Each is one line on stderr with its exit code (``experiments.lib.cli.EXIT_CODES``), loses no
finished step, and a rerun of the same command resumes to the uninterrupted result, bitwise.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

from experiments import chinchilla, lib
from experiments import train as train_cli
from experiments.lib.cli import PREEMPTED
from lm.train import preemption, records, solo as train
from lm.train.checkpoint import Checkpointer
from lm.train.run_lock import RunDirLockedError
from tests.experiments import sweep_worker

ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m experiments.train"
TINY = ["--name", "t", "--model.d_model", "32", "--model.num_layers", "1", "--model.d_ff", "48",
        "--model.num_heads", "2", "--data.source", "synthetic", "--data.seq_len", "32", "--data.batch_size", "4",
        "--data.synthetic_doc_len", "64", "--train.eval_batches", "1", "--train.progress", "false",
        "--sample-tokens", "0"]
# long enough to be signalled mid-run; only the last step is evaluated and checkpointed
LONG = [*TINY, "--train.steps", "300", "--train.eval_every", "300", "--train.checkpoint_every", "300",
        "--train.log_every", "1"]
SHORT = [*TINY, "--train.steps", "2", "--train.eval_every", "2"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The subprocesses' environment: the tests' matmul precision (and, inherited, the session's
    compilation cache: tests/conftest.py)."""
    return dict(os.environ, JAX_DEFAULT_MATMUL_PRECISION="highest",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted LONG run (in this process): its result and final parameters."""
    out = tmp_path_factory.mktemp("reference")
    result = train_cli.main(["--out", str(out), *LONG])
    return result, train.load_params(out / "t")[1]


def signalled(cmd: list[str], env: dict, progress: Path, signum: int, lines: int = 3) -> tuple[int, str]:
    """Start ``cmd``, send ``signum`` once ``progress`` (a metrics.jsonl) has ``lines`` lines; (exit code, stderr)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if progress.is_file() and len(progress.read_text().splitlines()) >= lines:
                proc.send_signal(signum)
                break
            time.sleep(0.005)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode()


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    return lines[0]


def stopped_step(line: str, prog: str, run: str, signame: str) -> int:
    head = f"{prog}: preempted at step "
    assert line.startswith(head), line
    step = int(line[len(head):].split()[0])
    assert line.startswith(f"{head}{step} of run {run!r} ({signame}), checkpoint saved in "), line
    assert line.endswith("; rerun the same command to resume")
    return step


# ---------------------------------------------------------------------------- signals


def test_sigterm_saves_a_checkpoint_exits_75_and_the_rerun_resumes_bitwise(env, reference, tmp_path):
    out = tmp_path / "out"
    rc, err = signalled([sys.executable, "-m", "experiments.train", "--out", str(out), *LONG], env,
                        out / "t" / "metrics.jsonl", signal.SIGTERM)
    assert rc == PREEMPTED == 75, err
    step = stopped_step(one_line(err), PROG, "t", "SIGTERM")
    assert 3 <= step < 300 and Checkpointer(out / "t").steps() == [step]
    assert [r["step"] for r in records.read_metrics(out / "t")] == list(range(1, step))  # step's own: on resume
    result = train_cli.main(["--out", str(out), *LONG])
    assert result["resumed_from"] == step
    ref_result, ref_params = reference
    for key in ("final_train_loss", "final_val_loss", "final_val_bpb"):
        assert result[key] == ref_result[key]
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(train.load_params(out / "t")[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [r["step"] for r in records.read_metrics(out / "t")] == list(range(1, 301))


def test_ctrl_c_saves_a_checkpoint_without_a_traceback_and_ends_by_sigint(env, tmp_path):
    out = tmp_path / "out"
    rc, err = signalled([sys.executable, "-m", "experiments.train", "--out", str(out), *LONG], env,
                        out / "t" / "metrics.jsonl", signal.SIGINT)
    assert rc == -signal.SIGINT, err  # as Ctrl-C ends any Python program: 130 in a shell, loops stop
    step = stopped_step(one_line(err), PROG, "t", "SIGINT")
    assert Checkpointer(out / "t").steps() == [step]


def test_a_sweep_stops_after_the_current_runs_checkpoint_and_resumes_to_the_same_table(env, tmp_path):
    out = tmp_path / "sweep"
    rc, err = signalled([sys.executable, "-m", "tests.experiments.sweep_worker", str(out)], env,
                        out / "runs" / "long" / "metrics.jsonl", signal.SIGTERM)
    assert rc == PREEMPTED, err
    step = stopped_step(one_line(err), "sweep_worker", "long", "SIGTERM")
    assert Checkpointer(out / "runs" / "long").steps() == [step]
    table = lib.read_table(out / "results.csv")  # written after "short": nothing about "long" but pending
    assert list(table["status"]) == ["complete", "pending"]
    study = sweep_worker.study()
    resumed = lib.run_study(study, out, progress=False, compilation_cache=False)
    assert records.read_result(out / "runs" / "long")["resumed_from"] == step
    reference = lib.run_study(study, tmp_path / "reference", progress=False, compilation_cache=False)
    same = [c for c in reference.columns if c not in ("compile_s", "train_s", "wall_s", "cpu_s", "resumed_from")]
    pd.testing.assert_frame_equal(resumed[same], reference[same], check_exact=True)


def test_runner_stops_between_runs_when_the_signal_came_after_a_run(tmp_path):
    study = sweep_worker.study()
    with preemption.handle_signals(), pytest.raises(preemption.Preempted, match="preempted before run 'long'"):
        lib.run_study(study, tmp_path, progress=False, compilation_cache=False,
                      on_run_done=lambda run, result: os.kill(os.getpid(), signal.SIGTERM))
    assert not (tmp_path / "runs" / "long").exists() and records.read_result(tmp_path / "runs" / "short")


# -------------------------------------------------------------------- lock, full disk


def test_a_second_trainer_is_refused_naming_the_holder_and_a_killed_holder_frees_the_run(env, tmp_path, capsys):
    out = tmp_path / "out"
    train_cli.main(["--out", str(out), *SHORT])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lm.train import run_lock\n"
         "with run_lock.hold(sys.argv[1]):\n    print('held', flush=True); time.sleep(300)", str(out / "t")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        before = {p: p.read_bytes() for p in (out / "t").rglob("*") if p.is_file()}
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            train_cli.main(["--out", str(out), *SHORT])
        line = one_line(capsys.readouterr().err)
        assert exc.value.code == 2
        assert line.startswith(f"{PROG}: error: run directory {out / 't'} is in use by process {holder.pid} ")
        assert {p: p.read_bytes() for p in (out / "t").rglob("*") if p.is_file()} == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert train_cli.main(["--out", str(out), *SHORT])["resumed_from"] == 2  # the kernel released the lock


@pytest.mark.parametrize("where", ["checkpoint", "record"])
def test_a_full_disk_is_one_line_exit_1_and_the_rerun_with_space_trains(where, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    if where == "checkpoint":
        import orbax.checkpoint as ocp

        def no_space(self, *args, **kwargs):
            raise ValueError("RESOURCE_EXHAUSTED: Failed to write 4096 bytes: No space left on device "
                             "[os_error_code='28']")

        monkeypatch.setattr(ocp.CheckpointManager, "save", no_space)
        expect = f"{out.absolute() / 't' / 'checkpoints'}: no space left on device ("
    else:  # a fresh run's config.json: never a partial or empty one that a rerun would refuse
        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(records.os, "fsync", no_space)
        expect = f"{out / 't'}: no space left on device ("
    with pytest.raises(SystemExit) as exc:
        train_cli.main(["--out", str(out), *SHORT])
    line = one_line(capsys.readouterr().err)
    assert exc.value.code == 1 and line.startswith(f"{PROG}: error: {expect}") and "MB free) while " in line
    assert not list((out / "t").glob(".*.tmp"))  # no temporary file left behind
    if where == "checkpoint":
        assert Checkpointer(out / "t").steps() == [] and not list((out / "t" / "checkpoints").iterdir())
        assert records.read_config(out / "t").train.steps == 2
    else:
        assert not (out / "t" / "config.json").exists()
    monkeypatch.undo()
    assert train_cli.main(["--out", str(out), *SHORT])["steps"] == 2


@pytest.mark.parametrize("error, code, text", [
    (preemption.Preempted("preempted at step 3 of run 'x' (SIGTERM), checkpoint saved", signal.SIGTERM, 3, True),
     PREEMPTED, "python -m experiments.chinchilla: preempted at step 3 of run 'x' (SIGTERM), checkpoint saved"),
    (RunDirLockedError(Path("runs/x"), 1234), 2, "python -m experiments.chinchilla: error: run directory runs/x "
                                                  "is in use by process 1234"),
    (records.DiskFullError("runs/x", 5 * 2**20, "writing result.json"), 1,
     "python -m experiments.chinchilla: error: runs/x: no space left on device (5.0 MB free) while writing result.json"),
], ids=["preempted", "locked", "disk full"])
def test_a_study_command_reports_stops_in_one_line(error, code, text, tmp_path, monkeypatch, capsys):
    def stop(*args, **kwargs):
        raise error

    monkeypatch.setattr(lib.sweep, "run_study", stop)
    with pytest.raises(SystemExit) as exc:
        chinchilla.main(["--preset", "smoke", "--out", str(tmp_path / "study"), "--no-progress"])
    assert exc.value.code == code and one_line(capsys.readouterr().err).startswith(text)


def test_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        train_cli.main(["--help"])
    text = capsys.readouterr().out
    assert "exit codes:" in text and f"  {PREEMPTED}   SIGTERM (preemption)" in text and "in use by another process" in text
