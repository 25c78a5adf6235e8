"""
Text in, batches out: the training text as cached tokens (tokenizer.py turns text into them),
the train/validation split, and the loader that walks through a split.

    text_files      what input_file names: one file, every *.txt under a directory, or a glob
    cache_root      where the token cache lives: --data_cache, or for "auto" ~/.cache/homegpt
    load_tokens     all the text as token ids: tokenized once, streaming, on every core, into
                    a uint16 file in the token cache that training memory-maps
    split_point     where validation starts: the first line break after 90% of the text's bytes
    split_tokens    the tokens before it to train on, the rest to validate on
    load_splits     both at once, as a run needs them
    DataLoader      B x T inputs and their next-token targets, batch after batch, a fresh order each pass
    Windows         where an evaluation reads: periodic_windows, final_windows

The text is never held in memory whole, and its tokens never as Python objects: it is
read a few MB at a time, cut where GPT-2's tokenizer would cut anyway, tokenized on
all cores, and written out as 2-byte ids. The cache is shared by every run, whatever its
log_dir: one entry per set of files and tokenizer,

    cache_root/tokens/<key>/    key: a hash of the tokenizer's name and the files' absolute paths
        tokens.bin              the ids, 2 bytes each
        tokens.json             their count, the largest id, and each file's path, size and mtime
        lock                    held while a run checks or writes the entry

A run on unchanged files (the same paths, sizes and modification times) reads only
tokens.bin; a changed file or a damaged entry is tokenized again, and the run says so.
"""

import codecs
import contextlib
import glob
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

try:
    import fcntl  # POSIX file locks, for two runs that tokenize the same text at once
except ImportError:  # Windows: no lock; each run's own temporary file still keeps its tokens whole
    fcntl = None

import numpy as np
import torch

from machinery import tokenizer
from machinery.cli import UsageError
from machinery.speed import physical_cores

PIECE_BYTES = 4 << 20  # how much text is read at a time
PROJECT = "homegpt"  # the project's short name, which names its folder in the user's cache
CACHE_VERSION = 2  # 2: the validation split is cut in the text, and tokens.json says where
BPE_TRAINING_BYTES = 100 * 10**6  # a BPE is trained on at most this much of the training text


def text_files(input_file):
    """The files input_file names, in order: the file itself, every *.txt under a
    directory (sorted, subdirectories included), or what a glob matches (sorted)."""
    if os.path.isdir(input_file):
        files = sorted(glob.glob(os.path.join(input_file, "**", "*.txt"), recursive=True))
        if not files:
            raise UsageError(f"{input_file!r} is a directory without *.txt files: put text files there or pass one file")
        return files
    if os.path.exists(input_file):
        return [input_file]
    if glob.has_magic(input_file):
        files = sorted(path for path in glob.glob(input_file, recursive=True) if os.path.isfile(path))
        if not files:
            raise UsageError(f"{input_file!r} matches no files: check the pattern given to --input_file")
        return files
    raise UsageError(f"no training text at {input_file!r}: put a UTF-8 text file there or pass --input_file PATH")


def cache_root(setting="auto"):
    """The folder the token cache lives in: setting itself, or for "auto" the user's cache
    folder ($XDG_CACHE_HOME, else ~/.cache) / homegpt. Resolved at every run and never
    stored, so a checkpoint still says "auto" on another machine or for another user."""
    if setting != "auto":
        return os.path.expanduser(setting)
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):  # unset, empty or relative: the XDG spec says to ignore it
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, PROJECT)


class Tokens(NamedTuple):
    """What load_tokens returns."""

    tokens: np.ndarray  # a read-only uint16 memory map of the entry's tokens.bin: training, then validation
    n_train: int  # how many of them are the training split's
    max_token: int  # the largest id, to check against the model's vocabulary
    tokenizer: tokenizer.Tokenizer  # the one that made them
    entry: str  # the cache entry's folder
    cached: bool  # True: the entry was there already; False: this call tokenized the text
    text_bytes: int  # the text's size, and its training split's, in bytes
    train_bytes: int


def load_tokens(input_file, cache, tokenizer="gpt2", vocab_size=None):
    """All the text input_file names as token ids, documents joined by <|endoftext|>, from
    the token cache in the folder cache; returns Tokens. tokenizer: "gpt2", "bpe" (trained
    here on the training split, up to vocab_size tokens, and kept in the entry) or a
    Tokenizer (the one a checkpoint brings). Tokenizes only when the entry is missing,
    stale or damaged."""
    files = text_files(input_file)
    sources = [describe_file(path) for path in files]
    entry = cache_entry(cache, files, tokenizer_key(tokenizer, vocab_size))
    bin_path, meta_path = os.path.join(entry, "tokens.bin"), os.path.join(entry, "tokens.json")
    # Checking and writing happen under the entry's lock: a second run on the same new text
    # waits here while the first tokenizes, then finds the entry whole
    with locked(entry):
        meta = read_token_cache(bin_path, meta_path, sources)
        cached = meta is not None
        if cached:
            tok = entry_tokenizer(entry, tokenizer)
        else:
            if os.path.exists(meta_path):
                os.remove(meta_path)  # from here until the new one is written, the entry is not complete
            meta, tok = make_entry(input_file, files, entry, tokenizer, vocab_size)
            meta["sources"] = sources
            write_json(meta_path, meta)
        # opened before the lock is let go: a later rebuild renames a new file over this
        # one, and the map keeps the old file's tokens
        tokens = np.memmap(bin_path, dtype=np.uint16, mode="r", shape=(meta["n_tokens"],))
    return Tokens(tokens, meta["n_train"], meta["max_token"], tok, entry, cached, meta["text_bytes"], meta["train_bytes"])


def tokenizer_key(choice, vocab_size):
    """What names a tokenizer in the cache key: "gpt2", "bpe-4096" for one trained here,
    or a hash of the whole vocabulary for one a checkpoint brought."""
    if isinstance(choice, tokenizer.Tokenizer):
        if choice.name == "gpt2":
            return "gpt2"
        return "bpe-" + hashlib.sha256(json.dumps(choice.to_dict()).encode()).hexdigest()[:16]
    return "gpt2" if choice == "gpt2" else f"bpe-{vocab_size}"


def make_entry(input_file, files, entry, choice, vocab_size):
    """Split the text, get the tokenizer (training one if asked to), tokenize the two
    splits into the entry; returns (its tokens.json, the tokenizer)."""
    sizes = [os.path.getsize(path) for path in files]
    cut = split_point(files, sizes)
    train_part, val_part = byte_ranges(files, sizes, 0, cut), byte_ranges(files, sizes, cut, sum(sizes))
    if isinstance(choice, tokenizer.Tokenizer):
        tok = choice
    elif choice == "gpt2":
        tok = tokenizer.gpt2()
    else:
        tok = train_tokenizer(train_part, vocab_size)
        with open(os.path.join(entry, "tokenizer.json"), "w") as f:
            json.dump(tok.to_dict(), f)
    started = time.time()
    meta = tokenize_parts([train_part, val_part], os.path.join(entry, "tokens.bin"), tok, files)
    megabytes, seconds = sum(sizes) / 1e6, time.time() - started
    print(f"tokenized {input_file} ({megabytes:,.1f} MB, {len(files)} file{'s' * (len(files) > 1)}) into "
          f"{meta['n_tokens']:,} tokens in {seconds:.1f}s ({megabytes / max(seconds, 1e-9):.1f} MB/s): {entry}")
    return {**meta, "version": CACHE_VERSION, "tokenizer": tokenizer_key(choice, vocab_size), "split_byte": cut,
            "text_bytes": sum(sizes), "train_bytes": cut}, tok


def entry_tokenizer(entry, choice):
    """The tokenizer of a whole entry: GPT-2's, the one given, or the one trained for it."""
    if isinstance(choice, tokenizer.Tokenizer):
        return choice
    if choice == "gpt2":
        return tokenizer.gpt2()
    with open(os.path.join(entry, "tokenizer.json")) as f:
        return tokenizer.from_dict(json.load(f))


def train_tokenizer(train_part, vocab_size):
    """A byte-level BPE of up to vocab_size tokens, trained on the training split only
    (at most its first BPE_TRAINING_BYTES), so validation stays text it never saw."""
    started, seen = time.time(), 0

    def pieces():
        nonlocal seen
        for path, start, end in train_part:
            for piece in text_pieces(path, start=start, end=end):
                if seen >= BPE_TRAINING_BYTES:
                    return
                seen += len(piece.encode("utf-8"))
                yield piece

    tok = tokenizer.train_bpe(pieces(), vocab_size)
    bounded = f" (its first {BPE_TRAINING_BYTES / 1e6:g} MB)" if seen >= BPE_TRAINING_BYTES else ""
    print(f"trained a byte-level BPE of {tok.n_vocab:,} tokens on the training text{bounded}, {seen / 1e6:,.1f} MB, "
          f"in {time.time() - started:.1f}s")
    return tok


def split_point(files, sizes):
    """Where validation starts, in bytes of the files' concatenation: just after the first
    line break at or after 90% of the bytes (the line break stays in training), or, with
    no line break after that mark, at the first character that starts there or later.
    Defined on the text, so every tokenizer validates on the very same text."""
    total = sum(sizes)
    mark = -(-9 * total // 10)  # 90%, rounded up
    offset = 0
    for path, size in zip(files, sizes):
        if offset + size > mark:
            with open(path, "rb") as f:
                f.seek(max(0, mark - offset))
                while chunk := f.read(PIECE_BYTES):
                    newline = chunk.find(b"\n")
                    if newline >= 0:
                        return f.tell() - len(chunk) + offset + newline + 1
        offset += size
    return first_character_at(files, sizes, mark)


def first_character_at(files, sizes, mark):
    """The first offset at or after mark where a UTF-8 character starts (or the end)."""
    offset = 0
    for path, size in zip(files, sizes):
        if offset + size > mark:
            with open(path, "rb") as f:
                f.seek(mark - offset)
                tail = f.read(4)
            continuation = next((i for i, byte in enumerate(tail) if byte & 0xC0 != 0x80), len(tail))
            return mark + continuation
        offset += size
    return sum(sizes)


def byte_ranges(files, sizes, start, end):
    """[(path, first byte, end byte)] of each file's share of bytes start..end of the
    files' concatenation; files with no share are left out."""
    ranges, offset = [], 0
    for path, size in zip(files, sizes):
        first, last = max(start, offset), min(end, offset + size)
        if first < last:
            ranges.append((path, first - offset, last - offset))
        offset += size
    return ranges


def cache_entry(cache, files, tokenizer):
    """The entry's folder for these files and this tokenizer. Sizes and times are not in
    the key: a changed file finds its old entry and replaces it, rather than leaving one
    more behind."""
    key = json.dumps([tokenizer, [os.path.abspath(path) for path in files]])
    return os.path.join(cache, "tokens", hashlib.sha256(key.encode()).hexdigest()[:16])


@contextlib.contextmanager
def locked(entry):
    """Makes the entry's folder and holds its lock while the block runs; a process that
    asks meanwhile waits. The system lets go of the lock when the process ends, however
    it ends, so a killed run never leaves the cache locked."""
    try:
        os.makedirs(entry, exist_ok=True)
        lock = open(os.path.join(entry, "lock"), "a")
    except OSError as e:
        raise UsageError(f"cannot write the token cache in {entry} ({e.strerror or e}): "
                         f"choose another --data_cache") from None
    with lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file lets go of the lock


def describe_file(path):
    """What says a file is unchanged without reading it: its path, size and modification time."""
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def read_token_cache(bin_path, meta_path, sources):
    """The entry's description if it is whole and made from exactly these sources, else
    None. A damaged or stale entry is said so and rebuilt, never trusted."""
    if not os.path.exists(meta_path):
        return None
    entry = os.path.dirname(bin_path)
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        whole = os.path.getsize(bin_path) == 2 * meta["n_tokens"] and isinstance(meta["max_token"], int)
        changed = [new[0] for old, new in zip(meta["sources"], sources) if old != new]
    except (OSError, ValueError, KeyError, TypeError) as e:
        whole, reason = False, e.__class__.__name__
    else:
        reason = "its size or description is wrong"
    if not whole:
        print(f"the token cache {entry} is damaged ({reason}); tokenizing the text again")
        return None
    if meta.get("version") != CACHE_VERSION:
        print(f"the token cache {entry} was made by an older version of this project; tokenizing the text again")
        return None
    if meta["sources"] != sources:
        print(f"the token cache {entry} is out of date ({changed[0] if changed else 'the files'} changed since it "
              f"was made); tokenizing the text again")
        return None
    return meta


def tokenize_parts(parts, bin_path, tok, files):
    """Tokenize the parts (each a list of byte ranges, one per document) one after the
    other into bin_path as uint16, <|endoftext|> between documents; returns {"n_tokens",
    "n_train" (the first part's), "max_token"}. The tokens go to a temporary file of this
    process's own that is renamed only when complete."""
    from tqdm import tqdm

    threads = physical_cores()  # the tokenizers release the GIL: one thread per core tokenizes in parallel
    total = sum(end - start for part in parts for _, start, end in part)
    tmp = f"{bin_path}.{os.getpid()}.tmp"
    counts, max_token, has_text = [], 0, False
    progress = tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=total < 8 << 20, leave=False)
    try:
        with open(tmp, "wb") as out, ThreadPoolExecutor(threads) as pool, progress:
            for part in parts:
                n_tokens = 0
                for i, (path, start, end) in enumerate(part):
                    if i > 0:  # <|endoftext|> goes between documents, as in GPT-2's training text
                        np.array([tok.eot], dtype=np.uint16).tofile(out)
                        n_tokens += 1
                    pieces = text_pieces(path, progress.update, start, end)
                    while batch := [piece for _, piece in zip(range(2 * threads), pieces)]:
                        has_text = has_text or any(not piece.isspace() for piece in batch)
                        for ids in pool.map(tok.encode, batch):
                            ids.astype(np.uint16).tofile(out)  # every vocabulary here fits in 16 bits
                            n_tokens += len(ids)
                            max_token = max(max_token, int(ids.max(initial=0)))
                counts.append(n_tokens)
        if not has_text:
            what = f"{files[0]!r} is" if len(files) == 1 else f"all {len(files)} files are"
            raise UsageError(f"{what} empty or holds only whitespace: there is nothing to learn from")
        os.replace(tmp, bin_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)  # an interrupted or failed run leaves no half-written tokens
    return {"n_tokens": sum(counts), "n_train": counts[0], "max_token": max_token}


def text_pieces(path, on_bytes_read=lambda n: None, start=0, end=None):
    """The text of a UTF-8 file, a few MB at a time, cut only where GPT-2's tokenizer cuts
    anyway, so that tokenizing the pieces one by one gives exactly the tokens of the whole.
    Its splitting pattern starts a new piece of text at every space or newline that
    follows a character that is not white space: no word, number or punctuation run goes
    on across one. (Inside a run of white space it may not cut: "\n\n" before a word is
    split as "\n" + "\n", but at the end of a piece it would stay "\n\n".) start and end
    (bytes, at character boundaries) read only a part of the file."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry, offset = "", start
    left = (os.path.getsize(path) if end is None else end) - start
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UsageError(f"cannot read {path!r} ({e.strerror or e}): check the path and its permissions") from None
    with f:
        f.seek(start)
        while True:
            raw = f.read(min(PIECE_BYTES, left))
            left -= len(raw)
            nul = raw.find(b"\0")  # text never holds a NUL byte; images, archives and executables do
            if nul >= 0:
                raise UsageError(f"{path!r} looks binary (a NUL byte at byte {offset + nul}): train on a UTF-8 text file")
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous read
            try:
                text = carry + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                byte = offset - pending + e.start
                raise UsageError(f"{path!r} is not UTF-8: byte {byte} is 0x{e.object[e.start]:02x}; convert the file "
                                 f"to UTF-8 (for example: iconv -f latin1 -t utf-8)") from None
            offset += len(raw)
            on_bytes_read(len(raw))
            if not raw:
                if text:
                    yield text
                return
            cut = last_safe_cut(text)
            if cut > 0:
                yield text[:cut]
            carry = text[cut:]


def last_safe_cut(text):
    """The last index i where text[i] is a space or newline and text[i - 1] is not white
    space; 0 if there is none."""
    i = len(text)
    while True:
        i = max(text.rfind(" ", 0, i), text.rfind("\n", 0, i))
        if i <= 0:
            return 0
        if not text[i - 1].isspace():
            return i


def write_json(path, data):
    tmp = f"{path}.{os.getpid()}.tmp"  # this process's own: no other writer can cut into it
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def load_splits(input_file, cache, tokenizer, vocab_size, B, T, processes):
    """(training tokens, validation tokens, the Tokens they came from): load_tokens, then
    split_tokens. Under torchrun (processes: machinery/processes.py's) the first process
    tokenizes and the others read the entry it cached."""
    if not processes.main:
        processes.barrier()
    loaded = load_tokens(input_file, cache, tokenizer, vocab_size)
    if processes.main:
        processes.barrier()
    return (*split_tokens(loaded.tokens, loaded.n_train, B, T, input_file), loaded)


def split_tokens(tokens, n_train, B, T, name="the text"):
    """The first n_train tokens to train on, the rest (the text after split_point) to
    validate on, each long enough for one batch."""
    needed = B * T + 1  # one batch of B x T inputs, plus one for the last target
    for split, part in (("training", tokens[:n_train]), ("validation", tokens[n_train:])):
        if len(part) < needed:
            raise UsageError(
                f"{name} has {len(tokens)} tokens, so its {split} split has {len(part)}, but one batch "
                f"of B x T = {B} x {T} needs {needed}: use a longer text or smaller --B/--T"
            )
    return tokens[:n_train], tokens[n_train:]


class DataLoader:
    """Walks through a split, B x T tokens per batch, pass after pass. The targets are the
    inputs shifted by one: at each position, the next token.

    A pass reads the split as windows of T tokens, B of them a batch. The first pass reads
    them in order from the start; with a seed, each later pass starts its windows at a
    random offset (below T) and reads them in a random order, both drawn from the seed and
    the pass's number, so that many passes over a small text do not repeat one sequence of
    batches. The state is (pass_number, position): position is the tokens read in this pass.

    With several processes (rank r of world_size), the micro-batches one process would
    read in turn are dealt out: process r takes the r-th of every world_size of them.
    Every process keeps the same state, the one a single process would have, so a
    checkpoint's state means the same with any number of processes."""

    def __init__(self, tokens, B, T, position=0, rank=0, world_size=1, seed=None, pass_number=0):
        self.tokens, self.B, self.T, self.position = tokens, B, T, position
        self.rank, self.world_size, self.seed, self.pass_number = rank, world_size, seed, pass_number
        self.order = (None, None)  # (the pass it belongs to, its (offset, window order))

    def next_batch(self):
        B, T = self.B, self.T
        for r in range(self.world_size):
            offset, windows = self.pass_order()
            if self.position + B * T > len(windows) * T:
                self.pass_number, self.position = self.pass_number + 1, 0  # the next pass over the data
                offset, windows = self.pass_order()
            if r == self.rank:
                first = self.position // T
                starts = offset + np.asarray(windows[first : first + B]) * T
            self.position += B * T
        rows = self.tokens[starts[:, None] + np.arange(T + 1)].astype(np.int64)  # (B, T + 1)
        buf = torch.from_numpy(rows)
        x = buf[:, :-1]  # inputs (B, T)
        y = buf[:, 1:]  # targets (B, T)
        return x, y

    def pass_order(self):
        """(offset, window numbers) of this pass: the windows start at offset + number x T.
        The first pass, or every pass without a seed: offset 0, in order."""
        if self.order[0] != self.pass_number:
            n_windows = (len(self.tokens) - 1) // self.T  # each needs one more token for its last target
            order = 0, range(n_windows)  # not an array: a split of billions of tokens needs no list
            if self.seed is not None and self.pass_number > 0:
                rng = np.random.default_rng([self.seed, self.pass_number])
                offset = int(rng.integers(min(self.T, len(self.tokens) - self.B * self.T)))  # leaves a batch's windows
                order = offset, rng.permutation((len(self.tokens) - 1 - offset) // self.T)
            self.order = self.pass_number, order
        return self.order[1]


# ----------------------------------------------------------------------------
# The windows an evaluation reads

# The final evaluation reads every window of the validation split up to about this much
# text, and beyond it a sample of that size spread evenly over the split: input's
# validation split (258 KB) is always read whole, and a split of any size takes seconds.
FINAL_EVAL_BYTES = 300_000
FINAL_EVAL_BATCH_TOKENS = 8192  # windows per forward pass in the final evaluation: as many as make this many tokens


class Windows(NamedTuple):
    """Where an evaluation reads a split: windows of T tokens at starts, per_batch of
    them in one forward pass. Always the same ones for the same split, so that numbers
    from different steps and runs are comparable."""

    starts: list
    T: int
    per_batch: int

    def batches(self, tokens):
        """(x, y) per forward pass: the windows (n, T), and their next-token targets (n, T)."""
        for i in range(0, len(self.starts), self.per_batch):
            rows = [torch.from_numpy(tokens[s : s + self.T + 1].astype(np.int64)) for s in self.starts[i : i + self.per_batch]]
            both = torch.stack(rows)  # (n, T + 1)
            yield both[:, :-1], both[:, 1:]

    def describe(self, n_tokens):
        """(which windows, how many tokens) of a split of n_tokens, for the final evaluation's lines."""
        size = len(self.starts) * self.T
        if len(self.starts) == (n_tokens - 1) // self.T:
            return "on the whole validation split, every window", f"{size:,} tokens"
        return f"on {len(self.starts):,} windows spread evenly over the validation split", f"{size:,} of its {n_tokens:,} tokens"


def periodic_windows(n_tokens, B, T, eval_steps):
    """The windows of a periodic evaluation: eval_steps batches of B consecutive windows,
    spread evenly over the whole split, not only its first pages, which need not be typical."""
    span = n_tokens - B * T - 1  # the last position a batch can start at
    starts = [round(i * span / max(1, eval_steps - 1)) for i in range(eval_steps)]
    return Windows([start + b * T for start in starts for b in range(B)], T, B)


def final_windows(n_tokens, T, max_tokens):
    """The windows of the final evaluation: every window of T tokens in a split of n_tokens
    (each needs one more token for its last target) or, when they hold more than
    max_tokens, max_tokens // T of them spread evenly over the split."""
    n_windows = (n_tokens - 1) // T
    n_kept = max(1, min(n_windows, max_tokens // T))
    return Windows([(i * n_windows // n_kept) * T for i in range(n_kept)], T, max(1, FINAL_EVAL_BATCH_TOKENS // T))
