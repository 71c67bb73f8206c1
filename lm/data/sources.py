"""Document sources: random access to the bytes of document i of one split.

A source has ``len(source)`` documents, ``lengths`` (int64 [docs], bytes per document, or
None when unknown without reading everything, as for TFDS) and ``read(i, start, stop)``
(the bytes [start, stop) of document i; stop=None reads to the end).

- stdlib: the *.py files of the running interpreter's standard library (test folders
  excluded), one document per file, split by FILE into train / validation.
- files: a glob of local text files, split by file the same way.
- synthetic: documents sampled from the sparse Markov chain of :mod:`lm.data.markov`.
- tfds: ``tfds.data_source`` (ArrayRecord, random access; TensorFlow is not needed).
"""

from __future__ import annotations

import functools
import glob as glob_lib
import os
import sysconfig

import numpy as np

from lm.data import markov

SPLITS = ("train", "validation")

# Folders of the standard library that hold tests, test data or third-party packages.
STDLIB_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "testdata"}
)


@functools.lru_cache(maxsize=None)
def stdlib_files() -> tuple[str, ...]:
    """Sorted absolute paths of the standard library's *.py files, test folders excluded."""
    root = sysconfig.get_paths()["stdlib"]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_EXCLUDED_DIRS)
        out.extend(
            os.path.join(dirpath, f) for f in filenames if f.endswith(".py") and not f.startswith("test_")
        )
    if not out:
        raise FileNotFoundError(f"no *.py files found under the standard library at {root!r}")
    return tuple(sorted(out))


@functools.lru_cache(maxsize=32)
def glob_files(pattern: str) -> tuple[str, ...]:
    """Sorted regular files matching ``pattern`` (recursive ``**`` allowed)."""
    out = tuple(sorted(p for p in glob_lib.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(p)))
    if not out:
        raise FileNotFoundError(f"DataConfig.files_glob={pattern!r} matches no files")
    return out


def split_by_file(
    paths: tuple[str, ...], val_fraction: float, split_seed: int
) -> dict[str, tuple[str, ...]]:
    """Disjoint {"train": ..., "validation": ...} file lists: a seeded permutation of the
    sorted paths, the first round(val_fraction * n) files (at least 1 when val_fraction > 0
    and n >= 2, at most n - 1) held out for validation."""
    n = len(paths)
    order = np.random.default_rng(split_seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    n_val = min(n_val, n)
    return {
        "validation": tuple(paths[i] for i in order[:n_val]),
        "train": tuple(paths[i] for i in order[n_val:]),
    }


class FileSource:
    """One document per file; total bytes optionally capped (the last file truncated)."""

    def __init__(self, paths: tuple[str, ...], max_bytes: int | None = None):
        sizes = np.array([os.path.getsize(p) for p in paths], dtype=np.int64)
        if max_bytes is not None:
            before = np.cumsum(sizes) - sizes
            sizes = np.clip(max_bytes - before, 0, sizes)
            keep = sizes > 0
            paths = tuple(p for p, k in zip(paths, keep) if k)
            sizes = sizes[keep]
        self.paths = paths
        self.lengths = sizes

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int, start: int = 0, stop: int | None = None) -> bytes:
        end = int(self.lengths[i]) if stop is None else min(stop, int(self.lengths[i]))
        with open(self.paths[i], "rb") as f:
            f.seek(start)
            return f.read(max(end - start, 0))


class SyntheticSource:
    """``num_docs`` documents of ``doc_len`` bytes from the stationary Markov chain.

    Document i of split s is sampled with the generator seeded by (seed, s, i), so any
    document can be read in any order.
    """

    def __init__(self, chain: markov.MarkovChain, *, num_docs: int, doc_len: int, seed: int, split_id: int):
        self.chain = chain
        self.lengths = np.full(num_docs, doc_len, dtype=np.int64)
        self._seed = (seed, split_id)

    def __len__(self) -> int:
        return len(self.lengths)

    @functools.lru_cache(maxsize=16)
    def document(self, i: int) -> bytes:
        rng = np.random.default_rng([*self._seed, i])
        return markov.sample(self.chain, rng, int(self.lengths[i])).tobytes()

    def read(self, i: int, start: int = 0, stop: int | None = None) -> bytes:
        return self.document(int(i))[start:stop]


class TfdsSource:
    """Text feature ``text_key`` of the examples of a ``tfds.data_source``; lengths unknown."""

    lengths = None

    def __init__(self, name: str, split: str, *, text_key: str, data_dir: str | None):
        import tensorflow_datasets as tfds  # imported lazily: heavy, only this source needs it

        self._ds = tfds.data_source(name, split=split, data_dir=data_dir)
        self._key = text_key

    def __len__(self) -> int:
        return len(self._ds)

    def read(self, i: int, start: int = 0, stop: int | None = None) -> bytes:
        text = self._ds[int(i)][self._key]
        if isinstance(text, np.ndarray):
            text = text.item()
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return data[start:stop]
