"""Raw corpora for :mod:`lm.data.prepare`: an input spec -> work units -> documents (text).

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
every machine of a job array computes the same plan; :func:`listing` is what the plan is
keyed on (each file's path, size and mtime).

Errors name the file and, where there is one, the line (jsonl, text), row (parquet) or
example (TFDS). A *bad document* (invalid UTF-8, a jsonl line that is not a JSON object or
lacks the text field, a text field that is not a string) raises :class:`BadDocument`, or is
reported to an ``on_bad`` callback that skips it; a file that cannot be read at all (a
corrupt parquet file, a vanished file) or a parquet text column that is not a string column
raises :class:`CorpusError` either way. A null text field counts as an empty document
(skipped, as empty documents are).
"""

from __future__ import annotations

import glob as glob_lib
import gzip
import json
import os
import zlib
from collections.abc import Callable, Iterator

UNIT_BYTES = 4 << 20
UNIT_EXAMPLES = 1 << 15
DIRECTORY_SUFFIXES = tuple(s + gz for s in (".parquet", ".jsonl", ".json", ".txt", ".text") for gz in ("", ".gz"))

# on_bad(where, reason): ``where()`` gives "file:line" (computed only when asked: it may scan the file)
OnBad = Callable[[Callable[[], str], str], None]


_JSON_TYPES = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}


class CorpusError(ValueError):
    """An input that cannot be used; the message names the file and, where there is one, the line or row."""


class BadDocument(CorpusError):
    """One document that cannot be read (skipped instead with ``on_bad_document="skip"``)."""


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
        raise CorpusError(f"--input={spec!r}: matches no files (a glob, a directory, or tfds:NAME[:VERSION]/SPLIT)")
    return files


def parse_tfds(spec: str) -> tuple[str, str]:
    """(name[:version], split) of a ``tfds:NAME[:VERSION]/SPLIT`` spec."""
    body = spec[len("tfds:"):]
    name, sep, split = body.partition("/")
    if not sep or not name or not split:
        raise CorpusError(f"--input={spec!r}: a TFDS input is tfds:NAME[:VERSION]/SPLIT, e.g. tfds:lm1b/train")
    return name, split


def _tfds_source(name: str, split: str, data_dir: str | None):
    """``tfds.data_source``; its errors (a 260-line list of every dataset) cut to their first line."""
    try:
        import tensorflow_datasets as tfds

        return tfds.data_source(name, split=split, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError, a missing split or version, an unbuilt dataset
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CorpusError(f"--input='tfds:{name}/{split}': {first} (--tfds-data-dir={data_dir!r})") from None


def listing(spec: str, *, tfds_data_dir: str | None = None) -> list[list]:
    """What a plan is keyed on: [path, size, mtime_ns] of every input file (TFDS: [spec, examples, None])."""
    if spec.startswith("tfds:"):
        name, split = parse_tfds(spec)
        return [[spec, len(_tfds_source(name, split, tfds_data_dir)), None]]
    return [_entry(path) for path in input_files(spec)]


def _entry(path: str) -> list:
    try:
        st = os.stat(path)
    except OSError as err:
        raise CorpusError(f"{path}: cannot read this input file ({err.strerror or err}); "
                          "if the input changed, rerun with --overwrite") from None
    return [path, st.st_size, st.st_mtime_ns]


def unit_listing(unit: dict) -> list[list]:
    """The :func:`listing` entries of the files unit ``unit`` reads (now)."""
    if unit["kind"] == "tfds":
        ds = _tfds_source(unit["name"], unit["split"], unit["data_dir"])
        return [[f"tfds:{unit['name']}/{unit['split']}", len(ds), None]]
    return [_entry(p) for p in (unit["paths"] if unit["kind"] == "text" else [unit["path"]])]


def plan_units(spec: str, *, tfds_data_dir: str | None = None, text_key: str | None = None) -> list[dict]:
    """The work units of ``spec`` (JSON-able dicts), in their fixed order.

    Reads each parquet file's footer: a corrupt file, or (with ``text_key``) one whose text
    column is missing or not a string column, raises :class:`CorpusError` here, before any work.
    """
    if spec.startswith("tfds:"):
        name, split = parse_tfds(spec)
        n = len(_tfds_source(name, split, tfds_data_dir))
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
            units.extend(_parquet_units(path, text_key))
    if texts:
        units.append({"kind": "text", "paths": texts})
    return units


def _parquet_file(path: str, text_key: str | None):
    """The open ``pq.ParquetFile``; a corrupt file or an unusable text column raises CorpusError."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise CorpusError(f"{path}: not a readable parquet file ({err})") from None
    if text_key is not None:
        schema = pf.schema_arrow
        if text_key not in schema.names:
            raise CorpusError(f"--text-key={text_key!r}: {path} has columns {schema.names}")
        kind = schema.field(text_key).type
        value = kind.value_type if pa.types.is_dictionary(kind) else kind
        if not (pa.types.is_string(value) or pa.types.is_large_string(value)
                or getattr(pa.types, "is_string_view", lambda _: False)(value)):
            raise CorpusError(f"{path}: column {text_key!r} (--text-key) holds {kind}, not strings")
    return pf


def _parquet_units(path: str, text_key: str | None) -> list[dict]:
    meta = _parquet_file(path, text_key).metadata
    units, start, size = [], 0, 0
    for g in range(meta.num_row_groups):
        size += meta.row_group(g).total_byte_size
        if size >= UNIT_BYTES or g == meta.num_row_groups - 1:
            units.append({"kind": "parquet", "path": path, "row_groups": [start, g + 1]})
            start, size = g + 1, 0
    return units


def _read_bytes(path: str) -> bytes:
    try:
        with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise CorpusError(f"{path}: cannot read this input file ({getattr(err, 'strerror', None) or err}); "
                          "if the input changed, rerun with --overwrite") from None


def _line_of(data_or_path, offset: int) -> int:
    """1-based line number of byte ``offset`` (counting the newlines before it)."""
    if isinstance(data_or_path, bytes):
        return data_or_path.count(b"\n", 0, offset) + 1
    count, pos = 0, 0
    with open(data_or_path, "rb") as f:
        while pos < offset:
            block = f.read(min(1 << 20, offset - pos))
            if not block:
                break
            count += block.count(b"\n")
            pos += len(block)
    return count + 1


def _decode(data: bytes, where: Callable[[int], str], on_bad: OnBad | None) -> str | None:
    """UTF-8 text of ``data``, or None (reported) when invalid; ``where(offset)`` names the place."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        start = err.start  # bound now: ``err`` is cleared when the except block ends
        _bad(on_bad, lambda: where(start), f"invalid UTF-8 (byte 0x{data[start]:02x})")
        return None


def _bad(on_bad: OnBad | None, where: Callable[[], str], reason: str) -> None:
    if on_bad is None:
        raise BadDocument(f"{where()}: {reason} (--on-bad-document skip skips such documents)")
    on_bad(where, reason)


def documents(unit: dict, text_key: str = "text", on_bad: OnBad | None = None) -> Iterator[str]:
    """The documents (text) of one unit, in order; empty documents are skipped.

    Args:
      unit: one unit of :func:`plan_units`. text_key: the text field of jsonl / parquet / TFDS.
      on_bad: called as ``on_bad(where, reason)`` for each bad document, which is then skipped;
        None: a bad document raises :class:`BadDocument` naming its file and line.
    """
    kind = unit["kind"]
    if kind == "text":
        for path in unit["paths"]:
            data = _read_bytes(path)
            text = _decode(data, lambda off, p=path, d=data: f"{p}:{_line_of(d, off)}", on_bad)
            if text:
                yield text
    elif kind == "jsonl":
        yield from _jsonl_documents(unit, text_key, on_bad)
    elif kind == "parquet":
        yield from _parquet_documents(unit, text_key)
    else:
        yield from _tfds_documents(unit, text_key, on_bad)


def _jsonl_documents(unit: dict, text_key: str, on_bad: OnBad | None) -> Iterator[str]:
    path = unit["path"]
    for offset, number, line in _jsonl_lines(unit):
        def where(_=0, o=offset, n=number):
            return f"{path}:{n if n is not None else _line_of(path, o)}"

        text = _decode(line, where, on_bad)
        if text is None or not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            _bad(on_bad, where, f"not valid JSON ({err.msg.removesuffix(' at')} at column {err.colno})")
            continue
        if not isinstance(record, dict):
            _bad(on_bad, where, f"holds a JSON {_JSON_TYPES.get(type(record), 'value')}, not an object")
        elif text_key not in record:
            _bad(on_bad, where, f"the record has no field {text_key!r} (--text-key; its fields: {sorted(record)[:8]})")
        elif record[text_key] is not None and not isinstance(record[text_key], str):
            kind = _JSON_TYPES.get(type(record[text_key]), "value")
            _bad(on_bad, where, f"field {text_key!r} holds a JSON {kind}, not a string")
        elif record[text_key]:
            yield record[text_key]


def _jsonl_lines(unit: dict) -> Iterator[tuple[int, int | None, bytes]]:
    """(byte offset, line number or None, line) of the lines that START in the unit's byte range
    [start, stop) (all of a gzipped file, with their line numbers)."""
    path = unit["path"]
    try:
        if unit["stop"] is None:
            with gzip.open(path, "rb") as f:
                for number, line in enumerate(f, 1):
                    yield 0, number, line
            return
        with open(path, "rb") as f:
            pos = unit["start"]
            if pos > 0:  # the line running through ``start`` belongs to the unit before
                f.seek(pos - 1)
                pos += len(f.readline()) - 1
            while pos < unit["stop"]:
                line = f.readline()
                if not line:
                    return
                yield pos, None, line
                pos += len(line)
    except (OSError, EOFError, zlib.error) as err:
        raise CorpusError(f"{path}: cannot read this input file ({getattr(err, 'strerror', None) or err}); "
                          "if the input changed, rerun with --overwrite") from None


def _parquet_documents(unit: dict, text_key: str) -> Iterator[str]:
    import pyarrow as pa

    path = unit["path"]
    pf = _parquet_file(path, text_key)
    for g in range(*unit["row_groups"]):
        try:
            texts = pf.read_row_group(g, columns=[text_key]).column(0).to_pylist()
        except (OSError, pa.ArrowException) as err:
            first_row = sum(pf.metadata.row_group(i).num_rows for i in range(g))
            raise CorpusError(f"{path}: row group {g} (rows from {first_row}) cannot be read ({err})") from None
        for text in texts:
            if text:
                yield text


def _tfds_documents(unit: dict, text_key: str, on_bad: OnBad | None) -> Iterator[str]:
    import numpy as np

    ds = _tfds_source(unit["name"], unit["split"], unit["data_dir"])
    for i in range(unit["start"], unit["stop"]):
        example = ds[i]
        if text_key not in example:
            raise CorpusError(f"--text-key={text_key!r}: {unit['name']} examples have features {sorted(example)}")
        text = example[text_key]
        if isinstance(text, np.ndarray) and text.ndim == 0:
            text = text.item()

        def where(_=0, i=i):
            return f"tfds:{unit['name']}/{unit['split']} example {i}"

        if isinstance(text, bytes):
            text = _decode(text, where, on_bad)
        elif not isinstance(text, str):
            _bad(on_bad, where, f"feature {text_key!r} holds a {type(text).__name__}, not text")
            continue
        if text:
            yield text
