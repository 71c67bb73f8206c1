"""Prepare a corpus once: tokenize its documents into token shards and a manifest.

Layout of a prepared directory ``OUT`` (read back by :mod:`lm.prepared`):

  plan.json                           the arguments and the work units (:func:`lm.corpus.plan_units`)
  tokenizer.json | tokenizer.model    the tokenizer (none for "byte")
  shards/<k>.<split>.tokens.bin       unit k's documents of ``split``, their tokens back to back,
                                      fixed-width little-endian uint16 (vocab <= 65536) or uint32
  shards/<k>.<split>.docs.npy         int64 [docs, 2]: (tokens, UTF-8 bytes) of each document
  shards/<k>.done.json                written last, atomically: the unit is finished (counts, sha256)
  manifest.json                       documents, tokens and bytes per split, the tokenizer, the
                                      source spec and a fingerprint; written when every unit is done

Documents are split into "train" / "validation" by a keyed hash of their text
(:func:`split_of`): deterministic, independent of order, sharding and workers, and a
document repeated in the corpus always lands in the same split. Resumable: a unit whose
``done.json`` exists is never redone, and a unit interrupted by a kill is rewritten from
scratch (its files are only renamed into place when complete). ``shard=(i, n)`` prepares
units i, i + n, ...; :func:`merge` writes the manifest once all units are done, so a job
array gives byte-identical output to one process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator

import numpy as np

from lm import corpus
from lm.subword import file_sha256, load_tokenizer, train_bpe
from lm.tokenizer import TOKENIZER_FILES, ByteTokenizer, parse_bpe_spec

FORMAT = "scalelab-prepared-v1"
PLAN, MANIFEST, SHARDS = "plan.json", "manifest.json", "shards"
SPLITS = ("train", "validation")
ENCODE_BATCH = 256


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """What to prepare.

    Attributes:
      input: a glob, a directory, or ``tfds:NAME[:VERSION]/SPLIT`` (:mod:`lm.corpus`).
      tokenizer: "byte", "bpe:VOCAB" (byte-level BPE trained on a sample of the training
        split), or a path to a tokenizer.json / SentencePiece .model.
      text_key: the text field of jsonl / parquet / TFDS records.
      validation_fraction: expected share of documents held out, in [0, 1).
      split_seed: key of the document hash that decides the split.
      tfds_data_dir: data directory of a TFDS input.
      tokenizer_sample_bytes: text of the training sample of "bpe:VOCAB".
    """

    input: str
    tokenizer: str = "byte"
    text_key: str = "text"
    validation_fraction: float = 0.01
    split_seed: int = 0
    tfds_data_dir: str | None = None
    tokenizer_sample_bytes: int = 256 << 20

    def __post_init__(self):
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction={self.validation_fraction}: must be in [0, 1)")
        if self.tokenizer_sample_bytes < 1:
            raise ValueError(f"tokenizer_sample_bytes={self.tokenizer_sample_bytes}: must be positive")
        if self.tokenizer != "byte" and parse_bpe_spec(self.tokenizer) is None:
            load_tokenizer(self.tokenizer)  # a bad path raises here, before any work


def split_of(text: str, fraction: float, seed: int) -> str:
    """"validation" for a share ``fraction`` of documents (blake2b of the UTF-8 text, keyed by seed)."""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=str(seed).encode())
    return "validation" if int.from_bytes(h.digest(), "little") < fraction * 2.0**64 else "train"


def _write_json(path: str, obj) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def shard_path(out: str, k: int, split: str, what: str) -> str:
    """Path of unit k's ``what`` file ("tokens.bin" | "docs.npy") of ``split``."""
    return os.path.join(out, SHARDS, f"{k:06d}.{split}.{what}")


def done_path(out: str, k: int) -> str:
    return os.path.join(out, SHARDS, f"{k:06d}.done.json")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def out_tokenizer(out: str):
    """The tokenizer stored in ``out`` (byte when there is no tokenizer file)."""
    return load_tokenizer(out) if any(os.path.isfile(os.path.join(out, n)) for n in TOKENIZER_FILES) else ByteTokenizer()


def _tokenizer_file_sha(out: str) -> str | None:
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(out, name)):
            return file_sha256(os.path.join(out, name))
    return None


def _sample_texts(cfg: PrepareConfig, units: list[dict]) -> Iterator[str]:
    """Training-split documents of the units in a seeded order, up to ``tokenizer_sample_bytes``."""
    total = 0
    for k in np.random.default_rng(cfg.split_seed).permutation(len(units)):
        for text in corpus.documents(units[k], cfg.text_key):
            if split_of(text, cfg.validation_fraction, cfg.split_seed) != "train":
                continue
            yield text
            total += len(text.encode("utf-8", "surrogatepass"))
            if total >= cfg.tokenizer_sample_bytes:
                return


def _ensure_tokenizer(cfg: PrepareConfig, out: str, units: list[dict]):
    """Train, copy or reuse the tokenizer of ``out``; returns it."""
    if cfg.tokenizer == "byte":
        return ByteTokenizer()
    have = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(out, n))]
    if have:
        return load_tokenizer(os.path.join(out, have[0]))
    vocab = parse_bpe_spec(cfg.tokenizer)
    tok = train_bpe(_sample_texts(cfg, units), vocab) if vocab else load_tokenizer(cfg.tokenizer)
    tok.save(out)
    return tok


def tokenize_unit(out: str, k: int, unit: dict, cfg: PrepareConfig, tok=None) -> dict:
    """Tokenize unit k into its shard files and its done marker; returns the marker's content."""
    tok = out_tokenizer(out) if tok is None else tok
    dtype = token_dtype(tok.vocab_size)
    parts: dict[str, list] = {s: [] for s in SPLITS}
    docs: dict[str, list] = {s: [] for s in SPLITS}

    def flush(texts: list[str]) -> None:
        for text, ids in zip(texts, tok.encode_batch(texts)):
            split = split_of(text, cfg.validation_fraction, cfg.split_seed)
            parts[split].append(ids.astype(dtype))
            docs[split].append((len(ids), len(text.encode("utf-8", "surrogatepass"))))

    batch: list[str] = []
    for text in corpus.documents(unit, cfg.text_key):
        batch.append(text)
        if len(batch) == ENCODE_BATCH:
            flush(batch)
            batch = []
    flush(batch)
    marker = {"unit": k, "token_dtype": dtype.str, "tokenizer_sha256": _tokenizer_file_sha(out), "splits": {}}
    for split in SPLITS:
        tokens = np.concatenate(parts[split]) if parts[split] else np.zeros(0, dtype)
        table = np.asarray(docs[split], dtype=np.int64).reshape(-1, 2)
        tpath, dpath = shard_path(out, k, split, "tokens.bin"), shard_path(out, k, split, "docs.npy")
        tokens.tofile(tpath + ".tmp")
        with open(dpath + ".tmp", "wb") as f:
            np.save(f, table)
        os.replace(tpath + ".tmp", tpath)
        os.replace(dpath + ".tmp", dpath)
        marker["splits"][split] = {
            "documents": int(len(table)), "tokens": int(table[:, 0].sum()), "bytes": int(table[:, 1].sum()),
            "sha256": hashlib.sha256(tokens.tobytes() + table.tobytes()).hexdigest()}
    _write_json(done_path(out, k), marker)
    return marker


def _work(job):
    out, k, unit, cfg = job
    return tokenize_unit(out, k, unit, cfg)


def _plan(cfg: PrepareConfig, out: str) -> dict:
    """The plan of ``out``: written on the first call, checked against ``cfg`` on later ones."""
    path = os.path.join(out, PLAN)
    args = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "tfds_data_dir"}
    if parse_bpe_spec(cfg.tokenizer) is None:  # only a trained tokenizer depends on the sample
        del args["tokenizer_sample_bytes"]
    if os.path.isfile(path):
        plan = _read_json(path)
        if plan.get("format") != FORMAT or plan["config"] != args:
            raise ValueError(f"--out={out!r} holds a preparation with other arguments {plan.get('config')}; "
                             f"use another --out (asked for {args})")
        return plan
    plan = {"format": FORMAT, "config": args, "units": corpus.plan_units(cfg.input, tfds_data_dir=cfg.tfds_data_dir)}
    _write_json(path, plan)
    return plan


def prepare_tokenizer(cfg: PrepareConfig, out: str) -> tuple[list[dict], object]:
    """Create ``out``, write or check its plan, and train / copy / reuse its tokenizer.

    Returns (the work units, the tokenizer). :func:`prepare` starts with it; a job array
    may run it once before the ``--shard`` jobs (training is deterministic anyway).
    """
    os.makedirs(os.path.join(out, SHARDS), exist_ok=True)
    units = _plan(cfg, out)["units"]
    return units, _ensure_tokenizer(cfg, out, units)


def prepare(cfg: PrepareConfig, out: str, *, shard: tuple[int, int] = (0, 1), workers: int = 1,
            progress=None) -> dict:
    """Prepare the units of ``shard`` (i, n) that are not done; with n == 1 also write the manifest.

    Args:
      cfg: what to prepare. out: the prepared directory (created).
      shard: (i, n): this call's units are i, i + n, i + 2n, ...
      workers: processes that tokenize units in parallel (1: in this process).
      progress: optional callable(done_units, total_units) called after each unit.

    Returns:
      {"units": units of the shard, "done_now": units tokenized by this call, "manifest": the manifest or None}.
    """
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard={i}/{n}: need 0 <= i < n")
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    units, tok = prepare_tokenizer(cfg, out)
    mine = [k for k in range(i, len(units), n)]
    todo = [k for k in mine if not os.path.isfile(done_path(out, k))]
    done_count = len(mine) - len(todo)
    jobs = [(out, k, units[k], cfg) for k in todo]
    if workers == 1 or len(jobs) <= 1:
        results = (tokenize_unit(out, k, u, c, tok) for out, k, u, c in jobs)
    else:
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_quiet_worker)
        results = pool.imap_unordered(_work, jobs)
    try:
        for _ in results:
            done_count += 1
            if progress:
                progress(done_count, len(mine))
    finally:
        if workers > 1 and len(jobs) > 1:
            pool.close()
            pool.join()
    manifest = merge(out) if n == 1 else None
    return {"units": len(mine), "done_now": len(jobs), "manifest": manifest}


def _quiet_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process


def merge(out: str) -> dict:
    """Check that every unit of ``out`` is done with one tokenizer; write and return manifest.json."""
    if not os.path.isfile(os.path.join(out, PLAN)):
        raise ValueError(f"--merge: {out!r} holds no {PLAN}; run the --shard jobs into this --out first")
    plan = _read_json(os.path.join(out, PLAN))
    units = plan["units"]
    missing = [k for k in range(len(units)) if not os.path.isfile(done_path(out, k))]
    if missing:
        raise ValueError(f"--merge: {len(missing)} of {len(units)} units of {out!r} are not done "
                         f"(first: {missing[:5]}); run the missing --shard jobs first")
    tok = out_tokenizer(out)
    tok_sha = _tokenizer_file_sha(out)
    markers = [_read_json(done_path(out, k)) for k in range(len(units))]
    stale = [m["unit"] for m in markers if m["tokenizer_sha256"] != tok_sha]
    if stale:
        raise ValueError(f"--merge: units {stale[:5]} were tokenized with another tokenizer than {out}'s; "
                         "delete their shards/<unit>.done.json and rerun")
    splits = {s: {f: sum(m["splits"][s][f] for m in markers) for f in ("documents", "tokens", "bytes")}
              for s in SPLITS}
    fingerprint = hashlib.sha256(json.dumps(
        [plan["config"], tok_sha, [[m["splits"][s]["sha256"] for s in SPLITS] for m in markers]]).encode()).hexdigest()
    file = next((name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(out, name))), None)
    manifest = {
        "format": FORMAT, "source": plan["config"]["input"], "text_key": plan["config"]["text_key"],
        "validation_fraction": plan["config"]["validation_fraction"], "split_seed": plan["config"]["split_seed"],
        "tokenizer": {"spec": plan["config"]["tokenizer"], "file": file, "sha256": tok_sha, **tok.describe()},
        "token_dtype": token_dtype(tok.vocab_size).str, "units": len(units), "splits": splits,
        "fingerprint": fingerprint[:16],
    }
    _write_json(os.path.join(out, MANIFEST), manifest)
    return manifest
