"""train.py: the schedule, gradient accumulation, learning, the whole run in a
subprocess, resuming, Ctrl-C, the token cache and every refusal."""

import copy
import math
import os
import re
import signal
import subprocess
import sys
from contextlib import nullcontext

import numpy as np
import pytest
import torch

from machinery import data
import train
from conftest import ONE_THREAD, ROOT, TINY_FLAGS, assert_refused, randomise, run_script, step_losses, tiny_model, train_run
from machinery.data import DataLoader
from machinery.tokenizer import gpt2, padded_vocab
from machinery.optimizer import configure_optimizers
from machinery.speed import TrainingLoss


# ---------------------------------------------------------------------------
# Pieces, in process


def test_lr_schedule():
    cfg = train.Config(max_lr=6e-4, warmup_steps=10, max_steps=50)
    assert cfg.min_lr == pytest.approx(6e-5)
    assert train.get_lr(0, cfg.max_steps, cfg) == pytest.approx(6e-5)  # max_lr / warmup_steps
    assert train.get_lr(9, cfg.max_steps, cfg) == pytest.approx(6e-4)  # last warmup step reaches the peak
    assert train.get_lr(10, cfg.max_steps, cfg) == pytest.approx(6e-4)  # cosine starts at the peak
    assert train.get_lr(30, cfg.max_steps, cfg) == pytest.approx((6e-4 + 6e-5) / 2)  # half-way through the decay
    assert train.get_lr(50, cfg.max_steps, cfg) == pytest.approx(6e-5)
    assert train.get_lr(500, cfg.max_steps, cfg) == pytest.approx(6e-5)
    lrs = [train.get_lr(s, cfg.max_steps, cfg) for s in range(10, 51)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # decays monotonically


def test_gradient_accumulation_equals_big_batch():
    model = tiny_model(block_size=16, vocab_size=50, n_embd=16).train()
    big = copy.deepcopy(model)
    tokens = np.random.default_rng(0).integers(0, 50, size=1000).astype(np.uint16)
    cfg = train.Config(grad_clip=1e9)  # no clipping, so .grad is the raw gradient
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # step() leaves the weights alone
    train.train_step(TrainingLoss(model), optimizer, DataLoader(tokens, 2, 16), 4, cfg, "cpu", nullcontext())
    x, y = DataLoader(tokens, 8, 16).next_batch()  # the same 8 sequences in one batch
    big(x, y)[1].backward()
    for (name, p), q in zip(model.named_parameters(), big.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), name


def test_tiny_model_overfits_one_batch():
    model = tiny_model(n_embd=64).train()
    tokens = np.random.default_rng(0).integers(0, 100, size=4 * 32 + 1).astype(np.uint16)
    loader = DataLoader(tokens, 4, 32)  # exactly one batch: every call returns it again
    cfg = train.Config()
    optimizer = configure_optimizers(model, 0.0, 3e-3, (0.9, 0.95), "cpu")
    for step in range(100):
        loss, _ = train.train_step(TrainingLoss(model), optimizer, loader, 1, cfg, "cpu", nullcontext())
        if loss < 0.5:
            break
    assert loss < 0.5, f"loss {loss} after 100 steps"


def test_every_constant_is_a_flag():
    help_text = train.flag_parser(train.Config, "train.py", "").format_help()
    for field in train.dataclasses.fields(train.Config):
        assert f"--{field.name}" in help_text
    assert "transformer blocks (default: 6)" in help_text  # the comment beside the constant
    flags = train.parse_flags(["--max_steps", "17", "--bias", "False", "--betas", "0.8", "0.9", "--device", "cpu"])
    assert flags == {"max_steps": 17, "bias": False, "betas": [0.8, 0.9], "device": "cpu"}
    assert train.Config(**flags).betas == (0.8, 0.9)


@pytest.mark.slow
def test_help_runs():
    r = run_script("train.py", "--help")
    assert r.returncode == 0 and "--max_steps" in r.stdout and "--chunked_loss" in r.stdout


# ---------------------------------------------------------------------------
# The whole run, in a subprocess


@pytest.mark.slow
def test_end_to_end_then_sample(tmp_path, text_file):
    r = train_run(tmp_path, text_file, "--max_steps", 6, "--eval_interval", 3)
    assert r.returncode == 0, r.stderr
    assert sorted(step_losses(r.stdout)) == list(range(6))
    assert "device cpu" in r.stdout and "grad accumulation steps 2" in r.stdout
    log = (tmp_path / "log" / "log.txt").read_text().splitlines()
    assert [line.split()[:2] for line in log if " val " in line] == [["2", "val"], ["5", "val"]]
    assert sum(" train " in line for line in log) == 6
    ckpt = torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)
    assert {"model", "config", "optimizer", "step", "val_loss", "train_config", "data_position", "rng_state"} <= set(ckpt)
    assert ckpt["step"] == 6 and ckpt["config"]["n_layer"] == 2
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    # the tokens went to the session's cache (conftest's XDG_CACHE_HOME), and the checkpoint
    # keeps "auto" rather than the folder it meant on this machine
    assert f"tokens new: {os.path.join(os.environ['XDG_CACHE_HOME'], 'homegpt', 'tokens')}" in r.stdout
    assert ckpt["train_config"]["data_cache"] == "auto"
    s = run_script("sample.py", "--ckpt", tmp_path / "log" / "ckpt.pt", "--prompt", "ROMEO:", "--num_samples", 2, "--max_new_tokens", 5)
    assert s.returncode == 0, s.stderr
    assert "1> ROMEO:" in s.stdout and "2> ROMEO:" in s.stdout


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--dropout", 0.2], ["--compile", "True", "--dropout", 0.2],
                                   ["--optimizer", "muon", "--adamw_lr_ratio", 0.25],
                                   ["--ema_decay", 0.9, "--B", 8, "--total_batch_size", 1024]],
                         ids=["plain", "dropout", "compiled-dropout", "muon", "passes-average"])
def test_interrupt_saves_and_resume_matches_uninterrupted_run(tmp_path, text_file, extra):
    """With dropout, the restored random state decides the masks; compiled, the same holds.
    With 1,024 tokens a step, the 40 steps read the training split about twice, the second
    time in a fresh order, and the resumed run keeps the order and the weights' average."""
    flags = [*extra, *ONE_THREAD, "--max_steps", 40, "--eval_interval", 15, "--log_dir"]
    full = train_run(tmp_path, text_file, *flags, tmp_path / "full")
    assert full.returncode == 0, full.stderr
    full_losses = step_losses(full.stdout)

    # Ctrl-C a second run once it has printed step 2, then resume it
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--input_file", str(text_file), *map(str, TINY_FLAGS),
           *map(str, flags), str(tmp_path / "cut")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    output = []
    for line in proc.stdout:
        output.append(line)
        if line.startswith("step    2 "):
            proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    output = "".join(output)
    assert proc.returncode == 130, output + proc.stderr.read()
    assert "--init_from resume" in output
    ckpt = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)
    stopped = ckpt["step"]
    assert 3 <= stopped < 40 and max(step_losses(output)) == stopped - 1

    resumed = train_run(tmp_path, text_file, *flags, tmp_path / "cut", "--init_from", "resume")
    assert resumed.returncode == 0, resumed.stderr
    resumed_losses = step_losses(resumed.stdout)
    assert sorted(resumed_losses) == list(range(stopped, 40))
    if "--compile" in extra:  # train.py falls back to eager if compiling fails: each run must have compiled
        assert all("| compile on (" in out for out in (full.stdout, output, resumed.stdout))
    for step, loss in resumed_losses.items():  # on one thread, compiled or not, to the last digit
        assert abs(loss - full_losses[step]) <= 1e-6, (step, loss, full_losses[step])
    # the log reads as one run: every step once
    log = (tmp_path / "cut" / "log.txt").read_text().splitlines()
    assert [int(line.split()[0]) for line in log if " train " in line] == list(range(40))
    if "--ema_decay" in extra:
        ckpts = [torch.load(tmp_path / run / "ckpt.pt", weights_only=True) for run in ("full", "cut")]
        assert ckpts[0]["data_pass"] == ckpts[1]["data_pass"] == 1
        for key in ("model", "training_weights"):
            assert all((a - b).abs().max() <= 1e-6 for a, b in zip(ckpts[0][key].values(), ckpts[1][key].values()))
        assert "the checkpoint's model is the weights' moving average (decay 0.9); the last step's weights: " in full.stdout


@pytest.mark.slow
def test_fine_tune_from_hugging_face_directory(tmp_path, text_file, hf_dir_gpt2_vocab):
    # a learning rate so small that the weights stay the pretrained ones to 1e-6
    r = train_run(tmp_path, text_file, "--max_steps", 2, "--init_from", hf_dir_gpt2_vocab, "--max_lr", "1e-12")
    assert r.returncode == 0, r.stderr
    assert "brings its own shape" in r.stdout and "n_embd=32 (was 64)" in r.stdout
    ckpt = torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)
    assert ckpt["config"]["n_embd"] == 32 and ckpt["config"]["vocab_size"] == 50257
    from transformers import GPT2LMHeadModel

    pretrained = GPT2LMHeadModel.from_pretrained(hf_dir_gpt2_vocab).state_dict()
    for key in ("transformer.wte.weight", "transformer.h.0.ln_1.bias", "transformer.ln_f.weight"):
        assert torch.allclose(ckpt["model"][key], pretrained[key], atol=1e-6), key


@pytest.mark.slow
def test_a_finished_run_exits_without_collecting_but_runs_atexit_and_every_line(tmp_path, text_file):
    """exit_at_once: with stdout a pipe (buffered: no PYTHONUNBUFFERED), every line
    arrives and the atexit callbacks run, after gc.freeze() has put every object out of
    the garbage collector's way (the exit took 0.21 s instead of 1.41 after a 3-minute
    run on Zen 4)."""
    wrapper = tmp_path / "wrapper.py"
    args = ["--input_file", str(text_file), "--log_dir", str(tmp_path / "log"), *map(str, TINY_FLAGS), "--max_steps", "2"]
    wrapper.write_text(
        "import atexit, gc, runpy, sys\n"
        "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0))\n"
        "atexit.register(print, 'atexit ran')\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        f"sys.argv = ['train.py', *{args!r}]\n"
        f"runpy.run_path({os.path.join(ROOT, 'train.py')!r}, run_name='__main__')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    r = subprocess.run([sys.executable, str(wrapper)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().endswith("atexit ran\nfrozen True") and "sample from it with: python sample.py" in r.stdout


@pytest.fixture(scope="module")
def hf_dir_gpt2_vocab(tmp_path_factory):
    """A tiny Hugging Face GPT-2 with the real 50257-token vocabulary, to fine-tune on text."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=64, bos_token_id=50256, eos_token_id=50256)
    path = tmp_path_factory.mktemp("hf_gpt2_vocab")
    randomise(GPT2LMHeadModel(config)).save_pretrained(path)
    return str(path)


# ---------------------------------------------------------------------------
# Refusals: exit code 2, one line, no traceback


@pytest.mark.slow
def test_unknown_flag_and_wrong_type():
    assert_refused(run_script("train.py", "--max_step", 3), "unrecognized arguments: --max_step")
    assert_refused(run_script("train.py", "--max_steps", "ten"), "--max_steps", "invalid int value")
    assert_refused(run_script("train.py", "--bias", "maybe"), "--bias")


@pytest.mark.slow
def test_text_too_short(tmp_path):
    short = tmp_path / "short.txt"
    text = "To be, or not to be. " * 40
    short.write_text(text, encoding="utf-8")
    cut = data.split_point([str(short)], [len(text)])  # the validation split starts there
    n_train, n_val = (len(gpt2().encoding.encode(part)) for part in (text[:cut], text[cut:]))
    r = run_script("train.py", "--input_file", short, "--log_dir", tmp_path / "log", *TINY_FLAGS)
    assert_refused(r, f"has {n_train + n_val} tokens", f"validation split has {n_val}", "needs 65")


@pytest.mark.slow
def test_missing_or_binary_text(tmp_path):
    r = run_script("train.py", "--input_file", tmp_path / "nope.txt", "--log_dir", tmp_path / "log", *TINY_FLAGS)
    assert_refused(r, "no training text", "--input_file")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00" * 100)
    r = run_script("train.py", "--input_file", binary, "--log_dir", tmp_path / "log", *TINY_FLAGS)
    assert_refused(r, "UTF-8")


@pytest.mark.slow
def test_batch_size_must_divide(tmp_path, text_file):
    assert_refused(train_run(tmp_path, text_file, "--total_batch_size", 100), "multiple of B x T", "--total_batch_size")


@pytest.mark.slow
def test_T_longer_than_block_size(tmp_path, text_file):
    assert_refused(train_run(tmp_path, text_file, "--block_size", 16), "T=32", "block_size=16")


@pytest.mark.slow
def test_never_overwrites_a_checkpoint(tmp_path, text_file):
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "ckpt.pt").write_bytes(b"precious")
    assert_refused(train_run(tmp_path, text_file, "--max_steps", 1), "exists", "--init_from resume")
    assert (tmp_path / "log" / "ckpt.pt").read_bytes() == b"precious"


@pytest.mark.slow
def test_resume_without_checkpoint(tmp_path, text_file):
    assert_refused(train_run(tmp_path, text_file, "--init_from", "resume"), "no ", "ckpt.pt")


@pytest.mark.slow
@pytest.mark.parametrize("hub_offline", [True, False], ids=["HF_HUB_OFFLINE", "no network"])
def test_pretrained_offline(tmp_path, text_file, hub_offline):
    r = train_run(tmp_path, text_file, "--init_from", "gpt2", env_extra={"HF_HUB_CACHE": str(tmp_path / "empty")},
                  hub_offline=hub_offline)
    assert_refused(r, "not in the Hugging Face cache", "save_pretrained")


# ---------------------------------------------------------------------------
# Evaluation and samples


ONE_BYTE_EACH = np.ones(50304, dtype=np.int64)  # byte_lengths for tests that need no bits per byte


def test_bits_per_byte_by_hand():
    # tokens 1 and 2 stand for 1 and 3 bytes, token 0 (<|endoftext|>) for none
    byte_lengths = np.array([0, 1, 3])
    tokens = np.array([0, 1, 2, 0, 2], dtype=np.uint16)  # one window of 4: targets 1 + 3 + 0 + 3 = 7 bytes

    class HalfAndOne(torch.nn.Module):  # a mean loss of 1.5 nats per token
        def forward(self, x, y):
            return torch.tensor(1.5)

    result = train.evaluate(HalfAndOne(), tokens, data.Windows([0], 4, 1), "cpu", nullcontext(), byte_lengths)
    assert result.loss == 1.5
    assert abs(result.bits_per_byte - 4 * 1.5 / math.log(2) / 7) < 1e-12  # 6 nats = 8.66 bits, over 7 bytes
    assert str(result) == "1.5000 (1.2366 bits per byte)"


class Recorder:
    """Stands in for the model's loss: records where each batch and each window in it
    start, returns a loss of 1."""

    def __init__(self):
        self.starts, self.windows = [], []

    def __call__(self, x, y):
        self.starts.append(x[0, 0].item())
        self.windows += x[:, 0].tolist()
        return torch.tensor(1.0)

    def eval(self):
        pass

    def train(self):
        pass


def test_evaluation_batches_spread_over_the_whole_split():
    tokens = np.arange(10_000, dtype=np.uint16)  # a token is its own position
    model = Recorder()
    train.evaluate(model, tokens, data.periodic_windows(len(tokens), 2, 32, 5), "cpu", nullcontext(), ONE_BYTE_EACH)
    span = 10_000 - 2 * 32 - 1
    assert model.starts == [0, round(span / 4), round(span / 2), round(3 * span / 4), span]
    assert model.windows[:2] == [0, 32]  # each batch: B consecutive windows
    train.evaluate(model, tokens, data.periodic_windows(len(tokens), 2, 32, 5), "cpu", nullcontext(), ONE_BYTE_EACH)
    assert model.starts[5:] == model.starts[:5]  # the same batches every time


def test_whole_split_loss_is_the_mean_over_every_window():
    model = tiny_model()
    tokens = np.random.default_rng(0).integers(0, 100, size=32 * 7 + 5).astype(np.uint16)  # 7 windows and a bit
    with torch.no_grad():
        per_window = [model(torch.from_numpy(tokens[i * 32 : i * 32 + 32].astype(np.int64))[None],
                            torch.from_numpy(tokens[i * 32 + 1 : i * 32 + 33].astype(np.int64))[None])[1].item()
                      for i in range(7)]
    windows = data.final_windows(len(tokens), 32, max_tokens=10_000)
    assert windows.starts == [i * 32 for i in range(7)]
    whole = train.evaluate(TrainingLoss(model), tokens, windows, "cpu", nullcontext(), ONE_BYTE_EACH)
    assert abs(whole.loss - sum(per_window) / 7) < 1e-5
    assert windows.describe(len(tokens)) == ("on the whole validation split, every window", "224 tokens")


def test_beyond_the_cap_the_final_evaluation_takes_a_fixed_sample_spread_evenly():
    tokens = np.arange(32 * 100 + 1, dtype=np.uint16)  # 100 windows; a token is its own position
    windows = data.final_windows(len(tokens), 32, max_tokens=320)
    assert windows.starts == [i * 10 * 32 for i in range(10)]  # one window in every ten
    assert data.final_windows(len(tokens), 32, max_tokens=320) == windows  # the same ones every time
    model = Recorder()
    train.evaluate(model, tokens, windows, "cpu", nullcontext(), ONE_BYTE_EACH)
    assert model.windows == windows.starts
    assert windows.describe(len(tokens)) == ("on 10 windows spread evenly over the validation split",
                                             "320 of its 3,201 tokens")


def test_final_evaluation_cap_covers_inputs_validation_split_whatever_the_tokenizer():
    validation_bytes = len(open(os.path.join(ROOT, "input"), "rb").read()) * 0.1
    assert 250_000 < validation_bytes < data.FINAL_EVAL_BYTES
    # a tokenizer with fewer bytes per token makes more tokens, and the cap in tokens grows with them
    for bytes_per_token in (1.0, 2.68, 3.26):
        n_tokens = int(validation_bytes / bytes_per_token)
        windows = data.final_windows(n_tokens, 256, int(data.FINAL_EVAL_BYTES / bytes_per_token))
        assert windows.describe(n_tokens)[0] == "on the whole validation split, every window"


def test_evaluation_runs_without_autograd():
    grad_modes = []

    class Watcher(Recorder):
        def __call__(self, x, y):
            grad_modes.append(torch.is_grad_enabled())
            return super().__call__(x, y)

    tokens = np.arange(5_000, dtype=np.uint16)
    train.evaluate(Watcher(), tokens, data.periodic_windows(len(tokens), 2, 32, 3), "cpu", nullcontext(), ONE_BYTE_EACH)
    train.evaluate(Watcher(), tokens, data.final_windows(len(tokens), 32, 1000), "cpu", nullcontext(), ONE_BYTE_EACH)
    assert grad_modes and not any(grad_modes)


def test_final_evaluation_batches_many_windows():
    model = Recorder()
    tokens = np.arange(32 * 600 + 1, dtype=np.uint16)
    train.evaluate(model, tokens, data.final_windows(len(tokens), 32, 10**6), "cpu", nullcontext(), ONE_BYTE_EACH)
    assert len(model.windows) == 600
    assert len(model.starts) == -(-600 // (data.FINAL_EVAL_BATCH_TOKENS // 32))  # forward passes, each of many windows


# ---------------------------------------------------------------------------
# Short runs


@pytest.mark.parametrize("flags, warmup", [
    ({"max_steps": 5}, 1),  # a tenth of 5, but at least 1
    ({"max_steps": 9}, 1),
    ({"max_steps": 10}, 10),  # the default fits
    ({"max_steps": 5, "warmup_steps": 0}, 0),  # given: kept
    ({"max_steps": 5, "warmup_steps": 5}, 5),
], ids=["5", "9", "10", "explicit-0", "explicit-5"])
def test_short_runs_warm_up_for_a_tenth_of_their_steps(tmp_path, flags, warmup):
    cfg, _ = train.resolve_config({**flags, "log_dir": str(tmp_path)})
    assert cfg.warmup_steps == warmup


def test_an_explicit_warmup_longer_than_the_run_is_still_refused(tmp_path):
    with pytest.raises(train.UsageError, match="warmup_steps=6 is more than max_steps=5"):
        train.resolve_config({"max_steps": 5, "warmup_steps": 6, "log_dir": str(tmp_path)})


@pytest.mark.slow
def test_python_train_max_steps_5_just_works(tmp_path, text_file):
    r = run_script("train.py", "--input_file", text_file, "--log_dir", tmp_path / "log", *TINY_FLAGS_WITHOUT_WARMUP,
                   "--max_steps", 5, "--eval_sample_tokens", 0)
    assert r.returncode == 0, r.stderr
    assert "| warmup 1 (a tenth of max_steps) |" in next(line for line in r.stdout.splitlines() if line.startswith("device"))
    assert sorted(step_losses(r.stdout)) == [0, 1, 2, 3, 4]


TINY_FLAGS_WITHOUT_WARMUP = [flag for i, flag in enumerate(TINY_FLAGS)
                             if "--warmup_steps" not in TINY_FLAGS[max(0, i - 1) : i + 1]]


@pytest.mark.slow
def test_samples_at_each_evaluation_and_the_whole_split_at_the_end(tmp_path, text_file):
    r = train_run(tmp_path, text_file, "--max_steps", 4, "--eval_interval", 2, "--eval_sample_tokens", 8)
    assert r.returncode == 0, r.stderr
    samples = [line for line in r.stdout.splitlines() if " | sample: " in line]
    # a text of one's own: the samples start where its validation split does (input's start from "ROMEO:")
    assert [line[:30] for line in samples] == ["step    1 | sample: And gather", "step    3 | sample: And gather"]
    assert "on the whole validation split, every window:" in r.stdout
    quiet = train_run(tmp_path, text_file, "--max_steps", 2, "--eval_sample_tokens", 0, "--log_dir", tmp_path / "q")
    assert quiet.returncode == 0 and " | sample: " not in quiet.stdout
    asked = train_run(tmp_path, text_file, "--max_steps", 2, "--sample_prompt", "ROMEO:", "--log_dir", tmp_path / "a")
    assert asked.returncode == 0 and "step    1 | sample: ROMEO:" in asked.stdout


# ---------------------------------------------------------------------------
# A tokenizer of your own


def test_bpe_gets_4096_tokens_unless_told_and_its_bounds_are_checked(tmp_path):
    cfg, _ = train.resolve_config({"tokenizer": "bpe", "log_dir": str(tmp_path)})
    assert cfg.vocab_size == 4096
    assert train.resolve_config({"tokenizer": "bpe", "vocab_size": 320, "log_dir": str(tmp_path)})[0].vocab_size == 320
    for size in (319, 65537):
        with pytest.raises(train.UsageError, match=f"vocab_size={size} with --tokenizer bpe must be 320 to 65536"):
            train.resolve_config({"tokenizer": "bpe", "vocab_size": size, "log_dir": str(tmp_path)})
    assert train.resolve_config({"log_dir": str(tmp_path)})[0].vocab_size == 50304  # gpt2: as before


def test_the_model_has_the_tokens_rounded_up_to_64_rows():
    assert [padded_vocab(n) for n in (320, 321, 4096, 50257)] == [320, 384, 4096, 50304]


@pytest.mark.slow
def test_training_with_a_bpe_of_its_own(tmp_path, text_file):
    r = train_run(tmp_path, text_file, "--tokenizer", "bpe", "--vocab_size", 2000, "--max_steps", 2, "--eval_sample_tokens", 8)
    assert r.returncode == 0, r.stderr
    said = r.stdout
    assert "trained a byte-level BPE of 2,000 tokens on the training text" in said
    assert re.search(r"^tokenizer bpe \| 2,000 tokens \| \d\.\d\d bytes per token on the training text \| 'And gather[^']*' is \[", said, re.M)
    assert re.search(r"^step    1 \| val loss \d+\.\d{4} \(\d\.\d{4} bits per byte\)$", said, re.M)
    ckpt = torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)
    assert ckpt["tokenizer"]["name"] == "bpe" and ckpt["config"]["vocab_size"] == 2048  # 2,000 rounded up to 64
    with open(tmp_path / "log" / "log.txt") as f:
        assert [line.split()[1] for line in f] == ["train", "train", "val", "val_bpb"]


# ---------------------------------------------------------------------------
# --size auto, on a faked machine


def sized(monkeypatch, flags, source="scratch", **edited):
    """train.sized on a machine about as fast as a Zen 4, with the constants flags gives
    and those edited (as if changed at the top of train.py)."""
    from types import SimpleNamespace

    from machinery.budget import Clock
    from machinery.processes import Processes

    monkeypatch.setattr(train, "rung_speed", lambda *args: lambda rung, seconds: 2e11 / (6 * (rung.weights() + 2e6)))
    cfg = train.Config(**{"time_budget": 30.0, "size": "auto", "tokenizer": "bpe", "vocab_size": 4096, **flags, **edited})
    tok = SimpleNamespace(name="bpe", n_vocab=4096)
    splits = (np.zeros(740_718, dtype=np.uint16), np.zeros(87_380, dtype=np.uint16))  # input's, in the BPE's tokens
    return train.sized(cfg, flags, source, tok, splits, Processes(), Clock(age=0.0), "cpu", "float32", nullcontext(), "cpu")


def test_the_sizing_chooses_the_constants_it_owns(monkeypatch, capsys):
    cfg = sized(monkeypatch, {})
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.B, cfg.total_batch_size) == (4, 4, 256, 16, 4096)
    assert (cfg.dropout, cfg.weight_decay) == (0.0, 2.0)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith("sized for this machine: timed 4 x 128 ")
    assert out[1].startswith("sized for this machine: 4 x 256 (3.1M weights in the blocks), about ")
    assert out[1].endswith("the same as --n_layer 4 --n_head 4 --n_embd 256 --total_batch_size 4096 --B 16 --dropout 0 "
                           "--weight_decay 2")


def test_flags_and_edited_constants_win_over_the_sizing(monkeypatch):
    cfg = sized(monkeypatch, {"dropout": 0.1, "total_batch_size": 8192}, n_layer=8)  # n_layer edited, not a flag
    assert (cfg.n_layer, cfg.dropout, cfg.total_batch_size) == (8, 0.1, 8192)
    assert (cfg.n_head, cfg.n_embd, cfg.weight_decay) == (4, 256, 2.0)  # the rest is sized


def test_weights_to_start_from_keep_their_shape(monkeypatch, capsys):
    cfg = sized(monkeypatch, {"init_from": "gpt2"}, source="gpt2")
    assert (cfg.n_layer, cfg.n_embd) == (6, 384)
    assert "--size auto: gpt2 brings the model's shape, so it is not sized" in capsys.readouterr().out
