"""Tiny prepared corpora for tests: a few jsonl files of random words through :func:`lm.data.prepare.prepare`.

Byte tokenizer (vocabulary 259) unless asked otherwise, one unit per file, no network; a
corpus takes well under a second to prepare. Two seeds give two corpora of the same
vocabulary and different fingerprints (the "corpus swapped under a run" case).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lm.data import prepare

WORDS = "the quick brown fox jumps over a lazy dog; héllo wörld scaling laws of data".split()


def make(out: str | Path, *, seed: int = 0, files: int = 3, docs_per_file: int = 20,
         validation_fraction: float = 0.25, tokenizer: str = "byte") -> str:
    """Prepare a corpus of ``files`` x ``docs_per_file`` random documents into ``out``; returns ``out``."""
    out = Path(out)
    src = out.parent / f"{out.name}.src"
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for f in range(files):
        docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 40)))) for _ in range(docs_per_file)]
        (src / f"part{f}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    cfg = prepare.PrepareConfig(input=str(src), tokenizer=tokenizer, validation_fraction=validation_fraction,
                                tokenizer_sample_bytes=1 << 20)
    prepare.prepare(cfg, str(out))
    return str(out)


def shard(out: str | Path, split: str = "train", what: str = "tokens.bin", unit: int = 0) -> Path:
    """The path of unit ``unit``'s ``what`` file of ``split``."""
    return Path(prepare.shard_path(str(out), unit, split, what))
