"""Byte tokenizer: ids, round trip, specials."""

import numpy as np

from lm.data import tokenizer as tok


def test_token_ids_are_bytes_then_distinct_specials():
    assert tok.VOCAB_SIZE == 259
    specials = {tok.PAD_ID, tok.BOS_ID, tok.EOS_ID}
    assert len(specials) == 3 and min(specials) >= 256 and max(specials) < tok.VOCAB_SIZE


def test_encode_is_utf8_bytes_and_decode_round_trips():
    text = "def f(x):\n    return 'héllo ✓ \U0001f600'\n"
    t = tok.ByteTokenizer()
    ids = t.encode(text)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, list(text.encode("utf-8")))
    assert t.decode(ids) == text


def test_bos_eos_added_and_dropped_by_decode():
    t = tok.ByteTokenizer()
    ids = t.encode("ab", add_bos=True, add_eos=True)
    np.testing.assert_array_equal(ids, [tok.BOS_ID, ord("a"), ord("b"), tok.EOS_ID])
    assert t.decode([tok.PAD_ID, *ids, tok.PAD_ID]) == "ab"


def test_decode_replaces_invalid_utf8():
    t = tok.ByteTokenizer()
    assert t.decode([0xFF, ord("a")]) == "\ufffda"
