"""
Generate text from a trained checkpoint or from OpenAI's GPT-2.

    python sample.py --prompt "ROMEO:"                       # from log/ckpt.pt (train.py writes it)
    python sample.py --init_from gpt2 --prompt "Hello, I'm"  # from pretrained GPT-2
    python sample.py --prompt FILE:prompt.txt --stream       # the prompt from a file, text as it comes
"""

import argparse
import codecs
import os
import sys
import time

import torch

from model import GPT, WeightsNotFound, choose_dtype, get_tokenizer, load_checkpoint, pick_device


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Sample text from a GPT.")
    p.add_argument("--prompt", default="Hello, I'm a language model,", help="text to continue, or FILE:path to read it from a file")
    p.add_argument("--init_from", default=None, help="a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a Hugging Face directory; default: the checkpoint --ckpt")
    p.add_argument("--ckpt", default=os.path.join("log", "ckpt.pt"), help="checkpoint written by train.py")
    p.add_argument("--num_samples", type=int, default=5, help="how many samples, generated together in one batch")
    p.add_argument("--max_new_tokens", type=int, default=100, help="tokens to generate per sample, at most")
    p.add_argument("--temperature", type=float, default=1.0, help="below 1 safer, above 1 wilder, 0 greedy")
    p.add_argument("--top_k", type=int, default=50, help="sample only among the k most likely tokens (0: all)")
    p.add_argument("--top_p", type=float, default=1.0, help="sample only among the most likely tokens that together reach probability p (1.0: all)")
    p.add_argument("--stop_at_eot", default="auto", choices=["auto", "True", "False"], help="end a sample at <|endoftext|>; auto: on for pretrained GPT-2 (--init_from), off for checkpoints")
    p.add_argument("--stop", default=None, help="end a sample after this string")
    p.add_argument("--stream", action="store_true", help="print each sample as it is generated, one after the other")
    p.add_argument("--seed", type=int, default=1337, help="sample i uses seed + i: the same seed gives the same samples")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="auto: bfloat16 where the hardware has native bf16 (faster), else float32")
    p.add_argument("--no_cache", action="store_true", help="recompute the whole context for every token (slow; for comparison)")
    return p.parse_args(argv)


def fail(message):
    """One line on stderr and exit code 2: bad input is not a crash."""
    print(f"sample.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def read_prompt(prompt):
    if prompt.startswith("FILE:"):
        path = prompt[len("FILE:") :]
        try:
            with open(path, encoding="utf-8") as f:
                prompt = f.read()
        except (OSError, UnicodeDecodeError) as e:
            fail(f"cannot read the prompt file {path!r} ({e.__class__.__name__}): give a readable UTF-8 text file")
    if not prompt:
        fail('the prompt is empty: give some text to continue, for example --prompt "ROMEO:"')
    return prompt


def load_model(args, device):
    if args.init_from is not None:
        try:
            return GPT.from_pretrained(args.init_from)
        except WeightsNotFound as e:
            fail(str(e))
    if not os.path.exists(args.ckpt):
        fail(f"no checkpoint at {args.ckpt}: train one with `python train.py`, or sample from GPT-2 with --init_from gpt2")
    try:
        model, _ = load_checkpoint(args.ckpt, device)
    except Exception as e:  # a truncated or foreign file: say so in one line
        fail(f"cannot load the checkpoint {args.ckpt} ({e.__class__.__name__}: {str(e).splitlines()[0]})")
    return model


class Sample:
    """One sample's text while its tokens arrive. The bytes are decoded as UTF-8 piece by
    piece (one character may span two tokens), and the text ends after the stop string."""

    def __init__(self, enc, prompt, stop):
        self.enc, self.stop, self.prompt_length = enc, stop, len(prompt)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = prompt
        self.done = False

    def add(self, token):
        self.extend(self.decoder.decode(self.enc.decode_single_token_bytes(token)))

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


def generate(model, enc, prompt_ids, prompt, generators, args, on_token=None):
    """Samples generated together, one row per generator, until each one stops or has
    max_new_tokens; returns their texts and the number of tokens generated.
    on_token(sample) is called whenever a sample grows."""
    idx = torch.tensor(prompt_ids, dtype=torch.long, device=args.device).repeat(len(generators), 1)  # (n, T)
    samples = [Sample(enc, prompt, args.stop) for _ in generators]
    steps = model.generate_stream(idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                                  top_p=args.top_p, generator=generators, use_cache=not args.no_cache)
    n_tokens = 0
    for next_tokens in steps:  # (n, 1)
        n_tokens += len(samples)
        for sample, token in zip(samples, next_tokens[:, 0].tolist()):
            if sample.done:
                continue
            if token == enc.eot_token and args.stop_at_eot:
                sample.finish()
            elif token < enc.n_vocab:  # ids of the padded vocabulary (>= 50257) stand for no text
                sample.add(token)
            if on_token:
                on_token(sample)
        if all(sample.done for sample in samples):
            break
    for sample in samples:
        sample.finish()
    return [sample.text for sample in samples], n_tokens


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
    args = parse_args(argv)
    if args.num_samples < 1 or args.max_new_tokens < 0 or args.temperature < 0 or not 0 < args.top_p <= 1:
        fail("--num_samples must be at least 1, --max_new_tokens and --temperature at least 0, --top_p in (0, 1]")
    prompt = read_prompt(args.prompt)
    args.device = pick_device(args.device)
    # GPT-2's own weights know <|endoftext|>; text trained from scratch here rarely has it
    args.stop_at_eot = args.init_from is not None if args.stop_at_eot == "auto" else args.stop_at_eot == "True"
    model = load_model(args, args.device).eval()
    model.to(device=args.device, dtype=getattr(torch, choose_dtype(args.dtype, args.device)))
    enc = get_tokenizer()
    prompt_ids = enc.encode(prompt, allowed_special={"<|endoftext|>"})
    if max(prompt_ids) >= model.config.vocab_size:
        fail(f"the prompt has tokens outside this model's vocabulary of {model.config.vocab_size}: use a model trained on GPT-2 tokens")

    # one random stream per sample, seeded seed + i: a sample is the same alone, in a batch or streamed
    generators = [torch.Generator(device=args.device).manual_seed(args.seed + i) for i in range(args.num_samples)]
    start = time.time()
    if args.stream:  # one sample after the other, each printed as it grows
        n_tokens = 0
        for i, generator in enumerate(generators):
            printer = Printer(i + 1)
            (text,), n = generate(model, enc, prompt_ids, prompt, [generator], args, on_token=printer)
            print(text[printer.shown :] + "\n")
            n_tokens += n
    else:  # all samples together in one batch
        texts, n_tokens = generate(model, enc, prompt_ids, prompt, generators, args)
        for i, text in enumerate(texts):
            print(f"{i + 1}> {text}\n")
    seconds = time.time() - start
    print(f"generated {n_tokens} tokens in {seconds:.2f}s: {n_tokens / seconds:.1f} tokens/sec", file=sys.stderr)


if __name__ == "__main__":
    main()
