"""
Why the model wrote what it wrote: what `python sample.py --explain` prints and draws.

    python sample.py --prompt "ROMEO:" --explain   # the samples, then the first one explained

    look_inside      one float32 forward pass over the final window: every position's
                     logits, the logit lens, every head's attention weights
    token_choice     one generated token against the distribution it was drawn from
    explain          prints the prompt token by token, a row per generated token and
                     the logit lens, and draws the picture (draw_attention)

sample.py generates exactly as it does without --explain, and records the distribution
the sampler drew each token of the first sample from (model.next_token_distribution).
The figures the sampler never computes come afterwards, from look_inside.
"""

import copy
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from machinery.cli import UsageError, describe_error, pyplot

TOP = 5  # most likely tokens shown per row


@dataclass
class Inside:
    """What one forward pass over a window of T tokens shows, on the CPU in float32."""

    logits: torch.Tensor  # (T, vocab_size): every position's prediction of the token after it
    lens: torch.Tensor  # (n_layer, vocab_size): the last position's prediction after each block
    attention: torch.Tensor  # (n_layer, n_head, T, T): how much each position looks at each earlier one


def look_inside(model, window):
    """Inside of the model for token ids window (T,), in float32 (a float32 copy of a
    model in bfloat16). The logit lens applies ln_f and the lm_head to each block's
    output, as if the model stopped there; after the last block it is the model's own
    prediction. The attention weights, which the fused kernel never stores, are computed
    again from each layer's queries and keys (attention_weights)."""
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()
    blocks = model.transformer.h
    block_outputs, qkvs = [], []  # each block's output at the last position (C,), and its (T, 3C) queries, keys, values
    hooks = [block.register_forward_hook(lambda module, args, out: block_outputs.append(out[0, -1])) for block in blocks]
    hooks += [block.attn.c_attn.register_forward_hook(lambda module, args, out: qkvs.append(out[0])) for block in blocks]
    try:
        with torch.no_grad():
            hidden = model.hidden_states(window[None])  # (1, T, C)
            logits = model.lm_head(hidden[0])  # (T, vocab_size)
            lens = model.lm_head(model.transformer.ln_f(torch.stack(block_outputs)))  # (n_layer, vocab_size)
            attention = torch.stack([attention_weights(qkv, model.config.n_head) for qkv in qkvs])  # (n_layer, nh, T, T)
    finally:
        for hook in hooks:
            hook.remove()
    return Inside(logits.float().cpu(), lens.float().cpu(), attention.float().cpu())


def attention_weights(qkv, n_head):
    """softmax(q k^T / sqrt(hs)) with the causal mask, (nh, T, T), from one layer's
    queries, keys and values side by side, qkv (T, 3C): what model.py's attention
    computes inside the fused kernel."""
    T, C = qkv.size(0), qkv.size(1) // 3
    q, k, _ = (part.view(T, n_head, C // n_head).transpose(0, 1) for part in qkv.split(C, dim=1))  # (nh, T, hs) each
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // n_head)  # (nh, T, T)
    visible = torch.ones(T, T, dtype=torch.bool, device=qkv.device).tril()  # position i sees 0..i
    return scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)  # each row sums to 1


@dataclass
class Choice:
    """One generated token, and the distribution it was drawn from."""

    token: int
    probability: float  # the probability the distribution gave it
    rank: int  # 1: it was the most likely
    entropy: float  # of the distribution, in bits: 0 when one token has it all
    top: list  # [(token, probability)] of the TOP most likely, most likely first


def token_choice(probs, token):
    """The Choice of token from probs (vocab,), a distribution in float32."""
    p = probs[token]
    kept = probs[probs > 0]
    entropy = -(kept * kept.log2()).sum()
    top = probs.topk(min(TOP, len(probs)))
    return Choice(token, p.item(), int((probs > p).sum()) + 1, entropy.item(), list(zip(top.indices.tolist(), top.values.tolist())))


def explain(model, tok, prompt_ids, tokens, distributions, cfg):
    """Print why the model wrote tokens after prompt_ids: distributions[i] (n_vocab,) is
    the one the sampler drew tokens[i] from. Then draw the picture into cfg.explain_png.
    cfg: sample.py's Config (temperature, top_k, top_p, num_samples, explain_png)."""
    ids = prompt_ids + tokens
    window = ids[-model.config.block_size :]  # what the model sees at the end
    device = next(model.parameters()).device
    inside = look_inside(model, torch.tensor(window, device=device))
    choices = [token_choice(probs, token) for probs, token in zip(distributions, tokens)]
    others = f" (of {cfg.num_samples}: --explain explains the first)" if cfg.num_samples > 1 else ""
    print(f"\n--- sample 1 explained{others}")
    print_prompt(tok, window, len(ids) - len(window), len(prompt_ids), inside.logits[:, : tok.n_vocab])
    print_choices(tok, choices, cfg)
    print_lens(tok, window, inside.lens[:, : tok.n_vocab])
    draw_attention(tok, window, max(0, len(window) - len(tokens)), inside.attention, choices, cfg.explain_png)


def print_prompt(tok, window, cut, n_prompt, logits):
    """The prompt's tokens in the window, each with how likely the model found it after
    the ones before it (temperature 1) and its loss in bits. cut: tokens before the window."""
    print("\nThe prompt, token by token: how likely the model found each one after those before it (temperature 1)")
    print(f"{'token':>16}  {'probability':>11}  {'surprise':>11}")
    probs = F.softmax(logits, dim=-1)  # (T, n_vocab): row t predicts the token at t + 1
    for t in range(n_prompt - cut):
        if t == 0:
            reason = "the first token: no context" if cut == 0 else f"{cut} tokens before it are beyond the model's window"
            print(f"{tok.label(window[0]):>16}  ({reason})")
            continue
        p = probs[t - 1, window[t]].item()
        print(f"{tok.label(window[t]):>16}  {p:11.4f}  {-math.log2(max(p, 1e-45)):6.2f} bits")


def sampling_rule(cfg):
    if cfg.temperature == 0:
        return "greedy (temperature 0): the plain softmax, and its most likely token"
    return f"temperature {cfg.temperature}, top_k {cfg.top_k or 'off'}, top_p {cfg.top_p}"


def print_choices(tok, choices, cfg):
    print(f"\nEach generated token, and the distribution it was drawn from: {sampling_rule(cfg)}")
    print(f"{'#':>4}  {'token':>16}  {'probability':>11}  {'rank':>5}  {'entropy':>9}  the {TOP} most likely")
    for i, c in enumerate(choices):
        top = "  ".join(f"{tok.label(t)} {p:.3f}" for t, p in c.top)
        print(f"{i + 1:4d}  {tok.label(c.token):>16}  {c.probability:11.4f}  {c.rank:5d}  {c.entropy:5.2f} bits  {top}")


def print_lens(tok, window, lens_logits):
    print(f"\nLogit lens: after each block, what the model would predict after {tok.label(window[-1])}, if it stopped there")
    print(f"{'block':>5}  {'most likely':>16}  {'probability':>11}")
    probs = F.softmax(lens_logits, dim=-1)  # (n_layer, n_vocab)
    for layer, p in enumerate(probs):
        best = p.argmax().item()
        own = "  (the model's own prediction)" if layer == len(probs) - 1 else ""
        print(f"{layer + 1:5d}  {tok.label(best):>16}  {p[best].item():11.4f}{own}")


LABEL_POINTS = 6  # a token gets its label where it has this much room (1/72 inch each): 5-point letters and a gap
GRID_INCHES = 14  # the grid of heatmaps is at most this wide and tall, whatever the number of heads
CELL_INCHES = 3  # and each heatmap at most this big


def draw_attention(tok, window, n_prompt, attention, choices, path):
    """A PNG at path: a heatmap per layer (rows) and head (columns) of attention (n_layer,
    n_head, T, T) over the window, whose first n_prompt tokens are the prompt; below it,
    the probability each generated token was drawn with."""
    plt = pyplot("\nno picture")
    if plt is None:
        return
    n_layer, n_head, T, _ = attention.shape
    cell = min(CELL_INCHES, GRID_INCHES / max(n_layer, n_head))
    width = max(cell * n_head + 1.5, 6.5)  # inches, with the colour bar; wide enough for the title
    fig = plt.figure(figsize=(width, cell * n_layer + 3.5), layout="constrained")
    grid, strip = fig.subfigures(2, 1, height_ratios=[cell * n_layer, 3])
    axes = grid.subplots(n_layer, n_head, squeeze=False, sharex=True, sharey=True)
    labels = [tok.label(t) for t in window]
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer, head]
            image = ax.imshow(attention[layer, head].numpy(), cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.axvline(n_prompt - 0.5, color="white", linewidth=0.5)  # the generated tokens start here
            ax.axhline(n_prompt - 0.5, color="white", linewidth=0.5)
            ax.tick_params(length=0, labelsize=LABEL_POINTS - 1)
            if layer == 0:
                ax.set_title(f"head {head + 1}", fontsize=8)
            if head == 0:
                ax.set_ylabel(f"block {layer + 1}", fontsize=8)
    if cell * 72 / T >= LABEL_POINTS:
        axes[0, 0].set_xticks(range(T), labels)
        axes[0, 0].set_yticks(range(T), labels)
        for ax in axes[-1]:
            ax.tick_params(axis="x", labelrotation=90)
    else:
        axes[0, 0].set_xticks([])
        axes[0, 0].set_yticks([])
    grid.colorbar(image, ax=axes, shrink=0.3, label="attention weight")
    grid.suptitle(f"Attention over the last {T} tokens: row = the token looking, column = the token looked at\n"
                  f"(white lines: where the generated text begins)", fontsize=10)
    draw_probabilities(strip, tok, choices, width)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise UsageError(f"cannot write the picture to {path} ({describe_error(e)}): give another --explain_png") from None
    finally:
        plt.close(fig)
    print(f"\nThe attention of every block and head, and each token's probability: {path}")


def draw_probabilities(fig, tok, choices, width):
    """A bar per generated token in fig, width inches wide: the probability it was drawn with."""
    ax = fig.subplots()
    ax.bar(range(len(choices)), [c.probability for c in choices], color="tab:blue")
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.set_title("The probability each generated token was drawn with", fontsize=10)
    if width * 72 / max(1, len(choices)) >= LABEL_POINTS + 1:
        ax.set_xticks(range(len(choices)), [tok.label(c.token) for c in choices], rotation=90, fontsize=7)
    else:
        ax.set_xlabel("generated token")
