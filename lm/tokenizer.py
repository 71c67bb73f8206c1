"""Byte-level tokenizer: the 256 byte values plus three special tokens.

Token ids:
  0..255  the bytes of the UTF-8 encoding of the text (a token is a byte, so bits per
          token over byte targets are bits per byte);
  256     PAD_ID, fills the empty slots of a packed row (segment id 0, loss weight 0);
  257     BOS_ID, begins each document when ``add_bos``;
  258     EOS_ID, ends each document when ``add_eos``.
VOCAB_SIZE = 259.

Axis letters: n tokens of one document.
"""

from __future__ import annotations

import numpy as np

NUM_BYTES = 256
PAD_ID = 256
BOS_ID = 257
EOS_ID = 258
VOCAB_SIZE = 259


class ByteTokenizer:
    """Text <-> byte tokens. ``decode`` drops special tokens and replaces invalid UTF-8."""

    vocab_size = VOCAB_SIZE
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

    def encode(self, text: str | bytes, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
        """Tokens int32 [n] of ``text`` (str is UTF-8 encoded; bytes are taken as they are)."""
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return bytes_to_tokens(data, add_bos=add_bos, add_eos=add_eos)

    def decode(self, ids) -> str:
        """Text of tokens ``ids`` [n] (any int sequence); specials are dropped."""
        ids = np.asarray(ids).reshape(-1)
        byte_ids = ids[(ids >= 0) & (ids < NUM_BYTES)].astype(np.uint8)
        return byte_ids.tobytes().decode("utf-8", errors="replace")


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
