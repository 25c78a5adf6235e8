"""data.py: text of any size and shape in, the same tokens as tokenizing it whole, a cache
that is cheap to check, and the loader."""

import os
import random

import numpy as np
import pytest
import torch

import data
from cli import UsageError
from conftest import ROOT, run_script, step_losses, train_run
from data import EOT, DataLoader, get_tokenizer


def tokens_of(input_file, cache_dir):
    return np.array(data.load_tokens(str(input_file), str(cache_dir))[0]).tolist()


# ---------------------------------------------------------------------------
# Pieces never change the result


def tricky_text(seed, n):
    """Runs of newlines and spaces, multi-byte characters, contractions, digits, and the
    text of a special token, in random order."""
    parts = ["ROMEO:", "\n", "\n\n", "\n\n\n", "   ", " ", "\t", "日本語", "é", "🎭", "'s", "'ll", "word", " word",
             "42", "!!", "<|endoftext|>", "\r\n", "\u00a0", "\u3000", "x"]
    rng = random.Random(seed)
    return "".join(rng.choice(parts) for _ in range(n))


@pytest.mark.parametrize("piece_bytes", [1, 2, 3, 5, 7, 64, 4096])
def test_pieces_give_the_tokens_of_the_whole(tmp_path, monkeypatch, piece_bytes):
    """Reads of a few bytes fall inside runs of white space and inside multi-byte characters."""
    text = tricky_text(piece_bytes, 3000)
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(data, "PIECE_BYTES", piece_bytes)
    assert tokens_of(path, tmp_path) == get_tokenizer().encode_ordinary(text)


def test_the_whole_shakespeare_in_small_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "PIECE_BYTES", 10_000)
    with open(os.path.join(ROOT, "input"), encoding="utf-8") as f:
        whole = get_tokenizer().encode_ordinary(f.read())
    assert tokens_of(os.path.join(ROOT, "input"), tmp_path) == whole


def test_safe_cuts():
    assert data.last_safe_cut("one two\n\nthree") == 7  # before the newlines, not inside them
    assert data.last_safe_cut("one  two") == 8 - 5  # after "one": the double space stays whole
    assert data.last_safe_cut("   \n\n  ") == 0  # white space only: nowhere safe
    assert data.last_safe_cut("word") == 0


# ---------------------------------------------------------------------------
# Files, directories and globs: documents joined by <|endoftext|>


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_directory_of_files_in_sorted_order(tmp_path):
    enc = get_tokenizer()
    write(tmp_path / "books" / "b.txt", "Second book.")
    write(tmp_path / "books" / "a.txt", "First book.")
    write(tmp_path / "books" / "more" / "c.txt", "Third, in a folder.")
    write(tmp_path / "books" / "notes.md", "not a .txt file: left out")
    expected = enc.encode("First book.") + [EOT] + enc.encode("Second book.") + [EOT] + enc.encode("Third, in a folder.")
    assert tokens_of(tmp_path / "books", tmp_path) == expected
    assert data.text_files(str(tmp_path / "books" / "*.txt")) == [str(tmp_path / "books" / n) for n in ("a.txt", "b.txt")]


def test_a_glob(tmp_path):
    enc = get_tokenizer()
    write(tmp_path / "x1.txt", "one")
    write(tmp_path / "x2.txt", "two")
    assert tokens_of(tmp_path / "x?.txt", tmp_path) == enc.encode("one") + [EOT] + enc.encode("two")
    with pytest.raises(UsageError, match="matches no files"):
        data.text_files(str(tmp_path / "nothing*.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="is a directory without"):
        data.text_files(str(tmp_path / "empty"))


def test_a_bad_file_among_many_is_named(tmp_path):
    write(tmp_path / "d" / "a.txt", "fine")
    (tmp_path / "d" / "b.txt").write_bytes(b"caf\xe9")
    with pytest.raises(UsageError, match="b.txt' is not UTF-8: byte 3 is 0xe9"):
        data.load_tokens(str(tmp_path / "d"), str(tmp_path))


# ---------------------------------------------------------------------------
# The cache


def test_cache_reused_without_reading_the_text(tmp_path, monkeypatch):
    text = write(tmp_path / "t.txt", "To be, or not to be, that is the question.")
    first = tokens_of(text, tmp_path)
    assert (tmp_path / "tokens.bin").stat().st_size == 2 * len(first)

    def no_reading(*args, **kwargs):
        raise AssertionError("the text was read again although it did not change")

    monkeypatch.setattr(data, "text_pieces", no_reading)
    assert tokens_of(text, tmp_path) == first


def test_cache_rebuilt_when_a_file_changes(tmp_path):
    text = write(tmp_path / "t.txt", "To be, or not to be")
    first = tokens_of(text, tmp_path)
    text.write_text("Whether 'tis nobler", encoding="utf-8")  # another size
    assert tokens_of(text, tmp_path) == get_tokenizer().encode("Whether 'tis nobler") != first
    text.write_text("Whether 'tis NOBLER", encoding="utf-8")  # the same size: the time tells
    stat = text.stat()
    os.utime(text, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert tokens_of(text, tmp_path) == get_tokenizer().encode("Whether 'tis NOBLER")


def test_interrupted_tokenizing_leaves_no_cache_that_looks_complete(tmp_path, monkeypatch):
    text = write(tmp_path / "t.txt", "First words. " * 100)
    tokens_of(text, tmp_path)
    write(tmp_path / "t.txt", "Other words. " * 120)

    def interrupted(path, on_bytes_read=None):
        yield "Other words."
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "text_pieces", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.load_tokens(str(text), str(tmp_path))
    assert not (tmp_path / "tokens.json").exists() and not (tmp_path / "tokens.bin.tmp").exists()
    monkeypatch.undo()
    assert tokens_of(text, tmp_path) == get_tokenizer().encode("Other words. " * 120)


@pytest.mark.slow
def test_training_on_a_directory(tmp_path, text_file):
    books = tmp_path / "books"
    books.mkdir()
    content = text_file.read_text(encoding="utf-8")
    for i in range(3):
        (books / f"part{i}.txt").write_text(content[i * 25_000 : (i + 1) * 25_000], encoding="utf-8")
    r = train_run(tmp_path, books, "--max_steps", 2)
    assert r.returncode == 0, r.stderr
    assert sorted(step_losses(r.stdout)) == [0, 1]
    again = train_run(tmp_path, books, "--max_steps", 2, "--log_dir", tmp_path / "log2")
    assert again.returncode == 0 and step_losses(again.stdout) == step_losses(r.stdout)


# ---------------------------------------------------------------------------
# The loader


def test_data_loader_shifts_and_wraps():
    tokens = np.arange(100, dtype=np.uint16)
    loader = DataLoader(tokens, 2, 10)
    x, y = loader.next_batch()
    assert x.shape == (2, 10) and torch.equal(y, x + 1)
    for _ in range(3):
        loader.next_batch()
    x, _ = loader.next_batch()  # 4 batches used 80 tokens; 21 more do not fit, so it wraps
    assert x[0, 0].item() == 0


def test_processes_share_the_batches_of_one(tmp_path):
    """Process r of W takes micro-batches r, r + W, ... of the one-process sequence, wrapping
    where it wraps, and all of them keep the same position."""
    tokens = np.arange(1000, dtype=np.uint16)
    alone = DataLoader(tokens, 2, 16)
    sequence = [alone.next_batch()[0] for _ in range(40)]
    loaders = [DataLoader(tokens, 2, 16, rank=r, world_size=4) for r in range(4)]
    for i in range(10):
        for r, loader in enumerate(loaders):
            assert torch.equal(loader.next_batch()[0], sequence[4 * i + r])
        assert len({loader.position for loader in loaders}) == 1


@pytest.mark.slow
def test_help_mentions_directories():
    assert "directory" in run_script("train.py", "--help").stdout
