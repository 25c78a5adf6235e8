"""Bad input and faults: every one ends in one line that says what to do, a non-zero exit
code, no traceback, and every file the user had still intact."""

import os
import glob
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machinery import data
import sample
import train
from machinery.logbook import make_log_dir
from checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from machinery.cli import RunFailure, UsageError
from conftest import ONE_THREAD, ROOT, assert_refused, run_script, signal_when, start_training, step_losses, tiny_model, train_run

# ---------------------------------------------------------------------------
# Constants, checked in one place before any work starts


@pytest.mark.parametrize("script, flags, phrase", [
    (train, ["--n_layer", "0"], "n_layer must be at least 1, not 0"),
    (train, ["--B", "0"], "B must be at least 1"),
    (train, ["--T", "0"], "T must be at least 1"),
    (train, ["--eval_interval", "0"], "eval_interval must be at least 1"),
    (train, ["--eval_steps", "0"], "eval_steps must be at least 1"),
    (train, ["--max_steps", "0"], "max_steps must be at least 1"),
    (train, ["--max_steps", "-3"], "max_steps must be at least 1, not -3"),
    (train, ["--threads", "-1"], "threads must be at least 0"),
    (train, ["--max_lr", "0"], "max_lr must be above 0"),
    (train, ["--max_lr", "nan"], "max_lr: expected a finite number"),
    (train, ["--optimizer", "muon", "--adamw_lr_ratio", "0"], "adamw_lr_ratio must be above 0"),
    (train, ["--adamw_lr_ratio", "0.25"], "adamw_lr_ratio=0.25 only applies with --optimizer muon"),
    (train, ["--weight_decay", "-0.1"], "weight_decay must be at least 0"),
    (train, ["--dropout", "1"], "dropout must be at least 0 and below 1"),
    (train, ["--ema_decay", "1"], "ema_decay must be at least 0 and below 1"),
    (train, ["--betas", "0.9", "1.5"], "betas must be two numbers in [0, 1)"),
    (train, ["--n_embd", "66", "--n_head", "4"], "n_embd=66 must be divisible by n_head=4"),
    (train, ["--warmup_steps", "20", "--max_steps", "10"], "warmup_steps=20 is more than max_steps=10"),
    (train, ["--T", "512"], "T=512 is longer than block_size=256"),
    (train, ["--total_batch_size", "1000"], "multiple of B x T"),
    (train, ["--device", "gpu"], "unknown device 'gpu'"),
    pytest.param(train, ["--device", "mps"], "device 'mps' is not available",
                 marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
    (train, ["--dtype", "float16"], "invalid choice"),
    (sample, ["--top_k", "-1"], "top_k must be at least 0"),
    (sample, ["--top_p", "0"], "top_p must be above 0 and at most 1"),
    (sample, ["--top_p", "1.5"], "top_p must be above 0 and at most 1"),
    (sample, ["--temperature", "-0.5"], "temperature must be at least 0"),
    (sample, ["--num_samples", "0"], "num_samples must be at least 1"),
    (sample, ["--max_new_tokens", "-1"], "max_new_tokens must be at least 0"),
    (sample, ["--device", "tpu"], "unknown device 'tpu'"),
    (sample, ["--stop_at_eot", "maybe"], "expected auto, True or False"),
])
def test_bad_constants_are_named_in_one_line(script, flags, phrase):
    with pytest.raises(UsageError) as error:
        script.Config(**script.parse_flags(flags))
    assert phrase in str(error.value) and "\n" not in str(error.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_where_there_is_none():
    with pytest.raises(UsageError, match="device 'cuda' is not available on this machine"):
        train.Config(device="cuda")


@pytest.mark.slow
@pytest.mark.parametrize("script, flags, phrase", [
    ("train.py", ["--n_embd", 66, "--n_head", 4], "divisible by n_head"),
    ("train.py", ["--max_steps", -3], "max_steps must be at least 1"),
    ("train.py", ["--device", "cuda:99"], "device 'cuda:99'"),  # a GPU no machine has
    ("sample.py", ["--top_k", -1], "top_k must be at least 0"),
])
def test_scripts_refuse_bad_constants_in_one_line(script, flags, phrase):
    assert_refused(run_script(script, *flags), phrase)


@pytest.mark.slow
def test_a_prompt_longer_than_the_context_is_cropped_with_a_note(ckpt_path):
    r = run_script("sample.py", "--ckpt", ckpt_path, "--prompt", "To be, or not to be " * 20, "--num_samples", 1,
                   "--max_new_tokens", 3)
    assert r.returncode == 0, r.stderr
    assert "the model sees at most 32" in r.stderr and "1> To be" in r.stdout


# ---------------------------------------------------------------------------
# Random command lines: a valid configuration or the one-line error, never a traceback

TRAIN_FLAGS = [f"--{name}" for name in train.Config.__dataclass_fields__]
SAMPLE_FLAGS = [f"--{name}" for name in sample.Config.__dataclass_fields__]
VALUES = st.one_of(
    st.integers(-5, 5000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["True", "False", "auto", "yes", "cpu", "cuda", "mps", "xpu", "", "-", "--", "1e-3", "0x10"]),
    st.text(max_size=12),
)


def command_lines(flags):
    pair = st.tuples(st.sampled_from(flags + ["--nope", "-x"]), VALUES).map(list)
    return st.lists(pair, max_size=6).map(lambda pairs: [part for p in pairs for part in p])


def configure(config_class, parse_flags, argv):
    try:
        config_class(**parse_flags(argv))
    except UsageError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))


@settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_lines(TRAIN_FLAGS))
def test_fuzz_training_flags(argv):
    configure(train.Config, train.parse_flags, argv)


@settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(command_lines(SAMPLE_FLAGS))
def test_fuzz_sampling_flags(argv):
    configure(sample.Config, sample.parse_flags, argv)


# ---------------------------------------------------------------------------
# The training text


BAD_TEXTS = [
    ("missing", None, "no training text"),
    ("directory", "dir", "is a directory"),
    ("empty", b"", "is empty or holds only whitespace"),
    ("whitespace", b" \n\t\n  \n", "is empty or holds only whitespace"),
    ("latin-1", "To be, or not to be: caf\xe9 ".encode("latin-1"), "is not UTF-8: byte 24 is 0xe9"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary (a NUL byte at byte 8)"),
]


def make_text(tmp_path, content):
    path = tmp_path / "text.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("name, content, phrase", BAD_TEXTS, ids=[case[0] for case in BAD_TEXTS])
def test_bad_training_text(tmp_path, name, content, phrase):
    with pytest.raises(UsageError, match=re.escape(phrase)):
        data.load_tokens(str(make_text(tmp_path, content)), str(tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("name, content, phrase", BAD_TEXTS[1:5:3], ids=["directory", "latin-1"])
def test_train_refuses_bad_text(tmp_path, name, content, phrase):
    text = make_text(tmp_path, content)
    assert_refused(train_run(tmp_path, text), phrase)
    assert content == "dir" or text.read_bytes() == content  # the user's file is untouched


def test_damaged_token_cache_is_rebuilt(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("Now is the winter of our discontent", encoding="utf-8")
    first = data.load_tokens(str(text), str(tmp_path))
    expected = np.array(first.tokens)
    n = len(expected)
    for name, damage in [("tokens.bin", b"\x01"), ("tokens.json", b"{not json"), ("tokens.json", b'{"n_tokens": "x"}'),
                         ("tokens.json", f'{{"n_tokens": {n}, "sources": []}}'.encode()),
                         ("tokens.json", f'{{"n_tokens": {n}, "max_token": 1, "sources": 1}}'.encode())]:
        with open(os.path.join(first.entry, name), "wb") as f:
            f.write(damage)
        assert np.array_equal(data.load_tokens(str(text), str(tmp_path))[0], expected)
        assert "is damaged" in capsys.readouterr().out
        assert np.array_equal(data.load_tokens(str(text), str(tmp_path))[0], expected)  # and whole again
        assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------
# log_dir


@pytest.mark.slow
def test_log_dir_that_is_a_file_or_cannot_be_made(tmp_path, text_file):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert_refused(train_run(tmp_path, text_file, "--log_dir", a_file), "cannot write to log_dir", "--log_dir")
    assert_refused(train_run(tmp_path, text_file, "--log_dir", a_file / "sub"), "cannot write to log_dir")
    assert a_file.read_text() == "mine"


def test_log_dir_that_is_not_writable(tmp_path, monkeypatch):
    def refuse(path, mode="r", *args, **kwargs):
        if str(path).endswith(".write-test"):
            raise PermissionError(13, "Permission denied")
        return open_(path, mode, *args, **kwargs)

    open_ = open
    monkeypatch.setattr("builtins.open", refuse)  # root may write anywhere, so the refusal is simulated
    with pytest.raises(UsageError, match=r"cannot write to log_dir .* \(Permission denied\)"):
        make_log_dir(str(tmp_path / "log"))


# ---------------------------------------------------------------------------
# Damaged checkpoints: for resume, sample.py and fine-tuning alike


def good_checkpoint(path, resumable=True):
    """A tiny model's checkpoint; resumable adds what train.py's loop saves beside the model."""
    model = tiny_model(vocab_size=50304, n_layer=1)
    ckpt = {"model": model.state_dict(), "config": dict(model.config.__dict__)}
    if resumable:
        ckpt.update(optimizer={}, step=1, val_loss=10.0, train_config={}, data_position=0, rng_state=torch.get_rng_state())
    torch.save(ckpt, path)


def damage(path, how):
    good_checkpoint(path)
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    elif how == "corrupted":
        raw = bytearray(path.read_bytes())
        raw[100:400] = random.Random(0).randbytes(300)  # the same damage every time
        path.write_bytes(bytes(raw))
    elif how == "other shape":
        ckpt = torch.load(path, weights_only=True)
        torch.save({**ckpt, "config": {**ckpt["config"], "n_layer": 3}}, path)
    elif how == "missing keys":
        ckpt = torch.load(path, weights_only=True)
        del ckpt["model"]["transformer.ln_f.weight"]
        torch.save(ckpt, path)
    elif how == "not a checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)


DAMAGES = ["empty", "truncated", "corrupted", "other shape", "missing keys", "not a checkpoint"]
MESSAGES = {"empty": "is empty (0 bytes)", "truncated": "cannot load the checkpoint", "corrupted": "cannot load the checkpoint",
            "other shape": "do not match its model shape", "missing keys": "do not match its model shape",
            "not a checkpoint": "is not a checkpoint written by train.py or nanoGPT"}


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_checkpoint_is_a_usage_error(tmp_path, how):
    path = tmp_path / "ckpt.pt"
    damage(path, how)
    before = path.read_bytes()
    with pytest.raises(UsageError) as error:
        model_from_checkpoint(load_checkpoint(str(path)))
    assert MESSAGES[how] in str(error.value) and "\n" not in str(error.value)
    assert path.read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize("how", DAMAGES)
def test_scripts_refuse_a_damaged_checkpoint(tmp_path, text_file, how):
    log = tmp_path / "log"
    log.mkdir()
    path = log / "ckpt.pt"
    damage(path, how)
    before = path.read_bytes()
    runs = {  # resume without shape flags: the checkpoint's shape is the one to continue
        "resume": run_script("train.py", "--input_file", text_file, "--log_dir", log, "--init_from", "resume"),
        "fine-tune": train_run(tmp_path, text_file, "--init_from", path, "--log_dir", tmp_path / "ft"),
        "sample": run_script("sample.py", "--ckpt", path, "--prompt", "hi"),
    }
    for r in runs.values():
        assert_refused(r, MESSAGES[how])
    assert path.read_bytes() == before


@pytest.mark.slow
def test_missing_checkpoint_for_each_script(tmp_path, text_file):
    assert_refused(train_run(tmp_path, text_file, "--init_from", "resume"), "no ", "ckpt.pt")
    assert_refused(run_script("sample.py", "--ckpt", tmp_path / "nope.pt", "--prompt", "hi"), "no checkpoint")
    assert_refused(train_run(tmp_path, text_file, "--init_from", tmp_path / "nope.pt"), "no checkpoint at")


@pytest.mark.slow
def test_init_from_a_folder_that_is_not_gpt2(tmp_path, text_file):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    assert_refused(train_run(tmp_path, text_file, "--init_from", folder), "is not a Hugging Face GPT-2 directory")
    assert_refused(run_script("sample.py", "--init_from", folder, "--prompt", "hi"), "is not a Hugging Face GPT-2 directory")
    (folder / "config.json").write_text('{"model_type": "gpt2", "n_layer": "many"}')
    assert_refused(run_script("sample.py", "--init_from", folder, "--prompt", "hi"), "is not a Hugging Face GPT-2 directory")


def test_a_checkpoint_that_cannot_be_resumed(tmp_path):
    good_checkpoint(tmp_path / "ckpt.pt", resumable=False)  # model and config, but no optimizer, step...
    with pytest.raises(UsageError, match="cannot be resumed: it has no data_position, optimizer"):
        train.resolve_config({"init_from": "resume", "log_dir": str(tmp_path)})


# ---------------------------------------------------------------------------
# Resuming with flags that would change the model


@pytest.mark.slow
def test_resume_refuses_shape_flags_and_takes_dropout(tmp_path, text_file):
    assert train_run(tmp_path, text_file, "--max_steps", 2).returncode == 0
    before = (tmp_path / "log" / "ckpt.pt").read_bytes()
    r = train_run(tmp_path, text_file, "--init_from", "resume", "--max_steps", 4, "--n_layer", 3)
    assert_refused(r, "continues the checkpoint's model (block_size=256, vocab_size=50304, n_layer=2", "--n_layer 3")
    assert (tmp_path / "log" / "ckpt.pt").read_bytes() == before
    r = train_run(tmp_path, text_file, "--init_from", "resume", "--max_steps", 4, "--n_layer", 2, "--dropout", 0.1)
    assert r.returncode == 0, r.stderr  # the same shape, said again, is fine; dropout is not the shape
    ckpt = torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)
    assert ckpt["config"]["dropout"] == 0.1 and ckpt["step"] == 4


# ---------------------------------------------------------------------------
# Writing a checkpoint fails


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "ckpt.pt")
    good_checkpoint(tmp_path / "ckpt.pt")
    before = open(path, "rb").read()

    def disk_full(obj, f):
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(RunFailure, match="could not write the checkpoint .*No space left on device.*previous checkpoint is untouched"):
        save_checkpoint(path, {"model": {}})
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["ckpt.pt"]  # no half-written leftovers
    model_from_checkpoint(load_checkpoint(path))  # and it still loads


# ---------------------------------------------------------------------------
# A loss that is no longer a number


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, text_file):
    # a learning rate that blows the weights up within a few steps, not at once
    r = train_run(tmp_path, text_file, "--max_steps", 30, "--eval_interval", 1, "--warmup_steps", 20,
                  "--max_lr", "100", "--grad_clip", 0, "--dtype", "float32", "--eval_sample_tokens", 0)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert re.search(r"(loss became nan|weights stopped being numbers) .*at step \d+: .*--max_lr", r.stderr), r.stderr
    failed_at = int(r.stderr.split("at step ")[1].split(":")[0])
    ckpt = torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)
    assert failed_at >= 1 and ckpt["step"] == failed_at  # saved after step failed_at - 1, the last good one
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


# ---------------------------------------------------------------------------
# Signals


@pytest.mark.slow
def test_sigterm_saves_and_the_resumed_run_matches(tmp_path, text_file):
    flags = [*ONE_THREAD, "--max_steps", 12, "--eval_interval", 6, "--dropout", 0.1]
    full = train_run(tmp_path, text_file, *flags, "--log_dir", tmp_path / "full")
    assert full.returncode == 0, full.stderr
    proc = start_training(tmp_path, text_file, tmp_path / "cut", *flags)
    out = signal_when(proc, ("step    2 ", signal.SIGTERM))
    assert proc.returncode == 143, out + proc.stderr.read()
    assert "terminated: saving a checkpoint" in out and "--init_from resume" in out
    # the signal comes while the next steps run, so the run stops at step 3 or a little later
    stopped = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)["step"]
    assert 3 <= stopped < 12 and sorted(step_losses(out)) == list(range(stopped))
    resumed = train_run(tmp_path, text_file, *flags, "--log_dir", tmp_path / "cut", "--init_from", "resume")
    assert resumed.returncode == 0, resumed.stderr
    full_losses, resumed_losses = step_losses(full.stdout), step_losses(resumed.stdout)
    assert sorted(full_losses) == list(range(12)) and sorted(resumed_losses) == list(range(stopped, 12))
    for step, loss in resumed_losses.items():
        assert abs(loss - full_losses[step]) <= 1e-6, (step, loss, full_losses[step])


@pytest.mark.slow
@pytest.mark.parametrize("first, second, code", [
    (signal.SIGINT, signal.SIGINT, 130), (signal.SIGTERM, signal.SIGTERM, 143), (signal.SIGINT, signal.SIGTERM, 143),
], ids=["ctrl-c twice", "sigterm twice", "ctrl-c then sigterm"])
def test_a_second_signal_quits_without_saving(tmp_path, text_file, first, second, code):
    # the second evaluation is long, so the second signal lands while the first is being handled
    proc = start_training(tmp_path, text_file, tmp_path / "log", "--max_steps", 40, "--eval_interval", 3, "--eval_steps", 400)
    said = "interrupted" if first == signal.SIGINT else "terminated"
    out = signal_when(proc, ("step    5 | loss", first), (said, second))
    stderr = proc.stderr.read()
    assert proc.returncode == code and "quit without saving" in stderr and "Traceback" not in stderr, out + stderr
    ckpt = torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)  # the checkpoint of the last evaluation
    assert ckpt["step"] == 3


@pytest.mark.slow
def test_ctrl_c_during_evaluation_saves_after_it(tmp_path, text_file):
    proc = start_training(tmp_path, text_file, tmp_path / "log", "--max_steps", 40, "--eval_interval", 3, "--eval_steps", 400)
    out = signal_when(proc, ("step    2 | loss", signal.SIGINT))  # the step line comes just before the long evaluation
    assert proc.returncode == 130, out + proc.stderr.read()
    assert "step    2 | val loss" in out and "saved" in out
    assert torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)["step"] == 3


@pytest.mark.slow
def test_ctrl_c_on_the_last_step_saves_it_and_skips_the_final_evaluation(tmp_path, text_file):
    proc = start_training(tmp_path, text_file, tmp_path / "log", "--max_steps", 3, "--eval_steps", 200)
    out = signal_when(proc, ("step    2 | loss", signal.SIGINT))
    assert proc.returncode == 130, out + proc.stderr.read()
    assert "step    2 | val loss" in out and "was saved after the last step" in out and "done:" not in out
    assert torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)["step"] == 3


@pytest.mark.slow
def test_sigterm_during_the_final_evaluation_ends_the_run_within_seconds(tmp_path):
    # all of input: its validation split (79k tokens) keeps even the tiny model busy for a while
    proc = start_training(tmp_path, os.path.join(ROOT, "input"), tmp_path / "log", "--max_steps", 2, "--eval_steps", 1,
                          "--eval_sample_tokens", 0)
    output = []
    for line in proc.stdout:
        output.append(line)
        if line.startswith("final evaluation on the whole validation split"):
            proc.send_signal(signal.SIGTERM)
            signalled = time.time()
            break
    out = "".join(output) + proc.stdout.read()
    proc.wait(timeout=60)
    assert time.time() - signalled < 10
    assert proc.returncode == 143, out + proc.stderr.read()
    assert "terminated: the checkpoint" in out and "was saved after the last step" in out and "done:" not in out
    assert torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)["step"] == 2  # whole, and the last step's


@pytest.mark.slow
def test_resuming_a_checkpoint_saved_before_any_evaluation_at_its_own_step(tmp_path, text_file):
    proc = start_training(tmp_path, text_file, tmp_path / "log", "--max_steps", 20, "--eval_interval", 10)
    out = signal_when(proc, ("step    1 | loss", signal.SIGTERM))
    assert proc.returncode == 143, out
    ckpt = torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)
    assert ckpt["val_loss"] is None and ckpt["step"] < 10  # saved after the step the signal came in
    r = train_run(tmp_path, text_file, "--init_from", "resume", "--max_steps", ckpt["step"])
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "no steps to take" in r.stdout and "done: checkpoint in" in r.stdout and "final val loss" not in r.stdout


# ---------------------------------------------------------------------------
# Security: checkpoints are data, never code


class Payload:
    """Unpickling this would create a marker file: what a malicious checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "config": {}, "payload": Payload(str(marker))}, path)
    with pytest.raises(UsageError, match="refusing to load .* holds Python objects"):
        load_checkpoint(str(path))
    assert not marker.exists()


@pytest.mark.slow
def test_scripts_refuse_a_malicious_checkpoint(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "config": {}, "payload": Payload(str(marker))}, path)
    assert_refused(run_script("sample.py", "--ckpt", path, "--prompt", "hi"), "refusing to load")
    assert not marker.exists()


def test_every_torch_load_is_weights_only():
    for name in glob.glob("*.py", root_dir=ROOT) + glob.glob("machinery/*.py", root_dir=ROOT):
        with open(os.path.join(ROOT, name)) as f:
            source = f.read()
        assert source.count("torch.load(") == source.count("weights_only=True)"), name
        assert "eval(" not in source.replace(".eval(", "") and "exec(" not in source, name


@pytest.mark.slow
def test_traceback_on_request(tmp_path):
    env = dict(os.environ, SHOW_TRACEBACK="1")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), "--top_k", "-1"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr and "top_k must be at least 0" in r.stderr



def test_resume_refuses_another_optimizer(tmp_path):
    good_checkpoint(tmp_path / "ckpt.pt")  # its train_config says nothing: adamw, the default
    with pytest.raises(UsageError, match="trained with --optimizer adamw"):
        train.resolve_config({"init_from": "resume", "log_dir": str(tmp_path), "optimizer": "muon"})
