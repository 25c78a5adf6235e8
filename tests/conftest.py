"""Shared fixtures: a tiny random GPT-2 saved the Hugging Face way, and helpers to
run the scripts in a subprocess, all offline."""

import dataclasses
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory):
    """A small random transformers.GPT2LMHeadModel in a directory, as save_pretrained writes it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=4, n_embd=64, vocab_size=1000, n_positions=64,
        bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    path = tmp_path_factory.mktemp("hf_gpt2")
    GPT2LMHeadModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def ckpt_path(tmp_path_factory):
    """A checkpoint as train.py writes it, with at least `model` and `config`."""
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=50304, n_layer=1, n_head=2, n_embd=32)
    path = tmp_path_factory.mktemp("run") / "ckpt.pt"
    torch.save({"model": GPT(config).state_dict(), "config": dataclasses.asdict(config)}, path)
    return path


def run_script(script, *args, cwd=None, env_extra=None, timeout=300):
    """Run one of the project's scripts with this Python, offline, and capture its output."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


# a model small enough to train in a blink, compiled only where a test asks for it
TINY_FLAGS = ["--n_layer", 2, "--n_head", 2, "--n_embd", 64, "--B", 2, "--T", 32, "--total_batch_size", 128, "--compile", "False"]
# the step line train.py prints, as the README shows it
STEP_LINE = re.compile(r"^step +(\d+) \| loss (\d+\.\d{6}) \| lr \S+ \| norm \S+ \| dt \S+ms \| tok/sec \S+ \| eta \S+$", re.M)


@pytest.fixture
def text_file(tmp_path):
    """About 20k tokens of Shakespeare, enough for a tiny model's batches."""
    with open(os.path.join(ROOT, "input"), encoding="utf-8") as f:
        text = f.read(80_000)
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    return path


def step_losses(stdout):
    """{step: training loss} from train.py's output."""
    return {int(step): float(loss) for step, loss in STEP_LINE.findall(stdout)}
