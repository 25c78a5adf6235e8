"""data.py: text of any size and shape in, the same tokens as tokenizing it whole, a cache
that is cheap to check, and the loader."""

import multiprocessing
import os
import random
import re

import numpy as np
import pytest
import torch

import data
import train
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


def only_entry(cache):
    """The one entry in a token cache folder."""
    entries = list((cache / "tokens").iterdir())
    assert len(entries) == 1, entries
    return entries[0]


def test_a_second_run_reads_the_cache_not_the_text(tmp_path, monkeypatch):
    text, cache = write(tmp_path / "data" / "t.txt", "To be, or not to be, that is the question."), tmp_path / "cache"
    first = data.load_tokens(str(text), str(cache))
    assert not first.cached and first.entry == str(only_entry(cache))
    assert (only_entry(cache) / "tokens.bin").stat().st_size == 2 * len(first.tokens)
    assert os.listdir(tmp_path / "data") == ["t.txt"]  # nothing is written next to the user's text

    def no_reading(*args, **kwargs):
        raise AssertionError("the text was read again although it did not change")

    monkeypatch.setattr(data, "text_pieces", no_reading)
    again = data.load_tokens(str(text), str(cache))  # another run, whatever its log_dir
    assert again.cached and again.entry == first.entry
    assert np.array_equal(again.tokens, first.tokens)


def test_entries_are_kept_apart_by_files_and_tokenizer(tmp_path, monkeypatch):
    one, two = write(tmp_path / "one.txt", "one"), write(tmp_path / "two.txt", "two")
    monkeypatch.setitem(data.TOKENIZERS, "other", get_tokenizer)  # a second name for the same tokenizer
    entries = {data.load_tokens(str(path), str(tmp_path), tokenizer).entry
               for path in (one, two) for tokenizer in ("gpt2", "other")}
    assert len(entries) == 4


def test_a_changed_file_is_tokenized_again_and_the_run_says_so(tmp_path, capsys):
    text = write(tmp_path / "t.txt", "To be, or not to be")
    first = tokens_of(text, tmp_path)
    capsys.readouterr()
    text.write_text("Whether 'tis nobler", encoding="utf-8")  # another size
    assert tokens_of(text, tmp_path) == get_tokenizer().encode("Whether 'tis nobler") != first
    said = capsys.readouterr().out
    assert f"the token cache {only_entry(tmp_path)} is out of date ({text} changed" in said
    assert "tokenized" in said
    text.write_text("Whether 'tis NOBLER", encoding="utf-8")  # the same size: the time tells
    stat = text.stat()
    os.utime(text, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert tokens_of(text, tmp_path) == get_tokenizer().encode("Whether 'tis NOBLER")
    assert "is out of date" in capsys.readouterr().out
    only_entry(tmp_path)  # rebuilt in place: no second entry left behind


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
    entry = only_entry(tmp_path)
    assert not (entry / "tokens.json").exists() and not list(entry.glob("*.tmp"))
    monkeypatch.undo()
    assert tokens_of(text, tmp_path) == get_tokenizer().encode("Other words. " * 120)


def tokenize_at_the_same_time(barrier, input_file, cache, results):
    """One of two processes: wait for the other, then load the same new text into the same cache."""
    barrier.wait()
    loaded = data.load_tokens(input_file, cache)
    results.put((loaded.cached, np.array(loaded.tokens).tobytes()))


@pytest.mark.slow
def test_two_runs_tokenizing_the_same_new_text_at_once(tmp_path, text_file):
    """The lock lets one process tokenize while the other waits, then finds the entry whole."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: forking torch's threads can hang
    barrier, results = context.Barrier(2), context.Queue()
    processes = [context.Process(target=tokenize_at_the_same_time, args=(barrier, str(text_file), str(tmp_path / "cache"), results))
                 for _ in range(2)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]  # before join: a full queue would block the child
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    expected = np.array(get_tokenizer().encode_ordinary(text_file.read_text(encoding="utf-8")), dtype=np.uint16)
    assert sorted(cached for cached, _ in outcomes) == [False, True]  # tokenized once, by one of them
    assert all(tokens == expected.tobytes() for _, tokens in outcomes)
    entry = only_entry(tmp_path / "cache")
    assert sorted(path.name for path in entry.iterdir()) == ["lock", "tokens.bin", "tokens.json"]
    assert data.load_tokens(str(text_file), str(tmp_path / "cache")).cached


def test_auto_cache_is_the_users_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_root("auto") == str(tmp_path / "xdg" / "homegpt")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.cache_root("auto") == str(tmp_path / "home" / ".cache" / "homegpt")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # the XDG spec: a relative path is ignored
    assert data.cache_root("auto") == str(tmp_path / "home" / ".cache" / "homegpt")
    assert data.cache_root(str(tmp_path / "mine")) == str(tmp_path / "mine")  # any other setting is the folder


def test_start_up_says_whether_the_tokens_were_cached(tmp_path, text_file):
    cfg = train.Config(input_file=str(text_file), data_cache=str(tmp_path / "cache"), B=2, T=32, total_batch_size=64)
    *_, note = train.load_splits(cfg, 50304)
    entry = only_entry(tmp_path / "cache")
    assert note == f"tokens new: {entry}"
    assert train.load_splits(cfg, 50304)[2] == f"tokens cached: {entry}"


def test_a_cache_that_cannot_be_written_is_refused(tmp_path, text_file):
    a_file = write(tmp_path / "notes.txt", "mine")
    with pytest.raises(UsageError, match="cannot write the token cache in .* choose another --data_cache"):
        data.load_tokens(str(text_file), str(a_file))
    assert a_file.read_text() == "mine"


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
    # every file was read: the tokens are each file's own, plus an <|endoftext|> between two
    each = [len(get_tokenizer().encode_ordinary(path.read_text(encoding="utf-8"))) for path in sorted(books.iterdir())]
    n_train, n_val = re.search(r"train/val tokens ([\d,]+)/([\d,]+)", r.stdout).groups()
    assert int(n_train.replace(",", "")) + int(n_val.replace(",", "")) == sum(each) + 2
    assert "tokens new: " in r.stdout
    again = train_run(tmp_path, books, "--max_steps", 2, "--log_dir", tmp_path / "log2")
    assert again.returncode == 0 and step_losses(again.stdout) == step_losses(r.stdout)
    assert "tokens cached: " in again.stdout and "tokenized" not in again.stdout  # another log_dir, the same cache


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
