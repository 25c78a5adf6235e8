"""tokenizer.py: GPT-2's vocabulary offline, a BPE trained on a small text, and the one
interface both give: ids, text, <|endoftext|>, the bytes of each token."""


import os

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from machinery import tokenizer
from conftest import ROOT, run_script
from machinery.data import text_pieces
from machinery.tokenizer import EOT_TEXT, gpt2, train_bpe

# ---------------------------------------------------------------------------
# GPT-2's


def test_known_ids():
    assert gpt2().encode("Hello, I'm a language model,").tolist() == [15496, 11, 314, 1101, 257, 3303, 2746, 11]
    assert gpt2().eot == 50256 and gpt2().n_vocab == 50257


def test_is_tiktokens_gpt2_encoding():
    enc = gpt2().encoding
    assert isinstance(enc, tiktoken.Encoding) and enc.name == "gpt2"
    # spot checks across the vocabulary: single bytes, merges, the last merge
    assert gpt2().decode([0]) == "!" and gpt2().decode([198]) == "\n" and gpt2().decode([50255]) == " gazed"


# ---------------------------------------------------------------------------
# A BPE trained here


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    """The first 200 KB of input: enough for a few hundred merges."""
    path = tmp_path_factory.mktemp("text") / "text.txt"
    with open(os.path.join(ROOT, "input"), encoding="utf-8") as f:
        path.write_text(f.read(200_000), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bpe(small_text):
    return train_bpe(text_pieces(str(small_text)), 512)


def test_bpe_learns_the_bytes_its_merges_and_endoftext(bpe):
    assert bpe.name == "bpe" and bpe.n_vocab == 512 and bpe.eot == 511
    assert sorted(bpe.token_bytes(t) for t in range(256)) == [bytes([b]) for b in range(256)]  # every byte
    assert bpe.token_bytes(bpe.eot) == b"" and len(bpe.encode("ROMEO:\nWhat say you?")) < 20  # merges at work


def test_training_again_on_the_same_text_gives_the_same_tokenizer(small_text, bpe):
    again = train_bpe(text_pieces(str(small_text)), 512)
    assert again.to_dict() == bpe.to_dict()


def test_a_checkpoints_description_brings_the_same_tokenizer_back(bpe):
    back = tokenizer.from_dict(bpe.to_dict())
    text = "But soft, what light through yonder window breaks?"
    assert back.encode(text).tolist() == bpe.encode(text).tolist() and back.eot == bpe.eot
    assert tokenizer.from_dict(gpt2().to_dict()) is gpt2()


@pytest.mark.parametrize("name", ["gpt2", "bpe"])
def test_endoftext_inside_a_text_is_plain_text(bpe, name):
    tok = gpt2() if name == "gpt2" else bpe
    ids = tok.encode(f"a{EOT_TEXT}b").tolist()
    assert tok.eot not in ids and tok.decode(ids) == f"a{EOT_TEXT}b"


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(text=st.text())
def test_any_text_comes_back_unchanged(bpe, text):
    for tok in (gpt2(), bpe):
        ids = tok.encode(text)
        assert tok.decode(ids.tolist()) == text
        assert sum(tok.byte_lengths[ids]) == len(text.encode("utf-8"))  # each byte in exactly one token


def test_a_token_inside_a_character_is_its_bytes(bpe):
    ids = bpe.encode("🎭").tolist()  # four bytes, never a merge in Shakespeare
    assert b"".join(bpe.token_bytes(t) for t in ids) == "🎭".encode("utf-8") and len(ids) == 4
    assert bpe.decode(ids[:1]) == "\ufffd"  # a part of a character alone is not text


def test_padding_ids_are_no_text(bpe):
    assert bpe.decode([bpe.encode("Hi").tolist()[0], bpe.n_vocab, bpe.n_vocab + 40]) == "H"


def test_byte_lengths_count_endoftext_as_nothing(bpe):
    for tok in (gpt2(), bpe):
        assert tok.byte_lengths[tok.eot] == 0 and tok.byte_lengths.dtype == np.int64
        assert len(tok.byte_lengths) == tok.n_vocab and tok.byte_lengths[:tok.eot].min() >= 1


def test_the_byte_level_alphabet_is_gpt2s():
    alphabet = tokenizer.byte_level_alphabet()
    assert len(set(alphabet.values())) == 256
    assert alphabet[ord(" ")] == "Ġ" and alphabet[ord("\n")] == "Ċ" and alphabet[ord("A")] == "A"


@pytest.mark.slow
def test_bench_measures_text_per_second_with_each_tokenizer(tmp_path):
    text = tmp_path / "text.txt"
    with open(os.path.join(ROOT, "input"), encoding="utf-8") as f:
        text.write_text(f.read(100_000), encoding="utf-8")
    r = run_script("bench.py", "--tokenizers", "--steps", 1, "--warmup", 0, "--rounds", 1, "--n_layer", 1, "--n_head", 2,
                   "--n_embd", 64, "--B", 2, "--T", 64, "--total_batch_size", 256, "--compile", False, "--device", "cpu",
                   "--dtype", "float32", "--input_file", text)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.startswith(("gpt2 ", "bpe "))}
    assert rows["gpt2"][1] == "50304" and rows["bpe"][1] == "4096"
    assert 2.5 < float(rows["bpe"][2]) < 4 and rows["gpt2"][-1] == "1.00x"  # bytes per token; the reference
