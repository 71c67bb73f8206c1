"""Prepared corpora (lm.data.prepare, lm.data.shard_reader, experiments.prepare_data): fixtures built here, no network."""

import dataclasses
import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lm.data import pipeline as lm_data
from lm.data import prepare
from lm.data.shard_reader import PreparedSource

WORDS = "the quick brown fox jumps over a lazy dog; héllo wörld ✓ scaling laws of data".split()


def _doc(rng) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.integers(3, 60)))


@pytest.fixture
def corpus(tmp_path):
    """A folder of parquet (two files, several row groups), jsonl.gz, jsonl and text files; returns
    (folder, list of every document's text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    docs = []
    for name in ("a.parquet", "sub/b.parquet"):
        texts = [_doc(rng) for _ in range(40)]
        docs += texts
        pq.write_table(pa.table({"text": texts, "id": np.arange(40)}), root / name, row_group_size=7)
    for name, opener in (("c.jsonl.gz", gzip.open), ("d.jsonl", open)):
        texts = [_doc(rng) for _ in range(30)]
        docs += texts
        with opener(root / name, "wt") as f:
            f.write("\n".join(json.dumps({"text": t, "meta": 1}) for t in texts) + "\n")
    for i in range(4):
        docs.append(_doc(rng))
        (root / f"e{i}.txt").write_text(docs[-1], encoding="utf-8")
    return root, docs


def _cfg(root, **kw):
    return prepare.PrepareConfig(input=str(root), validation_fraction=0.25, tokenizer_sample_bytes=1 << 20, **kw)


def _files(out):
    names = sorted(os.listdir(out / "shards"))
    return {n: (out / "shards" / n).read_bytes() for n in names}


def _decoded(out, split):
    src = PreparedSource(str(out), split)
    tok = prepare.out_tokenizer(str(out))
    return [tok.decode(src.read(i)) for i in range(len(src))]


@pytest.mark.parametrize("tokenizer", ["byte", "bpe:320"])
def test_prepare_counts_split_and_round_trip(corpus, tmp_path, tokenizer):
    root, docs = corpus
    out = tmp_path / "out"
    manifest = prepare.prepare(_cfg(root, tokenizer=tokenizer), str(out))["manifest"]
    assert manifest == json.loads((out / "manifest.json").read_text())
    splits = manifest["splits"]
    assert splits["train"]["documents"] + splits["validation"]["documents"] == len(docs)
    assert splits["train"]["bytes"] + splits["validation"]["bytes"] == sum(len(d.encode()) for d in docs)
    assert 0 < splits["validation"]["documents"] < splits["train"]["documents"]
    assert manifest["tokenizer"]["spec"] == tokenizer
    assert manifest["tokenizer"]["vocab_size"] == (259 if tokenizer == "byte" else 320)
    train, val = _decoded(out, "train"), _decoded(out, "validation")
    # every document comes back exactly, in exactly one split, the one its hash names
    assert sorted(train + val) == sorted(docs)
    assert all(prepare.split_of(d, 0.25, 0) == "train" for d in train)
    assert all(prepare.split_of(d, 0.25, 0) == "validation" for d in val)
    src = PreparedSource(str(out), "train")
    assert int(src.lengths.sum()) == splits["train"]["tokens"]
    if tokenizer.startswith("bpe"):
        assert splits["train"]["tokens"] < 0.6 * splits["train"]["bytes"]  # merges were learned


def test_shards_and_merge_equal_one_shot(corpus, tmp_path):
    root, _ = corpus
    cfg = _cfg(root, tokenizer="bpe:300")
    one, many = tmp_path / "one", tmp_path / "many"
    prepare.prepare(cfg, str(one))
    r0 = prepare.prepare(cfg, str(many), shard=(0, 2), workers=2)
    assert r0["manifest"] is None
    with pytest.raises(ValueError, match="not done"):
        prepare.merge(str(many))
    prepare.prepare(cfg, str(many), shard=(1, 2))
    assert prepare.merge(str(many)) == json.loads((one / "manifest.json").read_text())
    assert _files(many) == _files(one)
    assert (many / "tokenizer.json").read_bytes() == (one / "tokenizer.json").read_bytes()


def test_resume_redoes_only_unfinished_units(corpus, tmp_path):
    """The state a kill -9 leaves (some units marked done, one unit half written, no manifest)
    is finished by a rerun that leaves the finished units' files untouched."""
    root, _ = corpus
    cfg = _cfg(root)
    one, out = tmp_path / "one", tmp_path / "out"
    prepare.prepare(cfg, str(one))
    prepare.prepare(cfg, str(out), shard=(0, 2))
    units = len(json.loads((out / "plan.json").read_text())["units"])
    done = {n: os.stat(out / "shards" / n).st_mtime_ns for n in os.listdir(out / "shards")}
    (out / "shards" / "000001.train.tokens.bin.tmp").write_bytes(b"\x01\x02")  # interrupted mid-write
    (out / "shards" / "000001.train.docs.npy").write_bytes(b"garbage")  # renamed, but no done marker
    result = prepare.prepare(cfg, str(out))
    assert result["done_now"] == units // 2  # the odd units only
    assert all(os.stat(out / "shards" / n).st_mtime_ns == t for n, t in done.items())
    assert {n: b for n, b in _files(out).items() if not n.endswith(".tmp")} == _files(one)
    assert result["manifest"] == json.loads((one / "manifest.json").read_text())


def test_rerun_after_sigkill_matches_one_shot(corpus, tmp_path):
    root, _ = corpus
    one, out = tmp_path / "one", tmp_path / "out"
    args = ["--input", str(root), "--validation-fraction", "0.25", "--tokenizer-sample-mb", "1"]
    prepare.prepare(_cfg(root), str(one))
    proc = subprocess.Popen([sys.executable, "-m", "experiments.prepare_data", *args, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "shards" / "000000.done.json").exists() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from experiments import prepare_data

    prepare_data.main([*args, "--out", str(out)])
    assert json.loads((out / "manifest.json").read_text()) == json.loads((one / "manifest.json").read_text())


def test_other_arguments_on_the_same_out_are_refused(corpus, tmp_path):
    root, _ = corpus
    prepare.prepare(_cfg(root), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="other arguments"):
        prepare.prepare(_cfg(root, text_key="body"), str(tmp_path / "out"))


def test_bad_inputs_name_the_flag(tmp_path):
    from experiments import prepare_data

    with pytest.raises(ValueError, match="--input"):
        prepare.prepare(prepare.PrepareConfig(input=str(tmp_path / "none*.txt")), str(tmp_path / "o"))
    with pytest.raises(ValueError, match="bpe:VOCAB"):
        prepare.PrepareConfig(input="x", tokenizer="bpe:100")
    (tmp_path / "x.jsonl").write_text('{"body": "a"}\n')
    with pytest.raises(ValueError, match="--text-key"):
        prepare.prepare(prepare.PrepareConfig(input=str(tmp_path / "x.jsonl")), str(tmp_path / "o2"))
    with pytest.raises(SystemExit):
        prepare_data.main(["--input", "x", "--out", str(tmp_path / "o3"), "--shard", "2/2"])
    with pytest.raises(ValueError, match="--merge"):
        prepare.merge(str(tmp_path / "o4"))


def test_tfds_input_through_a_tiny_local_builder(tmp_path):
    from tests.lm import tfds_tiny

    data_dir = str(tmp_path / "tfds")
    tfds_tiny.build(data_dir)
    out = tmp_path / "out"
    manifest = prepare.prepare(prepare.PrepareConfig(input="tfds:tiny_corpus:1.0.0/train", tfds_data_dir=data_dir,
                                                     validation_fraction=0.2), str(out))["manifest"]
    texts = [tfds_tiny.tiny_text(i) for i in range(30)]
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["validation"]["documents"] == 30
    assert sorted(_decoded(out, "train") + _decoded(out, "validation")) == sorted(texts)


# ------------------------------------------------------------------ training reads it


@pytest.fixture
def prepared_bpe(corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "bpe"
    prepare.prepare(_cfg(root, tokenizer="bpe:300"), str(out))
    return str(out)


def test_pipeline_batches_hold_the_prepared_tokens(prepared_bpe):
    cfg = lm_data.DataConfig(source="prepared", path=prepared_bpe, seq_len=16, batch_size=4, prefetch_batches=0)
    tok = lm_data.tokenizer(cfg)
    assert lm_data.vocab_size(cfg) == tok.vocab_size == 300
    info = lm_data.dataset_info(cfg)
    with open(os.path.join(prepared_bpe, "manifest.json")) as f:
        manifest = json.load(f)
    assert info["train"]["bytes"] == manifest["splits"]["train"]["bytes"]
    # targets: tokens + BOS + EOS - 1 per document
    assert info["train"]["targets"] == manifest["splits"]["train"]["tokens"] + manifest["splits"]["train"]["documents"]
    assert math.isclose(info["targets_per_byte"], info["train"]["targets"] / info["train"]["bytes"])
    it = lm_data.make_iterator(cfg, "train", num_epochs=1)
    batches = list(it)
    tokens = np.concatenate([b["tokens"][b["weights"] > 0] for b in batches])
    targets = np.concatenate([b["targets"][b["weights"] > 0] for b in batches])
    assert len(targets) == info["train"]["targets"]
    assert tokens.max() < 300 and (targets == tok.eos_id).sum() == manifest["splits"]["train"]["documents"]
    assert np.all(np.concatenate([b["tokens"][b["weights"] == 0] for b in batches]) == tok.pad_id)


def _assert_state_restores(cfg):
    """Batches 4 and 5 of a fresh iterator given the JSON state after batch 3 equal the original's."""
    it = lm_data.make_iterator(cfg)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = [next(it) for _ in range(2)]
    it.close()
    fresh = lm_data.make_iterator(cfg)
    fresh.set_state(state)
    got = [next(fresh) for _ in range(2)]
    fresh.close()
    for a, b in zip(want, got):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_prepared_state_restores_and_hosts_are_disjoint(prepared_bpe):
    cfg = lm_data.DataConfig(source="prepared", path=prepared_bpe, seq_len=8, batch_size=4, prefetch_batches=0)
    _assert_state_restores(cfg)
    seen = []
    for h in range(2):
        rows = list(lm_data.make_iterator(cfg, shard_index=h, shard_count=2, num_epochs=1))
        seen.append(sum(int(b["weights"].sum()) for b in rows))
    assert sum(seen) == lm_data.dataset_info(cfg)["train"]["targets"]


def test_max_train_bytes_caps_prepared_training_split_only(prepared_bpe):
    full = lm_data.DataConfig(source="prepared", path=prepared_bpe, seq_len=16, batch_size=2)
    capped = lm_data.DataConfig(source="prepared", path=prepared_bpe, seq_len=16, batch_size=2, max_train_bytes=2000)
    a, b = lm_data.dataset_info(full), lm_data.dataset_info(capped)
    assert b["train"]["bytes"] == 2000 and b["train"]["targets"] < a["train"]["targets"]
    assert b["validation"] == a["validation"]


def test_training_on_a_prepared_directory(prepared_bpe, tmp_path):
    from experiments import train as train_cli

    result = train_cli.main([
        "--preset", "transformer", "--out", str(tmp_path / "runs"), "--model.d_model", "32",
        "--model.num_layers", "1", "--model.num_heads", "2", "--data.source", "prepared", "--data.path", prepared_bpe,
        "--data.seq_len", "16", "--data.batch_size", "4", "--train.steps", "4", "--train.eval_every", "4",
        "--train.eval_batches", "1", "--train.checkpoint_every", "4", "--train.progress", "false",
        "--sample-tokens", "4"])
    config = json.loads((tmp_path / "runs" / "train" / "config.json").read_text())
    assert config["model"]["vocab_size"] == 300  # followed the tokenizer
    assert np.isfinite(result["final_val_loss"])
    tpb = lm_data.dataset_info(lm_data.DataConfig(source="prepared", path=prepared_bpe, seq_len=16))["targets_per_byte"]
    assert math.isclose(result["final_val_bpb"], result["final_val_loss"] / math.log(2) * tpb, rel_tol=1e-6)


def test_model_vocab_smaller_than_the_tokenizer_is_refused(prepared_bpe, tmp_path):
    from lm.train import solo as train
    from lm.model.config import ModelConfig, RunConfig

    run = RunConfig(model=ModelConfig(d_model=16, num_layers=1, num_heads=1),
                    data=lm_data.DataConfig(source="prepared", path=prepared_bpe, seq_len=8, batch_size=2))
    lm_data.check_model_vocab(300, run.data)
    with pytest.raises(ValueError, match="vocab_size=259"):
        train.train(dataclasses.replace(run, model=dataclasses.replace(run.model, vocab_size=259)), tmp_path / "r")
    with pytest.raises(ValueError, match="DataConfig.path"):
        lm_data.DataConfig(source="prepared")


@pytest.mark.parametrize("kind", ["tokenizer.json", "sentencepiece"])
def test_prepare_with_a_local_tokenizer_file(corpus, tmp_path, kind):
    import io

    import sentencepiece as spm

    from lm.data import subword

    root, docs = corpus
    if kind == "tokenizer.json":
        path = subword.train_bpe(iter(docs), 280).save(str(tmp_path))
    else:
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(sentence_iterator=iter(docs), model_writer=model, vocab_size=300,
                                       byte_fallback=True, character_coverage=1.0, minloglevel=2,
                                       normalization_rule_name="identity", remove_extra_whitespaces=False)
        path = str(tmp_path / "sp.model")
        open(path, "wb").write(model.getvalue())
    out = tmp_path / "out"
    manifest = prepare.prepare(_cfg(root, tokenizer=path), str(out))["manifest"]
    assert manifest["tokenizer"]["kind"] == ("hf" if kind == "tokenizer.json" else "sentencepiece")
    assert manifest["tokenizer"]["vocab_size"] == (280 if kind == "tokenizer.json" else 301)
    assert sorted(_decoded(out, "train") + _decoded(out, "validation")) == sorted(docs)


def test_small_units_split_jsonl_by_byte_range_without_losing_a_line(corpus, tmp_path, monkeypatch):
    from lm.data import corpus as corpus_lib

    root, docs = corpus
    monkeypatch.setattr(corpus_lib, "UNIT_BYTES", 300)
    units = corpus_lib.plan_units(str(root))
    assert sum(u["kind"] == "jsonl" and u["stop"] is not None for u in units) > 5  # d.jsonl in many ranges
    out = tmp_path / "out"
    prepare.prepare(_cfg(root), str(out), workers=2)
    assert sorted(_decoded(out, "train") + _decoded(out, "validation")) == sorted(docs)


def test_worker_processes_keep_state_and_cover_the_epoch(prepared_bpe):
    cfg = lm_data.DataConfig(source="prepared", path=prepared_bpe, seq_len=32, batch_size=4, num_workers=2)
    _assert_state_restores(dataclasses.replace(cfg, num_workers=1))  # each worker process costs seconds to start
    epoch = lm_data.make_iterator(cfg, num_epochs=1)
    assert sum(float(b["weights"].sum()) for b in epoch) == lm_data.dataset_info(cfg)["train"]["targets"]
    epoch.close()
