"""data.py: text of any size and shape in, the same tokens as tokenizing it whole, a cache
that is cheap to check, and the loader."""

import multiprocessing
import os
import random
import re

import numpy as np
import pytest
import torch

from machinery import data
import train
from machinery.cli import UsageError
from conftest import ONE_THREAD, ROOT, run_script, step_losses, train_run
from machinery.data import DataLoader
from machinery.processes import Processes
from machinery.tokenizer import GPT2_EOT as EOT
from machinery.tokenizer import gpt2


def tokens_of(input_file, cache_dir):
    return np.array(data.load_tokens(str(input_file), str(cache_dir))[0]).tolist()


def expected_tokens(*paths):
    """GPT-2's tokens of the files as load_tokens lays them out: the training split, then
    the validation split (data.split_point), each document tokenized whole by tiktoken,
    <|endoftext|> between two documents of a split."""
    paths = [str(path) for path in paths]
    sizes = [os.path.getsize(path) for path in paths]
    cut = data.split_point(paths, sizes)
    tokens = []
    for start, end in ((0, cut), (cut, sum(sizes))):
        for i, (path, first, last) in enumerate(data.byte_ranges(paths, sizes, start, end)):
            with open(path, "rb") as f:
                document = f.read()[first:last].decode("utf-8")
            tokens += ([EOT] if i > 0 else []) + gpt2().encoding.encode_ordinary(document)
    return tokens


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
    assert tokens_of(path, tmp_path) == expected_tokens(path)


def test_the_whole_shakespeare_in_small_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "PIECE_BYTES", 10_000)
    assert tokens_of(os.path.join(ROOT, "input"), tmp_path) == expected_tokens(os.path.join(ROOT, "input"))


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
    enc = gpt2().encoding
    write(tmp_path / "books" / "b.txt", "Second book.\n")
    write(tmp_path / "books" / "a.txt", "First book.\n")
    write(tmp_path / "books" / "more" / "c.txt", "Third, in a folder.\nIts last line.\n")
    write(tmp_path / "books" / "notes.md", "not a .txt file: left out")
    # validation starts after the first line break at 90% of the bytes: "Its last line.\n"
    expected = (enc.encode("First book.\n") + [EOT] + enc.encode("Second book.\n") + [EOT]
                + enc.encode("Third, in a folder.\n") + enc.encode("Its last line.\n"))
    assert tokens_of(tmp_path / "books", tmp_path) == expected
    assert data.text_files(str(tmp_path / "books" / "*.txt")) == [str(tmp_path / "books" / n) for n in ("a.txt", "b.txt")]


def test_a_glob(tmp_path):
    enc = gpt2().encoding
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
    entries = {data.load_tokens(str(path), str(tmp_path), tokenizer, 320).entry
               for path in (one, two) for tokenizer in ("gpt2", "bpe")}
    assert len(entries) == 4
    assert data.load_tokens(str(one), str(tmp_path), "bpe", 384).entry not in entries  # another vocabulary size


def test_a_changed_file_is_tokenized_again_and_the_run_says_so(tmp_path, capsys):
    text = write(tmp_path / "t.txt", "To be, or not to be")
    first = tokens_of(text, tmp_path)
    capsys.readouterr()
    text.write_text("Whether 'tis nobler", encoding="utf-8")  # another size
    assert tokens_of(text, tmp_path) == expected_tokens(text) != first
    said = capsys.readouterr().out
    assert f"the token cache {only_entry(tmp_path)} is out of date ({text} changed" in said
    assert "tokenized" in said
    text.write_text("Whether 'tis NOBLER", encoding="utf-8")  # the same size: the time tells
    stat = text.stat()
    os.utime(text, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert tokens_of(text, tmp_path) == expected_tokens(text)
    assert "is out of date" in capsys.readouterr().out
    only_entry(tmp_path)  # rebuilt in place: no second entry left behind


def test_interrupted_tokenizing_leaves_no_cache_that_looks_complete(tmp_path, monkeypatch):
    text = write(tmp_path / "t.txt", "First words. " * 100)
    tokens_of(text, tmp_path)
    write(tmp_path / "t.txt", "Other words. " * 120)

    def interrupted(path, on_bytes_read=None, start=0, end=None):
        yield "Other words."
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "text_pieces", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data.load_tokens(str(text), str(tmp_path))
    entry = only_entry(tmp_path)
    assert not (entry / "tokens.json").exists() and not list(entry.glob("*.tmp"))
    monkeypatch.undo()
    assert tokens_of(text, tmp_path) == expected_tokens(text)


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
    expected = np.array(expected_tokens(text_file), dtype=np.uint16)
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
    def load():
        return data.load_splits(str(text_file), str(tmp_path / "cache"), "gpt2", 50304, 2, 32, Processes())

    *_, loaded = load()
    entry = only_entry(tmp_path / "cache")
    assert loaded.entry == str(entry) and not loaded.cached
    assert load()[2].cached


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
    r = train_run(tmp_path, books, *ONE_THREAD, "--max_steps", 2)
    assert r.returncode == 0, r.stderr
    assert sorted(step_losses(r.stdout)) == [0, 1]
    # every file was read: the tokens are each file's own, plus an <|endoftext|> between two
    n_train, n_val = re.search(r"train/val tokens ([\d,]+)/([\d,]+)", r.stdout).groups()
    assert int(n_train.replace(",", "")) + int(n_val.replace(",", "")) == len(expected_tokens(*sorted(books.iterdir())))
    assert "tokens new: " in r.stdout
    again = train_run(tmp_path, books, *ONE_THREAD, "--max_steps", 2, "--log_dir", tmp_path / "log2")
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


@pytest.mark.parametrize("seed", [None, 1337])
def test_processes_share_the_batches_of_one(seed):
    """Process r of W takes micro-batches r, r + W, ... of the one-process sequence, into
    the next pass where it goes there (31 batches a pass), and all of them keep the same state."""
    tokens = np.arange(1000, dtype=np.uint16)
    alone = DataLoader(tokens, 2, 16, seed=seed)
    sequence = [alone.next_batch()[0] for _ in range(80)]
    loaders = [DataLoader(tokens, 2, 16, rank=r, world_size=4, seed=seed) for r in range(4)]
    for i in range(20):
        for r, loader in enumerate(loaders):
            assert torch.equal(loader.next_batch()[0], sequence[4 * i + r])
        assert len({(loader.pass_number, loader.position) for loader in loaders}) == 1
    assert loaders[0].pass_number == 2


def batches_by_pass(loader, n):
    """{pass number: the windows' starts, in the order n batches read them}; the tokens are
    their own positions, so a window's first input is where it starts."""
    starts = {}
    for _ in range(n):
        x, y = loader.next_batch()
        assert torch.equal(y, x + 1) and torch.equal(x - x[:, :1], torch.arange(x.shape[1]).expand_as(x))  # whole windows
        starts.setdefault(loader.pass_number, []).extend(x[:, 0].tolist())
    return starts


def test_each_pass_after_the_first_reads_every_window_in_a_fresh_order():
    T, B = 16, 2
    tokens = np.arange(1000, dtype=np.uint16)
    passes = batches_by_pass(DataLoader(tokens, B, T, seed=1337), 31 * 5)  # 31 batches a pass, give or take one
    assert passes[0] == list(range(0, 62 * T, T))  # the first pass: in order, from the start, as without a seed
    orders = []
    for number in (1, 2, 3):
        offset = passes[number][0] % T
        n_windows = (len(tokens) - 1 - offset) // T
        assert set(passes[number]) <= set(range(offset, offset + n_windows * T, T))  # the windows cut at this offset,
        assert len(set(passes[number])) == len(passes[number]) > n_windows - B  # each once, and all but the last few
        orders.append([(start - offset) // T for start in passes[number]])
    assert len({tuple(order[:30]) for order in orders}) == 3 and orders[0][:30] != list(range(30))
    assert len({passes[number][0] % T for number in (1, 2, 3)}) > 1  # and the windows are cut at fresh offsets
    in_order = batches_by_pass(DataLoader(tokens, B, T), 31 * 3)  # no seed: every pass the same
    assert in_order[1] == in_order[2] == passes[0]


def test_a_split_of_one_batch_reads_it_every_pass():
    tokens = np.arange(2 * 16 + 1, dtype=np.uint16)  # the least a split may hold: one batch and its last target
    loader = DataLoader(tokens, 2, 16, seed=1337)
    for _ in range(5):  # its two windows, in either order
        x = loader.next_batch()[0]
        assert torch.equal(x[x[:, 0].argsort()], torch.arange(32).view(2, 16))


def test_a_loader_restored_to_its_state_reads_on_the_same():
    """What a checkpoint keeps, (pass_number, position), is all a loader needs to go on
    exactly, before a pass boundary and after one."""
    tokens = np.arange(1000, dtype=np.uint16)
    loader = DataLoader(tokens, 2, 16, seed=7)
    for n in (25, 10, 30):  # the second stop is in the second pass, the third in the third
        for _ in range(n):
            loader.next_batch()
        again = DataLoader(tokens, 2, 16, position=loader.position, seed=7, pass_number=loader.pass_number)
        for _ in range(40):
            assert torch.equal(again.next_batch()[0], loader.next_batch()[0])
        loader = again


@pytest.mark.slow
def test_help_mentions_directories():
    assert "directory" in run_script("train.py", "--help").stdout


# ---------------------------------------------------------------------------
# The split, defined on the text


@pytest.mark.parametrize("text, validation", [
    ("a" * 89 + "\n" + "b" * 5 + "\n" + "c" * 4, "c" * 4),  # the first line break at or after byte 90 of 100
    ("a" * 90 + "\n" + "b" * 9, "b" * 9),  # a line break right at the mark stays in training
    ("a" * 89 + "é" + "b" * 9, "b" * 9),  # no line break after the mark: the next whole character
    ("a" * 99 + "\n", ""),  # nothing after the last line break: an empty validation split
], ids=["line break", "at the mark", "no line break", "empty"])
def test_validation_starts_after_the_first_line_break_at_90_percent(tmp_path, text, validation):
    path = write(tmp_path / "t.txt", text)
    cut = data.split_point([str(path)], [os.path.getsize(path)])
    assert text.encode("utf-8")[cut:].decode("utf-8") == validation


def test_the_split_of_several_files_is_the_split_of_their_concatenation(tmp_path):
    files = [write(tmp_path / "1.txt", "x" * 50), write(tmp_path / "2.txt", "y" * 40 + "\n" + "z" * 9)]
    paths, sizes = [str(path) for path in files], [50, 50]
    cut = data.split_point(paths, sizes)
    assert cut == 91
    assert data.byte_ranges(paths, sizes, 0, cut) == [(paths[0], 0, 50), (paths[1], 0, 41)]
    assert data.byte_ranges(paths, sizes, cut, 100) == [(paths[1], 41, 50)]


def test_every_tokenizer_validates_on_the_very_same_text(tmp_path, text_file):
    validation = text_file.read_bytes()[data.split_point([str(text_file)], [os.path.getsize(text_file)]):]
    for name in ("gpt2", "bpe"):
        loaded = data.load_tokens(str(text_file), str(tmp_path), name, 512)
        assert loaded.tokenizer.name == name and loaded.train_bytes + len(validation) == loaded.text_bytes
        tokens = np.array(loaded.tokens[loaded.n_train:]).tolist()
        assert b"".join(loaded.tokenizer.token_bytes(t) for t in tokens) == validation  # byte for byte


def test_a_bpe_is_trained_on_the_training_split_only_and_kept_in_the_cache(tmp_path, monkeypatch, capsys):
    text = write(tmp_path / "t.txt", "common words, " * 900 + "\n" + "zyxwvut " * 10)  # the rare word: validation only
    first = data.load_tokens(str(text), str(tmp_path), "bpe", 320)
    said = capsys.readouterr().out
    assert f"trained a byte-level BPE of {first.tokenizer.n_vocab} tokens on the training text" in said
    assert first.tokenizer.n_vocab <= 320 and len(first.tokenizer.encode(" common")) == 1
    assert len(first.tokenizer.encode(" zyxwvut")) > 2  # never merged: it was not in the training text
    monkeypatch.setattr(data.tokenizer, "train_bpe", None)  # a second run must not train again
    again = data.load_tokens(str(text), str(tmp_path), "bpe", 320)
    assert again.cached and again.tokenizer.to_dict() == first.tokenizer.to_dict()


def test_a_bpe_of_a_large_text_learns_from_its_first_part_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "BPE_TRAINING_BYTES", 1000)
    monkeypatch.setattr(data, "PIECE_BYTES", 100)  # the text is read, and learned from, 100 bytes at a time
    text = write(tmp_path / "t.txt", "first part of the text\n" * 200 + "zyxwvut " * 2000 + "\nend\n")
    loaded = data.load_tokens(str(text), str(tmp_path), "bpe", 320)
    assert "on the training text (its first 0.001 MB)" in capsys.readouterr().out
    assert len(loaded.tokenizer.encode(" zyxwvut")) > 2  # later in the training text: never seen, never merged
