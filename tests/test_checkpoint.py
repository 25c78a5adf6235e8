"""checkpoint.py and the ecosystem: export to Hugging Face and back, nanoGPT's checkpoints
in and ours out to nanoGPT, the loss plot."""

import dataclasses
import os

import pytest
import torch

import train
from machinery.logbook import plot_losses, read_log
from checkpoint import export, load_checkpoint, model_from_checkpoint
from machinery.cli import UsageError
from conftest import randomise, run_script, step_losses, tiny_model, train_run
from machinery.tokenizer import gpt2
from model import GPT

# the GPT-2 vocabulary padded to 50304, as train.py's models have it, at a tiny size
PADDED = dict(block_size=32, vocab_size=50304, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(the model with every parameter random, the directory save_pretrained wrote it to)."""
    model = randomise(tiny_model(seed=1, **PADDED))
    directory = tmp_path_factory.mktemp("export") / "gpt"
    model.save_pretrained(directory)  # GPT-2's tokenizer, as Hugging Face's convention has it
    return model, str(directory)


def tokens(seed, shape=(2, 32), high=50257):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------
# Export to Hugging Face


def test_save_pretrained_without_a_tokenizer_refuses_another_vocabulary(tmp_path):
    with pytest.raises(ValueError, match="pass the tokenizer it was trained with"):
        tiny_model().save_pretrained(tmp_path / "gpt")  # 100 tokens: not GPT-2's
    assert not (tmp_path / "gpt").exists()


def test_export_writes_what_transformers_expects(exported):
    _, directory = exported
    assert {"config.json", "model.safetensors", "generation_config.json", "vocab.json", "merges.txt"} <= set(os.listdir(directory))


def test_export_round_trip_through_from_pretrained(exported):
    model, directory = exported
    again = GPT.from_pretrained(directory).eval()
    assert again.config == model.config  # the padded vocabulary (50304) is kept
    idx = tokens(0)
    with torch.no_grad():
        assert (again(idx, idx)[0] - model(idx, idx)[0]).abs().max().item() < 1e-5


def test_hugging_face_loads_the_export_and_computes_the_same_logits(exported):
    from transformers import AutoModelForCausalLM

    model, directory = exported
    theirs = AutoModelForCausalLM.from_pretrained(directory).eval()
    idx = tokens(1)
    with torch.no_grad():
        assert (theirs(idx).logits - model(idx, idx)[0]).abs().max().item() < 1e-4


def test_export_without_biases_computes_the_same(tmp_path):
    from transformers import AutoModelForCausalLM

    model = randomise(tiny_model(seed=2, bias=False, **PADDED))
    model.save_pretrained(tmp_path, gpt2())
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    idx = tokens(2)
    with torch.no_grad():
        assert (theirs(idx).logits - model(idx, idx)[0]).abs().max().item() < 1e-4


def test_the_exported_tokenizer_is_gpt2s(exported):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(exported[1])
    text = "ROMEO:\nBut soft! What light through yonder window breaks? naïve café"
    assert tokenizer(text)["input_ids"] == gpt2().encoding.encode(text)
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == 50256


def test_pipeline_generates_valid_text_never_a_padding_id(tmp_path):
    """The padding ids (50257..50303) stand for no text. Make them the model's favourites
    and check that Hugging Face's generate still never picks one."""
    from transformers import pipeline

    model = tiny_model(seed=3, **PADDED)
    with torch.no_grad():
        model.transformer.wte.weight[50257:] *= 500  # huge logits for the padding ids
    model.save_pretrained(tmp_path, gpt2())
    generate = pipeline("text-generation", model=str(tmp_path))
    out = generate("ROMEO:", max_new_tokens=20, do_sample=True, return_tensors=True)
    ids = out[0]["generated_token_ids"]
    assert len(ids) > 3 and max(ids) < 50257
    text = generate("ROMEO:", max_new_tokens=10, do_sample=True)[0]["generated_text"]
    assert text.startswith("ROMEO:") and len(text) > len("ROMEO:")


def test_export_command(tmp_path, ckpt_path, capsys):
    out_dir = tmp_path / "hf"
    export(["--ckpt", str(ckpt_path), "--out_dir", str(out_dir)])
    assert "exported" in capsys.readouterr().out
    again = GPT.from_pretrained(str(out_dir))
    original = model_from_checkpoint(load_checkpoint(ckpt_path))
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), original.state_dict().values()))
    with pytest.raises(UsageError, match="not an empty directory"):  # never writes over anything
        export(["--ckpt", str(ckpt_path), "--out_dir", str(out_dir)])


@pytest.mark.slow
def test_sample_from_an_export(exported):
    r = run_script("sample.py", "--init_from", exported[1], "--prompt", "ROMEO:", "--num_samples", 2, "--max_new_tokens", 5)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("> ROMEO:") == 2


# ---------------------------------------------------------------------------
# nanoGPT's checkpoints in, ours out


def nanogpt_checkpoint(model, compiled):
    """A checkpoint laid out as nanoGPT's train.py saves it."""
    prefix = "_orig_mod." if compiled else ""
    return {
        "model": {prefix + key: value for key, value in model.state_dict().items()},
        "optimizer": {},
        "model_args": dataclasses.asdict(model.config),
        "iter_num": 250,
        "best_val_loss": 3.5,
        "config": {"batch_size": 12, "learning_rate": 6e-4, "dataset": "shakespeare"},  # nanoGPT's run settings
    }


@pytest.mark.parametrize("compiled", [False, True])
def test_loads_a_nanogpt_checkpoint(tmp_path, compiled):
    model = tiny_model(seed=4, **PADDED)
    path = tmp_path / "ckpt.pt"
    torch.save(nanogpt_checkpoint(model, compiled), path)
    ckpt = load_checkpoint(path)
    assert ckpt["kind"] == "a nanoGPT checkpoint, after 250 iterations"
    loaded = model_from_checkpoint(ckpt).eval()
    idx = tokens(4)
    with torch.no_grad():
        assert torch.equal(loaded(idx, idx)[0], model(idx, idx)[0])


@pytest.mark.slow
def test_scripts_take_a_nanogpt_checkpoint(tmp_path, text_file):
    path = tmp_path / "nano.pt"
    torch.save(nanogpt_checkpoint(tiny_model(seed=5, **PADDED), compiled=True), path)
    s = run_script("sample.py", "--ckpt", path, "--prompt", "ROMEO:", "--num_samples", 1, "--max_new_tokens", 4)
    assert s.returncode == 0, s.stderr
    assert "a nanoGPT checkpoint" in s.stderr and "1> ROMEO:" in s.stdout
    t = train_run(tmp_path, text_file, "--init_from", path, "--max_steps", 2)
    assert t.returncode == 0, t.stderr
    assert "fine-tuning" in t.stdout and "a nanoGPT checkpoint" in t.stdout
    assert "n_embd=32 (was 64)" in t.stdout and sorted(step_losses(t.stdout)) == [0, 1]


def nanogpt_layout(n_layer, n_embd, vocab_size, block_size):
    """{key: shape} of a nanoGPT GPT's state dict with bias=True, from its model.py as
    documented: OpenAI's names, Linear weights as (out, in), lm_head tied to wte, and
    (with PyTorch 2's flash attention) no causal-mask buffer."""
    C = n_embd
    layout = {"transformer.wte.weight": (vocab_size, C), "transformer.wpe.weight": (block_size, C)}
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        layout.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (3 * C, C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (4 * C, C), h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (C, 4 * C), h + "mlp.c_proj.bias": (C,),
        })
    layout.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,), "lm_head.weight": (vocab_size, C)})
    return layout


@pytest.mark.slow
def test_our_checkpoint_has_nanogpts_layout(tmp_path, text_file):
    r = train_run(tmp_path, text_file, "--max_steps", 1)
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(tmp_path / "log" / "ckpt.pt", weights_only=True)
    assert {k: tuple(v.shape) for k, v in ckpt["model"].items()} == nanogpt_layout(2, 64, 50304, 256)
    # what nanoGPT's sample.py reads: model_args with the fields of its GPTConfig
    assert set(ckpt["model_args"]) == {"n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"}


# ---------------------------------------------------------------------------
# The loss plot


def test_plot_is_a_png(tmp_path):
    log = tmp_path / "log.txt"
    log.write_text("".join(f"{s} train {10 - s * 0.1:.6f}\n" for s in range(20)) + "9 val 9.5\n9 val_bpb 4.2\n19 val 8.5\n"
                   "19 val_bpb 3.76\n")
    assert plot_losses(str(log), str(tmp_path / "loss.png"), "a title", 8192)
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_log(str(log))["val"] == {9: 9.5, 19: 8.5}
    assert read_log(str(log))["val_bpb"] == {9: 4.2, 19: 3.76}


@pytest.mark.slow
def test_training_draws_the_plot_and_goes_on_without_matplotlib(tmp_path, text_file):
    r = train_run(tmp_path, text_file, "--max_steps", 2, "--eval_interval", 1)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "log" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    broken = tmp_path / "broken"  # a matplotlib that fails to import, first on the path
    (broken / "matplotlib").mkdir(parents=True)
    (broken / "matplotlib" / "__init__.py").write_text("raise ImportError('simulated: no matplotlib here')\n")
    r = train_run(tmp_path, text_file, "--max_steps", 3, "--eval_interval", 1, "--log_dir", tmp_path / "nomatplotlib",
                  env_extra={"PYTHONPATH": str(broken)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("no loss plot: matplotlib cannot be imported") == 1  # said once, not at every evaluation
    assert sorted(step_losses(r.stdout)) == [0, 1, 2] and not (tmp_path / "nomatplotlib" / "loss.png").exists()

