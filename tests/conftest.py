"""Shared fixtures and helpers: tiny models, a tiny random GPT-2 saved the Hugging Face
way, a short text, and running the scripts in a subprocess, all offline.

Two tiers: tests marked `slow` start the real scripts in subprocesses; the rest run in
this process in seconds. `python -m pytest -q -m "not slow" tests` is the inner loop."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CACHE_KEY = pytest.StashKey[str]()  # where pytest_configure keeps the session's cache folder


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts a script in a subprocess (deselect with -m \"not slow\")")
    # Every test, and every script a test starts (they inherit the environment), keeps its
    # token cache (data_cache "auto") in a folder of this session's own, never the user's
    config.stash[CACHE_KEY] = os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="homegpt-tests-cache-")


def pytest_unconfigure(config):
    if CACHE_KEY in config.stash:  # only the folder this session made
        shutil.rmtree(config.stash[CACHE_KEY], ignore_errors=True)


def tiny_model(seed=0, **shape):
    """A small random GPT in eval mode; shape overrides the default tiny shape."""
    from model import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY_SHAPE, **shape})).eval()


def randomise(model):
    """model with every parameter drawn at random, in place: 1-D ones (biases, LayerNorm
    gains) around 1.0, matrices around 0.0, std 0.1. A fresh model's biases are 0 and its
    LayerNorms the identity, so a bias or a LayerNorm mixed up in saving or loading could
    never show in its logits."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(mean=1.0 if parameter.dim() == 1 else 0.0, std=0.1)
    return model


def padding_favourite(n_vocab, rows):
    """A tiny model with `rows` output rows, of which those from n_vocab on, the padding
    that stands for no text, score far above every token of the tokenizer, at every position."""
    model = tiny_model(vocab_size=rows)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()  # every position's final state is all ones
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()  # (tied to the embedding: the inputs change too, which does not matter here)
        model.lm_head.weight[n_vocab:] = 1.0  # logits: n_embd for the padding ids, 0 for the others
    return model


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
    randomise(GPT2LMHeadModel(config)).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def ckpt_path(tmp_path_factory):
    """A checkpoint as train.py writes it, with at least `model` and `config`; every weight
    random, so that exporting or loading it with two tensors mixed up shows."""
    from model import GPT, GPTConfig

    torch.manual_seed(0)
    config = GPTConfig(block_size=32, vocab_size=50304, n_layer=1, n_head=2, n_embd=32)
    path = tmp_path_factory.mktemp("run") / "ckpt.pt"
    torch.save({"model": randomise(GPT(config)).state_dict(), "config": dataclasses.asdict(config)}, path)
    return path


def run_script(script, *args, cwd=None, env_extra=None, timeout=300, hub_offline=True):
    """Run one of the project's scripts with this Python and capture its output. It runs
    offline either way, even on a machine with network: the hub it would ask is NO_HUB;
    hub_offline=True also tells Hugging Face so (HF_HUB_OFFLINE=1)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    env["HF_ENDPOINT"] = NO_HUB
    env.pop("HF_HUB_OFFLINE", None)
    if hub_offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *map(str, args)],
        cwd=cwd or ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def assert_refused(r, *phrases):
    """A script run that refused its input the one way: exit code 2, one line on stderr
    holding every phrase, no traceback."""
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for phrase in phrases:
        assert phrase in r.stderr, r.stderr


def train_run(tmp_path, text_file, *flags, **kwargs):
    """train.py on text_file with the tiny model, logging into tmp_path/log unless flags say otherwise."""
    return run_script("train.py", "--input_file", text_file, "--log_dir", tmp_path / "log", *TINY_FLAGS, *flags, **kwargs)


# the Hugging Face hub the scripts are pointed at: the discard port of this machine, where
# nothing answers, so a download fails at once as it would without network
NO_HUB = "http://127.0.0.1:9"
# the shape tiny_model builds
TINY_SHAPE = dict(block_size=32, vocab_size=100, n_layer=2, n_head=2, n_embd=32)
# a model small enough to train in a blink, compiled only where a test asks for it, on the
# CPU whatever else the machine has, so that the dtype and compile choices are the CPU's
TINY_FLAGS = ["--n_layer", 2, "--n_head", 2, "--n_embd", 64, "--B", 2, "--T", 32, "--total_batch_size", 128, "--warmup_steps", 1,
              "--compile", "False", "--device", "cpu"]
# for the runs whose losses a test compares with another process's: on one thread they
# agree to the last digit. On two, a compiled backward's atomic adds come in a varying
# order, and on a 2-core Xeon VM about one process in 15 computed exp on its second
# thread to only 1.5e-4 (docs/testing.md)
ONE_THREAD = ["--threads", 1]
# the step line train.py prints, as the README shows it
STEP_LINE = re.compile(r"^step +(\d+) \| loss (\d+\.\d{6}) \| lr \S+ \| norm \S+ \| dt \S+ms \| tok/sec \S+ \| eta \S+$", re.M)


def budget_step_count(stdout):
    """The step count a finished --time_budget run's output gives on its last line."""
    return int(re.search(r"^time budget [\d.]+ min: (\d+) steps, and the command took", stdout, re.M).group(1))


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


def start_training(tmp_path, text_file, log_dir, *flags):
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--input_file", str(text_file), "--log_dir", str(log_dir),
           *map(str, TINY_FLAGS), *map(str, flags)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1"))


def signal_when(proc, *cues):
    """cues: (prefix, signal) pairs, in order; each signal is sent once a line starting with
    its prefix is printed. Returns all of stdout."""
    output, cues = [], list(cues)
    for line in proc.stdout:
        output.append(line)
        if cues and line.lstrip("\n").startswith(cues[0][0]):
            proc.send_signal(cues.pop(0)[1])
    proc.wait(timeout=120)
    return "".join(output)
