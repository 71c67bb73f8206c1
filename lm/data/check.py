"""The data a run trains on, checked before step 0: vocabulary, splits, and the corpus fingerprint.

A run directory records the fingerprint of the corpus it trains on (``corpus.json``,
:func:`lm.train.records.write_corpus`), beside config.json and not in it: the fingerprint is a
property of the data, not of the RunConfig (whose fingerprint pins a study's grid), and a
corpus replaced in place keeps the config unchanged. A run resumed against data with another
fingerprint is refused (:class:`CorpusMismatchError`, naming both); a run directory written
before corpus.json existed resumes and records it then.

Fingerprints are 16 hex digits, deterministic and cheap (nothing is tokenized or hashed in
bulk):

  prepared   the manifest's ``fingerprint`` (:func:`lm.data.prepare.merge`: the preparation's
             arguments, the tokenizer and the sha256 of every shard)
  stdlib     sha256 of the sorted listing of the standard library's files (paths relative
             to its root) with their sizes: another Python version is another corpus
  files      the same over the files matching ``files_glob`` (absolute paths)
  synthetic  sha256 of the ``synthetic_*`` fields: the chain and every document are a
             function of them
  tfds       sha256 of the dataset name, text key, split names and their sizes
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sysconfig
from pathlib import Path

from lm.data import pipeline as lm_data
from lm.data import sources, shard_reader as prepared
from lm.train import records
from lm.model.config import RunConfig
from lm.data.config import DataConfig


class CorpusMismatchError(ValueError):
    """A run directory trained on one corpus, asked to resume on another (names both fingerprints)."""


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _listing(paths: tuple[str, ...], root: str | None = None) -> list[tuple[str, int]]:
    return [(os.path.relpath(p, root) if root else p, os.path.getsize(p)) for p in paths]


def corpus_fingerprint(cfg: DataConfig) -> str:
    """The fingerprint of the corpus ``cfg`` reads (module docstring: what each source's covers)."""
    if cfg.source == "prepared":
        return prepared.read_manifest(cfg.path)["fingerprint"]
    if cfg.source == "stdlib":
        return _digest(["stdlib", _listing(sources.stdlib_files(), sysconfig.get_paths()["stdlib"])])
    if cfg.source == "files":
        return _digest(["files", _listing(sources.glob_files(cfg.files_glob))])
    if cfg.source == "synthetic":
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name.startswith("synthetic_")}
        return _digest(["synthetic", fields])
    sizes = [len(lm_data.make_source(cfg, split)) for split in sources.SPLITS]
    return _digest(["tfds", cfg.tfds_name, cfg.tfds_text_key, cfg.tfds_split_train, cfg.tfds_split_val, sizes])


def describe(cfg: DataConfig) -> str:
    """A short human name of the corpus ``cfg`` reads (for messages and corpus.json)."""
    where = {"prepared": cfg.path, "files": cfg.files_glob, "tfds": cfg.tfds_name,
             "stdlib": sysconfig.get_paths()["stdlib"]}.get(cfg.source)
    return f"{cfg.source} {where}" if where else cfg.source


def corpus_record(cfg: DataConfig) -> dict:
    """What corpus.json holds: {"source", "corpus" (:func:`describe`), "fingerprint"}."""
    return {"source": cfg.source, "corpus": describe(cfg), "fingerprint": corpus_fingerprint(cfg)}


def check_corpus(run_dir: str | Path, cfg: DataConfig, record: dict | None = None) -> dict:
    """Raise :class:`CorpusMismatchError` if ``run_dir`` records another corpus than ``cfg``'s; reads only.

    Args:
      run_dir: the run directory (may not exist yet).
      cfg: the data the run is about to train on.
      record: ``corpus_record(cfg)`` if already computed (a study checks many runs of one corpus).

    Returns:
      ``cfg``'s corpus record, for :func:`lm.train.records.write_corpus` once training starts.
    """
    record = corpus_record(cfg) if record is None else record
    old = records.read_corpus(run_dir) if Path(run_dir).is_dir() else None
    if old is not None and old["fingerprint"] != record["fingerprint"]:
        raise CorpusMismatchError(
            f"run directory {run_dir} was trained on corpus {old['fingerprint']} ({old.get('corpus', '?')}), but "
            f"the data is now corpus {record['fingerprint']} ({record['corpus']}): the corpus was replaced or changed")
    return record


def check_run(run: RunConfig, run_dir: str | Path | None = None, record: dict | None = None) -> dict:
    """Every check of a run's data that can fail, made before step 0; writes nothing.

    The model's vocabulary holds the data's token ids (:func:`lm.data.pipeline.check_model_vocab`),
    the data's tokenizer loads, the training and validation splits can fill batches (:func:`lm.data.pipeline.check_splits`; every
    run evaluates on the validation split at its end), the prepared shards have their sizes
    (:mod:`lm.data.shard_reader`, on opening), and ``run_dir`` (None: not checked) records no other
    corpus (:func:`check_corpus`). Every failure is one ValueError line.

    Returns:
      The run's corpus record (:func:`corpus_record`).
    """
    lm_data.check_model_vocab(run.model.vocab_size, run.data)
    lm_data.tokenizer(run.data)  # a prepared corpus' tokenizer file loads
    lm_data.check_splits(run.data)
    if run_dir is None:
        return corpus_record(run.data) if record is None else record
    return check_corpus(run_dir, run.data, record)
