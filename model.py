"""
A GPT-2 language model in one file, written to be read top to bottom.

    GPTConfig            the hyperparameters that fix the model's shape
    CausalSelfAttention, MLP, Block   the pieces of one transformer block
    GPT                  embeddings -> n_layer blocks -> final LayerNorm -> logits, GPT-2's
                         weights in (from_pretrained) and out (save_pretrained), generation
    PRETRAINED           the shapes of OpenAI's four GPT-2 models
    KVCache, next_token_distribution, draw_token   generation's cache, distribution, draw

Parameter names follow OpenAI's GPT-2 checkpoint (transformer.h.0.attn.c_attn...),
so state dicts move between this file, nanoGPT and Hugging Face without renaming.
Nothing here is about training, speed or files: machinery/optimizer.py holds the
optimizers, machinery/speed.py the speed-ups (among them a chunked loss that training
asks for by name), checkpoint.py the files, and machinery/huggingface.py the mapping
between these weights and Hugging Face's, which from_pretrained and save_pretrained use.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence the model can see (number of positions)
    vocab_size: int = 50304  # GPT-2's 50257 tokens, padded up to a multiple of 64 for speed
    n_layer: int = 12  # number of transformer blocks
    n_head: int = 12  # attention heads per block
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # 0.0 for pretraining; try 0.1+ when fine-tuning on little data
    attn_dropout: bool = True  # dropout on the attention weights too, as GPT-2; False keeps the CPU's fused attention kernel
    bias: bool = True  # biases in Linear and LayerNorm layers, as in GPT-2


# ----------------------------------------------------------------------------
# The building blocks


class CausalSelfAttention(nn.Module):
    """Every position looks at itself and the positions before it, never after."""

    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        # one matrix computes query, key and value for all heads at once
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        # dropout on the attention weights: on a CPU it needs the (T, T) matrix, which the fused kernel never stores
        self.attn_dropout = config.dropout if config.attn_dropout else 0.0
    def forward(self, x, kv_cache=None):
        B, T, C = x.size()  # batch, time (sequence length), channels (n_embd)
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        # split the channels into heads: each head attends on its own
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            assert kv_cache.length == 0 or T == 1, "with a cache: the prompt at once, then one token at a time"
            k, v = kv_cache.append(k, v)  # every position so far: (B, nh, past + T, hs)
        dropout_p = self.attn_dropout if self.training else 0.0
        # softmax(q k^T / sqrt(hs)) v with a causal mask; PyTorch picks a fused
        # ("flash") kernel where it has one, so the (T, T) matrix is never stored.
        # A single new token (T == 1) may look at every cached position: no mask.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, dropout_p=dropout_p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(y))

class MLP(nn.Module):
    """Each position on its own: widen 4x, GELU, project back."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # the approximation GPT-2 was trained with
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None):
        # the residual stream x is only ever added to, which keeps gradients flowing
        x = x + self.attn(self.ln_1(x), kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


# ----------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
                wpe=nn.Embedding(config.block_size, config.n_embd),  # position embeddings
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the matrix that turns a token into a vector also turns the
        # final vector back into a score per token. One tensor, two uses; this
        # saves vocab_size * n_embd parameters and is what GPT-2 does.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # Each block adds two projections (attention, MLP) to the residual stream,
        # so its variance grows with depth. GPT-2 scales those two projections'
        # initial weights by 1/sqrt(2 * n_layer) to keep the sum's size steady.
        for block in self.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding=True):
        """Number of parameters. Position embeddings are left out by default: they
        are a lookup, not compute. Token embeddings are counted, because weight tying
        makes them the lm_head as well (and a tied tensor is counted once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    def hidden_states(self, idx, kv_cache=None):
        """The final LayerNorm's output for token ids idx (B, T): (B, T, C), what the
        lm_head turns into logits. kv_cache (from new_kv_cache) holds the keys and
        values of earlier tokens, so idx holds only the new ones."""
        B, T = idx.size()
        past = kv_cache[0].length if kv_cache is not None else 0  # tokens already in the cache
        assert past + T <= self.config.block_size, f"{past + T} positions, block_size is {self.config.block_size}"
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv_cache[i] if kv_cache is not None else None)  # (B, T, C)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, kv_cache=None):
        """(logits, loss) for token ids idx (B, T). With targets (B, T), the logits of
        every position and the mean cross-entropy over them (targets of -1 are left out).
        Without, only the last position's logits and no loss (see below)."""
        x = self.hidden_states(idx, kv_cache)  # (B, T, C)
        if targets is None:
            # Generating needs only the next token, so only the last position's logits
            # are computed. The lm_head is the largest matrix product in a small model
            # (n_embd x vocab_size per position): skipping T-1 of them saves most of it.
            return self.lm_head(x[:, [-1], :]), None  # (B, 1, vocab_size); [-1] keeps the time dim
        logits = self.lm_head(x)  # (B, T, vocab_size)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    # ------------------------------------------------------------------------
    # OpenAI's GPT-2 weights

    @classmethod
    def from_pretrained(cls, name_or_path, local_files_only=False, **overrides):
        """A GPT with OpenAI's GPT-2 weights, through Hugging Face transformers: one of
        the four names in PRETRAINED (downloaded once into the Hugging Face cache;
        local_files_only=True never downloads) or a local directory holding a GPT-2
        model saved with save_pretrained. Only `dropout` and `attn_dropout` may be
        overridden; the shape comes from the weights."""
        from transformers import GPT2LMHeadModel

        from machinery.huggingface import hf_to_our_state_dict

        unknown = set(overrides) - {"dropout", "attn_dropout"}
        if unknown:
            raise ValueError(f"from_pretrained can only override dropout and attn_dropout, not {sorted(unknown)}")
        hf_model = GPT2LMHeadModel.from_pretrained(name_or_path, local_files_only=local_files_only)
        hf_config = hf_model.config
        config = GPTConfig(block_size=hf_config.n_positions, vocab_size=hf_config.vocab_size, n_layer=hf_config.n_layer,
                           n_head=hf_config.n_head, n_embd=hf_config.n_embd, bias=True, **overrides)  # biases everywhere
        model = cls(config)
        model.load_state_dict(hf_to_our_state_dict(hf_model.state_dict(), model.state_dict()))
        return model

    def save_pretrained(self, directory, tokenizer=None):
        """Write this model as a Hugging Face GPT-2 directory, the mirror of from_pretrained,
        with the files of tokenizer, the one it was trained with (GPT-2's when not given):
        transformers then loads it as it is. The work is machinery/huggingface.py's."""
        from machinery.huggingface import export

        export(self, directory, tokenizer)

    # ------------------------------------------------------------------------
    # Generation

    def new_kv_cache(self):
        return [KVCache(self.config.block_size) for _ in self.transformer.h]

    @torch.no_grad()
    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        generator=None, use_cache=True, n_vocab=None):
        """Yield the next token of every row of idx (B, T), as a (B, 1) tensor, with the
        distribution it was drawn from (B, n_vocab), which `sample.py --explain` shows,
        max_new_tokens times. See next_token_distribution and draw_token for temperature,
        top_k, top_p and generator.
        n_vocab: how many ids the tokenizer has (None: as many as the model has rows); the
        rows beyond them only pad the vocabulary, stand for no text and are never picked.
        With the cache, only the newest token goes through the model at each step.
        The model sees at most block_size tokens; once the sequence is longer, every
        step processes the last block_size tokens afresh (their positions have all
        shifted by one), exactly as without the cache."""
        block_size = self.config.block_size
        cache = None
        for _ in range(max_new_tokens):
            if cache is not None and cache[0].length < block_size:
                logits, _ = self(idx[:, -1:], kv_cache=cache)  # the newest token only
            else:  # the first step, or no cache, or a full one
                cache = self.new_kv_cache() if use_cache else None
                logits, _ = self(idx[:, -block_size:], kv_cache=cache)
            probs = next_token_distribution(logits[:, -1, :n_vocab], temperature, top_k, top_p)  # (B, n_vocab)
            idx_next = draw_token(probs, temperature, generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
            yield idx_next, probs

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None, use_cache=True,
                 n_vocab=None):
        """idx (B, T) followed by max_new_tokens generated tokens: (B, T + max_new_tokens)."""
        steps = self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache, n_vocab)
        return torch.cat([idx, *(token for token, _ in steps)], dim=1)


# ----------------------------------------------------------------------------
# The shapes of OpenAI's four GPT-2 models. All have 50257 tokens and 1024 positions.
GPT2_VOCAB_SIZE = 50257
PRETRAINED = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M parameters
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}


def pretrained_config(name):
    """The GPTConfig of one of OpenAI's GPT-2 models, without downloading anything."""
    return GPTConfig(block_size=1024, vocab_size=GPT2_VOCAB_SIZE, bias=True, **PRETRAINED[name])


# ----------------------------------------------------------------------------
# What generation needs: the cache, and the rule that picks each next token


class KVCache:
    """The keys and values of every token seen so far, for one attention layer.

    Generating token t+1 needs the keys and values of tokens 1..t in every layer;
    without a cache they are computed again for every new token. With it, the
    prompt is processed once, and each new token computes only its own key and
    value, appends them here, and attends to everything stored."""

    def __init__(self, max_length):
        self.max_length = max_length  # the model's block_size
        self.k = self.v = None  # (B, nh, max_length, hs), allocated at the first append
        self.length = 0  # positions filled so far

    def append(self, k, v):
        """Store k and v (B, nh, T, hs); return the keys and values of all positions so far."""
        B, nh, T, hs = k.shape
        if self.k is None:
            self.k, self.v = k.new_zeros(B, nh, self.max_length, hs), v.new_zeros(B, nh, self.max_length, hs)
        self.k[:, :, self.length : self.length + T] = k
        self.v[:, :, self.length : self.length + T] = v
        self.length += T
        return self.k[:, :, : self.length], self.v[:, :, : self.length]  # (B, nh, length, hs)


def next_token_distribution(logits, temperature=1.0, top_k=None, top_p=None):
    """The probabilities (B, vocab_size), in float32, that the next token is drawn from.
    The logits are divided by the temperature (below 1: safer, above 1: wilder), top_k
    keeps only the k most likely tokens, top_p only the most likely ones that together
    reach probability p. temperature=0 is greedy: there is nothing to draw from, and
    this is the plain softmax, whose most likely token draw_token picks."""
    logits = logits.float()
    if temperature == 0:
        return F.softmax(logits, dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth_best = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    probs = F.softmax(logits, dim=-1)  # (B, vocab_size)
    if top_p is not None and top_p < 1.0:
        probs = keep_top_p(probs, top_p)
    return probs


def draw_token(probs, temperature=1.0, generator=None):
    """One token id per row of probs (B, vocab_size), as (B, 1): the most likely at
    temperature 0, else a random draw. generator: a seeded torch.Generator gives the
    same tokens every time; a list of them, one per row, makes each row's draw its own,
    so a sample comes out the same alone or in a batch."""
    if temperature == 0:
        return probs.argmax(dim=-1, keepdim=True)
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, generator)])
    return torch.multinomial(probs, num_samples=1, generator=generator)


def keep_top_p(probs, p):
    """Nucleus sampling: keep the smallest set of most likely tokens whose probabilities
    add up to at least p, zero the rest, and renormalise. probs: (B, vocab_size)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of all more likely tokens
    sorted_probs[mass_before >= p] = 0.0  # the tokens above already reach p: this one is not needed
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(dim=-1, keepdim=True)
