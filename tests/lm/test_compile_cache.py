"""lm.train.compile_cache: where JAX's persistent compilation cache lives, and that it never changes a result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from lm.train import compile_cache, records, solo as train

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--name", "t", "--model.d_model", "24", "--model.num_layers", "1", "--model.d_ff", "40",
        "--model.num_heads", "2", "--data.source", "synthetic", "--data.seq_len", "16", "--data.batch_size", "2",
        "--data.synthetic_doc_len", "40", "--train.eval_batches", "1", "--train.progress", "false",
        "--train.steps", "4", "--train.eval_every", "4", "--train.log_every", "1", "--sample-tokens", "0"]


def test_cache_dir_follows_the_environment():
    home = os.path.expanduser("~")
    assert compile_cache.cache_dir({}) == os.path.join(home, ".cache", "scalelab", "jax")
    assert compile_cache.cache_dir({"XDG_CACHE_HOME": "/x"}) == "/x/scalelab/jax"
    assert compile_cache.cache_dir({"XDG_CACHE_HOME": "/x", "SCALELAB_JAX_CACHE": "/c"}) == "/c"
    assert compile_cache.cache_dir({"SCALELAB_JAX_CACHE": "~/c"}) == os.path.join(home, "c")
    assert compile_cache.cache_dir({"SCALELAB_XLA_CACHE": "/old"}) == "/old"  # the older name
    for off in ("", "off", "OFF", "0"):
        assert compile_cache.cache_dir({"SCALELAB_JAX_CACHE": off}) is None
        assert compile_cache.cache_dir({"SCALELAB_XLA_CACHE": off}) is None


def test_the_test_session_shares_a_locked_cache_of_its_own():
    """tests/conftest.py: every process of the session has one cache, the suite's (never the user's), with the lock."""
    from tests import conftest

    folder = jax.config.jax_compilation_cache_dir
    assert folder and folder == os.environ["JAX_COMPILATION_CACHE_DIR"] == os.environ[compile_cache.ENV]
    # the user's cache as the environment outside the session gives it (the session's variables point here)
    outside = {k: v for k, v in os.environ.items() if k not in (compile_cache.ENV, compile_cache.LEGACY_ENV)}
    assert folder != compile_cache.cache_dir(outside)
    # the suite's folder, or a fresh temporary one (=off, or a suite folder that cannot be written)
    assert folder == conftest.session_cache() or Path(folder).name.startswith("scalelab-test-jax-cache-")
    assert jax.config.jax_compilation_cache_max_size > 0  # finite: JAX locks the folder
    assert compile_cache.enable() == folder  # a folder JAX has is kept


def test_the_suites_cache_folder_follows_the_environment():
    from tests import conftest

    home = os.path.expanduser("~")
    assert conftest.session_cache({}) == os.path.join(home, ".cache", "scalelab", "test-jax")
    assert conftest.session_cache({"XDG_CACHE_HOME": "/x"}) == "/x/scalelab/test-jax"
    assert conftest.session_cache({"XDG_CACHE_HOME": "/x", "SCALELAB_TEST_JAX_CACHE": "~/t"}) == os.path.join(home, "t")
    for off in ("off", "", "0", "false"):
        assert conftest.session_cache({"SCALELAB_TEST_JAX_CACHE": off}) is None
    assert conftest.session_cache({}) != compile_cache.cache_dir({})  # never the user's cache


def _train(out: Path, cache: Path) -> dict:
    """``python -m experiments.train`` TINY into ``out`` with only ``SCALELAB_JAX_CACHE=cache``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")
           and not k.startswith("JAX_PERSISTENT_CACHE")}
    env.update(SCALELAB_JAX_CACHE=str(cache), PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--out", str(out), *TINY],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "t" / "result.json").read_text())


def test_same_losses_with_a_cold_and_a_warm_cache(tmp_path):
    """A second process loads the train step the first compiled, and trains bit for bit the same."""
    cache = tmp_path / "cache"
    cold = _train(tmp_path / "cold", cache)
    stamps = {p: p.read_bytes() for p in cache.glob("*-atime")}
    assert any(p.name.startswith("jit_") for p in stamps), sorted(cache.iterdir())  # compiled steps written
    warm = _train(tmp_path / "warm", cache)
    # every program the cold run wrote, the warm run loaded (a hit stamps its entry's access time)
    assert [p.name for p, stamp in stamps.items() if p.read_bytes() == stamp] == []
    curves = [[r["train_loss"] for r in records.read_metrics(tmp_path / d / "t") if "train_loss" in r] for d in ("cold", "warm")]
    assert len(curves[0]) == 4 and curves[0] == curves[1]
    assert warm["final_val_loss"] == cold["final_val_loss"]
    for a, b in zip(jax.tree.leaves(train.load_params(tmp_path / "cold" / "t")[1]),
                    jax.tree.leaves(train.load_params(tmp_path / "warm" / "t")[1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_entries_written_without_the_lock_are_mended(tmp_path):
    """An entry written unlocked (no ``-atime`` file: max size -1) makes JAX's locked cache fail every
    later write; :func:`compile_cache.repair` (run by ``enable``) gives it its access time."""
    from jax._src.lru_cache import LRUCache  # the cache JAX itself uses, private: the layout repaired here

    folder = tmp_path / "cache"
    folder.mkdir()
    LRUCache(str(folder), max_size=-1).put("old", b"unlocked")  # what an unlocked process leaves
    assert (folder / "old-cache").exists() and not (folder / "old-atime").exists()
    locked = LRUCache(str(folder), max_size=1 << 20)
    try:
        locked.put("new", b"x")
        raise AssertionError("JAX's locked cache accepted a write beside an entry without -atime")
    except FileNotFoundError:
        pass  # the failure repaired below (JAX turns it into a warning and caches nothing)
    assert compile_cache.repair(folder) == 1 and compile_cache.repair(folder) == 0
    stamp = int.from_bytes((folder / "old-atime").read_bytes(), "little")
    assert stamp == (folder / "old-cache").stat().st_mtime_ns
    locked.put("new", b"x")
    assert locked.get("new") == b"x" and locked.get("old") == b"unlocked"
    assert compile_cache.repair(tmp_path / "absent") == 0
    (folder / "old-atime").unlink()
    folder.chmod(0o555)  # read-only (a shared cache): left as it is, with a warning, nothing raised
    try:
        if os.access(folder, os.W_OK):  # root ignores the mode bits: make the write fail another way
            import unittest.mock

            with unittest.mock.patch("pathlib.Path.write_bytes", side_effect=PermissionError("read-only")):
                with pytest.warns(UserWarning, match="0 entries mended, then PermissionError"):
                    assert compile_cache.repair(folder) == 0
        else:
            with pytest.warns(UserWarning, match="0 entries mended"):
                assert compile_cache.repair(folder) == 0
    finally:
        folder.chmod(0o755)
