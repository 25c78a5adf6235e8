"""
Generate text from a trained checkpoint or from OpenAI's GPT-2.

    python sample.py --prompt "ROMEO:"                       # from log/ckpt.pt (train.py writes it)
    python sample.py --init_from gpt2 --prompt "Hello, I'm"  # from pretrained GPT-2
    python sample.py --prompt FILE:prompt.txt                # the prompt read from a file
"""

import argparse
import os
import sys

import torch

from model import GPT, WeightsNotFound, get_tokenizer, load_checkpoint, pick_device


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Sample text from a GPT.")
    p.add_argument("--prompt", default="Hello, I'm a language model,", help="text to continue, or FILE:path to read it from a file")
    p.add_argument("--init_from", default=None, help="a GPT-2 name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a Hugging Face directory; default: the checkpoint --ckpt")
    p.add_argument("--ckpt", default=os.path.join("log", "ckpt.pt"), help="checkpoint written by train.py")
    p.add_argument("--num_samples", type=int, default=5, help="how many samples to draw")
    p.add_argument("--max_new_tokens", type=int, default=100, help="tokens to generate per sample")
    p.add_argument("--temperature", type=float, default=1.0, help="below 1 safer, above 1 wilder, 0 greedy")
    p.add_argument("--top_k", type=int, default=50, help="sample only among the k most likely tokens (0: all)")
    p.add_argument("--seed", type=int, default=1337, help="the same seed gives the same samples")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
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


def main(argv=None):
    args = parse_args(argv)
    if args.num_samples < 1 or args.max_new_tokens < 0 or args.temperature < 0:
        fail("--num_samples must be at least 1, --max_new_tokens and --temperature at least 0")
    prompt = read_prompt(args.prompt)
    device = pick_device(args.device)
    model = load_model(args, device).to(device).eval()
    enc = get_tokenizer()

    prompt_ids = enc.encode(prompt, allowed_special={"<|endoftext|>"})
    if max(prompt_ids) >= model.config.vocab_size:
        fail(f"the prompt has tokens outside this model's vocabulary of {model.config.vocab_size}: use a model trained on GPT-2 tokens")
    idx = torch.tensor(prompt_ids, dtype=torch.long, device=device).repeat(args.num_samples, 1)  # (num_samples, T)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    out = model.generate(
        idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None, generator=generator
    )
    for i, row in enumerate(out.tolist()):
        # a model trained from scratch has a vocabulary padded past GPT-2's 50257
        # tokens; those ids mean nothing to the tokenizer, so they are dropped
        text = enc.decode([t for t in row if t < enc.n_vocab])
        print(f"{i + 1}> {text}")
        print()


if __name__ == "__main__":
    main()
