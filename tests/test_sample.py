"""sample.py end to end in a subprocess: from a checkpoint, from a Hugging Face
directory, and each way it refuses bad input (exit code 2, one line, no traceback)."""

import pytest

from conftest import assert_refused, run_script

# every test here starts sample.py in a subprocess
pytestmark = pytest.mark.slow


def samples(stdout):
    return [line for line in stdout.splitlines() if line[:1].isdigit() and "> " in line]


def test_from_checkpoint(ckpt_path):
    r = run_script("sample.py", "--ckpt", ckpt_path, "--prompt", "ROMEO:", "--num_samples", 3, "--max_new_tokens", 8)
    assert r.returncode == 0, r.stderr
    lines = samples(r.stdout)
    assert [line[:3] for line in lines] == ["1> ", "2> ", "3> "]
    assert all(line.startswith(f"{i + 1}> ROMEO:") for i, line in enumerate(lines))


def test_same_seed_same_text(ckpt_path):
    args = ("--ckpt", ckpt_path, "--num_samples", 2, "--max_new_tokens", 10)
    a = run_script("sample.py", *args, "--seed", 1)
    b = run_script("sample.py", *args, "--seed", 1)
    c = run_script("sample.py", *args, "--seed", 2)
    assert a.stdout == b.stdout and a.stdout != c.stdout


def test_prompt_from_file(ckpt_path, tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("JULIET:\nO Romeo", encoding="utf-8")
    r = run_script("sample.py", "--ckpt", ckpt_path, "--prompt", f"FILE:{prompt}", "--num_samples", 1, "--max_new_tokens", 3)
    assert r.returncode == 0, r.stderr
    assert "1> JULIET:\nO Romeo" in r.stdout


def test_from_hugging_face_directory(hf_dir):
    # the tiny model's vocabulary is 1000 tokens, so the prompt must stay below id 1000
    r = run_script("sample.py", "--init_from", hf_dir, "--prompt", "a b c", "--num_samples", 2, "--max_new_tokens", 5)
    assert r.returncode == 0, r.stderr
    assert len(samples(r.stdout)) == 2


def test_prompt_outside_a_small_vocabulary(hf_dir):
    r = run_script("sample.py", "--init_from", hf_dir, "--prompt", "the")  # "the" is token 1169
    assert_refused(r, "vocabulary of 1000")


def test_missing_checkpoint(tmp_path):
    r = run_script("sample.py", "--ckpt", tmp_path / "nope.pt", "--prompt", "hi")
    assert_refused(r, "no checkpoint", "python train.py", "--init_from gpt2")


def test_empty_prompt(ckpt_path):
    assert_refused(run_script("sample.py", "--ckpt", ckpt_path, "--prompt", ""), "prompt is empty")


def test_unreadable_prompt_file(ckpt_path, tmp_path):
    r = run_script("sample.py", "--ckpt", ckpt_path, "--prompt", f"FILE:{tmp_path / 'missing.txt'}")
    assert_refused(r, "cannot read the prompt file")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9")
    assert_refused(run_script("sample.py", "--ckpt", ckpt_path, "--prompt", f"FILE:{bad}"), "UTF-8")


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "ckpt.pt"
    bad.write_bytes(b"not a checkpoint")
    assert_refused(run_script("sample.py", "--ckpt", bad, "--prompt", "hi"), "cannot load the checkpoint")


@pytest.mark.parametrize("hub_offline", [True, False], ids=["HF_HUB_OFFLINE", "no network"])
def test_pretrained_offline(tmp_path, hub_offline):
    """No network and an empty cache: a clear message (bench.py --offline times it)."""
    r = run_script("sample.py", "--init_from", "gpt2", "--prompt", "hi", env_extra={"HF_HUB_CACHE": str(tmp_path)},
                   hub_offline=hub_offline)
    assert_refused(r, "not in the Hugging Face cache", "save_pretrained")


def test_unknown_pretrained_name():
    assert_refused(run_script("sample.py", "--init_from", "gpt3", "--prompt", "hi"), "neither a directory nor")
