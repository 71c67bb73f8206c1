"""DataConfig.max_train_bytes: a unique-data cap on the training split only (Muennighoff et al. 2023)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from lm.data import pipeline as data

BASE = data.DataConfig(seq_len=32, batch_size=4, prefetch_batches=0)


def _epoch_targets(cfg: data.DataConfig) -> np.ndarray:
    """int64 [n]: every weighted target of one pass over the training split."""
    out = []
    for batch in data.make_iterator(cfg, "train", num_epochs=1):
        out.append(batch["targets"][batch["weights"] > 0])
    return np.concatenate(out).astype(np.int64)


def _capped_text(cfg: data.DataConfig, cap: int) -> list[bytes]:
    """The training files cut to ``cap`` bytes in total, read with plain file I/O (the reference)."""
    docs, left = [], cap
    for path in data.split_files(cfg, "train"):
        if left <= 0:
            break
        with open(path, "rb") as f:
            docs.append(f.read(min(left, os.path.getsize(path))))
        left -= len(docs[-1])
    return docs


def test_train_cap_leaves_validation_identical_and_caps_training_exactly():
    small, large = (dataclasses.replace(BASE, max_train_bytes=n) for n in (3000, 7000))
    # identical validation split and batches
    assert data.dataset_info(small)["validation"] == data.dataset_info(large)["validation"]
    its = [data.make_iterator(c, "validation") for c in (small, large)]
    for _ in range(3):
        a, b = (next(it) for it in its)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    for it in its:
        it.close()
    # and the uncapped config has that same validation split too
    assert data.dataset_info(BASE)["validation"] == data.dataset_info(small)["validation"]
    # training: one epoch holds exactly the capped text's bytes, each document ended by EOS
    counts = {}
    for cfg, cap in ((small, 3000), (large, 7000)):
        docs = _capped_text(cfg, cap)
        assert sum(map(len, docs)) == cap
        want = np.bincount(np.frombuffer(b"".join(docs), np.uint8), minlength=data.VOCAB_SIZE)
        want[data.EOS_ID] += len(docs)
        got = np.bincount(_epoch_targets(cfg), minlength=data.VOCAB_SIZE)
        np.testing.assert_array_equal(got, want)
        counts[cap] = int(got.sum())
        assert data.dataset_info(cfg)["train"]["targets"] == counts[cap]  # what a study reports as U
        assert data.dataset_info(cfg)["train"]["bytes"] == cap
    assert counts[3000] < counts[7000]


def test_max_bytes_and_max_train_bytes_combine_to_the_smaller_cap():
    both = dataclasses.replace(BASE, max_bytes=2000, max_train_bytes=5000)
    info = data.dataset_info(both)
    assert info["train"]["bytes"] == 2000 and info["validation"]["bytes"] == 2000
    info = data.dataset_info(dataclasses.replace(BASE, max_bytes=5000, max_train_bytes=2000))
    assert info["train"]["bytes"] == 2000 and info["validation"]["bytes"] == 5000
    assert data.split_max_bytes(both, "train") == 2000 and data.split_max_bytes(BASE, "validation") is None


@pytest.mark.parametrize("kw", [dict(max_train_bytes=0), dict(max_train_bytes=-5), dict(max_train_bytes=1.5),
                                dict(max_train_bytes=100, source="synthetic")])
def test_bad_train_cap_names_the_field(kw):
    with pytest.raises(ValueError, match=r"DataConfig\.max_train_bytes="):
        data.DataConfig(**kw)


def test_train_cap_is_a_config_field_of_the_run():
    """It changes the config (and so a study's fingerprint and its results-table column)."""
    from lm.model.config import RunConfig

    run = RunConfig(data=dataclasses.replace(BASE, max_train_bytes=3000))
    assert run.to_dict()["data"]["max_train_bytes"] == 3000
    assert RunConfig.from_dict(run.to_dict()) == run
