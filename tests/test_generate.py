"""Generation: the key/value cache gives the same tokens as recomputing everything,
top-p keeps the right tokens, samples stop where they should, streaming prints the
same text as a batch."""

import pytest
import torch

import sample
from conftest import padding_favourite, run_script, tiny_model
from machinery.tokenizer import gpt2, train_bpe
from model import draw_token, keep_top_p, next_token_distribution

SHAPES = [
    dict(block_size=16, vocab_size=64, n_layer=1, n_head=1, n_embd=8),
    dict(block_size=32, vocab_size=100, n_layer=2, n_head=4, n_embd=32),
    dict(block_size=24, vocab_size=50, n_layer=3, n_head=2, n_embd=16, bias=False),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("prompt_length", [1, 5, 40])  # 40 is longer than every block_size here
def test_cache_gives_the_same_greedy_tokens(shape, prompt_length):
    model = tiny_model(**shape)
    idx = torch.randint(0, shape["vocab_size"], (3, prompt_length), generator=torch.Generator().manual_seed(1))
    new = 2 * shape["block_size"]  # runs past block_size, where the window starts to slide
    with_cache = model.generate(idx, new, temperature=0, use_cache=True)
    without = model.generate(idx, new, temperature=0, use_cache=False)
    assert torch.equal(with_cache, without)


@pytest.mark.parametrize("shape", SHAPES)
def test_cache_gives_the_same_sampled_tokens(shape):
    model = tiny_model(**shape)
    idx = torch.zeros(2, 3, dtype=torch.long)

    def run(use_cache):
        generators = [torch.Generator().manual_seed(s) for s in (5, 6)]
        return model.generate(idx, 40, temperature=1.0, top_k=10, top_p=0.9, generator=generators, use_cache=use_cache)

    assert torch.equal(run(True), run(False))


def test_cache_logits_match_full_forward():
    model = tiny_model(**SHAPES[1])
    idx = torch.randint(0, 100, (2, 20))
    cache = model.new_kv_cache()
    model(idx[:, :12], kv_cache=cache)
    for t in range(12, 20):
        step_logits, _ = model(idx[:, t : t + 1], kv_cache=cache)
        full_logits, _ = model(idx[:, : t + 1])
        assert torch.allclose(step_logits, full_logits, atol=1e-5)
    assert cache[0].length == 20 and cache[0].k.shape == (2, 4, 32, 8)


def test_cache_in_bfloat16_tracks_the_full_forward():
    """sample.py's default where the CPU has native bf16: weights and cache in bfloat16.
    Rounding differs between one token at a time and the whole context at once, so the
    logits agree to bf16's precision (8 bits of mantissa), not exactly."""
    model = tiny_model(**SHAPES[1]).to(torch.bfloat16)
    idx = torch.randint(0, 100, (2, 20), generator=torch.Generator().manual_seed(3))
    cache = model.new_kv_cache()
    model(idx[:, :12], kv_cache=cache)
    assert cache[0].k.dtype == torch.bfloat16
    for t in range(12, 20):
        step_logits, _ = model(idx[:, t : t + 1], kv_cache=cache)
        full_logits, _ = model(idx[:, : t + 1])
        assert step_logits.dtype == torch.bfloat16
        assert torch.allclose(step_logits.float(), full_logits.float(), atol=0.03, rtol=0.02)
    out = model.generate(idx[:, :5], 30, top_k=10, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 35) and out.max() < 100


def test_a_row_is_the_same_alone_or_in_a_batch():
    model = tiny_model(**SHAPES[1])
    idx = torch.zeros(3, 2, dtype=torch.long)
    batch = model.generate(idx, 15, generator=[torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    alone = model.generate(idx[:1], 15, generator=[torch.Generator().manual_seed(2)])
    assert torch.equal(batch[1:2], alone)


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    probs = torch.tensor([[0.1, 0.5, 0.1, 0.3]])
    assert torch.allclose(keep_top_p(probs, 0.7), torch.tensor([[0.0, 0.625, 0.0, 0.375]]))
    assert torch.allclose(keep_top_p(probs, 0.5), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))  # 0.5 alone reaches 0.5
    kept = keep_top_p(probs, 0.85)  # 0.5 + 0.3 = 0.8 is short of 0.85: one of the 0.1s joins
    assert (kept > 0).sum() == 3 and torch.isclose(kept.sum(), torch.tensor(1.0))
    assert torch.allclose(keep_top_p(probs, 1.0), probs)


def test_sampling_respects_top_p_and_greedy():
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.1, 0.3]]))
    drawn = {draw_token(next_token_distribution(logits, top_p=0.7), generator=torch.Generator().manual_seed(s)).item() for s in range(50)}
    assert drawn == {1, 3}
    assert draw_token(next_token_distribution(logits, temperature=0), temperature=0).item() == 1


def test_plain_sampling_draws_from_the_temperature_and_top_k_softmax():
    """A model's sample, step by step as written out here: the last position's logits
    over the window, divided by the temperature, all but the k best masked, a softmax and
    one draw from the seeded generator. Splitting the rule in two for --explain must not
    change a single token."""
    model = tiny_model(**SHAPES[1])
    with torch.no_grad():
        model.lm_head.weight.mul_(10)  # logits spread over a few units, so the temperature and top_k matter
    idx = torch.randint(0, 100, (8, 5), generator=torch.Generator().manual_seed(3))
    sampled = model.generate(idx, 60, temperature=0.8, top_k=5, generator=torch.Generator().manual_seed(9))
    generator, expected = torch.Generator().manual_seed(9), idx
    with torch.no_grad():
        for _ in range(60):
            logits = model(expected[:, -model.config.block_size:])[0][:, -1, :] / 0.8  # (8, vocab_size)
            logits[logits < torch.topk(logits, 5).values[:, [-1]]] = float("-inf")
            token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)
            expected = torch.cat([expected, token], dim=1)
    assert torch.equal(sampled, expected)


# ---------------------------------------------------------------------------
# Stopping, in sample.py's generate, with a model that plays back given tokens


class Playback:
    """Stands in for GPT: generate_stream yields the given tokens, one row each."""

    def __init__(self, *rows):
        self.rows = rows

    def generate_stream(self, idx, max_new_tokens, **kwargs):
        for column in list(zip(*self.rows))[:max_new_tokens]:
            yield torch.tensor(column)[:, None], None


def run_generate(model, stop=None, stop_at_eot=True, max_new_tokens=10):
    tok = gpt2()
    cfg = sample.Config(device="cpu", stop=stop, stop_at_eot=stop_at_eot, max_new_tokens=max_new_tokens)
    prompt = "ROMEO:"
    samples, n_tokens = sample.generate(model, tok, sample.encode_prompt(tok, prompt), prompt, [None] * len(model.rows), cfg)
    return [s.text for s in samples], n_tokens


def test_stops_at_end_of_text():
    enc = gpt2().encoding
    a, b = enc.encode(" Good night"), enc.encode(" Parting is such")
    first = a + [enc.eot_token] + enc.encode(" after")
    second = b + enc.encode(" sweet sorrow")
    padding = len(second) - len(first)
    assert padding > 0
    rows = (first + [enc.eot_token] * padding, second)
    texts, _ = run_generate(Playback(*rows))
    assert texts == ["ROMEO: Good night", "ROMEO: Parting is such sweet sorrow"]
    texts, _ = run_generate(Playback(*rows), stop_at_eot=False)
    assert texts[0] == "ROMEO: Good night<|endoftext|> after" + "<|endoftext|>" * padding


def test_stops_after_a_stop_string():
    enc = gpt2().encoding
    tokens = enc.encode(" Good night, good night!\n\nJULIET:\nParting")
    texts, n = run_generate(Playback(tokens), stop="\n\n", max_new_tokens=50)
    assert texts == ["ROMEO: Good night, good night!\n\n"]
    assert n < len(tokens)  # generation ended early
    # a stop string inside the prompt does not count
    texts, _ = run_generate(Playback(enc.encode(" soft")), stop="ROMEO")
    assert texts == ["ROMEO: soft"]


@pytest.mark.parametrize("temperature", [1.0, 0])
def test_padding_ids_are_never_sampled(temperature):
    model = padding_favourite(n_vocab=100, rows=128)
    idx = torch.zeros(2, 3, dtype=torch.long)

    def new_tokens(**kwargs):
        out = model.generate(idx, 20, temperature=temperature, generator=torch.Generator().manual_seed(0), **kwargs)
        return out[:, 3:]

    assert new_tokens().min() >= 100  # without n_vocab the padding ids win
    assert new_tokens(n_vocab=100).max() < 100


def test_sample_py_never_decodes_a_padding_id_of_a_small_vocabulary():
    tok = train_bpe(["To be, or not to be, that is the question.\n" * 20], 300)
    assert tok.n_vocab < 320
    model = padding_favourite(n_vocab=tok.n_vocab, rows=320)  # its ids, padded to a multiple of 64
    cfg = sample.Config(device="cpu", stop_at_eot=False, max_new_tokens=20)
    prompt = "To be"
    (first,), n = sample.generate(model, tok, sample.encode_prompt(tok, prompt), prompt, [torch.Generator().manual_seed(0)], cfg)
    assert n == 20 and first.text.startswith(prompt) and len(first.text) > len(prompt)  # token_bytes of a padding id would raise


def test_endoftext_in_a_prompt_separates_documents():
    tok = gpt2()
    assert sample.encode_prompt(tok, "<|endoftext|>") == [tok.eot]
    assert sample.encode_prompt(tok, "a<|endoftext|>b") == [*tok.encode("a"), tok.eot, *tok.encode("b")]


# ---------------------------------------------------------------------------
# sample.py end to end


@pytest.mark.slow
def test_stream_prints_the_same_text(ckpt_path):
    args = ("--ckpt", ckpt_path, "--prompt", "ROMEO:", "--num_samples", 3, "--max_new_tokens", 20, "--dtype", "float32")
    batch = run_script("sample.py", *args)
    streamed = run_script("sample.py", *args, "--stream")
    assert batch.returncode == 0 and streamed.returncode == 0, batch.stderr + streamed.stderr
    assert streamed.stdout == batch.stdout and batch.stdout.count("> ROMEO:") == 3
    assert "tokens/sec" in batch.stderr and "tokens/sec" in streamed.stderr
    stop = ("--stop", "e")
    assert run_script("sample.py", *args, *stop, "--stream").stdout == run_script("sample.py", *args, *stop).stdout


@pytest.mark.slow
def test_cache_and_no_cache_print_the_same(ckpt_path):
    args = ("--ckpt", ckpt_path, "--num_samples", 2, "--max_new_tokens", 40, "--dtype", "float32", "--temperature", 0)
    with_cache, without = run_script("sample.py", *args), run_script("sample.py", *args, "--kv_cache", "False")
    assert with_cache.returncode == 0 and without.returncode == 0, with_cache.stderr + without.stderr
    assert with_cache.stdout == without.stdout and with_cache.stdout.count("> ") == 2


@pytest.mark.slow
def test_help_lists_the_flags():
    out = run_script("sample.py", "--help").stdout
    for flag in ("--top_p", "--stop_at_eot", "--stop", "--stream", "--dtype", "--num_samples", "--seed", "--kv_cache"):
        assert flag in out
