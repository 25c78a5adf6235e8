"""torchrun: two CPU processes (gloo) train exactly like one with the same total batch,
print once, write log/ once, stop together and resume across the two modes."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ONE_THREAD, ROOT, TINY_FLAGS, budget_step_count, signal_when, start_training, step_losses, train_run

pytestmark = pytest.mark.slow

# float32, so that the two processes' sums in another order still agree to 1e-5; one
# thread, as each of the two processes has; 4 micro-batches per step, 2 for each process
FLAGS = ["--dtype", "float32", *ONE_THREAD, "--total_batch_size", 256, "--eval_interval", 5]


def torchrun(text_file, log_dir, *flags, nproc=2, **popen):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           os.path.join(ROOT, "train.py"), "--input_file", str(text_file), "--log_dir", str(log_dir),
           *map(str, TINY_FLAGS), *map(str, FLAGS), *map(str, flags)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("chars", [None, 4000], ids=["text", "small-text"])
def test_two_processes_match_one(tmp_path, text_file, chars):
    """On 4,000 characters (about 900 training tokens) the 8 steps read the split about
    twice: the processes deal out each pass's fresh order as one process reads it."""
    if chars is not None:
        text_file.write_text(text_file.read_text(encoding="utf-8")[:chars], encoding="utf-8")
    one = train_run(tmp_path, text_file, *FLAGS, "--max_steps", 8, "--log_dir", tmp_path / "one")
    two = torchrun(text_file, tmp_path / "two", "--max_steps", 8)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert "world size 2" in two.stdout and "world size 1" in one.stdout
    if chars is not None:
        assert torch.load(tmp_path / "two" / "ckpt.pt", weights_only=True)["data_pass"] >= 1
    single, double = step_losses(one.stdout), step_losses(two.stdout)
    assert sorted(double) == list(range(8))
    for step in range(8):
        assert abs(single[step] - double[step]) <= 1e-5, (step, single[step], double[step])
    # one line per step, not one per process, and the log written once
    assert sum(line.startswith("step    3 | loss") for line in two.stdout.splitlines()) == 1
    log = (tmp_path / "two" / "log.txt").read_text().splitlines()
    assert [int(line.split()[0]) for line in log if " train " in line] == list(range(8))


def test_micro_batches_must_divide_among_processes(tmp_path, text_file):
    r = torchrun(text_file, tmp_path / "log", "--max_steps", 2, nproc=3)
    assert r.returncode != 0
    ours = [line for line in r.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(ours) == 1 and "4 micro-batches per step cannot be shared evenly among 3 processes" in ours[0]


def stop_a_worker(proc, signum):
    """Send signum to one of torchrun's worker processes (not torchrun itself) once step 3
    is printed; returns all of stdout."""
    output = []
    for line in proc.stdout:
        output.append(line)
        if line.startswith("step    3 | loss"):
            workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            os.kill(int(workers[-1]), signum)
    proc.wait(timeout=120)
    return "".join(output)


def test_a_signal_to_one_process_stops_all_and_resumes_alone(tmp_path, text_file):
    full = train_run(tmp_path, text_file, *FLAGS, "--max_steps", 30, "--log_dir", tmp_path / "full")
    assert full.returncode == 0, full.stderr
    proc = torchrun(text_file, tmp_path / "cut", "--max_steps", 30, popen=True)
    out = stop_a_worker(proc, signal.SIGTERM)
    stderr = proc.stderr.read()
    assert proc.returncode == 0 and "Traceback" not in stderr, out + stderr
    assert out.count("saved ") == 1 and "--init_from resume" in out
    stopped = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)["step"]
    assert 4 <= stopped < 30
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "cut")], capture_output=True).returncode == 1  # none left

    resumed = train_run(tmp_path, text_file, *FLAGS, "--max_steps", 30, "--log_dir", tmp_path / "cut", "--init_from", "resume")
    assert_continues(resumed, full, stopped, 30)


def assert_continues(resumed, full, stopped, max_steps):
    """The resumed run took the steps from stopped to max_steps, with the losses of the full run."""
    assert resumed.returncode == 0, resumed.stderr
    losses = step_losses(resumed.stdout)
    assert sorted(losses) == list(range(stopped, max_steps))
    for step, loss in losses.items():
        assert abs(loss - step_losses(full.stdout)[step]) <= 1e-5, step


def test_a_single_process_checkpoint_resumes_under_torchrun(tmp_path, text_file):
    full = train_run(tmp_path, text_file, *FLAGS, "--max_steps", 12, "--log_dir", tmp_path / "full")
    assert full.returncode == 0, full.stderr
    proc = start_training(tmp_path, text_file, tmp_path / "cut", *FLAGS, "--max_steps", 12)
    signal_when(proc, ("step    3 | loss", signal.SIGINT))
    assert proc.returncode == 130
    stopped = torch.load(tmp_path / "cut" / "ckpt.pt", weights_only=True)["step"]
    resumed = torchrun(text_file, tmp_path / "cut", "--max_steps", 12, "--init_from", "resume")
    assert_continues(resumed, full, stopped, 12)


def test_the_first_process_fixes_a_time_budget_for_all(tmp_path, text_file):
    r = torchrun(text_file, tmp_path / "log", "--time_budget", 0.5)
    assert r.returncode == 0, r.stdout + r.stderr
    decisions = re.findall(r"^time budget 0\.5 min: (\d+) steps of ", r.stdout, re.M)
    assert len(decisions) == 1  # printed once, by the first process
    fixed = budget_step_count(r.stdout)  # as the first process moved it, if it did
    assert sorted(step_losses(r.stdout)) == list(range(fixed))  # both processes took exactly those steps
    assert torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)["step"] == fixed
