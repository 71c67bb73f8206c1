"""Tokenizers: byte-level (the default), trained byte-level BPE, and loaded subword models.

Byte-level token ids:
  0..255  the bytes of the UTF-8 encoding of the text (a token is a byte, so bits per
          token over byte targets are bits per byte);
  256     PAD_ID, fills the empty slots of a packed row (segment id 0, loss weight 0);
  257     BOS_ID, begins each document when ``add_bos``;
  258     EOS_ID, ends each document when ``add_eos``.
VOCAB_SIZE = 259.

Subword tokenizers (:mod:`lm.data.subword`) share the interface: ``vocab_size``, ``pad_id``,
``bos_id``, ``eos_id``, ``encode``, ``encode_batch``, ``decode``, ``save`` and ``describe``.
:func:`lm.data.subword.load_tokenizer` builds any of them from a spec: "byte", a ``tokenizer.json``
(Hugging Face ``tokenizers``), a SentencePiece ``.model``, or a directory holding one of those.

Axis letters: n tokens of one document.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NUM_BYTES = 256
PAD_ID = 256
BOS_ID = 257
EOS_ID = 258
VOCAB_SIZE = 259
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


class ByteTokenizer:
    """Text <-> byte tokens. ``decode`` drops special tokens and replaces invalid UTF-8."""

    kind = "byte"
    vocab_size = VOCAB_SIZE
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def encode(self, text: str | bytes, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """Tokens int32 [n] of ``text`` (str is UTF-8 encoded; bytes are taken as they are)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return bytes_to_tokens(data, add_bos=add_bos, add_eos=add_eos)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Tokens int32 [n_i] of every text (no BOS/EOS)."""
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        """Text of tokens ``ids`` [n] (any int sequence); specials are dropped."""
        ids = np.asarray(ids).reshape(-1)
        byte_ids = ids[(ids >= 0) & (ids < NUM_BYTES)].astype(np.uint8)
        return byte_ids.tobytes().decode("utf-8", errors="replace")

    def save(self, directory: str) -> str | None:
        """Nothing to write: the byte tokenizer has no file. Returns None."""
        return None

    def describe(self) -> dict:
        """JSON-able summary (kind, vocab_size, special ids) for manifests."""
        return describe(self)


def describe(tok) -> dict:
    """JSON-able summary of any tokenizer of this module's interface."""
    return {"kind": tok.kind, "vocab_size": int(tok.vocab_size), "pad_id": int(tok.pad_id),
            "bos_id": int(tok.bos_id), "eos_id": int(tok.eos_id)}


def bytes_to_tokens(data: bytes, *, add_bos: bool, add_eos: bool) -> np.ndarray:
    """int32 [len(data) + add_bos + add_eos]: optional BOS, the bytes, optional EOS."""
    out = np.empty(len(data) + int(add_bos) + int(add_eos), dtype=np.int32)
    start = int(add_bos)
    out[start : start + len(data)] = np.frombuffer(data, dtype=np.uint8)
    if add_bos:
        out[0] = BOS_ID
    if add_eos:
        out[-1] = EOS_ID
    return out


def parse_bpe_spec(spec: str) -> int | None:
    """The vocabulary size of a "bpe:VOCAB" spec, or None when ``spec`` is not one."""
    if not spec.startswith("bpe:"):
        return None
    try:
        vocab = int(spec[4:])
    except ValueError:
        vocab = -1
    if vocab < VOCAB_SIZE:
        raise ValueError(f"tokenizer={spec!r}: bpe:VOCAB needs an integer VOCAB >= {VOCAB_SIZE} "
                         "(256 byte symbols and 3 special tokens)")
    return vocab
