"""Which data a study trains on, and how many epochs of it each run makes.

Every study takes ``--data`` ("stdlib", the embedded corpus; or a directory written by
``python -m experiments.prepare_data``) and ``--max-epochs``. A run makes
D / U epochs of its training split: D = steps x batch_size x seq_len tokens trained, U the
split's unique training targets (:func:`lm.data.pipeline.dataset_info`). A study whose runs would go
over ``--max-epochs`` is refused before training, in one line naming the largest run
(default 1.0: the scaling laws of Kaplan et al. 2020 and Hoffmann et al. 2022 assume no
repetition; ``experiments.data_constrained`` studies repetition and sets its own). The
results table gets the columns ``unique_tokens`` and ``data_epochs`` and the report a
table of each run's tokens, unique tokens and epochs.

Before any training, :func:`check_data` refuses in one line a corpus the runs cannot train on
(a damaged prepared directory: manifest, a missing or cut-short shard; an empty split) and a
run directory trained on another corpus than ``--data`` holds now (corpus.json,
:mod:`lm.data.check`), naming the run and both fingerprints.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from experiments.lib.study import StudyError, run_dir
from lm.data import pipeline as lm_data
from lm.data import check
from lm.model.config import RunConfig
from lm.data.config import DataConfig
from lm.data.config import SOURCES
from lm.train.records import atomic_write

DEFAULT_MAX_EPOCHS = 1.0


def add_args(parser: argparse.ArgumentParser, max_epochs: float = DEFAULT_MAX_EPOCHS,
             extra_sources: Sequence[str] = ()) -> None:
    """Add ``--data`` and ``--max-epochs`` to a study's parser."""
    names = " | ".join(("stdlib", *extra_sources))
    parser.add_argument("--data", default="stdlib", metavar="DIR",
                        help=f"{names} | a directory written by experiments.prepare_data (default: stdlib, "
                             "the embedded standard-library corpus)")
    parser.add_argument("--max-epochs", type=float, default=max_epochs,
                        help=f"refuse a grid whose runs make more epochs of the training split (default {max_epochs:g})")


def base_data(spec: str, *, seq_len: int, batch_size: int) -> DataConfig:
    """The DataConfig of ``--data``: "stdlib", or source="prepared" on a prepared directory."""
    if spec == "stdlib":
        return DataConfig(seq_len=seq_len, batch_size=batch_size)
    if not os.path.isfile(os.path.join(os.path.expanduser(spec), "manifest.json")):
        raise ValueError(f"--data={spec!r}: allowed values are 'stdlib' or a directory holding a manifest.json "
                         "(python -m experiments.prepare_data --input ... --out DIR)")
    return DataConfig(source="prepared", path=os.path.abspath(os.path.expanduser(spec)), seq_len=seq_len,
                      batch_size=batch_size)


def label(spec: str) -> str:
    """A short name of ``--data`` for default output folders: "" for stdlib, else "-<name>"."""
    return "" if spec == "stdlib" else "-" + (Path(spec).name or "data")


def vocab_size(data: DataConfig) -> int:
    """The model vocabulary that ``data``'s tokenizer needs (:func:`lm.data.pipeline.vocab_size`)."""
    return lm_data.vocab_size(data)


def run_epochs(run: RunConfig) -> dict[str, float | None]:
    """{"tokens": D, "unique_tokens": U, "data_epochs": D / U} of one run (U None when unknown, e.g. tfds)."""
    tokens = run.train.steps * run.data.batch_size * run.data.seq_len
    unique = lm_data.dataset_info(run.data)["train"]["targets"]
    return {"tokens": tokens, "unique_tokens": unique, "data_epochs": tokens / unique if unique else None}


def with_epoch_tags(runs: Sequence[RunConfig], tags: Mapping[str, Mapping]) -> dict[str, dict]:
    """``tags`` with each run's ``unique_tokens`` and ``data_epochs`` added."""
    out = {name: dict(t) for name, t in tags.items()}
    for run in runs:
        e = run_epochs(run)
        out.setdefault(run.name, {}).update(unique_tokens=e["unique_tokens"], data_epochs=e["data_epochs"])
    return out


def check_epochs(runs: Sequence[RunConfig], max_epochs: float) -> None:
    """Raise StudyError (one line) when a run makes more than ``max_epochs`` epochs of its training split."""
    if not max_epochs > 0:
        raise StudyError(f"--max-epochs={max_epochs}: must be a positive number")
    known = [(run, run_epochs(run)) for run in runs]
    known = [(run, e) for run, e in known if e["data_epochs"] is not None]
    if not known:
        return
    run, e = max(known, key=lambda re: re[1]["data_epochs"])
    if e["data_epochs"] > max_epochs:
        info = lm_data.dataset_info(run.data)
        corpus = run.data.path if run.data.source == "prepared" else run.data.source
        raise StudyError(
            f"run {run.name} would make {e['data_epochs']:.4g} epochs of its training split ({e['tokens']:.4g} tokens "
            f"of a corpus of {e['unique_tokens']:.4g} unique tokens, {info['train']['bytes']:.4g} bytes: {corpus}), "
            f"over --max-epochs={max_epochs:g}; train on a larger corpus (--data DIR from experiments.prepare_data), "
            "a smaller preset, or raise --max-epochs")


def check_reads(runs: Sequence[RunConfig], spec: str) -> None:
    """Raise StudyError (one line) when a run of the study does not read ``--data`` (a study
    whose grid ignores the flag would otherwise train on other data than asked, silently)."""
    if spec in SOURCES:  # a named source: "stdlib", or a study's extra one ("synthetic")
        source, path = spec, None
    else:
        source, path = "prepared", os.path.abspath(os.path.expanduser(spec))
    for run in runs:
        if run.data.source != source or (path is not None and run.data.path != path):
            reads = run.data.path if run.data.source == "prepared" else run.data.source
            raise StudyError(f"--data={spec!r}: this study does not train on it (run {run.name} reads {reads}); "
                             "leave --data out")


def check_data(runs: Sequence[RunConfig], out: str | Path) -> None:
    """Raise StudyError (one line) before training unless every run can train on its data and
    its directory under ``out`` records no other corpus (:func:`lm.data.check.check_run`); reads only."""
    corpora: dict[DataConfig, dict] = {}  # a study's runs share a few corpora: fingerprint each once
    for run in runs:
        try:
            corpora[run.data] = check.check_run(run, run_dir(out, run), corpora.get(run.data))
        except check.CorpusMismatchError as err:
            raise StudyError(f"run {run.name}: {err}; restore that corpus, or choose another --out to train the "
                             "study on this one (nothing was changed)") from err
        except ValueError as err:
            raise StudyError(f"run {run.name}: {err}") from err


def report_lines(table: pd.DataFrame) -> list[str]:
    """Markdown lines: each run's tokens, unique tokens and epochs of its training split."""
    if "data_epochs" not in table.columns:
        return []
    lines = ["", "## Data", "", "| run | tokens | unique tokens | epochs |", "|---|---:|---:|---:|"]
    for _, r in table.iterrows():
        epochs = "" if pd.isna(r["data_epochs"]) else f"{float(r['data_epochs']):.3g}"
        unique = "" if pd.isna(r["unique_tokens"]) else f"{float(r['unique_tokens']):.4g}"
        lines.append(f"| {r['run']} | {float(r['D']):.4g} | {unique} | {epochs} |")
    return lines


def append_report(report: str | Path | None, table: pd.DataFrame) -> None:
    """Append :func:`report_lines` of ``table`` to the report file (if there is one)."""
    if report is None or not Path(report).is_file():
        return
    report = Path(report)
    atomic_write(report, report.read_text() + "\n".join(report_lines(table)) + "\n")


def replace_vocab(model, data: DataConfig):
    """``model`` with the vocabulary of ``data``'s tokenizer."""
    return dataclasses.replace(model, vocab_size=vocab_size(data))
