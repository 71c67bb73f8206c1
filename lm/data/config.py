"""What the model reads: :class:`DataConfig`, the frozen config of the data pipeline (:mod:`lm.data.pipeline`).

Validated in ``__post_init__`` (a ValueError names the field, its value and what is
allowed); sweeps change it with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SOURCES = ("stdlib", "synthetic", "files", "tfds", "prepared")
CAPPED_SOURCES = ("stdlib", "files", "prepared")
MAX_SYNTHETIC_CONTEXTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the model reads.

    Attributes:
      source: "stdlib" | "synthetic" | "files" | "tfds" | "prepared" (see the module docstring).
      path: the prepared directory of source="prepared".
      seq_len: slots per row (t).
      batch_size: global batch size in rows (sequences), divided among hosts.
      seed: order of the pieces (shuffle seed; each epoch is reshuffled from it).
      split_seed: which files are held out ("stdlib", "files"); independent of ``seed``
        so that changing the data order keeps the validation set.
      val_fraction: fraction of files held out ("stdlib", "files"); "synthetic": number of
        validation documents as a fraction of the training documents.
      max_bytes: cap on the bytes of each split ("stdlib", "files", "prepared": bytes of
        text, the last document truncated; for "prepared" to the same share of its tokens); None = all.
      max_train_bytes: cap on the bytes of the TRAINING split only ("stdlib", "files", "prepared";
        None = no extra cap): the training split holds min(max_bytes, max_train_bytes)
        bytes (the last file truncated), the validation split is untouched, so configs
        differing only in this field evaluate on identical validation batches (unique-data
        budgets, Muennighoff et al. 2023). ``dataset_info(cfg)["train"]["targets"]`` is the
        exact number of unique training targets it leaves.
      add_bos, add_eos: begin / end every document with BOS_ID / EOS_ID.
      files_glob: pattern of the "files" source (``**`` allowed).
      tfds_name, tfds_split_train, tfds_split_val, tfds_text_key, tfds_data_dir: the
        "tfds" dataset, its two splits, the text feature and the data directory.
      synthetic_alphabet: symbols 0..a-1 of the chain (a <= 256).
      synthetic_order: k, the context length of the chain.
      synthetic_branching: allowed next symbols per context.
      synthetic_concentration: Dirichlet concentration of the per-context probabilities
        (small: peaked, low entropy; large: near uniform over the branches).
      synthetic_seed: the chain itself (its transition table) and the sampled documents.
      synthetic_doc_len: bytes per synthetic document.
      synthetic_num_tokens: bytes of the synthetic training split (one epoch).
      num_threads: grain read threads (0 reads in the consuming thread).
      prefetch_batches: batches prepared ahead in a background thread (0: none).
      num_workers: worker processes that read, pack and batch (grain ``mp_prefetch``); each
        packs its own slice of every epoch's pieces, so batches differ from num_workers=0's
        (deterministically; the iterator state stays checkpointable). 0: in this process.
    """

    source: str = "stdlib"
    path: str | None = None
    seq_len: int = 256
    batch_size: int = 8
    seed: int = 0
    split_seed: int = 0
    val_fraction: float = 0.1
    max_bytes: int | None = None
    max_train_bytes: int | None = None
    add_bos: bool = True
    add_eos: bool = True
    files_glob: str | None = None
    tfds_name: str | None = None
    tfds_split_train: str = "train"
    tfds_split_val: str = "test"
    tfds_text_key: str = "text"
    tfds_data_dir: str | None = None
    synthetic_alphabet: int = 256
    synthetic_order: int = 2
    synthetic_branching: int = 4
    synthetic_concentration: float = 1.0
    synthetic_seed: int = 0
    synthetic_doc_len: int = 1024
    synthetic_num_tokens: int = 1 << 24
    num_threads: int = 0
    prefetch_batches: int = 2
    num_workers: int = 0

    def __post_init__(self):
        def bad(name, allowed):
            raise ValueError(f"DataConfig.{name}={getattr(self, name)!r}: {allowed}")

        if self.source not in SOURCES:
            bad("source", f"allowed values are {SOURCES}")
        for name in ("seq_len", "batch_size", "synthetic_doc_len", "synthetic_num_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                bad(name, "must be a positive integer")
        for name in ("seed", "split_seed", "synthetic_seed", "num_threads", "prefetch_batches", "num_workers"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                bad(name, "must be a non-negative integer")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "must be in [0, 1)")
        for name in ("max_bytes", "max_train_bytes"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1):
                bad(name, "must be None or a positive integer")
        if self.max_train_bytes is not None and self.source not in CAPPED_SOURCES:
            bad("max_train_bytes", f"caps only the sources {CAPPED_SOURCES}, not source={self.source!r}; "
                "leave it None (synthetic: set synthetic_num_tokens)")
        if self.source == "prepared" and not self.path:
            bad("path", 'must be set (a directory written by experiments.prepare_data) when source="prepared"')
        if self.source == "files" and not self.files_glob:
            bad("files_glob", 'must be set (a glob pattern) when source="files"')
        if self.source == "tfds" and not self.tfds_name:
            bad("tfds_name", 'must be set (e.g. "lm1b") when source="tfds"')
        if not 2 <= self.synthetic_alphabet <= 256:
            bad("synthetic_alphabet", "must be in [2, 256]")
        if self.synthetic_order < 1:
            bad("synthetic_order", "must be >= 1")
        if self.synthetic_alphabet**self.synthetic_order > MAX_SYNTHETIC_CONTEXTS:
            bad("synthetic_order", f"synthetic_alphabet ** synthetic_order must be <= {MAX_SYNTHETIC_CONTEXTS}")
        if not 2 <= self.synthetic_branching <= self.synthetic_alphabet:
            bad("synthetic_branching", f"must be in [2, synthetic_alphabet={self.synthetic_alphabet}]")
        if not self.synthetic_concentration > 0:
            bad("synthetic_concentration", "must be > 0")
