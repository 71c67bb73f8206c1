"""The data a run trains on, checked before step 0 (lm.data.check, lm.data.shard_reader's shard checks, lm.data.pipeline.check_splits)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from lm.data import pipeline as lm_data
from lm.data import check
from lm.train import records
from lm.model.config import ModelConfig, RunConfig, TrainConfig
from lm.data.shard_reader import PreparedDataError
from tests.lm import prepared_tiny


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two prepared corpora of the same vocabulary (259, bytes) and different documents."""
    root = tmp_path_factory.mktemp("corpora")
    return prepared_tiny.make(root / "a", seed=0), prepared_tiny.make(root / "b", seed=1)


@pytest.fixture
def corpus(corpora, tmp_path):
    """A fresh copy of corpus a, to damage."""
    return Path(shutil.copytree(corpora[0], tmp_path / "copy"))


def _cfg(path, **kw) -> lm_data.DataConfig:
    return lm_data.DataConfig(source="prepared", path=str(path), seq_len=16, batch_size=2, prefetch_batches=0, **kw)


def _manifest(edit):
    def damage(root: Path) -> None:
        m = json.loads((root / "manifest.json").read_text())
        edit(m)
        (root / "manifest.json").write_text(json.dumps(m))
    return damage


def _truncate(rel: str, size: int):
    def damage(root: Path) -> None:
        with open(root / rel, "r+b") as f:
            f.truncate(size)
    return damage


TOKENS, DOCS = "shards/000001.train.tokens.bin", "shards/000001.train.docs.npy"


def _drop_last_document(root: Path) -> None:
    """Unit 1's training shard loses its last document, docs.npy and tokens.bin alike (a shard from
    another preparation): each file is consistent with the other, not with the manifest."""
    table = np.load(root / DOCS)[:-1]
    np.save(root / DOCS, table)
    _truncate(TOKENS, int(table[:, 0].sum()) * 2)(root)


DAMAGE = {
    # id: (damage to a copy of corpus a, message (regex))
    "tokens.bin cut short": (_truncate(TOKENS, 20), r"000001\.train\.tokens\.bin has 20 bytes, expected \d+ \(\d+ <u2 "
                                                    r"tokens, as its docs\.npy lists\)"),
    "tokens.bin empty": (_truncate(TOKENS, 0), r"000001\.train\.tokens\.bin has 0 bytes, expected"),
    "tokens.bin missing": (lambda r: (r / TOKENS).unlink(), r"000001\.train\.tokens\.bin is missing \(expected \d+ bytes"),
    "tokens.bin too long": (lambda r: open(r / TOKENS, "ab").write(b"\0\0"), r"tokens\.bin has \d+ bytes, expected"),
    "docs.npy cut short": (_truncate(DOCS, 150), r"000001\.train\.docs\.npy cannot be read \(150 bytes"),
    "docs.npy empty": (_truncate(DOCS, 0), r"000001\.train\.docs\.npy cannot be read \(0 bytes"),
    "docs.npy missing": (lambda r: (r / DOCS).unlink(), r"000001\.train\.docs\.npy is missing"),
    "docs.npy of another shape": (lambda r: np.save(r / DOCS, np.zeros(3, np.int64)),
                                  r"docs\.npy holds int64 \[3\], not a table"),
    "docs.npy short of the manifest": (_drop_last_document, r"\*\.train\.docs\.npy list .* but manifest\.json says"),
    "manifest cut short": (lambda r: (r / "manifest.json").write_text('{"format": "scalelab-prep'),
                           r"manifest\.json is not valid JSON .*cut short"),
    "manifest empty": (_truncate("manifest.json", 0), r"manifest\.json is not valid JSON"),
    "manifest a list": (lambda r: (r / "manifest.json").write_text("[1, 2]"), r"manifest\.json holds a JSON list"),
    "manifest without splits": (_manifest(lambda m: m.pop("splits")), r"lacks or has invalid keys \['splits\.train"),
    "manifest without fingerprint": (_manifest(lambda m: m.pop("fingerprint")), r"invalid keys \['fingerprint'\]"),
    "manifest bad dtype": (_manifest(lambda m: m.update(token_dtype="float32")), r"invalid keys \['token_dtype'\]"),
    "manifest vocab a string": (_manifest(lambda m: m["tokenizer"].update(vocab_size="259")),
                                r"invalid keys \['tokenizer\.vocab_size'\]"),
    "manifest counts wrong": (_manifest(lambda m: m["splits"]["train"].update(documents=1)),
                              r"list \{'documents': \d+.* but manifest\.json says \{'documents': 1"),
    "manifest names a missing tokenizer": (_manifest(lambda m: m["tokenizer"].update(file="tokenizer.json")),
                                           r"copy/tokenizer\.json is missing \(manifest\.json names it"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_a_damaged_prepared_corpus_is_one_line_naming_the_file(case, corpus):
    damage, message = DAMAGE[case]
    damage(corpus)
    run = RunConfig(model=ModelConfig(d_model=16, num_layers=1, num_heads=1, vocab_size=259), data=_cfg(corpus))
    with pytest.raises(ValueError) as exc:
        check.check_run(run)
    text = str(exc.value)
    assert re.search(message, text), text
    assert "\n" not in text and str(corpus) in text
    if isinstance(exc.value, PreparedDataError):
        assert f"--verify {corpus}` or prepare it again" in text


def test_the_shard_check_stats_and_reads_no_token(corpus, monkeypatch):
    """Sizes only: a shard of the right size is opened without reading it (hashing is prepare_data --verify's)."""
    (corpus / TOKENS).write_bytes(b"\xff" * (corpus / TOKENS).stat().st_size)
    opened = []
    real_memmap = np.memmap
    monkeypatch.setattr(np, "memmap", lambda *a, **k: opened.append(a) or real_memmap(*a, **k))
    src = lm_data.make_source(_cfg(corpus), "train")
    assert len(src) == json.loads((corpus / "manifest.json").read_text())["splits"]["train"]["documents"]
    assert opened == []


def test_a_corpus_replaced_in_place_is_read_afresh(corpora, tmp_path):
    path = tmp_path / "data"
    shutil.copytree(corpora[0], path)
    cfg = _cfg(path)
    before = lm_data.make_source(cfg, "train"), lm_data.dataset_info(cfg)
    shutil.rmtree(path)
    shutil.copytree(corpora[1], path)
    after = lm_data.make_source(cfg, "train"), lm_data.dataset_info(cfg)
    want = json.loads((path / "manifest.json").read_text())
    assert after[1]["fingerprint"] == want["fingerprint"] != before[1]["fingerprint"]
    assert len(after[0]) == want["splits"]["train"]["documents"]
    assert check.corpus_fingerprint(cfg) == want["fingerprint"]


@pytest.mark.parametrize("cfg, message", [
    (lm_data.DataConfig(source="synthetic", val_fraction=0.0),
     r"the validation split has no documents \(source 'synthetic', DataConfig\.val_fraction=0\.0; raise val_fraction"),
    (lm_data.DataConfig(source="stdlib", max_train_bytes=1, add_bos=False, add_eos=False),
     r"the train split has 0 pieces of text .*max_train_bytes=1"),
])
def test_splits_that_cannot_fill_a_batch_are_refused_before_step_0(cfg, message):
    with pytest.raises(ValueError, match=message):
        lm_data.check_splits(cfg)


def test_a_corpus_without_validation_documents_is_refused(tmp_path):
    path = prepared_tiny.make(tmp_path / "v0", validation_fraction=0.0)
    lm_data.check_splits(_cfg(path), validation=False)
    with pytest.raises(ValueError, match=r"the validation split has no documents \(prepared data .*v0, prepared with "
                                         r"--validation-fraction 0\.0; prepare it again"):
        lm_data.check_splits(_cfg(path))


def _listing_digest(kind: str, paths, root=None) -> str:
    listing = [(os.path.relpath(p, root) if root else p, os.path.getsize(p)) for p in paths]
    return hashlib.sha256(json.dumps([kind, listing], sort_keys=True).encode()).hexdigest()[:16]


def test_fingerprints_name_the_corpus_not_the_run(corpora, tmp_path):
    a, b = corpora
    assert check.corpus_fingerprint(_cfg(a)) == json.loads(Path(a, "manifest.json").read_text())["fingerprint"]
    assert check.corpus_fingerprint(_cfg(a)) != check.corpus_fingerprint(_cfg(b))
    # files: the sorted listing with sizes, computed here independently
    for i in range(3):
        (tmp_path / f"f{i}.txt").write_text("x" * (10 + i))
    files = lm_data.DataConfig(source="files", files_glob=str(tmp_path / "*.txt"))
    first = check.corpus_fingerprint(files)
    assert first == _listing_digest("files", sorted(str(p) for p in tmp_path.glob("*.txt")))
    assert check.corpus_fingerprint(dataclasses.replace(files, seq_len=7, val_fraction=0.5, seed=3)) == first
    (tmp_path / "f1.txt").write_text("y" * 99)
    assert check.corpus_fingerprint(files) != first
    import sysconfig

    from lm.data import sources
    stdlib = lm_data.DataConfig()
    assert check.corpus_fingerprint(stdlib) == _listing_digest(
        "stdlib", sources.stdlib_files(), sysconfig.get_paths()["stdlib"])
    synthetic = lm_data.DataConfig(source="synthetic")
    assert check.corpus_fingerprint(dataclasses.replace(synthetic, batch_size=3, seed=5)) == \
        check.corpus_fingerprint(synthetic) != \
        check.corpus_fingerprint(dataclasses.replace(synthetic, synthetic_seed=1))


def test_a_run_directory_recording_another_corpus_is_refused(corpora, tmp_path):
    a, b = corpora
    rd = tmp_path / "run"
    assert check.check_corpus(rd, _cfg(a))["fingerprint"] == check.corpus_fingerprint(_cfg(a))  # no dir yet
    rd.mkdir()
    check.check_corpus(rd, _cfg(b))  # a run directory written before corpus.json existed
    records.write_corpus(rd, check.corpus_record(_cfg(a)))
    check.check_corpus(rd, _cfg(a))
    fa, fb = check.corpus_fingerprint(_cfg(a)), check.corpus_fingerprint(_cfg(b))
    with pytest.raises(check.CorpusMismatchError, match=f"trained on corpus {fa} \\(prepared .*a\\), but the data "
                                                             f"is now corpus {fb} \\(prepared .*b\\)"):
        check.check_corpus(rd, _cfg(b))
    (rd / "corpus.json").write_text('{"fingerprint": ')
    with pytest.raises(ValueError, match=r"corpus record .*corpus\.json cannot be read"):
        check.check_corpus(rd, _cfg(a))


def test_training_records_the_corpus_and_an_old_run_directory_still_resumes(tmp_path):
    from lm.train import solo as train

    run = RunConfig(model=ModelConfig(d_model=16, num_layers=1, num_heads=1, d_ff=32),
                    data=lm_data.DataConfig(source="synthetic", seq_len=16, batch_size=2, synthetic_doc_len=64),
                    train=TrainConfig(steps=2, eval_every=2, eval_batches=1, checkpoint_every=2, progress=False))
    rd = tmp_path / "run"
    train.train(run, rd)
    assert records.read_corpus(rd) == check.corpus_record(run.data)
    (rd / "corpus.json").unlink()  # as a run directory written before corpus.json existed
    again = train.train(run, rd)
    assert again["resumed_from"] == 2 and records.read_corpus(rd)["fingerprint"] == check.corpus_fingerprint(run.data)
    assert records.read_config(rd) == run
    records.write_corpus(rd, {**check.corpus_record(run.data), "fingerprint": "0123456789abcdef"})
    metrics = (rd / "metrics.jsonl").read_bytes()
    with pytest.raises(check.CorpusMismatchError, match="trained on corpus 0123456789abcdef"):
        train.train(run, rd)
    assert (rd / "metrics.jsonl").read_bytes() == metrics
