"""optimizer.py: AdamW's weight-decay groups, which parameters Muon takes, and Muon's
step against torch.optim.Muon (bit for bit in bfloat16) and against float64."""

from contextlib import nullcontext

import numpy as np
import pytest
import torch

import train
from conftest import TINY_FLAGS, run_script, tiny_model
from machinery.data import DataLoader
from machinery.optimizer import Muon, configure_optimizers
from machinery.speed import TrainingLoss

# ---------------------------------------------------------------------------
# Which parameters go where


def test_weight_decay_groups():
    model = tiny_model()
    opt = configure_optimizers(model, weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.95), device_type="cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n_tensors = len(decay["params"]) + len(no_decay["params"])
    assert n_tensors == len(list(model.parameters()))  # each tensor once, the tied one included


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = tiny_model()
    optimizers = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu", optimizer="muon")
    muon, adamw = optimizers.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    matrices = {id(p) for block in model.transformer.h
                for p in (block.attn.c_attn.weight, block.attn.c_proj.weight, block.mlp.c_fc.weight, block.mlp.c_proj.weight)}
    assert {id(p) for g in muon.param_groups for p in g["params"]} == matrices
    rest = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert id(model.transformer.wte.weight) in rest and id(model.transformer.wpe.weight) in rest
    assert not rest & matrices and len(rest | matrices) == len(list(model.parameters()))
    assert len(optimizers.param_groups) == len(muon.param_groups) + len(adamw.param_groups)


@pytest.mark.parametrize("dtype, expected", [("bfloat16", torch.bfloat16), ("float32", torch.float32)])
def test_muon_computes_in_the_runs_dtype(dtype, expected):
    muon, _ = configure_optimizers(tiny_model(), 0.1, 1e-3, (0.9, 0.95), "cpu", optimizer="muon", dtype=dtype).optimizers
    assert muon.compute_dtype == expected
    library = torch.optim.Muon([torch.nn.Parameter(torch.zeros(2, 2))])
    assert [set(group) for group in muon.param_groups] == [set(library.param_groups[0])]  # no key of our own


def test_adamw_lr_ratio_slows_only_what_adamw_trains_and_a_resume_may_change_it():
    model = tiny_model()
    optimizers = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu", optimizer="muon", adamw_lr_ratio=0.25)
    muon, adamw = optimizers.optimizers
    train.set_learning_rate(optimizers, 4e-3)
    assert [g["lr"] for g in muon.param_groups] == [4e-3]
    assert [g["lr"] for g in adamw.param_groups] == [1e-3, 1e-3]
    resumed = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu", optimizer="muon", adamw_lr_ratio=0.5)
    resumed.load_state_dict(optimizers.state_dict())  # the checkpoint's groups say 0.25; this run says 0.5
    train.set_learning_rate(resumed, 4e-3)
    assert [g["lr"] for g in resumed.param_groups] == [4e-3, 2e-3, 2e-3]
    plain = configure_optimizers(model, 0.1, 1e-3, (0.9, 0.95), "cpu")
    train.set_learning_rate(plain, 4e-3)
    assert [g["lr"] for g in plain.param_groups] == [4e-3, 4e-3]


# ---------------------------------------------------------------------------
# Muon's step


def matrices_and_gradients(seed=0):
    """A wide, a tall and a square matrix, and three steps' gradients for each."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(16, 48), (48, 16), (32, 32)]
    weights = [torch.randn(shape, generator=generator) for shape in shapes]
    grads = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(3)]
    return weights, grads


def run_steps(optimizer_class, weights, grads, **kwargs):
    """The weights after one optimizer step per gradient list, and the optimizer."""
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    optimizer = optimizer_class(params, **kwargs)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.to(p.dtype)
        optimizer.step()
    return [p.detach() for p in params], optimizer


@pytest.mark.parametrize("settings", [
    dict(adjust_lr_fn="match_rms_adamw", weight_decay=0.1, nesterov=True),
    dict(adjust_lr_fn="original", weight_decay=0.0, nesterov=False),
    dict(adjust_lr_fn=None, weight_decay=1.0, nesterov=True, momentum=0.9),
], ids=["match_rms_adamw", "original", "default"])
def test_bfloat16_step_is_the_librarys_bit_for_bit(settings):
    weights, grads = matrices_and_gradients()
    ours, ours_opt = run_steps(Muon, weights, grads, lr=0.02, compute_dtype=torch.bfloat16, **settings)
    theirs, theirs_opt = run_steps(torch.optim.Muon, weights, grads, lr=0.02, **settings)
    for a, b, w in zip(ours, theirs, weights):
        assert torch.equal(a, b) and not torch.equal(a, w)
    for a, b in zip(ours_opt.state.values(), theirs_opt.state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def muon_in_float64(weights, grads, lr, weight_decay, momentum=0.95):
    """Muon written out plainly in float64 (Nesterov, match_rms_adamw): the reference."""
    a, b, c = 3.4445, -4.7750, 2.0315
    weights = [w.double() for w in weights]
    bufs = [torch.zeros_like(w) for w in weights]
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            g = g.double()
            bufs[i] = momentum * bufs[i] + (1 - momentum) * g
            x = (1 - momentum) * g + momentum * bufs[i]
            x = x if x.shape[0] <= x.shape[1] else x.T
            x = x / x.norm()
            for _ in range(5):
                gram = x @ x.T
                x = a * x + b * gram @ x + c * gram @ gram @ x
            x = x if step_grads[i].shape[0] <= step_grads[i].shape[1] else x.T
            scale = 0.2 * max(weights[i].shape) ** 0.5
            weights[i] = weights[i] * (1 - lr * weight_decay) - lr * scale * x
    return weights


def test_float32_step_agrees_with_float64():
    weights, grads = matrices_and_gradients()
    ours, _ = run_steps(Muon, weights, grads, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw",
                        compute_dtype=torch.float32)
    reference = muon_in_float64(weights, grads, lr=0.02, weight_decay=0.1)
    for a, b in zip(ours, reference):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6)
    library, _ = run_steps(torch.optim.Muon, weights, grads, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    assert max((a.double() - b).abs().max() for a, b in zip(library, reference)) > 1e-4  # bf16 is further off


def test_a_checkpoint_of_the_librarys_muon_resumes_and_continues_the_same():
    """Checkpoints from before this class hold torch.optim.Muon's state: ours loads it
    and takes the very steps the library would have taken."""
    weights, grads = matrices_and_gradients()
    before, library = run_steps(torch.optim.Muon, weights, grads[:2], lr=0.02, adjust_lr_fn="match_rms_adamw")
    saved = library.state_dict()
    params = [torch.nn.Parameter(w.clone()) for w in before]
    ours = Muon(params, lr=0.02, adjust_lr_fn="match_rms_adamw", compute_dtype=torch.bfloat16)
    ours.load_state_dict(saved)
    assert ours.compute_dtype == torch.bfloat16 and set(ours.param_groups[0]) == set(saved["param_groups"][0])
    for p, g in zip(params, grads[2]):
        p.grad = g
    ours.step()
    after, _ = run_steps(torch.optim.Muon, weights, grads, lr=0.02, adjust_lr_fn="match_rms_adamw")
    for a, b in zip(params, after):
        assert torch.equal(a.detach(), b)


def test_muon_learns_and_its_state_round_trips():
    model = tiny_model(n_embd=64).train()
    tokens = np.random.default_rng(0).integers(0, 100, size=4 * 32 + 1).astype(np.uint16)
    optimizers = configure_optimizers(model, 0.0, 3e-3, (0.9, 0.95), "cpu", optimizer="muon")
    losses = [train.train_step(TrainingLoss(model), optimizers, DataLoader(tokens, 4, 32), 1, train.Config(), "cpu",
                               nullcontext())[0] for _ in range(30)]
    assert losses[-1] < losses[0] - 1.0
    again = configure_optimizers(tiny_model(n_embd=64), 0.0, 3e-3, (0.9, 0.95), "cpu", optimizer="muon")
    again.load_state_dict(optimizers.state_dict())
    saved, loaded = optimizers.state_dict()["optimizers"], again.state_dict()["optimizers"]
    for saved_one, loaded_one in zip(saved, loaded, strict=True):
        assert saved_one["param_groups"] == loaded_one["param_groups"]
        assert saved_one["state"].keys() == loaded_one["state"].keys() and saved_one["state"]
        for index, state in saved_one["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(loaded_one["state"][index][name])), (index, name)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_start_up_line_says_where_muon_computes(tmp_path, text_file, dtype):
    if dtype == "bfloat16" and not torch.cpu._is_avx512_bf16_supported():
        pytest.skip("emulated bf16 would take minutes here")
    r = run_script("train.py", "--input_file", text_file, "--log_dir", tmp_path / "log", *TINY_FLAGS, "--max_steps", 1,
                   "--optimizer", "muon", "--dtype", dtype, "--eval_sample_tokens", 0)
    assert r.returncode == 0, r.stderr
    assert f"| optimizer muon (orthogonalised in {dtype}) |" in r.stdout


@pytest.mark.slow
def test_bench_times_a_training_step_with_each_optimizer():
    r = run_script("bench.py", "--optimizers", "--steps", 1, "--warmup", 0, "--rounds", 1, "--n_layer", 1, "--n_head", 2,
                   "--n_embd", 64, "--B", 2, "--T", 64, "--total_batch_size", 256, "--compile", False, "--device", "cpu",
                   "--dtype", "float32")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith(("adamw ", "muon "))]
    assert [row[0] for row in rows] == ["adamw", "muon"] and rows[1][1:4] == ["(orthogonalised", "in", "float32)"]
    assert float(rows[0][-2].rstrip("x")) == 1.0 and float(rows[1][-2].rstrip("x")) > 0  # vs adamw
