"""
Generate text from a trained checkpoint or from OpenAI's GPT-2.

    python sample.py --prompt "ROMEO:"                       # from log/ckpt.pt (train.py writes it)
    python sample.py --init_from gpt2 --prompt "Hello, I'm"  # from pretrained GPT-2
    python sample.py --prompt FILE:prompt.txt --stream       # the prompt from a file, text as it comes
    python sample.py --prompt "ROMEO:" --explain             # and why the model wrote what it wrote

Edit the constants in Config, or pass them as flags (`python sample.py --help`).
"""

import codecs
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from machinery import explain
from machinery import tokenizer
from checkpoint import build_model, source_tokenizer, starting_point
from machinery.cli import AutoBool, UsageError, check_fields, flag_parser, require, require_at_least, run_main
from machinery.speed import check_device, choose_dtype, pick_device

# ----------------------------------------------------------------------------
# The constants a learner edits. Each is also a command-line flag of the same name.


@dataclass
class Config:
    # what to sample from, and what to continue
    prompt: str = "Hello, I'm a language model,"  # text to continue, or FILE:path to read it from a file
    init_from: Optional[str] = None  # a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a Hugging Face directory; None: the checkpoint ckpt
    ckpt: str = os.path.join("log", "ckpt.pt")  # checkpoint written by train.py
    # how much, and how adventurous
    num_samples: int = 5  # how many samples, generated together in one batch
    max_new_tokens: int = 100  # tokens to generate per sample, at most
    temperature: float = 1.0  # below 1 safer, above 1 wilder, 0 greedy
    top_k: int = 50  # sample only among the k most likely tokens (0: all)
    top_p: float = 1.0  # sample only among the most likely tokens that together reach probability p (1.0: all)
    seed: int = 1337  # sample i uses seed + i: the same seed gives the same samples
    # where a sample ends, and how it is shown
    stop_at_eot: AutoBool = "auto"  # end a sample at <|endoftext|>; auto: on for pretrained GPT-2 (init_from), off for checkpoints
    stop: Optional[str] = None  # end a sample after this string
    stream: bool = False  # print each sample as it is generated, one after the other
    # speed
    device: str = "auto"  # auto (CUDA, then Intel XPU, then Apple MPS, then CPU), cpu, cuda, xpu, mps
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bfloat16 where the hardware has native bf16 (faster), else float32
    kv_cache: bool = True  # keep each token's keys and values; False recomputes the whole context for every token (slow; to compare)
    # see inside
    explain: bool = False  # then explain the first sample: each token's probability, rank and entropy, a logit lens, a picture of the attention
    explain_png: str = os.path.join("log", "explain.png")  # where --explain draws the attention of every block and head

    def __post_init__(self):
        check_fields(self)  # each value has its constant's type, whether it came from a flag or from code
        self.check()

    def check(self):
        """Every constant's value, checked before any work starts: a UsageError names the first bad one."""
        require_at_least(self, 1, "num_samples")
        require_at_least(self, 0, "max_new_tokens", "temperature", "top_k")
        require(0 < self.top_p <= 1, f"top_p must be above 0 and at most 1, not {self.top_p}")
        require(self.stop != "", "stop is empty: give the string that ends a sample, or leave --stop out")
        require(self.explain_png.lower().endswith(".png"), f"explain_png must name a .png file, not {self.explain_png!r}")
        check_device(self.device)


def parse_flags(argv=None):
    """The constants given on the command line, as a dict."""
    return vars(flag_parser(Config, "sample.py", "Sample text from a GPT.").parse_args(argv))


# ----------------------------------------------------------------------------
# The prompt, the model, and the samples as their tokens arrive


def read_prompt(prompt):
    if prompt.startswith("FILE:"):
        path = prompt[len("FILE:") :]
        try:
            with open(path, encoding="utf-8") as f:
                prompt = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read the prompt file {path!r} ({e.__class__.__name__}): give a readable UTF-8 text file")
    if not prompt:
        raise UsageError('the prompt is empty: give some text to continue, for example --prompt "ROMEO:"')
    return prompt


def load_model(cfg, device):
    """(the model, the tokenizer.Tokenizer whose ids it knows): pretrained GPT-2's, or the checkpoint's own."""
    if cfg.init_from is None and not os.path.exists(cfg.ckpt):
        raise UsageError(f"no checkpoint at {cfg.ckpt}: train one with `python train.py`, or sample from GPT-2 with --init_from gpt2")
    source = starting_point(cfg.init_from or cfg.ckpt, device=device)
    model, tok = build_model(source), source_tokenizer(source)
    if cfg.init_from is None:
        print(f"sampling from {cfg.ckpt}: {source['kind']}, {tok.name} tokenizer", file=sys.stderr)
    return model, tok


def encode_prompt(tok, prompt):
    """The prompt's ids. Unlike in training text, <|endoftext|> in a prompt is the token
    that separates documents: it starts GPT-2 on a fresh one."""
    first, *rest = prompt.split(tokenizer.EOT_TEXT)
    ids = tok.encode(first).tolist()
    for piece in rest:
        ids += [tok.eot, *tok.encode(piece).tolist()]
    return ids


class Sample:
    """One sample's text while its tokens arrive. The bytes are decoded as UTF-8 piece by
    piece (one character may span two tokens), and the text ends after the stop string."""

    def __init__(self, tok, prompt, stop):
        self.tok, self.stop, self.prompt_length = tok, stop, len(prompt)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = prompt
        self.tokens = []  # every token drawn for it, up to the one that ended it
        self.done = False

    def add(self, token):
        # <|endoftext|> stands for no text; where a sample goes on past it, it shows as itself
        data = tokenizer.EOT_TEXT.encode() if token == self.tok.eot else self.tok.token_bytes(token)
        self.extend(self.decoder.decode(data))

    def finish(self):
        if not self.done:
            self.extend(self.decoder.decode(b"", final=True))
            self.done = True

    def extend(self, piece):
        self.text += piece
        at = self.text.find(self.stop, self.prompt_length) if self.stop else -1  # in the new text only
        if at >= 0:
            self.text = self.text[: at + len(self.stop)]
            self.done = True

    def settled(self):
        """The text that can no longer change: all of it once done, else all but the
        end that could still turn out to be the start of the stop string."""
        if self.done or not self.stop:
            return self.text
        return self.text[: max(self.prompt_length, len(self.text) - len(self.stop) + 1)]


def generate(model, tok, prompt_ids, prompt, generators, cfg, on_token=None, on_distribution=None):
    """Samples generated together, one row per generator, until each one stops or has
    max_new_tokens; returns them (Sample) and the number of tokens generated.
    on_token(sample) is called whenever a sample grows, on_distribution(probs) with
    the (n, n_vocab) distribution each step drew from."""
    idx = torch.tensor(prompt_ids, dtype=torch.long, device=cfg.device).repeat(len(generators), 1)  # (n, T)
    samples = [Sample(tok, prompt, cfg.stop) for _ in generators]
    steps = model.generate_stream(idx, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None,
                                  top_p=cfg.top_p, generator=generators, use_cache=cfg.kv_cache, n_vocab=tok.n_vocab)
    n_tokens = 0
    for next_tokens, probs in steps:  # (n, 1), (n, n_vocab)
        if on_distribution:
            on_distribution(probs)
        n_tokens += len(samples)
        for sample, token in zip(samples, next_tokens[:, 0].tolist()):
            if sample.done:
                continue
            sample.tokens.append(token)
            if token == tok.eot and cfg.stop_at_eot:
                sample.finish()
            else:
                sample.add(token)
            if on_token:
                on_token(sample)
        if all(sample.done for sample in samples):
            break
    for sample in samples:
        sample.finish()
    return samples, n_tokens


class Printer:
    """Prints one sample's text while it grows: only the part that can no longer change."""

    def __init__(self, number):
        self.shown = 0
        print(f"{number}> ", end="", flush=True)

    def __call__(self, sample):
        text = sample.settled()
        print(text[self.shown :], end="", flush=True)
        self.shown = len(text)


def main(argv=None):
    cfg = Config(**parse_flags(argv))
    prompt = read_prompt(cfg.prompt)
    cfg.device = pick_device(cfg.device)
    if cfg.stop_at_eot == "auto":  # GPT-2's own weights know <|endoftext|>; text trained from scratch here rarely has it
        cfg.stop_at_eot = cfg.init_from is not None
    model, tok = load_model(cfg, cfg.device)
    model.eval().to(device=cfg.device, dtype=getattr(torch, choose_dtype(cfg.dtype, cfg.device)))
    prompt_ids = encode_prompt(tok, prompt)
    if max(prompt_ids) >= model.config.vocab_size:
        raise UsageError(f"the prompt has tokens outside this model's vocabulary of {model.config.vocab_size}: use a model trained on {tok.name} tokens")
    if len(prompt_ids) > model.config.block_size:
        print(f"note: the prompt has {len(prompt_ids)} tokens and the model sees at most {model.config.block_size}: "
              f"it continues from the last {model.config.block_size}", file=sys.stderr)

    # one random stream per sample, seeded seed + i: a sample is the same alone, in a batch or streamed
    generators = [torch.Generator(device=cfg.device).manual_seed(cfg.seed + i) for i in range(cfg.num_samples)]
    distributions = []  # with --explain: the one each token of the first sample was drawn from, (n_vocab,) each
    record = (lambda probs: distributions.append(probs[0].cpu())) if cfg.explain else None
    started = time.time()
    if cfg.stream:  # one sample after the other, each printed as it grows
        samples, n_tokens = [], 0
        for i, generator in enumerate(generators):
            printer = Printer(i + 1)
            (sample,), n = generate(model, tok, prompt_ids, prompt, [generator], cfg, printer, record if i == 0 else None)
            print(sample.text[printer.shown :] + "\n")
            samples.append(sample)
            n_tokens += n
    else:  # all samples together in one batch
        samples, n_tokens = generate(model, tok, prompt_ids, prompt, generators, cfg, on_distribution=record)
        for i, sample in enumerate(samples):
            print(f"{i + 1}> {sample.text}\n")
    seconds = time.time() - started
    print(f"generated {n_tokens} tokens in {seconds:.2f}s: {n_tokens / seconds:.1f} tokens/sec", file=sys.stderr)
    if cfg.explain:
        explain.explain(model, tok, prompt_ids, samples[0].tokens, distributions, cfg)


if __name__ == "__main__":
    run_main("sample.py", main)
