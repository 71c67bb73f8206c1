"""Subword tokenizers: byte-level BPE (Hugging Face ``tokenizers``) and SentencePiece.

Byte-level BPE (Radford et al. 2019, GPT-2 Sec. 2.2; Sennrich et al. 2016): text is mapped
to its UTF-8 bytes, each shown as one of 256 printable symbols, and merges are learned over
those, so every string round-trips exactly and no token is unknown. :func:`train_bpe`
learns ``vocab_size`` tokens (ids 0, 1, 2 are <pad>, <bos>, <eos>; then the 256 byte
symbols; then the merges) from an iterator of texts.

Loaded models keep their ids. Special tokens they lack (SentencePiece models often have
no <pad>; many tokenizer.json files no <bos>) get new ids after the model's own
vocabulary, so ``vocab_size`` may exceed the file's by up to 3; the model's embedding
follows ``vocab_size``.

:func:`load_tokenizer` builds a tokenizer of any kind from its spec (the byte tokenizer of
:mod:`lm.data.tokenizer` included); ``tokenizers`` and ``sentencepiece`` are imported only when a
subword model is used.

Axis letters: n tokens of one document.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Sequence

import numpy as np

from lm.data.tokenizer import TOKENIZER_FILES, ByteTokenizer, describe

SPECIALS = ("<pad>", "<bos>", "<eos>")
# Names that loaded tokenizer.json files use for the three roles, in order of preference.
HF_SPECIAL_NAMES = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "bos": ("<bos>", "<s>", "<|begin_of_text|>", "<|startoftext|>", "[BOS]"),
    "eos": ("<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>", "[EOS]"),
}


def _assign_specials(found: dict[str, int | None], base_vocab: int) -> tuple[dict[str, int], int]:
    """Special ids (those found, then new ids base_vocab, base_vocab + 1, ...) and the vocab size."""
    ids, nxt = {}, base_vocab
    for role in ("pad", "bos", "eos"):
        if found.get(role) is None or found[role] < 0:
            ids[role], nxt = nxt, nxt + 1
        else:
            ids[role] = int(found[role])
    return ids, max(nxt, base_vocab, max(ids.values()) + 1)


def file_sha256(path: str) -> str:
    """sha256 hex digest of a file's bytes (identifies a tokenizer in manifests)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` (trained byte-level BPE or a loaded tokenizer.json).

    Encoding never adds the file's own post-processor specials (BOS/EOS are added by the
    data pipeline, once, with ``add_bos`` / ``add_eos``).
    """

    kind = "hf"
    filename = "tokenizer.json"

    def __init__(self, tokenizer, *, path: str | None = None):
        self._tok = tokenizer
        self.path = path
        self.base_vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        found = {}
        for role, names in HF_SPECIAL_NAMES.items():
            found[role] = next((tokenizer.token_to_id(n) for n in names if tokenizer.token_to_id(n) is not None), None)
        ids, self.vocab_size = _assign_specials(found, self.base_vocab)
        self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
        self._special = np.array(sorted(set(ids.values())), dtype=np.int64)

    @classmethod
    def from_file(cls, path: str) -> "HFTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(path), path=path)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """Tokens int32 [n] of ``text`` with optional BOS / EOS."""
        ids = np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)
        return _wrap(ids, self.bos_id if add_bos else None, self.eos_id if add_eos else None)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Tokens int32 [n_i] of every text (no BOS/EOS)."""
        out = self._tok.encode_batch_fast(list(texts), add_special_tokens=False) \
            if hasattr(self._tok, "encode_batch_fast") else self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in out]

    def decode(self, ids) -> str:
        """Text of tokens ``ids`` [n]; special and out-of-vocabulary ids are dropped."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        keep = ids[(ids >= 0) & (ids < self.base_vocab) & ~np.isin(ids, self._special)]
        return self._tok.decode(keep.tolist(), skip_special_tokens=True)

    def save(self, directory: str) -> str:
        """Write ``directory/tokenizer.json``; returns its path."""
        path = os.path.join(directory, self.filename)
        tmp = path + ".tmp"
        self._tok.save(tmp)
        os.replace(tmp, path)
        return path

    def describe(self) -> dict:
        return describe(self)


class SentencePieceTokenizer:
    """A SentencePiece model (Kudo & Richardson 2018) loaded from a ``.model`` file."""

    kind = "sentencepiece"
    filename = "tokenizer.model"

    def __init__(self, path: str):
        import sentencepiece as spm

        self.path = path
        self._sp = spm.SentencePieceProcessor(model_file=path)
        self.base_vocab = self._sp.get_piece_size()
        ids, self.vocab_size = _assign_specials(
            {"pad": self._sp.pad_id(), "bos": self._sp.bos_id(), "eos": self._sp.eos_id()}, self.base_vocab)
        self.pad_id, self.bos_id, self.eos_id = ids["pad"], ids["bos"], ids["eos"]
        self._special = np.array(sorted(set(ids.values())), dtype=np.int64)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """Tokens int32 [n] of ``text`` with optional BOS / EOS."""
        ids = np.asarray(self._sp.encode(text), dtype=np.int32)
        return _wrap(ids, self.bos_id if add_bos else None, self.eos_id if add_eos else None)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Tokens int32 [n_i] of every text (no BOS/EOS)."""
        return [np.asarray(ids, dtype=np.int32) for ids in self._sp.encode(list(texts))]

    def decode(self, ids) -> str:
        """Text of tokens ``ids`` [n]; special and out-of-vocabulary ids are dropped."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        keep = ids[(ids >= 0) & (ids < self.base_vocab) & ~np.isin(ids, self._special)]
        return self._sp.decode(keep.tolist())

    def save(self, directory: str) -> str:
        """Copy the model file to ``directory/tokenizer.model``; returns its path."""
        path = os.path.join(directory, self.filename)
        if os.path.abspath(self.path) != os.path.abspath(path):
            shutil.copyfile(self.path, path + ".tmp")
            os.replace(path + ".tmp", path)
        return path

    def describe(self) -> dict:
        return describe(self)


def _wrap(ids: np.ndarray, bos: int | None, eos: int | None) -> np.ndarray:
    parts = [np.array([bos], np.int32)] if bos is not None else []
    parts.append(ids)
    if eos is not None:
        parts.append(np.array([eos], np.int32))
    return np.concatenate(parts) if len(parts) > 1 else ids


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Byte-level BPE of ``vocab_size`` tokens learned from ``texts`` (deterministic for a given
    input order). Ids: 0 <pad>, 1 <bos>, 2 <eos>, then the 256 byte symbols, then merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer(tok)


def load_tokenizer(spec: str):
    """The tokenizer named by ``spec``.

    Args:
      spec: "byte"; a path to a Hugging Face ``tokenizer.json`` (any ``*.json``); a path to a
        SentencePiece model (``*.model``); or a directory holding ``tokenizer.json`` or
        ``tokenizer.model`` (as a prepared data directory does).

    Raises:
      ValueError: a spec that is none of these (a "bpe:VOCAB" spec must be trained first,
        :func:`train_bpe`), or a file that is not a readable model of its kind (one line).
    """
    if spec == "byte":
        return ByteTokenizer()
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(path, name)):
                return load_tokenizer(os.path.join(path, name))
        return ByteTokenizer() if os.path.isfile(os.path.join(path, "manifest.json")) else _bad(spec)
    if path.endswith((".json", ".model")) and os.path.isfile(path):
        try:
            return HFTokenizer.from_file(path) if path.endswith(".json") else SentencePieceTokenizer(path)
        except Exception as err:  # tokenizers raises a bare Exception, sentencepiece a RuntimeError
            kind = "Hugging Face tokenizer.json" if path.endswith(".json") else "SentencePiece model"
            raise ValueError(f"tokenizer={spec!r}: not a readable {kind} "
                             f"({(str(err).strip().splitlines() or [type(err).__name__])[0]})") from None
    return _bad(spec)


def _bad(spec: str):
    raise ValueError(f"tokenizer={spec!r}: allowed values are 'byte', 'bpe:VOCAB' (trained on the corpus), "
                     "or an existing path to a tokenizer.json, a SentencePiece .model, or a directory holding one")
