"""Subword tokenizers: byte-level BPE, tokenizer.json and SentencePiece round trips and special ids."""

import io

import numpy as np
import pytest

from lm.data import subword
from lm.data.subword import load_tokenizer
from lm.data.tokenizer import ByteTokenizer, parse_bpe_spec

TEXTS = [f"def f{i}(x):\n    return x * {i} + 'héllo ✓ wörld'\n" for i in range(200)]


@pytest.fixture(scope="module")
def bpe():
    return subword.train_bpe(iter(TEXTS), 300)


def test_bpe_round_trips_any_text_and_specials_come_first(bpe):
    assert (bpe.pad_id, bpe.bos_id, bpe.eos_id, bpe.vocab_size) == (0, 1, 2, 300)
    for text in ["def f1(x):\n    return x", "unseen: 東京 \U0001f600 \x00\ttabs", ""]:
        ids = bpe.encode(text, add_bos=True, add_eos=True)
        assert ids.dtype == np.int32 and ids[0] == bpe.bos_id and ids[-1] == bpe.eos_id
        assert ids.max() < bpe.vocab_size
        assert bpe.decode(ids) == text
    assert len(bpe.encode(TEXTS[5])) < 0.5 * len(TEXTS[5].encode())  # merges compress the training text
    assert [list(a) for a in bpe.encode_batch(TEXTS[:3])] == [list(bpe.encode(t)) for t in TEXTS[:3]]


def test_bpe_training_is_deterministic(tmp_path, bpe):
    bpe.save(str(tmp_path))
    again = subword.train_bpe(iter(TEXTS), 300)
    (tmp_path / "b").mkdir()
    again.save(str(tmp_path / "b"))
    assert (tmp_path / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()


def test_tokenizer_json_loads_with_the_same_ids(tmp_path, bpe):
    path = bpe.save(str(tmp_path))
    loaded = load_tokenizer(path)
    assert loaded.vocab_size == 300 and loaded.describe() == bpe.describe()
    np.testing.assert_array_equal(loaded.encode(TEXTS[7]), bpe.encode(TEXTS[7]))
    assert isinstance(load_tokenizer(str(tmp_path)), subword.HFTokenizer)  # a directory holding it


def test_tokenizer_json_without_bos_gets_new_ids_after_its_vocab():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "</s>": 2, "[UNK]": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    wrapped = subword.HFTokenizer(tok)
    assert (wrapped.eos_id, wrapped.pad_id, wrapped.bos_id, wrapped.vocab_size) == (2, 4, 5, 6)
    assert wrapped.decode([5, 0, 1, 2, 4]) == "a b"


def test_sentencepiece_model_trained_here_round_trips(tmp_path):
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS), model_writer=model, vocab_size=400,
                                   byte_fallback=True, character_coverage=1.0, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, minloglevel=2)
    path = tmp_path / "sp.model"
    path.write_bytes(model.getvalue())
    tok = load_tokenizer(str(path))
    assert isinstance(tok, subword.SentencePieceTokenizer)
    # SentencePiece defaults: unk 0, bos 1, eos 2, no pad: pad is appended after the vocabulary
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 400, 401)
    text = "def f3(x):\n    return x * 3 + 'héllo ✓ wörld'"
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids[0] == 1 and ids[-1] == 2 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text  # identity normalisation and byte fallback: exact
    (tmp_path / "copy").mkdir()
    saved = tok.save(str(tmp_path / "copy"))
    assert load_tokenizer(saved).describe() == tok.describe()


def test_specs_and_bad_specs():
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    assert parse_bpe_spec("bpe:32000") == 32000 and parse_bpe_spec("byte") is None
    for bad in ("bpe:258", "bpe:x"):
        with pytest.raises(ValueError, match="bpe:VOCAB"):
            parse_bpe_spec(bad)
    with pytest.raises(ValueError, match="tokenizer='/no/such.json'"):
        load_tokenizer("/no/such.json")
