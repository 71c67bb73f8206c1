"""Reading a prepared directory (:mod:`lm.data.prepare`): random access to the tokens of document i.

:class:`PreparedSource` is a document source like those of :mod:`lm.data.sources`, except
that ``read`` returns token ids (int32) rather than bytes and ``lengths`` counts tokens:
the shards' fixed-width token files are memory-mapped, so any piece of any document is one
slice, read in any order by any number of grain threads or processes.

Opening a directory checks it, cheaply and before any training: the manifest must be a JSON
object holding every key training reads, each docs.npy must load, and each tokens.bin must
hold exactly the bytes its docs.npy lists (one ``stat`` per file, nothing hashed:
``python -m experiments.prepare_data --verify DIR`` does that). A failure is one
:class:`PreparedDataError` line naming the file (the expected and actual sizes for a shard).

Axis letters: n tokens, d documents.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from lm.data.prepare import FORMAT, MANIFEST, SPLITS, out_tokenizer, shard_path

VERIFY_HINT = "check it with `python -m experiments.prepare_data --verify {path}` or prepare it again"
TOKEN_DTYPES = ("<u2", "<u4")


class PreparedDataError(ValueError):
    """A prepared directory whose manifest or shards cannot be trusted; the message names the file."""


def _damaged(path: str, file: str, problem: str) -> PreparedDataError:
    return PreparedDataError(f"prepared data {file} {problem}; the corpus is damaged: "
                             + VERIFY_HINT.format(path=path))


def _check_manifest(path: str, file: str, manifest) -> dict:
    """``manifest`` if it holds every key training reads, with the right types; else PreparedDataError."""
    if not isinstance(manifest, dict):
        raise _damaged(path, file, f"holds a JSON {type(manifest).__name__}, not an object")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"DataConfig.path={path!r}: {file} is not a {FORMAT} manifest "
                         f"(format {manifest.get('format')!r})")

    def integer(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    want = {"fingerprint": lambda v: isinstance(v, str) and v != "",
            "token_dtype": lambda v: v in TOKEN_DTYPES, "units": integer,
            "tokenizer.vocab_size": lambda v: integer(v) and v > 0}
    for split in SPLITS:
        want.update({f"splits.{split}.{k}": integer for k in ("documents", "tokens", "bytes")})
    bad = []
    for key, ok in want.items():
        value = manifest
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if not ok(value):
            bad.append(key)
    if bad:
        raise _damaged(path, file, f"lacks or has invalid keys {bad}")
    return manifest


@functools.lru_cache(maxsize=32)
def _manifest(path: str, mtime_ns: int) -> dict:
    file = os.path.join(path, MANIFEST)
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _damaged(path, file, f"is not valid JSON ({getattr(err, 'msg', err)}; "
                                   f"{os.path.getsize(file)} bytes: cut short?)") from err
    except OSError as err:
        raise _damaged(path, file, f"cannot be read ({err.strerror or err})") from err
    return _check_manifest(path, file, manifest)


def read_manifest(path: str) -> dict:
    """The manifest of prepared directory ``path`` (cached while the file is unchanged).

    Raises:
      ValueError: no manifest there; :class:`PreparedDataError` (a ValueError): a manifest
        that is not JSON, not an object, or lacks a key training reads (one line naming it).
    """
    file = os.path.join(os.path.expanduser(path), MANIFEST)
    if not os.path.isfile(file):
        raise ValueError(f"DataConfig.path={path!r}: no {MANIFEST} there; prepare it with "
                         "`python -m experiments.prepare_data --input ... --out DIR` (and --merge after --shard jobs)")
    return dict(_manifest(os.path.expanduser(path), os.stat(file).st_mtime_ns))


def stamp(path: str) -> int | None:
    """The manifest's modification time (ns), or None without one: caches of a prepared
    directory's contents are keyed by it, so a corpus replaced in place is read afresh."""
    try:
        return os.stat(os.path.join(os.path.expanduser(path), MANIFEST)).st_mtime_ns
    except OSError:
        return None


def _docs_table(path: str, k: int, split: str) -> np.ndarray:
    """int64 [docs, 2] of unit k's ``split``; PreparedDataError naming the file if it is missing or cut short."""
    file = shard_path(path, k, split, "docs.npy")
    try:
        table = np.load(file, allow_pickle=False)
    except FileNotFoundError as err:
        raise _damaged(path, file, "is missing") from err
    except (OSError, ValueError, EOFError) as err:
        size = os.path.getsize(file) if os.path.isfile(file) else 0
        raise _damaged(path, file, f"cannot be read ({size} bytes: {err})") from err
    if table.ndim != 2 or table.shape[1] != 2 or table.dtype.kind not in "iu" or (table < 0).any():
        raise _damaged(path, file, f"holds {table.dtype} {list(table.shape)}, not a table of (tokens, bytes) "
                                   "per document")
    return table.astype(np.int64, copy=False)


def check_shards(path: str, split: str, manifest: dict, tables: list[np.ndarray]) -> None:
    """Raise PreparedDataError unless every token file of ``split`` holds the bytes its docs.npy
    lists and the docs.npy tables sum to the manifest's counts.

    Cheap: one ``stat`` per token file, nothing read (``prepare_data --verify`` hashes them).
    Catches a shard cut short by a full disk or a failed copy, a missing one, and a docs.npy
    from another preparation.
    """
    itemsize = np.dtype(manifest["token_dtype"]).itemsize
    for k, table in enumerate(tables):
        file = shard_path(path, k, split, "tokens.bin")
        expected = int(table[:, 0].sum()) * itemsize
        try:
            actual = os.stat(file).st_size
        except OSError:
            raise _damaged(path, file, f"is missing (expected {expected} bytes)") from None
        if actual != expected:
            raise _damaged(path, file, f"has {actual} bytes, expected {expected} ({expected // itemsize} "
                                       f"{manifest['token_dtype']} tokens, as its docs.npy lists)")
    counts = {"documents": sum(len(t) for t in tables), "tokens": sum(int(t[:, 0].sum()) for t in tables),
              "bytes": sum(int(t[:, 1].sum()) for t in tables)}
    want = {key: manifest["splits"][split][key] for key in counts}
    if counts != want:
        raise _damaged(path, os.path.join(path, "shards", f"*.{split}.docs.npy"),
                       f"list {counts}, but {MANIFEST} says {want}")


def tokenizer(path: str):
    """The tokenizer stored in prepared directory ``path`` (cached per manifest fingerprint).

    Raises:
      PreparedDataError: the manifest names a tokenizer file that is missing, cannot be
        loaded, or has another vocabulary size than the manifest says.
    """
    manifest = read_manifest(path)
    path = os.path.expanduser(path)
    name = manifest["tokenizer"].get("file")
    if name and not os.path.isfile(os.path.join(path, name)):
        raise _damaged(path, os.path.join(path, name), f"is missing ({MANIFEST} names it as the tokenizer)")
    tok = _tokenizer(path, manifest["fingerprint"])
    if tok.vocab_size != manifest["tokenizer"]["vocab_size"]:
        raise _damaged(path, os.path.join(path, name or MANIFEST), f"holds a tokenizer of {tok.vocab_size} tokens, "
                       f"but {MANIFEST} says {manifest['tokenizer']['vocab_size']}")
    return tok


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str, fingerprint: str):
    try:
        return out_tokenizer(path)
    except Exception as err:  # the tokenizers library raises bare Exceptions for a damaged file
        raise _damaged(path, path, f"holds a tokenizer file that cannot be loaded ({err})") from err


def vocab_size(path: str) -> int:
    """The vocabulary size of the tokenizer of prepared directory ``path``."""
    return int(read_manifest(path)["tokenizer"]["vocab_size"])


class PreparedSource:
    """The documents of one split of a prepared directory; optionally the first ``max_bytes``
    bytes of text (the last document kept truncated to the same share of its tokens)."""

    def __init__(self, path: str, split: str, max_bytes: int | None = None):
        self.path = os.path.expanduser(path)
        manifest = read_manifest(self.path)
        self.dtype = np.dtype(manifest["token_dtype"])
        tables = [_docs_table(self.path, k, split) for k in range(manifest["units"])]
        check_shards(self.path, split, manifest, tables)
        table = np.concatenate(tables) if tables else np.zeros((0, 2), np.int64)
        self.unit = np.repeat(np.arange(len(tables), dtype=np.int64), [len(t) for t in tables])
        offsets = [np.cumsum(t[:, 0]) - t[:, 0] for t in tables]
        self.offset = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        lengths, doc_bytes = table[:, 0].copy(), table[:, 1].copy()
        if max_bytes is not None:
            before = np.cumsum(doc_bytes) - doc_bytes
            kept = np.clip(max_bytes - before, 0, doc_bytes)
            share = np.divide(kept, doc_bytes, out=np.zeros(len(kept)), where=doc_bytes > 0)
            lengths = np.floor(lengths * share + 1e-9).astype(np.int64)
            keep = (kept > 0) & (lengths > 0)
            lengths, doc_bytes = lengths[keep], kept[keep]
            self.unit, self.offset = self.unit[keep], self.offset[keep]
        self.lengths = lengths
        self.doc_bytes = doc_bytes
        self.split = split
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return len(self.lengths)

    def __getstate__(self):  # grain worker processes reopen the memory maps
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    def _tokens(self, unit: int) -> np.memmap:
        if unit not in self._maps:
            self._maps[unit] = np.memmap(shard_path(self.path, unit, self.split, "tokens.bin"), dtype=self.dtype,
                                         mode="r")
        return self._maps[unit]

    def read(self, i: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """int32 tokens [start, stop) of document i (stop=None: to its end)."""
        n = int(self.lengths[i])
        stop = n if stop is None else min(stop, n)
        if stop <= start:
            return np.zeros(0, np.int32)
        base = int(self.offset[i])
        return np.asarray(self._tokens(int(self.unit[i]))[base + start : base + stop], dtype=np.int32)
