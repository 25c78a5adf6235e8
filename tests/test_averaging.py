"""Averaged weights: the moving average, what a checkpoint keeps of it, and who reads which weights."""

import dataclasses

import numpy as np
import torch

import train
from checkpoint import build_model, export, load_checkpoint, starting_point, training_state
from conftest import randomise, tiny_model
from machinery.averaging import WeightAverage
from machinery.data import DataLoader
from machinery.tokenizer import gpt2
from model import GPT

PADDED = dict(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)  # GPT-2's vocabulary, for the export


def moved(model, seed):
    """model, every weight moved at random in place: a stand-in for an optimizer step."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def test_the_average_is_the_moving_average_written_plainly():
    model = tiny_model()
    average = WeightAverage(model, 0.9)
    expected = None
    for step in range(5):
        moved(model, step)
        average.update(model)
        weights = {name: p.detach().clone() for name, p in model.named_parameters()}
        expected = weights if expected is None else {k: 0.9 * expected[k] + 0.1 * weights[k] for k in weights}
    averaged = dict(average.weights(model).named_parameters())
    assert all(torch.allclose(averaged[k], expected[k], atol=1e-6) for k in expected)
    kept = average.weights(model)
    assert not torch.equal(kept.lm_head.weight, model.lm_head.weight)  # not the weights themselves
    assert kept.lm_head.weight is kept.transformer.wte.weight  # and the embedding still tied to the output


def test_without_a_decay_the_weights_stand_for_themselves():
    model = tiny_model()
    average = WeightAverage(model, 0.0)
    average.update(moved(model, 0))
    assert average.weights(model) is model and str(average) == "the last step's weights"


def checkpoint_with_an_average(tmp_path, decay=0.5):
    """(path of a checkpoint of a model whose average differs from its weights, the model, the average)."""
    model = randomise(tiny_model(seed=1, **PADDED))
    average = WeightAverage(model, decay)
    average.update(model)
    average.update(moved(model, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(np.arange(100, dtype=np.uint16), 2, 8, position=32, seed=3, pass_number=2)
    state = training_state(model, optimizer, dataclasses.asdict(train.Config()), loader, 7, None, gpt2(), 1.0, True, average)
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    return path, model, average


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_the_checkpoint_keeps_the_average_as_the_model_and_the_weights_to_train_on(tmp_path):
    path, model, average = checkpoint_with_an_average(tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt["data_position"] == 32 and ckpt["data_pass"] == 2
    assert same_weights(build_model(ckpt), average.weights(model))  # sample.py and fine-tuning read the average
    assert not same_weights(build_model(ckpt), model)
    assert same_weights(build_model(starting_point("resume", ckpt)), model)  # a resumed run trains on from the weights
    resumed_average = WeightAverage(build_model(starting_point("resume", ckpt)), 0.5, ckpt)
    assert same_weights(resumed_average.weights(model), average.weights(model))  # and averages on from the average
    resumed_average.update(moved(model, 2))
    average.update(model)
    assert same_weights(resumed_average.weights(model), average.weights(model))


def test_the_export_holds_the_average(tmp_path):
    path, model, average = checkpoint_with_an_average(tmp_path)
    export(["--ckpt", str(path), "--out_dir", str(tmp_path / "hf")])
    assert same_weights(GPT.from_pretrained(str(tmp_path / "hf")), average.weights(model))


def test_an_old_checkpoint_without_an_average_still_resumes_from_its_model(tmp_path):
    path, model, _ = checkpoint_with_an_average(tmp_path)
    old = load_checkpoint(path)
    old["model"] = old.pop("training_weights")
    del old["data_pass"]
    assert same_weights(build_model(starting_point("resume", old)), model)
    loader = DataLoader(np.arange(100, dtype=np.uint16), 2, 8)
    train.restore(old, torch.optim.SGD(model.parameters(), lr=0.1), loader)
    assert (loader.pass_number, loader.position) == (0, 32)
    fresh = WeightAverage(model, 0.5, old)  # nothing to go on from: the average starts from the weights
    fresh.update(model)
    assert same_weights(fresh.weights(model), model)
