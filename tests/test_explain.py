"""explain.py, what sample.py --explain shows: the distributions in the table are the
sampler's own, the logit lens ends at the model's prediction, the picture is a PNG,
and a plain run's text is unchanged."""

import re
import sys

import pytest
import torch

from machinery import explain
import sample
from conftest import run_script, tiny_model
from model import draw_token, next_token_distribution
from machinery.tokenizer import train_bpe

SHAKESPEARE = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n" * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe([SHAKESPEARE], 300)


def small_model(tok, **shape):
    return tiny_model(vocab_size=320, **shape)  # the tokenizer's ids, padded to a multiple of 64


def sample_recorded(model, tok, **settings):
    """The first sample of sample.py's generate, and the distributions it recorded."""
    cfg = sample.Config(device="cpu", num_samples=2, max_new_tokens=12, stop_at_eot=False, **settings)
    prompt_ids = sample.encode_prompt(tok, "ROMEO:")
    generators = [torch.Generator().manual_seed(cfg.seed + i) for i in range(cfg.num_samples)]
    distributions = []
    samples, _ = sample.generate(model, tok, prompt_ids, "ROMEO:", generators, cfg,
                                 on_distribution=lambda probs: distributions.append(probs[0]))
    return cfg, prompt_ids, samples[0].tokens, distributions


@pytest.mark.parametrize("settings", [dict(), dict(temperature=0.8, top_k=20, top_p=0.9)], ids=["default", "top_k_top_p"])
def test_the_table_shows_the_distribution_the_sampler_drew_from(tok, settings, capsys, tmp_path):
    model = small_model(tok)
    cfg, prompt_ids, tokens, distributions = sample_recorded(model, tok, explain_png=str(tmp_path / "x.png"), **settings)
    assert len(tokens) == len(distributions) == 12
    generator = torch.Generator().manual_seed(cfg.seed)  # the first sample's draws, replayed
    for i, (probs, token) in enumerate(zip(distributions, tokens)):
        assert draw_token(probs[None], cfg.temperature, generator).item() == token
        with torch.no_grad():  # the same distribution, from the whole sequence so far without the cache
            logits = model(torch.tensor([prompt_ids + tokens[:i]]))[0][:, -1, : tok.n_vocab]
        expected = next_token_distribution(logits, cfg.temperature, cfg.top_k or None, cfg.top_p)[0]
        assert torch.allclose(probs, expected, atol=1e-6)
    explain.explain(model, tok, prompt_ids, tokens, distributions, cfg)
    rows = re.findall(r"^ +(\d+) +.+? +(\d\.\d{4}) +(\d+) +(\d+\.\d\d) bits", capsys.readouterr().out, re.M)
    assert len(rows) == 12
    for (number, p, rank, entropy), probs, token in zip(rows, distributions, tokens):
        choice = explain.token_choice(probs, token)
        assert float(p) == pytest.approx(probs[token].item(), abs=5e-5)
        assert int(rank) == choice.rank == 1 + (probs > probs[token]).sum().item()
        assert float(entropy) == pytest.approx(-(probs[probs > 0] * probs[probs > 0].log2()).sum().item(), abs=5e-3)
        assert [t for t, _ in choice.top] == probs.topk(explain.TOP).indices.tolist()


def test_greedy_shows_the_plain_softmax_and_rank_one(tok, capsys, tmp_path):
    model = small_model(tok)
    cfg, prompt_ids, tokens, distributions = sample_recorded(model, tok, temperature=0, explain_png=str(tmp_path / "x.png"))
    for i, (probs, token) in enumerate(zip(distributions, tokens)):
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids + tokens[:i]]))[0][0, -1, : tok.n_vocab]
        assert torch.allclose(probs, logits.softmax(dim=-1), atol=1e-6)
        assert token == logits.argmax().item() and explain.token_choice(probs, token).rank == 1
    explain.explain(model, tok, prompt_ids, tokens, distributions, cfg)
    out = capsys.readouterr().out
    assert "greedy (temperature 0)" in out
    assert re.findall(r"^ +\d+ +.+? +\d\.\d{4} +(\d+) ", out, re.M) == ["1"] * 12


def test_the_last_logit_lens_row_is_the_models_prediction():
    model = tiny_model(n_layer=3)
    window = torch.randint(0, 100, (20,))
    inside = explain.look_inside(model, window)
    with torch.no_grad():
        logits, _ = model(window[None])  # (1, 1, vocab_size): the last position
    assert inside.lens.shape == (3, 100) and inside.logits.shape == (20, 100)
    assert torch.allclose(inside.lens[-1], logits[0, 0], atol=1e-5)
    assert torch.allclose(inside.logits[-1], logits[0, 0], atol=1e-5)
    assert not torch.allclose(inside.lens[0], logits[0, 0], atol=1e-3)  # an earlier block predicts otherwise
    assert inside.attention.shape == (3, 2, 20, 20)


def test_a_bfloat16_model_is_explained_in_float32_and_left_as_it_was():
    model = tiny_model().to(torch.bfloat16)
    inside = explain.look_inside(model, torch.randint(0, 100, (10,)))
    assert inside.logits.dtype == inside.attention.dtype == torch.float32
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not any(block.attn.c_attn._forward_hooks for block in model.transformer.h)


def test_the_attention_weights_are_those_the_fused_kernel_applies():
    """attention_weights, from a layer's queries and keys, times its values, is what the
    layer's fused kernel hands its output projection; causal, and each row sums to one."""
    model = tiny_model(n_layer=1, n_head=4)
    attn = model.transformer.h[0].attn
    seen = {}
    attn.c_attn.register_forward_hook(lambda module, args, out: seen.update(qkv=out[0]))
    attn.c_proj.register_forward_hook(lambda module, args, out: seen.update(heads=args[0][0]))
    with torch.no_grad():
        model.hidden_states(torch.randint(0, 100, (1, 12)))
    weights = explain.attention_weights(seen["qkv"], n_head=4)  # (nh, T, T)
    v = seen["qkv"][:, 64:].view(12, 4, 8).transpose(0, 1)  # (nh, T, hs): n_embd 32, so values from column 64
    assert torch.allclose((weights @ v).transpose(0, 1).reshape(12, 32), seen["heads"], atol=1e-5)
    assert torch.all(weights.triu(diagonal=1) == 0) and torch.allclose(weights.sum(dim=-1), torch.ones(4, 12))


def test_a_prompt_longer_than_the_window(tok, capsys, tmp_path):
    model = small_model(tok)  # block_size 32
    prompt_ids = sample.encode_prompt(tok, SHAKESPEARE[:400])
    assert len(prompt_ids) > 40
    cfg = sample.Config(device="cpu", num_samples=1, explain_png=str(tmp_path / "x.png"))
    probs = torch.full((tok.n_vocab,), 1 / tok.n_vocab)
    explain.explain(model, tok, prompt_ids, [5, 6], [probs, probs], cfg)
    out = capsys.readouterr().out
    assert f"{len(prompt_ids) + 2 - 32} tokens before it are beyond the model's window" in out
    assert "no context" not in out


@pytest.mark.parametrize("n_layer, n_head", [(6, 6), (12, 12)], ids=["default_model", "gpt2_shape"])
def test_the_picture_is_a_png(tok, n_layer, n_head, tmp_path):
    import matplotlib.image

    model = small_model(tok, n_layer=n_layer, n_head=n_head, n_embd=12 * n_head)
    cfg, prompt_ids, tokens, distributions = sample_recorded(model, tok, explain_png=str(tmp_path / "out" / "x.png"))
    explain.explain(model, tok, prompt_ids, tokens, distributions, cfg)
    with open(cfg.explain_png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(cfg.explain_png).shape
    assert 1000 < width < 2000 and 1000 < height < 2200  # the same size, whatever the number of heads


def test_without_matplotlib_the_tables_still_print(tok, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    model = small_model(tok)
    cfg, prompt_ids, tokens, distributions = sample_recorded(model, tok, explain_png=str(tmp_path / "x.png"))
    explain.explain(model, tok, prompt_ids, tokens, distributions, cfg)
    out = capsys.readouterr().out
    assert out.count("no picture: matplotlib cannot be imported") == 1
    assert "Logit lens" in out and "the 5 most likely" in out
    assert not (tmp_path / "x.png").exists()


def test_a_picture_that_cannot_be_written_is_refused(tok, tmp_path):
    from machinery.cli import UsageError

    with pytest.raises(UsageError, match="must name a .png file"):
        sample.Config(explain_png=str(tmp_path / "x.jpg"))
    (tmp_path / "file").write_text("not a folder")
    model = small_model(tok)
    cfg, prompt_ids, tokens, distributions = sample_recorded(model, tok, explain_png=str(tmp_path / "file" / "x.png"))
    with pytest.raises(UsageError, match="cannot write the picture to .*give another --explain_png"):
        explain.explain(model, tok, prompt_ids, tokens, distributions, cfg)


# ---------------------------------------------------------------------------
# sample.py --explain end to end


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["batch", "stream"])
def test_explain_prints_the_text_of_a_plain_run(ckpt_path, tmp_path, stream):
    args = ["--ckpt", ckpt_path, "--prompt", "ROMEO:", "--num_samples", 2, "--max_new_tokens", 10, *(["--stream"] if stream else [])]
    plain = run_script("sample.py", *args)
    explained = run_script("sample.py", *args, "--explain", "--explain_png", tmp_path / "x.png")
    assert plain.returncode == 0 and explained.returncode == 0, plain.stderr + explained.stderr
    assert explained.stdout.startswith(plain.stdout)
    explanation = explained.stdout[len(plain.stdout) :]
    assert "sample 1 explained (of 2: --explain explains the first)" in explanation
    assert "the first token: no context" in explanation and "(the model's own prediction)" in explanation
    assert (tmp_path / "x.png").exists() and str(tmp_path / "x.png") in explanation


@pytest.mark.slow
def test_explain_a_hugging_face_directory(hf_dir, tmp_path):
    r = run_script("sample.py", "--init_from", hf_dir, "--prompt", "a b c", "--num_samples", 1, "--max_new_tokens", 5,
                   "--explain", "--explain_png", tmp_path / "x.png", "--temperature", 0)
    assert r.returncode == 0, r.stderr
    assert "sample 1 explained" in r.stdout and "of 1" not in r.stdout and "greedy" in r.stdout
    assert (tmp_path / "x.png").exists()
