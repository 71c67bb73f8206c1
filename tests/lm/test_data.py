"""Data pipelines: config errors, splits, packing invariants, determinism, exact restore,
sharding, and the synthetic source's entropy rate."""

import collections
import dataclasses
import json
import math
import os

import numpy as np
import pytest

from lm.data import pipeline as data, markov
from lm.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


# ---------------------------------------------------------------- helpers


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _pairs(batches):
    """Counter of (token, target) over weighted slots."""
    out = collections.Counter()
    for b in batches:
        on = b["weights"] > 0
        out.update(zip(b["tokens"][on].tolist(), b["targets"][on].tolist()))
    return out


def _doc_pairs(docs, bos, eos):
    """Counter of (token, next token) of documents given as bytes (reference)."""
    out = collections.Counter()
    for d in docs:
        t = ([BOS_ID] if bos else []) + list(d) + ([EOS_ID] if eos else [])
        out.update(zip(t[:-1], t[1:]))
    return out


@pytest.fixture(scope="module")
def de_bruijn_files(tmp_path_factory):
    """20 files cut from a de Bruijn sequence B(256, 2): every byte bigram inside the
    corpus is unique, so a (token, target) pair identifies where it came from."""
    root = tmp_path_factory.mktemp("corpus")
    seq = markov.de_bruijn(256, 2).astype(np.uint8).tobytes()
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, 6000), size=19, replace=False))
    docs = [seq[a:b] for a, b in zip([0, *cuts], [*cuts, 6000])]
    docs[3] = seq[6000:6900]  # one document much longer than seq_len
    for i, d in enumerate(docs):
        (root / f"doc{i:02d}.txt").write_bytes(d)
    (root / "sub").mkdir()
    return str(root), docs


def _files_cfg(root, **kw):
    base = dict(
        source="files", files_glob=os.path.join(root, "*.txt"), seq_len=32, batch_size=4,
        val_fraction=0.25, add_bos=False, add_eos=False, prefetch_batches=0,
    )
    return data.DataConfig(**{**base, **kw})


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(source="wiki"), "source"),
        (dict(seq_len=0), "seq_len"),
        (dict(batch_size=-2), "batch_size"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(source="files"), "files_glob"),
        (dict(source="tfds"), "tfds_name"),
        (dict(synthetic_branching=1), "synthetic_branching"),
        (dict(synthetic_alphabet=300), "synthetic_alphabet"),
        (dict(synthetic_order=4), "synthetic_order"),  # 256^4 contexts: too many
        (dict(max_bytes=0), "max_bytes"),
    ],
)
def test_config_errors_name_field_and_value(kw, field):
    with pytest.raises(ValueError, match=rf"DataConfig\.{field}="):
        data.DataConfig(**kw)


def test_bad_split_and_shards_raise():
    cfg = data.DataConfig(max_bytes=10_000)
    with pytest.raises(ValueError, match="split"):
        data.make_iterator(cfg, "dev")
    with pytest.raises(ValueError, match="batch_size"):
        data.make_iterator(cfg, shard_count=3)
    with pytest.raises(ValueError, match="shard_index"):
        data.make_iterator(cfg, shard_index=2, shard_count=2)


# ---------------------------------------------------------------- stdlib corpus


def test_stdlib_files_exclude_tests_and_split_is_disjoint_by_file():
    files = data.data_sources.stdlib_files()
    assert len(files) > 100 and all(f.endswith(".py") for f in files)
    for f in files:
        parts = set(f.split(os.sep))
        assert not parts & {"test", "tests", "idle_test", "site-packages"}, f
    cfg = data.DataConfig()
    train = data.split_files(cfg, "train")
    val = data.split_files(cfg, "validation")
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == sorted(files)
    assert len(val) == round(0.1 * len(files))
    assert data.split_files(dataclasses.replace(cfg, seed=5), "validation") == val  # order seed
    assert data.split_files(dataclasses.replace(cfg, split_seed=1), "validation") != val
    info = data.dataset_info(cfg)
    total = sum(os.path.getsize(f) for f in files)
    assert info["train"]["bytes"] + info["validation"]["bytes"] == total
    assert info["train"]["documents"] == len(train)


def test_stdlib_batches_hold_the_text_of_the_split_files():
    cfg = data.DataConfig(seq_len=64, batch_size=4, max_bytes=20_000)
    batch = next(data.make_iterator(cfg))
    src = data.make_source(cfg, "train")
    assert src.lengths.sum() == 20_000
    corpus = b"".join(src.read(i) for i in range(len(src)))
    longest = 0
    for r in range(4):
        for s in np.unique(batch["segment_ids"][r][batch["segment_ids"][r] > 0]):
            seg = batch["tokens"][r][batch["segment_ids"][r] == s]
            text = bytes(int(v) for v in seg if v < 256)
            assert text in corpus
            longest = max(longest, len(text))
    assert longest > 32


# ---------------------------------------------------------------- packing


def test_packing_invariants_and_pairs_of_one_epoch(de_bruijn_files):
    root, docs = de_bruijn_files
    for bos, eos in [(False, False), (True, True)]:
        cfg = _files_cfg(root, add_bos=bos, add_eos=eos)
        batches = list(data.make_iterator(cfg, "train", num_epochs=1))
        for b in batches:
            assert set(b) == set(data.packing.FEATURES)
            for k in b:
                assert b[k].shape == (4, 32)
            assert b["tokens"].dtype == np.int32 and b["weights"].dtype == np.float32
            seg, pos = b["segment_ids"], b["positions"]
            np.testing.assert_array_equal(b["weights"], (seg > 0).astype(np.float32))
            assert np.all(b["tokens"][seg == 0] == PAD_ID)
            for r in range(4):
                # segment ids 1, 2, ... in order, padding only at the end of a row
                ids = seg[r][seg[r] > 0]
                if len(ids) == 0:  # an empty row completing the last batch
                    assert b is batches[-1]
                    continue
                assert ids[0] == 1 and np.all(np.diff(ids) >= 0) and np.all(np.diff(ids) <= 1)
                assert np.all(seg[r][len(ids):] == 0)
                for s in np.unique(ids):
                    m = seg[r] == s
                    np.testing.assert_array_equal(pos[r][m], np.arange(m.sum()))
                    # inside a segment the next input token is the current target
                    np.testing.assert_array_equal(b["tokens"][r][m][1:], b["targets"][r][m][:-1])
        train_files = data.split_files(cfg, "train")
        train_docs = [open(f, "rb").read() for f in train_files]
        assert _pairs(batches) == _doc_pairs(train_docs, bos, eos)
        # at most one row of the epoch is partly padded (the rest are full or empty rows
        # that complete the last batch)
        rows = np.concatenate([b["weights"] for b in batches])
        assert ((rows.sum(1) > 0) & (rows.sum(1) < 32)).sum() <= 1
        assert (rows.sum(1) == 0).sum() < 4 and (rows[-1].sum() == 0) == ((rows.sum(1) == 0).sum() > 0)


def test_long_document_is_split_into_chunks(de_bruijn_files):
    root, docs = de_bruijn_files
    cfg = _files_cfg(root, val_fraction=0.0)
    batches = list(data.make_iterator(cfg, num_epochs=1))
    segs = sum(int((b["segment_ids"] > 0).any(1).sum()) for b in batches)
    n_pairs = sum(len(d) - 1 for d in docs)
    assert segs >= math.ceil(n_pairs / 32)
    assert max(int(b["positions"].max()) for b in batches) == 31
    assert _pairs(batches) == _doc_pairs(docs, False, False)


def test_train_and_validation_are_disjoint_files(de_bruijn_files):
    root, docs = de_bruijn_files
    cfg = _files_cfg(root)
    train = _pairs(data.make_iterator(cfg, "train", num_epochs=1))
    val = _pairs(data.make_iterator(cfg, "validation", num_epochs=1))
    assert len(val) > 0 and not set(train) & set(val)
    assert train + val == _doc_pairs(docs, False, False)
    assert data.dataset_info(cfg)["validation"]["documents"] == 5


def test_shards_are_disjoint_and_cover_the_epoch(de_bruijn_files):
    root, docs = de_bruijn_files
    cfg = _files_cfg(root, val_fraction=0.0)
    full = _pairs(data.make_iterator(cfg, num_epochs=1))
    shards = []
    for h in range(2):
        batches = list(data.make_iterator(cfg, shard_index=h, shard_count=2, num_epochs=1))
        assert all(b["tokens"].shape == (2, 32) for b in batches)
        shards.append(_pairs(batches))
    assert shards[0] and shards[1] and not set(shards[0]) & set(shards[1])
    assert shards[0] + shards[1] == full


def test_each_epoch_is_reshuffled_and_complete(de_bruijn_files):
    root, docs = de_bruijn_files
    cfg = _files_cfg(root, val_fraction=0.0, batch_size=1)
    one = list(data.make_iterator(cfg, num_epochs=1))
    two = list(data.make_iterator(cfg, num_epochs=2))
    first = [b["tokens"] for b in one]
    assert _pairs(two) == _doc_pairs(docs, False, False) + _doc_pairs(docs, False, False)
    second = [b["tokens"] for b in two[len(one) :]]
    assert any(not np.array_equal(x, y) for x, y in zip(first, second))


# ---------------------------------------------------------------- determinism and restore


def test_same_seed_same_batches_other_seed_other_order():
    cfg = data.DataConfig(seq_len=32, batch_size=2, max_bytes=50_000)
    a = _take(data.make_iterator(cfg), 5)
    b = _take(data.make_iterator(cfg), 5)
    _assert_batches_equal(a, b)
    c = _take(data.make_iterator(dataclasses.replace(cfg, seed=1)), 5)
    assert not all(np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(a, c))


@pytest.mark.parametrize(
    "cfg",
    [
        data.DataConfig(seq_len=24, batch_size=4, max_bytes=60_000),  # stdlib, prefetch thread
        data.DataConfig(
            source="synthetic", seq_len=40, batch_size=2, synthetic_doc_len=50,
            synthetic_num_tokens=20_000, num_threads=2, prefetch_batches=0,
        ),
    ],
    ids=["stdlib", "synthetic"],
)
def test_state_restores_exactly_after_json_round_trip(cfg):
    it = data.make_iterator(cfg)
    ref = _take(it, 40)
    for n in (0, 1, 3, 7, 12):
        it = data.make_iterator(cfg)
        _take(it, n)
        state = json.loads(json.dumps(it.get_state()))
        after = _take(it, 6)
        _assert_batches_equal(after, ref[n : n + 6])
        fresh = data.make_iterator(cfg)
        fresh.set_state(state)
        _assert_batches_equal(_take(fresh, 6), after)


def test_state_restores_mid_document_in_files(de_bruijn_files):
    root, _ = de_bruijn_files
    cfg = _files_cfg(root, batch_size=1, seq_len=20)
    it = data.make_iterator(cfg, num_epochs=3)
    ref = list(it)
    assert len(ref) > 400
    for n in (0, 1, 5, 33, 101, len(ref) // 2 + 3, len(ref) - 2):
        it = data.make_iterator(cfg, num_epochs=3)
        _take(it, n)
        fresh = data.make_iterator(cfg, num_epochs=3)
        fresh.set_state(json.loads(json.dumps(it.get_state())))
        _assert_batches_equal(list(fresh), ref[n:])


# ---------------------------------------------------------------- synthetic source


def test_synthetic_entropy_rate_matches_documents_of_the_pipeline():
    cfg = data.DataConfig(
        source="synthetic", synthetic_alphabet=12, synthetic_order=2, synthetic_branching=3,
        synthetic_doc_len=2000, synthetic_num_tokens=300_000, seq_len=64, batch_size=4,
        prefetch_batches=0,
    )
    exact = data.entropy_rate_bits(cfg)
    info = data.dataset_info(cfg)
    assert info["entropy_rate_bits_per_byte"] == exact
    assert info["train"]["documents"] == 150
    src = data.make_source(cfg, "train")
    a = cfg.synthetic_alphabet
    joint = np.zeros(a**3)
    for i in range(len(src)):
        x = np.frombuffer(src.read(i), np.uint8).astype(np.int64)
        np.add.at(joint, (x[:-2] * a + x[1:-1]) * a + x[2:], 1)
    n = joint.sum()
    pc = joint.reshape(-1, a).sum(1)
    nz, nzc = joint[joint > 0], pc[pc > 0]
    emp = -np.sum(nz / n * np.log2(nz / n)) + np.sum(nzc / n * np.log2(nzc / n))
    emp += (len(nz) - len(nzc)) / (2 * n * np.log(2))  # Miller-Madow
    assert emp == pytest.approx(exact, abs=0.01)
    # the batches carry those documents: a row is BOS + the first 63 bytes of document 0
    rows = np.concatenate([b["tokens"] for b in _take(data.make_iterator(cfg), 4)])
    starts = [r[1:].tolist() for r in rows if r[0] == BOS_ID]
    assert list(src.read(0, 0, 63)) in starts
    # validation documents are other samples of the same chain
    assert data.make_source(cfg, "validation").read(0) != src.read(0)


def test_entropy_rate_needs_synthetic_and_bits_per_byte():
    with pytest.raises(ValueError, match="source"):
        data.entropy_rate_bits(data.DataConfig())
    assert data.bits_per_byte(math.log(2.0)) == pytest.approx(1.0)
    assert data.bits_per_byte(2 * math.log(2.0), targets_per_byte=1.5) == pytest.approx(3.0)


# ---------------------------------------------------------------- tfds


def test_tfds_data_source_of_a_tiny_local_dataset(tmp_path):
    import tensorflow_datasets as tfds

    from tests.lm import tfds_tiny

    tfds_tiny.build(str(tmp_path))
    cfg = data.DataConfig(
        source="tfds", tfds_name="tiny_corpus", tfds_split_train="train", tfds_split_val="test",
        tfds_data_dir=str(tmp_path), seq_len=16, batch_size=2, prefetch_batches=0,
    )
    texts = [ex["text"] for ex in tfds.data_source("tiny_corpus", split="train", data_dir=str(tmp_path))]
    batches = list(data.make_iterator(cfg, num_epochs=1))
    it = data.make_iterator(cfg, num_epochs=1)
    _take(it, 2)
    fresh = data.make_iterator(cfg, num_epochs=1)
    fresh.set_state(json.loads(json.dumps(it.get_state())))
    rest = list(fresh)
    data.make_source.cache_clear()
    docs = [t.encode() if isinstance(t, str) else bytes(t) for t in texts]
    assert sorted(d.decode() for d in docs) == sorted(tfds_tiny.tiny_text(i) for i in range(30))
    assert _pairs(batches) == _doc_pairs(docs, True, True)
    _assert_batches_equal(rest, batches[2:])


def test_warmup_excess_is_sum_of_conditional_entropy_excesses():
    cfg = data.DataConfig(source="synthetic", synthetic_alphabet=5, synthetic_order=3, synthetic_branching=2)
    chain = data.synthetic_chain(cfg)
    x = markov.sample(chain, np.random.default_rng(1), 300_000).astype(np.int64)

    def h_cond(m):  # empirical H(X_m | X_1..X_{m-1}) from the sample (plug-in)
        def h_block(j):
            if j == 0:
                return 0.0
            codes = sum(x[i : len(x) - j + 1 + i] * 5 ** (j - 1 - i) for i in range(j))
            p = np.bincount(codes) / len(codes)
            p = p[p > 0]
            return -np.sum(p * np.log2(p))

        return h_block(m) - h_block(m - 1)

    rate = data.entropy_rate_bits(cfg)
    ex = data.warmup_excess_bits(cfg)
    assert ex["after_bos"] == pytest.approx(sum(h_cond(m) - rate for m in (1, 2, 3)), abs=0.01)
    assert ex["mid_document"] == pytest.approx(sum(h_cond(m) - rate for m in (2, 3)), abs=0.01)
    assert ex["after_bos"] > ex["mid_document"] > 0


def test_empty_validation_split_is_a_clear_error(de_bruijn_files):
    root, _ = de_bruijn_files
    cfg = _files_cfg(root, val_fraction=0.0)
    with pytest.raises(ValueError, match="validation"):
        data.make_iterator(cfg, "validation")
