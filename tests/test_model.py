"""model.py: shapes, initialisation, Hugging Face's GPT-2 as the oracle, generation."""

import math

import pytest
import torch
from torch.nn import functional as F

from conftest import tiny_model
from machinery.huggingface import hf_to_our_state_dict
from model import GPT, PRETRAINED, GPTConfig, pretrained_config
from machinery.speed import TrainingLoss, chunked_cross_entropy


# ---------------------------------------------------------------------------
# Hugging Face as the oracle


def test_matches_hugging_face_logits_and_loss(hf_dir):
    from transformers import GPT2LMHeadModel

    theirs = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ours = GPT.from_pretrained(hf_dir).eval()
    assert ours.config.vocab_size == 1000 and ours.config.block_size == 64
    idx = torch.randint(0, 1000, (3, 64), generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 1000, (3, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_logits = theirs(idx).logits
        our_logits, our_loss = ours(idx, targets)
        ref_loss = torch.nn.functional.cross_entropy(ref_logits.view(-1, 1000), targets.view(-1))
        last_logits, no_loss = ours(idx)
    assert (our_logits - ref_logits).abs().max().item() < 1e-4
    assert abs(our_loss.item() - ref_loss.item()) < 1e-5
    with torch.no_grad():  # the path training takes: the chunked loss from the hidden states
        assert abs(TrainingLoss(ours, chunked=True)(idx, targets).item() - ref_loss.item()) < 1e-5
    # without targets only the last position is computed, and it is the same
    assert no_loss is None and last_logits.shape == (3, 1, 1000)
    assert (last_logits[:, 0] - ref_logits[:, -1]).abs().max().item() < 1e-4


def test_hugging_face_shift_convention(hf_dir):
    """HF's labels= shifts by one inside the model; ours takes targets already shifted."""
    from transformers import GPT2LMHeadModel

    theirs = GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ours = GPT.from_pretrained(hf_dir).eval()
    idx = torch.randint(0, 1000, (2, 33), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = theirs(idx, labels=idx).loss
        _, loss = ours(idx[:, :-1], idx[:, 1:])
    assert abs(ref.item() - loss.item()) < 1e-5


def test_from_pretrained_overrides_dropout_only(hf_dir):
    assert GPT.from_pretrained(hf_dir, dropout=0.2).config.dropout == 0.2
    assert GPT.from_pretrained(hf_dir, attn_dropout=False).config.attn_dropout is False
    with pytest.raises(ValueError, match="only override dropout and attn_dropout"):
        GPT.from_pretrained(hf_dir, n_layer=3)


def test_from_pretrained_checks_shapes():
    ours = tiny_model().state_dict()
    theirs = {k: v.clone() for k, v in ours.items()}
    for k in theirs:  # Hugging Face stores these four transposed (Conv1D)
        if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            theirs[k] = theirs[k].t()
    assert torch.equal(hf_to_our_state_dict(theirs, ours)["transformer.h.0.mlp.c_fc.weight"],
                       ours["transformer.h.0.mlp.c_fc.weight"])
    theirs["transformer.wpe.weight"] = torch.zeros(5, 32)
    with pytest.raises(ValueError, match="transformer.wpe.weight"):
        hf_to_our_state_dict(theirs, ours)


@pytest.mark.parametrize(
    "name, n_layer, n_head, n_embd",
    [("gpt2", 12, 12, 768), ("gpt2-medium", 24, 16, 1024), ("gpt2-large", 36, 20, 1280), ("gpt2-xl", 48, 25, 1600)],
)
def test_pretrained_names_map_to_shapes(name, n_layer, n_head, n_embd):
    config = pretrained_config(name)
    assert (config.n_layer, config.n_head, config.n_embd) == (n_layer, n_head, n_embd)
    assert (config.vocab_size, config.block_size, config.bias) == (50257, 1024, True)
    assert set(PRETRAINED) == {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}


# ---------------------------------------------------------------------------
# Structure and initialisation


def test_weight_tying_is_one_tensor():
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = 123.0
    assert model.lm_head.weight[0, 0].item() == 123.0


def test_loss_at_init_is_uniform_guess():
    model = tiny_model(vocab_size=50304, n_embd=64, block_size=64)
    idx, targets = torch.randint(0, 50304, (2, 4, 64))
    _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(50304)) < 0.3


def test_residual_projections_get_smaller_init():
    model = tiny_model(n_layer=8, n_embd=256, n_head=4)
    expected = 0.02 / math.sqrt(2 * 8)
    assert abs(model.transformer.h[0].attn.c_proj.weight.std().item() - expected) < 0.1 * expected
    assert abs(model.transformer.h[0].mlp.c_proj.weight.std().item() - expected) < 0.1 * expected
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002


def expected_params(n_layer, n_embd, vocab_size, block_size, non_embedding):
    per_block = 12 * n_embd**2 + 13 * n_embd  # qkv + proj + 2 MLP matrices, their biases, 2 LayerNorms
    n = vocab_size * n_embd + n_layer * per_block + 2 * n_embd  # tied embeddings, blocks, ln_f
    return n if non_embedding else n + block_size * n_embd


@pytest.mark.parametrize(
    "n_layer, n_head, n_embd, block_size",
    [(4, 4, 256, 256), (6, 6, 384, 256), (12, 12, 768, 1024)],  # tiny, small (default), GPT-2
)
def test_parameter_counts_match_formula(n_layer, n_head, n_embd, block_size):
    with torch.device("meta"):  # shapes only, no memory
        model = GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size))
    for non_embedding in (True, False):
        assert model.num_params(non_embedding) == expected_params(n_layer, n_embd, 50304, block_size, non_embedding)


def test_no_bias_option():
    model = tiny_model(bias=False)
    assert all(not name.endswith(".bias") for name, _ in model.named_parameters())
    _, loss = model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    assert torch.isfinite(loss)


def test_dropout_only_in_training():
    model = tiny_model(dropout=0.5)
    idx = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        a, b = model(idx, idx)[0], model(idx, idx)[0]
        model.train()
        c = model(idx, idx)[0]
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("attn_dropout", [True, False])
def test_attn_dropout_false_drops_nothing_inside_attention(attn_dropout):
    """With attn_dropout=False, attention in training gives what it gives in evaluation,
    before the dropout on its output (the residual stream), which stays."""
    attention = tiny_model(dropout=0.5, attn_dropout=attn_dropout).transformer.h[0].attn
    attention.resid_dropout = torch.nn.Identity()  # leave only the attention weights' dropout
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        evaluated = attention(x)
        attention.train()
        trained = attention(x)
    assert torch.allclose(trained, evaluated, atol=1e-6) == (not attn_dropout)


# ---------------------------------------------------------------------------
# Generation


def test_generate_shapes_and_long_prompts():
    model = tiny_model()
    out = model.generate(torch.zeros(3, 5, dtype=torch.long), 7)
    assert out.shape == (3, 12)
    long_prompt = torch.randint(0, 100, (2, 50))  # longer than block_size=32
    out = model.generate(long_prompt, 40, top_k=5)
    assert out.shape == (2, 90) and torch.equal(out[:, :50], long_prompt)


def test_temperature_zero_is_repeated_argmax():
    model = tiny_model()
    idx = torch.randint(0, 100, (2, 6))
    out = model.generate(idx, 10, temperature=0)
    expected = idx
    for _ in range(10):
        logits, _ = model(expected[:, -32:])
        expected = torch.cat((expected, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(out, expected)


def test_same_seed_same_tokens():
    model = tiny_model()
    idx = torch.zeros(4, 1, dtype=torch.long)

    def sample(seed):
        return model.generate(idx, 20, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(7), sample(7))
    assert not torch.equal(sample(7), sample(8))


def test_top_k_restricts_and_clamps():
    model = tiny_model()
    idx = torch.zeros(1, 3, dtype=torch.long)
    logits, _ = model(idx)
    allowed = set(torch.topk(logits[0, -1], 3).indices.tolist())
    for seed in range(20):
        token = model.generate(idx, 1, top_k=3, generator=torch.Generator().manual_seed(seed))[0, -1].item()
        assert token in allowed
    # top_k larger than the vocabulary is clamped instead of failing
    assert model.generate(idx, 2, top_k=10_000).shape == (1, 5)


# ---------------------------------------------------------------------------
# The chunked loss


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_cross_entropy_equals_plain_loss_and_gradients(chunk_size):
    torch.manual_seed(0)
    x = torch.randn(40, 16, requires_grad=True)
    weight = torch.randn(100, 16, requires_grad=True)
    targets = torch.randint(0, 100, (40,))
    targets[::5] = -1  # ignored positions

    plain = torch.nn.functional.cross_entropy(x @ weight.t(), targets, ignore_index=-1)
    gx, gw = torch.autograd.grad(plain * 3.0, (x, weight))  # an outer factor tests backward's scaling
    chunked = chunked_cross_entropy(x, weight, targets, chunk_size)
    cx, cw = torch.autograd.grad(chunked * 3.0, (x, weight))
    assert torch.allclose(chunked, plain, atol=1e-6)
    assert torch.allclose(cx, gx, atol=1e-6) and torch.allclose(cw, gw, atol=1e-6)


def test_training_loss_chunked_matches_plain_loss():
    """The chunked training loss gives the model's own loss and the same gradients for
    every parameter, the tied embedding included."""
    model = tiny_model()
    idx, targets = torch.randint(0, 100, (2, 3, 32))
    logits, plain = model(idx, targets)
    plain_grads = torch.autograd.grad(plain, list(model.parameters()))
    lean = TrainingLoss(model, chunked=True)(idx, targets)
    lean_grads = torch.autograd.grad(lean, list(model.parameters()))
    assert logits.shape == (3, 32, 100)
    assert TrainingLoss(model, chunked=False)(idx, targets).item() == plain.item()
    assert abs(plain.item() - lean.item()) < 1e-6
    for (name, _), a, b in zip(model.named_parameters(), plain_grads, lean_grads):
        assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_chunked_cross_entropy_without_autograd_equals_plain_loss(autocast):
    torch.manual_seed(0)
    x, weight = torch.randn(300, 16), torch.randn(100, 16)
    targets = torch.randint(0, 100, (300,))
    targets[::7] = -1
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), context:
        plain = F.cross_entropy((x @ weight.t()).float(), targets, ignore_index=-1)
        chunked = chunked_cross_entropy(x, weight, targets, chunk_size=64)
    assert chunked.dtype == torch.float32 and not chunked.requires_grad
    assert abs(chunked.item() - plain.item()) < 1e-5
