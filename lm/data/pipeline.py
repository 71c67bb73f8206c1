"""Data pipelines (grain): sources -> byte tokens -> packed rows -> batches.

Sources (``DataConfig.source``; the config is :mod:`lm.data.config`, also importable from here):
  "stdlib"     the *.py files of the running interpreter's standard library (test folders
               excluded; real text on every machine, nothing to download), split by FILE
               into train / validation with ``split_seed``; no file is in both splits.
  "synthetic"  a sparse random order-k Markov chain over bytes (:mod:`lm.data.markov`) whose
               entropy rate is known exactly (``entropy_rate_bits``): the truth against
               which a fitted irreducible loss E (Hoffmann et al. 2022, Eq. 2) is checked.
  "files"      local text files matching ``files_glob``, split by file like "stdlib".
  "tfds"       any TFDS dataset through ``tfds.data_source`` (ArrayRecord random access;
               TensorFlow is not needed), splits ``tfds_split_train`` / ``tfds_split_val``.
  "prepared"   a directory ``path`` written by ``python -m experiments.prepare_data``
               (:mod:`lm.data.prepare`): documents already tokenized (byte, BPE or SentencePiece)
               and split, memory-mapped token shards read by random access (:mod:`lm.data.shard_reader`).

Tokens are bytes (:mod:`lm.data.tokenizer`, VOCAB_SIZE = 259) except for "prepared", whose
tokenizer is the one stored with the data (:func:`tokenizer`, :func:`vocab_size`; the
model's ``vocab_size`` must be at least that). Packing (:mod:`lm.data.packing`):
documents become (token, next token) pairs, cut into pieces of at most seq_len pairs,
shuffled (deterministically in ``seed``; reshuffled every epoch), and packed into rows by
grain's ConcatThenSplit. A batch is

  tokens       int32   [b, t]  input tokens (PAD_ID on padding)
  targets      int32   [b, t]  the next token of the same document (PAD_ID on padding)
  segment_ids  int32   [b, t]  1, 2, ... per segment of a row, 0 on padding
  positions    int32   [b, t]  0, 1, ... restarting at every segment
  weights      float32 [b, t]  1.0 where a target exists, 0.0 on padding

with b = batch_size / shard_count rows on each of shard_count hosts (host h reads the
pieces h, h + S, h + 2S, ... of each epoch's global permutation: disjoint slices of the
data, together the global batch) and t = seq_len. The iterator's ``get_state()`` (a JSON
dict) is saved with checkpoints; ``set_state`` on a fresh iterator restores it exactly.

Before step 0 a run checks its data (:mod:`lm.data.check`): :func:`check_splits` refuses a
split that cannot fill a batch (no documents, e.g. a corpus prepared without validation
documents), and opening a prepared directory checks its manifest and shard sizes.

Axis letters: b rows of the per-host batch, t slots of a row (seq_len).
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any

import grain
import numpy as np
from grain.experimental import ThreadPrefetchIterDataset

from lm.data import sources as data_sources, markov, packing, shard_reader as prepared
from lm.data.config import DataConfig
from lm.data.sources import SPLITS
from lm.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, ByteTokenizer  # noqa: F401  (re-exported)

def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: allowed values are {SPLITS}")


def synthetic_chain(cfg: DataConfig) -> markov.MarkovChain:
    """The Markov chain of the "synthetic" source of ``cfg``."""
    return markov.make_chain(
        cfg.synthetic_alphabet,
        cfg.synthetic_order,
        cfg.synthetic_branching,
        float(cfg.synthetic_concentration),
        cfg.synthetic_seed,
    )


def split_files(cfg: DataConfig, split: str) -> tuple[str, ...]:
    """The files of ``split`` for the "stdlib" and "files" sources (disjoint across splits)."""
    paths = data_sources.stdlib_files() if cfg.source == "stdlib" else data_sources.glob_files(cfg.files_glob)
    return data_sources.split_by_file(paths, cfg.val_fraction, cfg.split_seed)[split]


def split_max_bytes(cfg: DataConfig, split: str) -> int | None:
    """The byte cap of ``split``: ``max_bytes``, and for "train" also ``max_train_bytes`` (the smaller)."""
    _check_split(split)
    caps = [c for c in (cfg.max_bytes, cfg.max_train_bytes if split == "train" else None) if c is not None]
    return min(caps) if caps else None


def _stamp(cfg: DataConfig) -> int | None:
    """What keys the caches of ``cfg``'s data besides ``cfg``: a prepared corpus replaced in place is read afresh."""
    return prepared.stamp(cfg.path) if cfg.source == "prepared" else None


def make_source(cfg: DataConfig, split: str):
    """The document source (:mod:`lm.data.sources`) of ``split`` ("train" | "validation").

    Cached per (cfg, split) while the data is unchanged; opening a prepared directory checks
    its manifest and shard sizes (:mod:`lm.data.shard_reader`).
    """
    _check_split(split)
    return _make_source(cfg, split, _stamp(cfg))


@functools.lru_cache(maxsize=16)
def _make_source(cfg: DataConfig, split: str, stamp: int | None):
    if cfg.source == "prepared":
        return prepared.PreparedSource(cfg.path, split, split_max_bytes(cfg, split))
    if cfg.source in ("stdlib", "files"):
        return data_sources.FileSource(split_files(cfg, split), split_max_bytes(cfg, split))
    if cfg.source == "synthetic":
        num_train = max(1, cfg.synthetic_num_tokens // cfg.synthetic_doc_len)
        num = num_train if split == "train" else int(round(cfg.val_fraction * num_train))
        if split == "validation" and cfg.val_fraction > 0:
            num = max(num, 1)
        return data_sources.SyntheticSource(
            synthetic_chain(cfg),
            num_docs=num,
            doc_len=cfg.synthetic_doc_len,
            seed=cfg.synthetic_seed,
            split_id=SPLITS.index(split),
        )
    tfds_split = cfg.tfds_split_train if split == "train" else cfg.tfds_split_val
    return data_sources.TfdsSource(
        cfg.tfds_name, tfds_split, text_key=cfg.tfds_text_key, data_dir=cfg.tfds_data_dir
    )


make_source.cache_clear = _make_source.cache_clear  # releases open sources (tfds files, memory maps)


def _pieces(cfg: DataConfig, source) -> np.ndarray:
    """int64 [p, 3] (document, first token, end token or -1 = whole document)."""
    if source.lengths is None:
        n = len(source)
        return np.stack([np.arange(n), np.zeros(n, np.int64), np.full(n, -1, np.int64)], axis=1)
    return packing.piece_table(source.lengths, seq_len=cfg.seq_len, add_bos=cfg.add_bos, add_eos=cfg.add_eos)


def _split_advice(cfg: DataConfig, split: str) -> str:
    """What decides the size of ``split`` of ``cfg`` and how to enlarge it (for the messages below)."""
    caps = f"max_bytes={cfg.max_bytes}, max_train_bytes={cfg.max_train_bytes}"
    if cfg.source == "prepared":
        frac = prepared.read_manifest(cfg.path).get("validation_fraction")
        return (f"prepared data {cfg.path}, prepared with --validation-fraction {frac}; "
                + ("prepare it again with a larger --validation-fraction or more documents" if split == "validation"
                   else f"{caps}; prepare a larger corpus or raise the caps"))
    if cfg.source in ("stdlib", "files"):
        return (f"source {cfg.source!r}, a split holds whole files; DataConfig.val_fraction={cfg.val_fraction}, "
                f"{caps}; "
                + ("raise val_fraction or match more files" if split == "validation"
                   else "raise the caps, lower val_fraction or match more files"))
    if cfg.source == "tfds":
        name = cfg.tfds_split_val if split == "validation" else cfg.tfds_split_train
        return f"tfds {cfg.tfds_name} split {name!r}; choose a split with documents"
    return f"source 'synthetic', DataConfig.val_fraction={cfg.val_fraction}; raise val_fraction"


def _checked_pieces(cfg: DataConfig, split: str, shard_count: int = 1) -> tuple[Any, np.ndarray]:
    """(source, pieces) of ``split``; ValueError (one line) when it cannot fill a batch on every host."""
    source = make_source(cfg, split)
    if len(source) == 0:
        raise ValueError(f"the {split} split has no documents ({_split_advice(cfg, split)})")
    pieces = _pieces(cfg, source)
    if len(pieces) < shard_count:
        raise ValueError(f"the {split} split has {len(pieces)} pieces of text (documents with a target), fewer "
                         f"than shard_count={shard_count} ({_split_advice(cfg, split)})")
    return source, pieces


def check_splits(cfg: DataConfig, *, validation: bool = True, shard_count: int = 1) -> None:
    """Raise ValueError (one line naming the split) before training when the training split,
    or with ``validation`` the validation split, has no documents or fewer pieces of text
    than hosts: every split the pipeline packs into batches then fills them (rows are padded,
    the training split repeats), so a run cannot fail on its data after step 0."""
    for split in SPLITS if validation else ("train",):
        _checked_pieces(cfg, split, shard_count)


def make_iterator(
    cfg: DataConfig,
    split: str = "train",
    *,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
) -> packing.CheckpointableIterator:
    """Iterator of batches (dict of [batch_size / shard_count, seq_len] arrays, see module).

    Args:
      cfg: the data config.
      split: "train" or "validation".
      shard_index, shard_count: this host's slice of the global batch (jax.process_index(),
        jax.process_count() in a multi-host run).
      num_epochs: passes over the split; None repeats forever. The last batch of a finite
        run is completed with empty rows (weights 0).

    Returns:
      A grain DatasetIterator with get_state() / set_state(state) (exact restore).
    """
    _check_split(split)
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index}: must be in [0, shard_count={shard_count})")
    if cfg.batch_size % shard_count:
        raise ValueError(
            f"DataConfig.batch_size={cfg.batch_size}: must be divisible by shard_count={shard_count}"
        )
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs={num_epochs}: must be None (forever) or >= 1")
    source, pieces = _checked_pieces(cfg, split, shard_count)
    ds = grain.MapDataset.source(pieces)
    if cfg.source != "synthetic":  # synthetic documents are i.i.d. already
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds[shard_index::shard_count].repeat(num_epochs)

    tok = tokenizer(cfg)
    bos_id, eos_id, pad_id = tok.bos_id, tok.eos_id, tok.pad_id  # plain ints travel to worker processes

    def read_piece(piece: np.ndarray) -> dict[str, np.ndarray]:
        doc, start, stop = (int(v) for v in piece)
        tokens = packing.read_tokens(source, doc, start, None if stop < 0 else stop, add_bos=cfg.add_bos,
                                     add_eos=cfg.add_eos, bos_id=bos_id, eos_id=eos_id)
        return packing.to_pair(tokens)

    read_options = grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=max(4 * cfg.num_threads, 1))
    pairs = ds.map(read_piece).to_iter_dataset(read_options)
    rows_per_host = cfg.batch_size // shard_count
    batches = (
        packing.pack(pairs, cfg.seq_len, pad_id=pad_id)
        .batch(rows_per_host, drop_remainder=False)
        .map(functools.partial(packing.pad_batch, rows=rows_per_host, pad_id=pad_id))
    )
    if cfg.num_workers:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain reads an absl flag in mp_prefetch (google/grain#1355)
            flags.FLAGS.mark_as_parsed()
        batches = batches.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.num_workers))
    elif cfg.prefetch_batches:
        batches = ThreadPrefetchIterDataset(batches, prefetch_buffer_size=cfg.prefetch_batches)
    return packing.CheckpointableIterator(iter(batches))


def tokenizer(cfg: DataConfig):
    """The tokenizer of ``cfg``'s tokens: the byte tokenizer, or the one stored with prepared data."""
    return prepared.tokenizer(cfg.path) if cfg.source == "prepared" else ByteTokenizer()


def vocab_size(cfg: DataConfig) -> int:
    """Token ids the data can hold (the model's ``vocab_size`` must be at least this)."""
    return prepared.vocab_size(cfg.path) if cfg.source == "prepared" else VOCAB_SIZE


def check_model_vocab(model_vocab_size: int, cfg: DataConfig) -> None:
    """Raise ValueError when a model of ``model_vocab_size`` tokens cannot embed the data's tokens."""
    need = vocab_size(cfg)
    if model_vocab_size < need:
        raise ValueError(f"ModelConfig.vocab_size={model_vocab_size}: the data ({cfg.source}"
                         f"{' ' + str(cfg.path) if cfg.path else ''}) has {need} token ids; set vocab_size >= {need}")


def _require_synthetic(cfg: DataConfig) -> None:
    if cfg.source != "synthetic":
        raise ValueError(f'DataConfig.source={cfg.source!r}: the entropy rate is known only for "synthetic"')


def entropy_rate_bits(cfg: DataConfig) -> float:
    """Exact entropy rate of the "synthetic" source in bits per byte (lm.data.markov)."""
    _require_synthetic(cfg)
    return markov.entropy_rate_bits(synthetic_chain(cfg))


def warmup_excess_bits(cfg: DataConfig) -> dict[str, float]:
    """Extra bits, above k * entropy rate, that even the true model pays over the first
    targets of a segment, because a segment sees no context before its start:

      after_bos:   sum_{m=1..k} H(X_m | X_<m) - k H = H(X_1..X_k) - k H
                   (segment starting at a document's BOS, targets X_1, X_2, ...);
      mid_document: sum_{m=2..k} H(X_m | X_<m) - (k - 1) H = H(X_1..X_k) - H(X_1) - (k - 1) H
                   (segment starting inside a document, its first input byte given).

    The best achievable mean loss over byte targets is the entropy rate plus these
    excesses times (segments of each kind) / (byte targets); with seq_len >> k the
    difference is O(k / seq_len).
    """
    _require_synthetic(cfg)
    chain = synthetic_chain(cfg)
    k, rate = chain.order, markov.entropy_rate_bits(chain)
    block_k = markov.block_entropy_bits(chain, k)
    return {
        "after_bos": block_k - k * rate,
        "mid_document": block_k - markov.block_entropy_bits(chain, 1) - (k - 1) * rate,
    }


def bits_per_byte(loss_nats_per_token: float, targets_per_byte: float = 1.0) -> float:
    """Bits per byte of a mean cross-entropy over targets (nats/target).

    bpb = loss / ln 2 * targets_per_byte; targets_per_byte (``dataset_info``: targets over
    UTF-8 bytes of text) counts the EOS targets that are not bytes, and for subword
    tokenizers the bytes each token stands for, so bpb compares across tokenizers.
    """
    return float(loss_nats_per_token) / math.log(2.0) * float(targets_per_byte)


def dataset_info(cfg: DataConfig) -> dict[str, Any]:
    """Sizes per split and, for "synthetic", the exact entropy rate.

    Returns a JSON-friendly dict: source, vocab_size, per split {documents, bytes (of text;
    for "prepared" the UTF-8 bytes of the documents before tokenization), targets
    (training pairs), rows (seq_len rows one epoch fills)} (bytes/targets/rows None when
    unknown without reading the data, as for tfds), targets_per_byte (train), and for
    "synthetic" entropy_rate_bits_per_byte plus the chain's shape.
    """
    return copy.deepcopy(_dataset_info(cfg, _stamp(cfg)))


@functools.lru_cache(maxsize=16)
def _dataset_info(cfg: DataConfig, stamp: int | None) -> dict[str, Any]:
    info: dict[str, Any] = {"source": cfg.source, "vocab_size": vocab_size(cfg), "seq_len": cfg.seq_len}
    if cfg.source == "prepared":
        manifest = prepared.read_manifest(cfg.path)
        info.update(path=cfg.path, fingerprint=manifest["fingerprint"], tokenizer=manifest["tokenizer"])
    for split in SPLITS:
        source = make_source(cfg, split)
        entry: dict[str, Any] = {"documents": len(source), "bytes": None, "targets": None, "rows": None}
        if source.lengths is not None:
            pieces = _pieces(cfg, source)
            targets = int((pieces[:, 2] - pieces[:, 1] - 1).sum()) if len(pieces) else 0
            text_bytes = int(getattr(source, "doc_bytes", source.lengths).sum())
            entry.update(bytes=text_bytes, targets=targets, rows=-(-targets // cfg.seq_len))
        info[split] = entry
    train = info.get("train", {})
    if train.get("bytes"):
        info["targets_per_byte"] = train["targets"] / train["bytes"]
    if cfg.source == "synthetic":
        chain = synthetic_chain(cfg)
        info["entropy_rate_bits_per_byte"] = markov.entropy_rate_bits(chain)
        info["synthetic"] = {
            "alphabet": chain.alphabet,
            "order": chain.order,
            "contexts": chain.num_contexts,
            "branching": cfg.synthetic_branching,
            "first_byte_entropy_bits": markov.block_entropy_bits(chain, 1),
        }
        info["synthetic"].update(warmup_excess_bits(cfg))
    return info
