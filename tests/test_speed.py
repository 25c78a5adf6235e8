"""The speed-ups: dtype choice, bf16 accuracy, compile and its fallback, threads, bench.py."""

import os
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import bench
from machinery import speed
import train
from machinery.cli import UsageError
from conftest import ONE_THREAD, TINY_FLAGS, run_script, step_losses, tiny_model
from machinery.data import DataLoader
from machinery.optimizer import configure_optimizers
from machinery.speed import FastDropout, TrainingLoss


def test_dtype_forced_or_chosen(monkeypatch):
    assert speed.choose_dtype("float32", "cpu") == "float32"
    assert speed.choose_dtype("bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    assert speed.choose_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)
    assert speed.choose_dtype("auto", "cpu") == "float32"
    assert speed.choose_dtype("auto", "mps") == "float32"


@pytest.mark.parametrize("available, expected", [
    ({"cuda", "xpu", "mps"}, "cuda"),
    ({"xpu", "mps"}, "xpu"),
    ({"mps"}, "mps"),
    (set(), "cpu"),
])
def test_auto_device_order_is_cuda_xpu_mps_cpu(monkeypatch, available, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: "cuda" in available)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: "xpu" in available)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: "mps" in available)
    assert speed.pick_device("auto") == expected
    assert speed.pick_device("cpu") == "cpu"  # a name is taken as given


def test_xpu_dtype_follows_its_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.xpu, "is_bf16_supported", lambda: True)
    assert speed.choose_dtype("auto", "xpu") == "bfloat16"
    monkeypatch.setattr(torch.xpu, "is_bf16_supported", lambda: False)
    assert speed.choose_dtype("auto", "xpu:0") == "float32"
    assert speed.want_compile("auto", "xpu") is False


def test_native_bf16_detection_asks_the_cpu():
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo to compare with")
    flags = open("/proc/cpuinfo").read().split()
    assert speed.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_bad_dtype_or_compile_value():
    with pytest.raises(UsageError, match="dtype: expected one of auto, float32, bfloat16"):
        train.Config(dtype="float16")
    with pytest.raises(UsageError, match="compile: expected auto, True or False"):
        train.Config(compile="maybe")


def test_bf16_autocast_tracks_float32():
    """bf16 keeps 8 bits of mantissa (about 0.4% relative error per number), but only
    inside the matrix products: weights, optimizer state, softmax and LayerNorm stay in
    float32. So 40 steps from the same seed should give nearly the same loss curve:
    we allow 0.05 (1% of a loss around 5), far below the 2.5 the curve falls."""
    tokens = np.random.default_rng(0).integers(0, 512, size=20_000).astype(np.uint16)
    cfg = train.Config(grad_clip=1.0)
    curves = {}
    for dtype in ("float32", "bfloat16"):
        model = tiny_model(block_size=64, vocab_size=512, n_embd=64).train()
        optimizer = configure_optimizers(model, 0.1, 3e-3, (0.9, 0.95), "cpu")
        loader = DataLoader(tokens[:2 * 64 + 1], 2, 64)  # one batch, again and again: loss falls fast
        ctx = speed.autocast_context("cpu", dtype)
        train_loss = TrainingLoss(model)
        curves[dtype] = [train.train_step(train_loss, optimizer, loader, 2, cfg, "cpu", ctx)[0] for _ in range(40)]
    f32, bf16 = np.array(curves["float32"]), np.array(curves["bfloat16"])
    assert f32[0] - f32[-1] > 2.5  # it learned
    assert np.abs(f32 - bf16).max() < 0.05, np.abs(f32 - bf16).max()
    assert not np.array_equal(f32, bf16)  # they differ a little: bf16 really ran...
    with speed.autocast_context("cpu", "bfloat16"):  # ...because autocast makes the products bf16
        assert model.lm_head(torch.randn(2, 64)).dtype == torch.bfloat16
    with speed.autocast_context("cpu", "float32"):
        assert model.lm_head(torch.randn(2, 64)).dtype == torch.float32


def test_compile_failure_falls_back_to_eager(monkeypatch, capsys):
    def broken_compile(model):
        def fail(*args, **kwargs):
            raise RuntimeError("no C++ compiler\nmore lines")
        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    train_loss = TrainingLoss(tiny_model(block_size=16, vocab_size=50, n_layer=1, n_head=1, n_embd=8))
    cfg = train.Config(B=1, T=16)
    compiled, note = train.compile_training_loss(train_loss, cfg, "cpu", nullcontext())
    assert compiled is train_loss and note == "off (failed)"
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "torch.compile failed (RuntimeError: no C++ compiler)" in out


@pytest.mark.slow
def test_compile_without_a_compiler_trains_in_eager_mode(tmp_path, text_file):
    r = run_script("train.py", "--input_file", text_file, "--log_dir", tmp_path / "log", *TINY_FLAGS,
                   "--compile", "True", "--max_steps", 2, env_extra={"CXX": "/nonexistent/g++"})
    assert r.returncode == 0, r.stderr
    assert "torch.compile failed" in r.stdout and "compile off (failed)" in r.stdout
    assert sorted(step_losses(r.stdout)) == [0, 1]


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, text_file):
    def run(compile_, log):
        r = run_script("train.py", "--input_file", text_file, "--log_dir", tmp_path / log, *TINY_FLAGS,
                       *ONE_THREAD, "--dtype", "float32", "--compile", compile_, "--max_steps", 3)
        assert r.returncode == 0, r.stderr
        return r.stdout

    compiled, eager = run("True", "c"), run("False", "e")
    assert "compile on" in compiled and "compile off" in eager
    compiled_losses, eager_losses = step_losses(compiled), step_losses(eager)
    assert sorted(compiled_losses) == sorted(eager_losses) == [0, 1, 2]
    for step, loss in eager_losses.items():
        assert abs(compiled_losses[step] - loss) < 1e-4, (step, loss, compiled_losses[step])


@pytest.mark.slow
def test_start_up_line_says_what_is_on(tmp_path, text_file):
    r = run_script("train.py", "--input_file", text_file, "--log_dir", tmp_path / "log", *TINY_FLAGS,
                   "--dtype", "bfloat16", "--chunked_loss", "False", "--threads", 1, "--max_steps", 1, "--dropout", 0.1)
    assert r.returncode == 0, r.stderr
    first = next(line for line in r.stdout.splitlines() if line.startswith("device "))
    for part in ("dtype bfloat16", "threads 1", "compile off", "chunked loss off", "dropout 0.1 (16-bit masks)"):
        assert part in first


@pytest.mark.parametrize("setting", ["bfloat16", "float32"])
def test_the_dtype_set_up_device_names_is_the_dtype_of_the_products(setting):
    """The start-up line prints prepare_device's dtype; the context it returns must make
    the matrix products that dtype, or the line would say bfloat16 over a float32 run."""
    threads = torch.get_num_threads()  # given back as it is, so this process keeps its threads
    device, device_type, dtype, ctx = speed.prepare_device("cpu", setting, threads)
    assert (device, device_type, dtype) == ("cpu", "cpu", setting)
    with ctx:
        assert (torch.randn(4, 8) @ torch.randn(8, 2)).dtype == getattr(torch, setting)


def dropped_and_scaled(dropout, p):
    """Dropout on a million random numbers: (the mask of those kept, the scale they got),
    after checking that the kept ones were scaled and the gradient went through them alone."""
    x = torch.randn(1000, 1000, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    scale = 65536 / (65536 - round(p * 65536))
    assert torch.allclose(y[kept], x[kept] * scale) and abs(scale - 1 / (1 - p)) < 1e-5
    y.sum().backward()
    assert torch.allclose(x.grad, kept * scale)  # the backward used the forward's mask
    return kept


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_fast_dropout_keeps_one_minus_p_and_scales_them_up(p):
    torch.manual_seed(0)
    kept = dropped_and_scaled(FastDropout(p), p)
    # a million elements: the fraction kept is 1 - p to within 0.0005 (one standard deviation);
    # each of the four elements that share a 64-bit draw is kept as often
    assert abs(kept.float().mean().item() - (1 - p)) < 0.002
    for share in kept.view(-1, 4).float().mean(dim=0):
        assert abs(share.item() - (1 - p)) < 0.004


def test_fast_dropout_masks_follow_the_seed_and_differ_each_call():
    dropout, x = FastDropout(0.2), torch.ones(4096)
    torch.manual_seed(1)
    first, second = dropout(x), dropout(x)
    torch.manual_seed(1)
    assert torch.equal(dropout(x), first) and not torch.equal(first, second)


def test_fast_dropout_is_the_identity_in_eval_mode_or_at_zero():
    x = torch.randn(64)
    assert FastDropout(0.2).eval()(x) is x and FastDropout(0.0)(x) is x


def test_use_fast_dropout_swaps_every_dropout_module_and_keeps_the_weights():
    model = tiny_model(dropout=0.2)
    names = list(model.state_dict())
    idx = torch.randint(0, 50, (2, 16))
    before = model(idx)[0]
    speed.use_fast_dropout(model)
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropouts) == 1 + 2 * model.config.n_layer  # embeddings, then attention and MLP in each block
    assert all(type(m) is FastDropout and m.p == 0.2 for m in dropouts)
    assert list(model.state_dict()) == names and torch.equal(model(idx)[0], before)


@pytest.mark.slow
def test_compiled_fast_dropout_keeps_its_mask_for_the_backward():
    torch.manual_seed(0)
    kept = dropped_and_scaled(torch.compile(FastDropout(0.2)), 0.2)
    assert abs(kept.float().mean().item() - 0.8) < 0.002


def test_physical_cores():
    assert 1 <= speed.physical_cores() <= os.cpu_count()


def test_bench_never_times_emulated_bf16():
    names = lambda modes: [mode[0] for mode in modes]
    assert names(bench.modes_to_run(True)) == names(bench.MODES)
    assert names(bench.modes_to_run(False)) == [
        "float32 eager (reference)", "torch.compile", "chunked loss", "train.py default"]


@pytest.mark.slow
def test_bench_prints_the_table():
    # the table's shape is what is tested here; compiling is tested above, so it is skipped
    # (TORCHDYNAMO_DISABLE turns torch.compile into a no-op) to save a minute
    r = run_script("bench.py", "--n_layer", 1, "--n_head", 2, "--n_embd", 32, "--block_size", 32, "--B", 1, "--T", 32,
                   "--steps", 1, "--warmup", 1, "--rounds", 1, "--device", "cpu", env_extra={"TORCHDYNAMO_DISABLE": "1"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("cpu: ") and "torch " in lines[0] and "threads" in lines[0]
    assert any(line.startswith("matmul peak") for line in lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("mode "))
    for column in ("tok/sec", "ms/micro-step", "speed-up", "GFLOP/s", "MFU", "peak MB", "compile s"):
        assert column in lines[header]
    rows = lines[header + 1 :]
    names = [row.split("  ")[0].strip() for row in rows]
    assert rows[0].startswith("float32 eager (reference)") and rows[0].split()[-5] == "1.00x"
    assert any(row.startswith("train.py default (") for row in rows)
    if bench.native_bf16("cpu"):
        assert names[:4] == ["float32 eager (reference)", "bf16 autocast", "torch.compile", "chunked loss"]
    else:  # timed in float32 only; the bf16 row says why it is missing
        assert names[:3] == ["float32 eager (reference)", "torch.compile", "chunked loss"]
        assert rows[-1].startswith("bf16 autocast") and "skipped: no native bf16" in rows[-1]
