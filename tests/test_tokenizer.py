"""The offline GPT-2 tokenizer gives tiktoken's "gpt2" ids."""

import tiktoken

from data import get_tokenizer


def test_known_ids():
    enc = get_tokenizer()
    assert enc.encode("Hello, I'm a language model,") == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert enc.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [50256]
    assert enc.eot_token == 50256 and enc.n_vocab == 50257


def test_unicode_round_trip():
    enc = get_tokenizer()
    text = "ROMEO:\nBut soft! — naïve café, 日本語, emoji 🎭, tabs\tand  double  spaces.\n\n"
    ids = enc.encode(text)
    assert enc.decode(ids) == text
    assert all(0 <= i < 50257 for i in ids)


def test_is_a_tiktoken_encoding():
    enc = get_tokenizer()
    assert isinstance(enc, tiktoken.Encoding) and enc.name == "gpt2"
    # spot checks across the vocabulary: single bytes, merges, the last merge
    assert enc.decode([0]) == "!" and enc.decode([198]) == "\n" and enc.decode([50255]) == " gazed"
