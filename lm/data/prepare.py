"""Prepare a corpus once: tokenize its documents into token shards and a manifest.

Layout of a prepared directory ``OUT`` (read back by :mod:`lm.data.shard_reader`):

  plan.json                           the arguments, the input listing and the work units
                                      (:mod:`lm.data.plan`, :func:`lm.data.corpus.plan_units`)
  tokenizer.json | tokenizer.model    the tokenizer (none for "byte")
  shards/<k>.<split>.tokens.bin       unit k's documents of ``split``, their tokens back to back,
                                      fixed-width little-endian uint16 (vocab <= 65536) or uint32
  shards/<k>.<split>.docs.npy         int64 [docs, 2]: (tokens, UTF-8 bytes) of each document
  shards/<k>.done.json                written last, atomically: the unit is finished (counts, the
                                      sha256 of each file, bad documents skipped)
  manifest.json                       documents, tokens and bytes per split, the tokenizer, the
                                      source spec, bad documents skipped and a fingerprint;
                                      written when every unit is done (:mod:`lm.data.manifest`,
                                      which also verifies a directory against its markers)

Documents are split into "train" / "validation" by a keyed hash of their text
(:func:`split_of`): deterministic, independent of order, sharding and workers, and a
document repeated in the corpus always lands in the same split. Resumable: a unit whose
``done.json`` exists is never redone, and a unit interrupted by a kill is rewritten from
scratch (its files are only renamed into place when complete; every JSON record is
written through a temporary file and a rename). ``shard=(i, n)`` prepares units i, i + n,
...; :func:`merge` writes the manifest once all units are done, so a job array gives
byte-identical output to one process.

Everything is checked before anything is written (:mod:`lm.data.plan`). A bad document
met while tokenizing (:class:`lm.data.corpus.BadDocument`) stops the run with its file and line
and leaves no marker for its unit (finished units stay; a first call that finished none
leaves nothing), unless ``on_bad_document="skip"`` counts and skips it. A full disk raises
:class:`DiskFullError`; finished units stay valid and a rerun resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import glob
import hashlib
import io
import multiprocessing
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

from lm.data import corpus
from lm.data.manifest import FIRST_BAD, merge, verify  # noqa: F401
from lm.data.plan import (FORMAT, MANIFEST, PLAN, SHARDS, SPLITS, check_resume, create_out,  # noqa: F401
                             done_path, drop_units, existing_plan, new_plan, out_tokenizer, plan_config,
                             remove_prepared, shard_path, tmp_name, token_dtype, tokenizer_file_sha, undo_out,
                             write_json)
from lm.data.subword import load_tokenizer, train_bpe
from lm.data.tokenizer import TOKENIZER_FILES, ByteTokenizer, parse_bpe_spec

ENCODE_BATCH = 256
BAD_DOCUMENT_POLICIES = ("error", "skip")


class DiskFullError(RuntimeError):
    """The disk of the prepared directory filled up; finished units stay valid and a rerun resumes."""


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """What to prepare.

    Attributes:
      input: a glob, a directory, or ``tfds:NAME[:VERSION]/SPLIT`` (:mod:`lm.data.corpus`).
      tokenizer: "byte", "bpe:VOCAB" (byte-level BPE trained on a sample of the training
        split), or a path to a tokenizer.json / SentencePiece .model.
      text_key: the text field of jsonl / parquet / TFDS records.
      validation_fraction: expected share of documents held out, in [0, 1).
      split_seed: key of the document hash that decides the split.
      tfds_data_dir: data directory of a TFDS input.
      tokenizer_sample_bytes: text of the training sample of "bpe:VOCAB".
      on_bad_document: "error" (stop at the first bad document, naming its file and line) or
        "skip" (count it in done.json and the manifest, and go on). Not part of the plan:
        units finished under either policy hold no bad document.
    """

    input: str
    tokenizer: str = "byte"
    text_key: str = "text"
    validation_fraction: float = 0.01
    split_seed: int = 0
    tfds_data_dir: str | None = None
    tokenizer_sample_bytes: int = 256 << 20
    on_bad_document: str = "error"

    def __post_init__(self):
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction={self.validation_fraction}: must be in [0, 1)")
        if not isinstance(self.tokenizer_sample_bytes, int) or self.tokenizer_sample_bytes < 1:
            raise ValueError(f"tokenizer_sample_bytes={self.tokenizer_sample_bytes}: must be a positive integer")
        if self.on_bad_document not in BAD_DOCUMENT_POLICIES:
            raise ValueError(f"on_bad_document={self.on_bad_document!r}: must be one of {BAD_DOCUMENT_POLICIES}")
        if self.tokenizer != "byte" and parse_bpe_spec(self.tokenizer) is None:
            load_tokenizer(self.tokenizer)  # a bad path or a damaged file raises here, before any work


def split_of(text: str, fraction: float, seed: int) -> str:
    """"validation" for a share ``fraction`` of documents (blake2b of the UTF-8 text, keyed by seed)."""
    h = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=str(seed).encode())
    return "validation" if int.from_bytes(h.digest(), "little") < fraction * 2.0**64 else "train"


class _Skipped:
    """An ``on_bad`` callback of :func:`lm.data.corpus.documents`: counts bad documents, keeps the first places."""

    def __init__(self):
        self.count, self.first = 0, []

    def __call__(self, where, reason: str) -> None:
        self.count += 1
        if len(self.first) < FIRST_BAD:
            self.first.append(f"{where()}: {reason}")


def _documents(cfg: PrepareConfig, unit: dict, skipped: _Skipped) -> Iterator[str]:
    return corpus.documents(unit, cfg.text_key, skipped if cfg.on_bad_document == "skip" else None)


def _sample_texts(cfg: PrepareConfig, units: list[dict]) -> Iterator[str]:
    """Training-split documents of the units in a seeded order, up to ``tokenizer_sample_bytes``."""
    total = 0
    for k in np.random.default_rng(cfg.split_seed).permutation(len(units)):
        for text in _documents(cfg, units[k], _Skipped()):  # skipped ones are counted when tokenized
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
    staging = tmp_name(os.path.join(out, TOKENIZER_FILES[0]))  # job-array tasks may train it at once
    os.makedirs(staging, exist_ok=True)
    try:
        saved = tok.save(staging)
        os.replace(saved, os.path.join(out, os.path.basename(saved)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_tokenizer(os.path.join(out, os.path.basename(saved)))


def _write_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (the temporary file goes on error)."""
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def tokenize_unit(out: str, k: int, unit: dict, cfg: PrepareConfig, tok=None) -> dict:
    """Tokenize unit k into its shard files and its done marker; returns the marker's content."""
    tok = out_tokenizer(out) if tok is None else tok
    for stale in glob.glob(os.path.join(out, SHARDS, f"{k:06d}.*tmp")):  # left by a killed attempt
        os.unlink(stale)
    dtype = token_dtype(tok.vocab_size)
    input_files = corpus.unit_listing(unit)  # before reading: a later change is seen by merge()
    parts: dict[str, list] = {s: [] for s in SPLITS}
    docs: dict[str, list] = {s: [] for s in SPLITS}
    skipped = _Skipped()

    def flush(texts: list[str]) -> None:
        for text, ids in zip(texts, tok.encode_batch(texts)):
            split = split_of(text, cfg.validation_fraction, cfg.split_seed)
            parts[split].append(ids.astype(dtype))
            docs[split].append((len(ids), len(text.encode("utf-8", "surrogatepass"))))

    batch: list[str] = []
    for text in _documents(cfg, unit, skipped):
        batch.append(text)
        if len(batch) == ENCODE_BATCH:
            flush(batch)
            batch = []
    flush(batch)
    marker = {"unit": k, "token_dtype": dtype.str, "tokenizer_sha256": tokenizer_file_sha(out), "splits": {},
              "files": {}, "skipped": {"documents": skipped.count, "first": skipped.first},
              "input_unit": unit, "input_files": input_files}
    for split in SPLITS:
        tokens = np.concatenate(parts[split]) if parts[split] else np.zeros(0, dtype)
        table = np.asarray(docs[split], dtype=np.int64).reshape(-1, 2)
        npy = io.BytesIO()
        np.save(npy, table)
        for what, data in (("tokens.bin", tokens.tobytes()), ("docs.npy", npy.getvalue())):
            _write_file(shard_path(out, k, split, what), data)
            marker["files"][f"{split}.{what}"] = hashlib.sha256(data).hexdigest()
        marker["splits"][split] = {
            "documents": int(len(table)), "tokens": int(table[:, 0].sum()), "bytes": int(table[:, 1].sum()),
            "sha256": hashlib.sha256(tokens.tobytes() + table.tobytes()).hexdigest()}
    write_json(done_path(out, k), marker)
    return marker


def _work(job):
    out, k, unit, cfg = job
    return tokenize_unit(out, k, unit, cfg)


def prepare(cfg: PrepareConfig, out: str, *, shard: tuple[int, int] = (0, 1), workers: int = 1,
            progress=None, overwrite: bool = False) -> dict:
    """Prepare the units of ``shard`` (i, n) that are not done; with n == 1 also write the manifest.

    Args:
      cfg: what to prepare. out: the prepared directory (created).
      shard: (i, n): this call's units are i, i + n, i + 2n, ...
      workers: processes that tokenize units in parallel (1: in this process).
      progress: optional callable(done_units, total_units) called after each unit.
      overwrite: prepare afresh: remove ``out``'s prepared entries first (:mod:`lm.data.plan`).

    Returns:
      {"units": units of the shard, "done_now": units tokenized by this call, "skipped": bad
      documents skipped by this call, "removed": entries ``overwrite`` removed, "replanned": what
      changed in the input of an unfinished preparation (None: nothing), "redone": finished
      units redone because of it, "manifest": the manifest or None}.

    Raises:
      ValueError: a refused argument, input or ``out`` (nothing written), or a bad document
        (:class:`lm.data.corpus.BadDocument`; its unit gets no marker).
      DiskFullError: no space left while writing.
    """
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard={i}/{n}: need 0 <= i < n")
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    if overwrite and n > 1:
        raise ValueError("--overwrite with --shard: every job would clear the others' work; remove --out once "
                         "(or run one --overwrite without --shard) before the job array")
    plan, info = _open_out(cfg, out, overwrite, n)
    with _cleanup_on_error(out, info, n):
        tok = _ensure_tokenizer(cfg, out, plan["units"])
        result = _tokenize(cfg, out, plan["units"], list(range(i, len(plan["units"]), n)), tok, workers, progress)
        manifest = merge(out) if n == 1 else None
    return {**result, "removed": info["removed"], "replanned": info["replanned"], "redone": info["redone"],
            "manifest": manifest}


def prepare_tokenizer(cfg: PrepareConfig, out: str, *, overwrite: bool = False) -> tuple[list[dict], object]:
    """Check and create ``out``, write its plan, and train / copy / reuse its tokenizer.

    Returns (the work units, the tokenizer). :func:`prepare` starts with the same steps; a
    job array may run it once before the ``--shard`` jobs (training is deterministic anyway).
    """
    plan, info = _open_out(cfg, out, overwrite, 1)
    with _cleanup_on_error(out, info, 1):
        return plan["units"], _ensure_tokenizer(cfg, out, plan["units"])


def _open_out(cfg: PrepareConfig, out: str, overwrite: bool, n: int) -> tuple[dict, dict]:
    """Check everything (nothing written), then create ``out``, clear or drop what must go, and write
    the plan; returns (the plan, what was done: created, fresh, removed, replanned, redone)."""
    old = existing_plan(out, plan_config(cfg), overwrite=overwrite)
    plan = new_plan(cfg, old)
    stale, replanned = [], None
    if old is not None:
        plan, stale, replanned = check_resume(out, old, plan)
    info = {"created": create_out(out), "fresh": old is None, "removed": [], "replanned": replanned,
            "redone": stale}
    with _cleanup_on_error(out, info, n):
        info["removed"] = remove_prepared(out) if overwrite else []
        drop_units(out, stale, len(plan["units"]))
        if plan is not old:
            write_json(os.path.join(out, PLAN), plan)
        os.makedirs(os.path.join(out, SHARDS), exist_ok=True)
    return plan, info


@contextlib.contextmanager
def _cleanup_on_error(out: str, info: dict, n: int):
    """On an error: a fresh preparation that finished no unit leaves nothing (job-array tasks, n > 1,
    share ``out`` and keep it); a full disk becomes :class:`DiskFullError`."""
    try:
        yield
    except BaseException as err:
        if info["fresh"] and n == 1 and not glob.glob(os.path.join(out, SHARDS, "*.done.json")):
            undo_out(info["created"]) if info["created"] else remove_prepared(out)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(_disk_full(out, err)) from None
        raise


def _tokenize(cfg, out, units, mine, tok, workers, progress) -> dict:
    todo = [k for k in mine if not os.path.isfile(done_path(out, k))]
    done_count, skipped = len(mine) - len(todo), 0
    jobs = [(out, k, units[k], cfg) for k in todo]

    def finished(marker):
        nonlocal done_count, skipped
        done_count += 1
        skipped += marker["skipped"]["documents"]
        if progress:
            progress(done_count, len(mine))

    if workers == 1 or len(jobs) <= 1:
        for out, k, unit, c in jobs:
            finished(tokenize_unit(out, k, unit, c, tok))
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_quiet_worker) as pool:
            futures = [pool.submit(_work, job) for job in jobs]
            try:
                for future in as_completed(futures):
                    finished(future.result())
            except BaseException:  # units already running finish (and stay); the others never start
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return {"units": len(mine), "done_now": len(jobs), "skipped": skipped}


def _quiet_worker() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per worker process


def _disk_full(out: str, err: OSError) -> str:
    try:
        free = f"{shutil.disk_usage(out).free / 2**20:,.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return (f"no space left on the device of {os.path.abspath(out)} ({free}) while writing "
            f"{err.filename or 'a file'}; the units finished so far are kept: free some space and rerun the same "
            "command to resume")
