"""Raw corpora for :mod:`lm.prepare`: an input spec -> work units -> documents (text).

Input specs:
  a glob of local files (``**`` allowed), or a directory (its files under any depth ending in
  DIRECTORY_SUFFIXES, so stray READMEs or checksums are left out):
    ``*.txt``, ``*.md``, ``*.py``, ... (any other suffix)  one document per file;
    ``*.jsonl``, ``*.json``                                one document per line, field ``text_key``;
    ``*.parquet``                                          one document per row, column ``text_key``;
    a trailing ``.gz`` on any of them is decompressed on the fly.
  ``tfds:NAME[:VERSION]/SPLIT``: the examples of a TFDS dataset (``tfds.data_source``, ArrayRecord;
    no TensorFlow), field ``text_key``, from ``data_dir``.

A *unit* is the slice of work one worker tokenizes into one shard: a run of text files up to
UNIT_BYTES, a byte range of UNIT_BYTES of a jsonl file (the lines that start in it; a whole
file when gzipped), a run of parquet row groups up to UNIT_BYTES, or UNIT_EXAMPLES TFDS
examples. :func:`plan_units` lists them in a deterministic order (sorted paths), so
every machine of a job array computes the same plan.
"""

from __future__ import annotations

import glob as glob_lib
import gzip
import json
import os
from collections.abc import Iterator

UNIT_BYTES = 4 << 20
UNIT_EXAMPLES = 1 << 15
DIRECTORY_SUFFIXES = tuple(s + gz for s in (".parquet", ".jsonl", ".json", ".txt", ".text") for gz in ("", ".gz"))


def _format(path: str) -> str:
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith((".jsonl", ".json")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    return "text"


def input_files(spec: str) -> list[str]:
    """Sorted regular files of a glob or directory spec."""
    path = os.path.expanduser(spec)
    pattern = os.path.join(path, "**", "*") if os.path.isdir(path) else path
    files = sorted(p for p in glob_lib.glob(pattern, recursive=True) if os.path.isfile(p))
    if os.path.isdir(path):
        files = [p for p in files if p.endswith(DIRECTORY_SUFFIXES)]
    if not files:
        raise ValueError(f"--input={spec!r}: matches no files (a glob, a directory, or tfds:NAME[:VERSION]/SPLIT)")
    return files


def parse_tfds(spec: str) -> tuple[str, str]:
    """(name[:version], split) of a ``tfds:NAME[:VERSION]/SPLIT`` spec."""
    body = spec[len("tfds:"):]
    name, sep, split = body.partition("/")
    if not sep or not name or not split:
        raise ValueError(f"--input={spec!r}: a TFDS input is tfds:NAME[:VERSION]/SPLIT, e.g. tfds:lm1b/train")
    return name, split


def plan_units(spec: str, *, tfds_data_dir: str | None = None) -> list[dict]:
    """The work units of ``spec`` (JSON-able dicts), in their fixed order."""
    if spec.startswith("tfds:"):
        import tensorflow_datasets as tfds

        name, split = parse_tfds(spec)
        n = len(tfds.data_source(name, split=split, data_dir=tfds_data_dir))
        return [{"kind": "tfds", "name": name, "split": split, "data_dir": tfds_data_dir, "start": s,
                 "stop": min(s + UNIT_EXAMPLES, n)} for s in range(0, n, UNIT_EXAMPLES)]
    units: list[dict] = []
    texts: list[str] = []
    text_bytes = 0
    for path in input_files(spec):
        fmt = _format(path)
        if fmt == "text":
            size = os.path.getsize(path)
            if texts and text_bytes + size > UNIT_BYTES:
                units.append({"kind": "text", "paths": texts})
                texts, text_bytes = [], 0
            texts.append(path)
            text_bytes += size
        elif fmt == "jsonl" and path.endswith(".gz"):
            units.append({"kind": "jsonl", "path": path, "start": 0, "stop": None})
        elif fmt == "jsonl":
            size = os.path.getsize(path)
            units.extend({"kind": "jsonl", "path": path, "start": s, "stop": min(s + UNIT_BYTES, size)}
                         for s in range(0, max(size, 1), UNIT_BYTES))
        else:
            units.extend(_parquet_units(path))
    if texts:
        units.append({"kind": "text", "paths": texts})
    return units


def _parquet_units(path: str) -> list[dict]:
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    units, start, size = [], 0, 0
    for g in range(meta.num_row_groups):
        size += meta.row_group(g).total_byte_size
        if size >= UNIT_BYTES or g == meta.num_row_groups - 1:
            units.append({"kind": "parquet", "path": path, "row_groups": [start, g + 1]})
            start, size = g + 1, 0
    return units


def _open(path: str):
    return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def documents(unit: dict, text_key: str = "text") -> Iterator[str]:
    """The documents (text) of one unit, in order; empty documents are skipped."""
    kind = unit["kind"]
    if kind == "text":
        for path in unit["paths"]:
            with _open(path) as f:
                text = f.read()
            if text:
                yield text
    elif kind == "jsonl":
        for line in _jsonl_lines(unit):
            if not line.strip():
                continue
            record = json.loads(line)
            if text_key not in record:
                raise ValueError(f"--text-key={text_key!r}: a record of {unit['path']} has fields {sorted(record)}")
            if record[text_key]:
                yield record[text_key]
    elif kind == "parquet":
        yield from _parquet_documents(unit, text_key)
    else:
        yield from _tfds_documents(unit, text_key)


def _jsonl_lines(unit: dict) -> Iterator[bytes]:
    """The lines of a jsonl unit: those that START in its byte range [start, stop) (all of a gzipped file)."""
    if unit["stop"] is None:
        with gzip.open(unit["path"], "rb") if unit["path"].endswith(".gz") else open(unit["path"], "rb") as f:
            yield from f
        return
    with open(unit["path"], "rb") as f:
        pos = unit["start"]
        if pos > 0:  # the line running through ``start`` belongs to the unit before
            f.seek(pos - 1)
            pos += len(f.readline()) - 1
        while pos < unit["stop"]:
            line = f.readline()
            if not line:
                return
            pos += len(line)
            yield line


def _parquet_documents(unit: dict, text_key: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(unit["path"])
    if text_key not in pf.schema_arrow.names:
        raise ValueError(f"--text-key={text_key!r}: {unit['path']} has columns {pf.schema_arrow.names}")
    for g in range(*unit["row_groups"]):
        for text in pf.read_row_group(g, columns=[text_key]).column(0).to_pylist():
            if text:
                yield text


def _tfds_documents(unit: dict, text_key: str) -> Iterator[str]:
    import numpy as np
    import tensorflow_datasets as tfds

    ds = tfds.data_source(unit["name"], split=unit["split"], data_dir=unit["data_dir"])
    for i in range(unit["start"], unit["stop"]):
        example = ds[i]
        if text_key not in example:
            raise ValueError(f"--text-key={text_key!r}: {unit['name']} examples have features {sorted(example)}")
        text = example[text_key]
        if isinstance(text, np.ndarray):
            text = text.item()
        text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
        if text:
            yield text
