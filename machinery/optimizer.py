"""
The optimizers: what turns a gradient into a step of the weights.

    configure_optimizers   AdamW with weight-decay groups, or Muon for the block matrices
                           and AdamW for the rest
    describe_optimizer     which one, and Muon's precision, for the start-up line
    Muon                   torch.optim.Muon, orthogonalising in the run's own precision
    Optimizers             several optimizers used as one

torch.optim.Muon (PyTorch 2.13) always orthogonalises in bfloat16. On a CPU without
native bf16 (most laptops) every one of those matrix products is emulated: for the
default model, orthogonalising the 24 block matrices of one step took 35.5 s instead of
1.05 s in float32 on a 2-core AMD EPYC Zen 3 (docs/performance.md). The Muon here
computes in bfloat16 only when the run itself does, and in float32 otherwise.
"""

import math

import torch


def configure_optimizers(model, weight_decay, learning_rate, betas, device_type, optimizer="adamw",
                         adamw_lr_ratio=1.0, dtype="float32"):
    """AdamW with weight decay on matrices (2 or more dimensions: Linear weights
    and embeddings) and none on biases and LayerNorm gains, which only shift and
    scale and gain nothing from being pulled towards zero.

    optimizer="muon" hands the weight matrices inside the blocks to Muon instead.
    Adam scales each number's step by its own gradient history; Muon looks at a
    matrix's update as a whole and orthogonalises it (a few Newton-Schulz
    iterations, in the run's dtype: "bfloat16" or "float32"), so that every direction the matrix maps along moves
    by about the same amount, and no single direction dominates. That only makes
    sense for matrices that transform vectors: the embeddings (rows looked up one at
    a time, and tied to the output layer), the biases and the LayerNorm gains stay
    with AdamW. Muon's step is scaled to the size of AdamW's, so max_lr means the
    same for both; adamw_lr_ratio lets AdamW's parameters learn slower than Muon's
    matrices (on a small text, embeddings at a quarter of Muon's rate generalised
    better; recipes/README.md)."""
    params = [p for p in model.parameters() if p.requires_grad]  # a tied tensor appears once
    in_blocks = {id(p) for p in model.transformer.h.parameters() if p.dim() == 2} if optimizer == "muon" else set()
    decay = [p for p in params if p.dim() >= 2 and id(p) not in in_blocks]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # the fused kernel updates every tensor in one pass instead of a loop of
    # small operations; PyTorch has it for CUDA and CPU
    fused = device_type in ("cuda", "cpu")
    adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)
    if optimizer == "adamw":
        return adamw
    for group in adamw.param_groups:
        group["lr_ratio"] = adamw_lr_ratio  # train.py's set_learning_rate multiplies the schedule by it
    matrices = [p for p in params if id(p) in in_blocks]
    muon = Muon(matrices, lr=learning_rate, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw",
                compute_dtype=getattr(torch, dtype))
    return Optimizers(muon, adamw)


def describe_optimizer(optimizer, dtype):
    """The optimizer for the start-up line: "adamw", or "muon (orthogonalised in float32)"."""
    return optimizer if optimizer == "adamw" else f"{optimizer} (orthogonalised in {dtype})"


class Muon(torch.optim.Muon):
    """torch.optim.Muon with the orthogonalisation in compute_dtype. Only step() is
    new: the arguments, their checks, the defaults, the state and the param groups
    are the library's, so its checkpoints load here and ours there. With
    compute_dtype=torch.bfloat16 the step is the library's, bit for bit."""

    def __init__(self, params, compute_dtype=torch.bfloat16, **kwargs):
        super().__init__(params, **kwargs)
        # an attribute, not a param-group key: load_state_dict replaces the groups with
        # the saved ones, and the checkpoint's precision need not be this run's
        self.compute_dtype = compute_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, group)
        return loss

    def update(self, p, group):
        """One Muon step of the matrix p."""
        lr, momentum = group["lr"], group["momentum"]
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - momentum)  # a moving average of the gradients
        # Nesterov: look ahead, from the gradient towards the average
        direction = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
        orthogonal = orthogonalize(direction, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                   self.compute_dtype)
        p.mul_(1 - lr * group["weight_decay"])  # decoupled weight decay, at the unadjusted rate
        p.add_(orthogonal, alpha=-lr * lr_scale(group["adjust_lr_fn"], p.shape))


def orthogonalize(g, coefficients, steps, eps, dtype):
    """g (A, B) with its singular values pushed towards 1: U S V^T becomes about U V^T.

    The Newton-Schulz iteration from Keller Jordan's post "Muon: An optimizer for
    hidden layers in neural networks" (2024). Start from X = g / ||g||_F, so that every
    singular value s is at most 1, and repeat

        X <- a X + b (X X^T) X + c (X X^T)^2 X

    which maps each singular value s to a s + b s^3 + c s^5 and leaves U and V alone.
    With (a, b, c) = (3.4445, -4.7750, 2.0315) five rounds take every s in (0, 1] to
    somewhere between about 0.7 and 1.2: not exactly 1, which would take more rounds,
    and close enough for a step. X X^T is the smaller Gram matrix when X is wide, so a
    tall g is transposed first."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T  # (B, A): wide
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T  # X X^T, (rows, rows)
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b (X X^T) + c (X X^T)^2
        x = torch.addmm(x, poly, x, beta=a)  # a X + poly X
    return x.T if tall else x


def lr_scale(adjust_lr_fn, shape):
    """How much Muon scales the learning rate for a matrix of this shape (A, B).
    An orthogonal update of an A x B matrix has a root-mean-square entry of about
    1 / sqrt(max(A, B)); "match_rms_adamw" (from "Muon is Scalable for LLM Training",
    Moonshot AI, 2025) brings it to AdamW's typical 0.2, so both share one learning
    rate. "original" (Keller Jordan's) scales tall matrices by sqrt(A / B)."""
    A, B = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(A, B))
    return math.sqrt(max(1, A / B))  # None or "original": the only other values the library takes


class Optimizers:
    """Several optimizers, each over its own parameters, used as one: the training loop
    sets the learning rate of every param group, steps, and saves and loads the state."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers

    @property
    def param_groups(self):
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def step(self):
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none=True):
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state):
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            ratios = [group.get("lr_ratio") for group in optimizer.param_groups]
            optimizer.load_state_dict(saved)  # replaces each group's settings with the saved ones
            for group, ratio in zip(optimizer.param_groups, ratios):
                if ratio is not None:
                    group["lr_ratio"] = ratio  # this run's ratio, so a flag can change it on resume
