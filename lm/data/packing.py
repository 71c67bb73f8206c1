"""Packing documents into fixed-length rows of (token, next-token) pairs.

A document of n tokens (optional BOS, its bytes or subword tokens, optional EOS) has n - 1 training pairs
(tokens[i], targets[i]) = (doc[i], doc[i + 1]). Documents of known length are cut into
*pieces* of at most L pairs (the unit that is shuffled, so that the rows of a batch come
from different places of the corpus); pieces are packed with grain's
``ConcatThenSplitIterDataset`` into rows of exactly L slots, splitting a piece that does
not fit at the end of a row. Within a row:
  segment_ids[b, t]  1, 2, ... per piece, 0 for padding,
  positions[b, t]    0, 1, ... restarting at the start of every segment,
  targets[b, t]      the next token of the same document (always defined on a segment),
  weights[b, t]      1.0 on segments, 0.0 on padding.
Padding (PAD_ID, segment 0) appears only at the end of a finite epoch.

Axis letters: b rows (sequences), t slots of a row (seq_len L), p pieces.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import grain
import numpy as np
from grain.experimental import ConcatThenSplitIterDataset

from lm.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

FEATURES = ("tokens", "targets", "segment_ids", "positions", "weights")


def piece_table(lengths: np.ndarray, *, seq_len: int, add_bos: bool, add_eos: bool) -> np.ndarray:
    """int64 [p, 3]: (document, first token, end token) of every piece.

    A document of ``lengths[d]`` bytes has n = lengths[d] + add_bos + add_eos tokens; its
    piece j spans tokens [j L, min(j L + L + 1, n)): up to L pairs, consecutive pieces
    overlap by one token so every pair belongs to exactly one piece.
    """
    n_tok = np.asarray(lengths, dtype=np.int64) + int(add_bos) + int(add_eos)
    pairs = np.maximum(n_tok - 1, 0)
    counts = -(-pairs // seq_len)
    doc = np.repeat(np.arange(len(n_tok), dtype=np.int64), counts)
    first_piece = (np.cumsum(counts) - counts).astype(np.int64)
    j = np.arange(len(doc), dtype=np.int64) - np.repeat(first_piece, counts)
    start = j * seq_len
    stop = np.minimum(start + seq_len + 1, n_tok[doc])
    return np.stack([doc, start, stop], axis=1)


def read_tokens(source, doc: int, start: int, stop: int | None, *, add_bos: bool, add_eos: bool,
                bos_id: int = BOS_ID, eos_id: int = EOS_ID) -> np.ndarray:
    """int32 tokens [start, stop) of document ``doc`` (stop=None: the whole document, start=0).

    ``source.read`` gives bytes (byte tokens) or an int array of token ids (prepared data);
    ``source.lengths`` counts those units.
    """
    bos = int(add_bos)
    data = source.read(doc, max(start - bos, 0), None if stop is None else max(stop - bos, 0))
    ids = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    n_bytes = len(ids)
    lead = add_bos and start == 0
    if stop is None:
        trail = add_eos
    else:
        length = source.lengths[doc]
        trail = add_eos and stop == length + bos + 1
    out = np.empty(n_bytes + int(lead) + int(trail), dtype=np.int32)
    out[int(lead) : int(lead) + n_bytes] = ids
    if lead:
        out[0] = bos_id
    if trail:
        out[-1] = eos_id
    return out


def to_pair(tokens: np.ndarray) -> dict[str, np.ndarray]:
    """{"tokens": tokens[:-1], "targets": tokens[1:]}: the training pairs of a piece."""
    return {"tokens": tokens[:-1], "targets": tokens[1:]}


def pack(pairs: grain.IterDataset, seq_len: int, pad_id: int = PAD_ID) -> grain.IterDataset:
    """Rows of L slots: dict(tokens, targets, segment_ids, positions, weights), each [L]; ``pad_id`` on padding."""
    packed = ConcatThenSplitIterDataset(
        pairs.filter(lambda e: len(e["tokens"]) > 0),
        length_struct={"tokens": seq_len, "targets": seq_len},
        split_full_length_features=False,
    )
    return packed.map(functools.partial(_finish_row, pad_id=pad_id))


def _finish_row(row: dict[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    seg = row["tokens_segment_ids"].astype(np.int32)
    on = seg > 0
    return {
        "tokens": np.where(on, row["tokens"], pad_id).astype(np.int32),
        "targets": np.where(on, row["targets"], pad_id).astype(np.int32),
        "segment_ids": seg,
        "positions": row["tokens_positions"].astype(np.int32),
        "weights": on.astype(np.float32),
    }


def pad_batch(batch: dict[str, np.ndarray], rows: int, pad_id: int = PAD_ID) -> dict[str, np.ndarray]:
    """Append empty rows (``pad_id``, segment 0, weight 0) up to ``rows`` (the last batch of an epoch)."""
    have = batch["tokens"].shape[0]
    if have == rows:
        return batch
    fill = {"tokens": pad_id, "targets": pad_id, "segment_ids": 0, "positions": 0, "weights": 0.0}
    return {
        k: np.concatenate([v, np.full((rows - have, *v.shape[1:]), fill[k], dtype=v.dtype)]) for k, v in batch.items()
    }


def random_batch(rows: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of one document per row, tokens uniform on [0, vocab_size): [b, t] arrays of :data:`FEATURES`.

    For timing and testing a step without a corpus: targets are the next tokens of one draw of
    t + 1 per row; one segment per row, positions 0 .. t - 1, every weight 1.
    """
    doc = np.random.default_rng(seed).integers(0, vocab_size, (rows, seq_len + 1)).astype(np.int32)
    ones = np.ones((rows, seq_len), np.int32)
    return {"tokens": doc[:, :-1], "targets": doc[:, 1:], "segment_ids": ones,
            "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows, seq_len)).copy(),
            "weights": ones.astype(np.float32)}


def _json_state_to_native(state: Any) -> Any:
    """Undo a JSON round trip of a grain state: ConcatThenSplit compares its slices with
    tuples, so the [start, stop] lists that JSON makes of them must become tuples again."""
    if isinstance(state, dict):
        return {
            k: ({kk: tuple(vv) for kk, vv in v.items()} if k == "remainder_slices" else _json_state_to_native(v))
            for k, v in state.items()
        }
    if isinstance(state, list):
        return [_json_state_to_native(v) for v in state]
    return state


class CheckpointableIterator(grain.DatasetIterator):
    """The batch iterator handed to the trainer.

    ``get_state()`` is a JSON-serialisable dict (save it with the checkpoint);
    ``set_state(state)`` restores exactly, also from the JSON round trip of that dict.
    """

    def __init__(self, parent: grain.DatasetIterator):
        super().__init__()
        # The parent is held in a list that a finalizer empties at interpreter exit: the
        # pipeline (and its prefetch thread) is closed and freed while modules are still
        # alive, instead of in grain's __del__ during module teardown.
        self._holder = [parent]
        weakref.finalize(self, _close_all, self._holder)

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._holder[0])

    def get_state(self) -> dict[str, Any]:
        return self._holder[0].get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._holder[0].set_state(_json_state_to_native(state))

    def start_prefetch(self) -> None:
        self._holder[0].start_prefetch()

    def close(self) -> None:
        _close_all(self._holder)
        self._closed = True


def _close_all(holder: list) -> None:
    while holder:
        holder.pop().close()
