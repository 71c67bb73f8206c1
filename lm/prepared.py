"""Reading a prepared directory (:mod:`lm.prepare`): random access to the tokens of document i.

:class:`PreparedSource` is a document source like those of :mod:`lm.data_sources`, except
that ``read`` returns token ids (int32) rather than bytes and ``lengths`` counts tokens:
the shards' fixed-width token files are memory-mapped, so any piece of any document is one
slice, read in any order by any number of grain threads or processes.

Axis letters: n tokens, d documents.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np

from lm.prepare import FORMAT, MANIFEST, out_tokenizer, shard_path


@functools.lru_cache(maxsize=32)
def _manifest(path: str, mtime_ns: int) -> dict:
    with open(os.path.join(path, MANIFEST)) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise ValueError(f"DataConfig.path={path!r}: manifest.json is not a {FORMAT} manifest")
    return manifest


def read_manifest(path: str) -> dict:
    """The manifest of prepared directory ``path`` (cached while the file is unchanged)."""
    file = os.path.join(os.path.expanduser(path), MANIFEST)
    if not os.path.isfile(file):
        raise ValueError(f"DataConfig.path={path!r}: no {MANIFEST} there; prepare it with "
                         "`python -m experiments.prepare_data --input ... --out DIR` (and --merge after --shard jobs)")
    return dict(_manifest(os.path.expanduser(path), os.stat(file).st_mtime_ns))


def tokenizer(path: str):
    """The tokenizer stored in prepared directory ``path`` (cached per manifest fingerprint)."""
    return _tokenizer(os.path.expanduser(path), read_manifest(path)["fingerprint"])


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str, fingerprint: str):
    return out_tokenizer(path)


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
        tables = [np.load(shard_path(self.path, k, split, "docs.npy")) for k in range(manifest["units"])]
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
