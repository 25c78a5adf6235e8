"""Shared fixtures: a tiny random GPT-2 saved the Hugging Face way, and helpers to
run the scripts in a subprocess, all offline."""

import os
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


def run_script(script, *args, cwd=None, env_extra=None, **kwargs):
    """Run one of the project's scripts with this Python, offline, and capture its output."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=300, **kwargs,
    )
