"""
Where the model runs and how fast: every switch that changes the speed, and none that
changes the model. docs/performance.md measures each one.

    pick_device       auto: CUDA, then Intel XPU, then Apple MPS, then the CPU
    check_device      a device name this machine has, or a one-line error
    choose_dtype      bfloat16 where the hardware multiplies it natively, else float32
    autocast_context  bf16 autocast, or nothing to switch on
    prepare_device     device, dtype, autocast and threads (one per physical core), once
    want_compile, compile_model   torch.compile, with a fallback when it fails
    seconds_since     a step's time, once the GPU has done it
    training_speed, rung_speed   tokens per second of a few eager training steps, for the sizing
    FastDropout, use_fast_dropout, describe_dropout   dropout that draws 16 random bits per element, not a float
    TrainingLoss      the model as training calls it, with the chunked loss by name
    ChunkedCrossEntropy           the loss without holding all the logits at once
"""

import dataclasses
import os
import shutil
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn as nn
from torch.nn import functional as F

from machinery.budget import MICRO_BATCH
from machinery.cli import UsageError, describe_error
from machinery.optimizer import configure_optimizers
from model import GPT

# ----------------------------------------------------------------------------
# Device, precision, threads


def pick_device(name="auto"):
    """'auto' picks CUDA, then Intel's XPU, then Apple's MPS, then the CPU; any other
    name is used as given."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "cuda"
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return "xpu"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(name):
    """A UsageError unless name is "auto" or a device this machine has."""
    if name == "auto":
        return
    available = {
        "cpu": lambda: 1,
        "cuda": lambda: torch.cuda.device_count(),
        "xpu": lambda: torch.xpu.device_count() if hasattr(torch, "xpu") else 0,
        "mps": lambda: int(torch.backends.mps.is_available()),
    }
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        device = None
    if device is None or device.type not in available:
        raise UsageError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N, xpu or mps")
    count = available[device.type]()
    if count == 0:
        raise UsageError(f"device {name!r} is not available on this machine: use --device auto (or cpu)")
    if device.index is not None and device.index >= count:
        raise UsageError(f"device {name!r} does not exist: this machine has {count} {device.type} device(s), numbered from 0")


def cpu_has_native_bf16():
    """True on x86 CPUs with AVX512-BF16 or AMX instructions (PyTorch asks the CPU itself).
    There bf16 matrix products run several times faster than float32; elsewhere bf16
    would be emulated and slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def choose_dtype(setting, device):
    """'auto' means bfloat16 where the hardware multiplies it natively (CUDA and Intel
    GPUs that support it, CPUs with AVX512-BF16 or AMX) and float32 elsewhere;
    'float32' and 'bfloat16' are taken as given."""
    if setting != "auto":
        return setting
    device_type = device.split(":")[0]
    if device_type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if device_type == "xpu":
        return "bfloat16" if torch.xpu.is_bf16_supported() else "float32"
    if device_type == "cpu" and cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


def autocast_context(device_type, dtype):
    """Mixed precision: under bf16 autocast the matrix products run in bfloat16, while
    the weights, the optimizer and precision-sensitive ops (softmax, LayerNorm, the
    loss) stay in float32. With float32 there is nothing to switch on."""
    if dtype == "bfloat16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return nullcontext()


def physical_cores():
    """CPU cores this process may use, not counting hyper-threads, which share a core's
    matrix units and only add contention. Falls back to logical CPUs off Linux."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            with open(topology + "physical_package_id") as package, open(topology + "core_id") as core:
                cores.add((package.read(), core.read()))
        except OSError:
            return len(cpus)
    return len(cores)


def prepare_device(device_name, dtype_setting, threads=0, processes=None):
    """Device, dtype and threads, chosen once: (device, device_type, dtype, autocast context).
    Under torchrun (processes: machinery/processes.py's) each process takes the GPU
    numbered by its LOCAL_RANK, and on the CPU the cores are shared among the processes
    of this machine."""
    device = pick_device(device_name)
    device_type = device.split(":")[0]
    if processes and processes.world_size > 1 and device_type in ("cuda", "xpu") and ":" not in device:
        device = f"{device_type}:{processes.local_rank}"
        getattr(torch, device_type).set_device(device)
    if device_type == "cpu":
        torch.set_num_threads(threads or max(1, physical_cores() // (processes.local_world_size if processes else 1)))
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the matmuls autocast leaves in float32
    dtype = choose_dtype(dtype_setting, device_type)
    return device, device_type, dtype, autocast_context(device_type, dtype)


def seconds_since(started, device):
    """The seconds since started (time.time()) that the work queued on device took: a GPU
    works asynchronously, so wait for it first."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.time() - started


def rung_speed(shape, cfg, device_type, dtype, ctx, device):
    """tokens_per_second(rung, seconds) for budget.size_model: training_speed of a model
    of the rung's shape (shape, a GPTConfig, gives the rest), trained as cfg (train.py's
    Config) says, on device."""
    def tokens_per_second(rung, seconds):
        model = GPT(dataclasses.replace(shape, **{k: v for k, v in rung.flags().items() if k in ("n_layer", "n_head", "n_embd")}))
        optimizer = configure_optimizers(model.to(device), cfg.weight_decay, cfg.max_lr, cfg.betas, device_type,
                                         cfg.optimizer, cfg.adamw_lr_ratio, dtype)
        return training_speed(model, optimizer, MICRO_BATCH, cfg.T, ctx, seconds)

    return tokens_per_second


def training_speed(model, optimizer, B, T, ctx, seconds):
    """Tokens per second of eager training steps of model (forward, backward and the
    optimizer's step, on B x T random tokens): the first warms up, and up to three more
    are timed while they fit in seconds. None when not even two fit."""
    if seconds <= 0:
        return None
    device = next(model.parameters()).device
    loss_fn = TrainingLoss(model)
    x = torch.randint(0, model.config.vocab_size, (B, T), device=device)
    started, times = time.time(), []
    while len(times) < 4 and (not times or time.time() - started + times[-1] <= seconds):
        step_started = time.time()
        with ctx:
            loss = loss_fn(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(seconds_since(step_started, device.type))
    return B * T * (len(times) - 1) / sum(times[1:]) if len(times) > 1 else None


# ----------------------------------------------------------------------------
# Compilation


def want_compile(setting, device_type):
    """torch.compile fuses the many small element-wise operations (GELU, LayerNorm, adds)
    into a few generated kernels. On CPU it needs a C++ compiler; on MPS and XPU it is
    left off unless asked for. setting: True, False or "auto"."""
    if setting != "auto":
        return setting
    if device_type == "cuda":
        return True
    has_compiler = any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++"))
    return device_type == "cpu" and has_compiler and sys.platform != "win32"


def compile_model(module, warm_up):
    """(the compiled module, a note for the start-up line), or the module itself if
    compiling fails. Compilation happens at the first call, so warm_up(compiled) runs
    one training micro-step now, where it is timed and where a failure can be caught."""
    start = time.time()
    try:
        compiled = torch.compile(module)
        warm_up(compiled)
    except Exception as e:  # no compiler, an unsupported platform or op: train without it
        module.zero_grad(set_to_none=True)
        print(f"torch.compile failed ({describe_error(e)}); continuing without it")
        return module, "off (failed)"
    module.zero_grad(set_to_none=True)
    return compiled, f"on ({time.time() - start:.1f}s)"


# ----------------------------------------------------------------------------
# Dropout with cheaper random numbers


class FastDropout(nn.Dropout):
    """nn.Dropout, with the mask drawn from 16 random bits per element.

    On a CPU most of dropout's time goes into its random numbers: F.dropout draws a
    float per element, and torch.compile's kernels too. Here one 64-bit integer gives
    four elements 16 bits each, and an element is kept when its bits, read as a number
    from -32768 to 32767, reach a threshold: 1 - p of them, with p rounded to a multiple
    of 1/65536. Kept elements are scaled up so that the mean stays the same.
    @recipes/30min.txt's steps with dropout 0.2 took 1.56 s instead of 1.94 (Xeon;
    1.41 s without dropout)."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        dropped = min(round(self.p * 65536), 65535)  # out of 65536
        n = x.numel()
        draws = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), device=x.device)  # 4 elements per draw
        bits = draws.view(torch.int16)[:n].view(x.shape)  # uniform from -32768 to 32767
        keep = bits >= dropped - 32768
        return x * keep * (65536 / (65536 - dropped))


def describe_dropout(model, p):
    """The start-up line's words on dropout, if there is any (p), and whether its masks
    are drawn the fast way."""
    if p == 0:
        return ""
    fast = any(isinstance(module, FastDropout) for module in model.modules())
    return f"dropout {p:g}{' (16-bit masks)' if fast else ''} | "


def use_fast_dropout(model):
    """Swap each nn.Dropout in model for a FastDropout with the same p, in the same mode
    (training or eval); the state dict is unchanged, since dropout has no weights. The
    dropout on attention weights is a function call, not a module, and stays as it is."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Dropout:
            model.set_submodule(name, FastDropout(module.p).train(module.training))
    return model


# ----------------------------------------------------------------------------
# The training loss, chunked or plain


class TrainingLoss(nn.Module):
    """The model as training calls it: tokens and targets in, the mean loss out.
    chunked=True computes the loss from the final hidden states in chunks (below),
    never holding all the logits; chunked=False is the model's own plain forward.
    This is the module that gets compiled (and, on several processes, wrapped)."""

    def __init__(self, model, chunked=True):
        super().__init__()
        self.model = model
        self.chunked = chunked

    def forward(self, idx, targets):
        if not self.chunked:
            return self.model(idx, targets)[1]
        x = self.model.hidden_states(idx)  # (B, T, C)
        return chunked_cross_entropy(x.flatten(0, 1), self.model.lm_head.weight, targets.flatten())


class ChunkedCrossEntropy(torch.autograd.Function):
    """cross_entropy(x @ weight.T, targets), computed a chunk of rows at a time.

    The plain way holds the logits of every position at once: B x T x vocab_size
    numbers (4 x 256 x 50304 floats = 206 MB for the default model), in float32
    for the softmax, and again for their gradient. Here each chunk's logits are
    made, turned into the chunk's loss and into the gradients for x and weight
    right away (d loss / d logits = softmax - one_hot(target)), and freed.
    backward() then only scales the gradients that forward() already summed.
    The matrix products are the same ones the plain way does, so nothing is
    computed twice."""

    @staticmethod
    def forward(ctx, x, weight, targets, chunk_size):
        # x (N, C) final hidden states, weight (V, C) the lm_head, targets (N,)
        valid = targets != -1  # (N,) targets of -1 are left out of the mean
        n_valid = valid.sum().clamp(min=1)
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        for first in range(0, x.size(0), chunk_size):
            rows = slice(first, first + chunk_size)
            xc, tc = x[rows], targets[rows].clamp(min=0)  # (n, C), (n,)
            logits = (xc @ weight.t()).float()  # (n, V), in the autocast dtype, softmax in float32
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            target_logit = logits.gather(1, tc[:, None]).squeeze(1)  # (n,)
            loss += ((lse - target_logit) * valid[rows]).sum()
            grad_logits = logits.sub_(lse[:, None]).exp_()  # softmax, in place: (n, V)
            grad_logits[torch.arange(len(tc), device=x.device), tc] -= 1.0
            grad_logits *= (valid[rows] / n_valid)[:, None]  # the mean's 1/N, and the ignored rows' 0
            grad_logits = grad_logits.to(x.dtype)  # under autocast the two products below run in bf16
            grad_x[rows] = grad_logits @ weight  # (n, C)
            grad_weight += grad_logits.t() @ xc  # (V, C)
        ctx.save_for_backward(grad_x, grad_weight.to(weight.dtype))
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_weight = ctx.saved_tensors
        return grad_x * grad_loss, grad_weight * grad_loss, None, None


def chunked_cross_entropy(x, weight, targets, chunk_size=256):
    """The mean cross-entropy of the logits x @ weight.T (x (N, C), weight (V, C),
    targets (N,), -1 ignored), 256 rows of logits at a time."""
    if torch.is_grad_enabled():
        return ChunkedCrossEntropy.apply(x, weight, targets, chunk_size)
    return chunked_cross_entropy_no_grad(x, weight, targets)


# Rows of logits per chunk without autograd: small enough that a chunk's logits stay in
# the CPU's cache between the matrix product that writes them and the softmax that reads
# them, large enough for an efficient product (measured on Zen 5; docs/performance.md)
EVAL_CHUNK_ROWS = 128


def chunked_cross_entropy_no_grad(x, weight, targets):
    """chunked_cross_entropy for evaluation: the same loss, without the gradients that
    ChunkedCrossEntropy prepares."""
    # Autocast would cast the weight to bf16 again for every chunk (it keeps casts only
    # while recording gradients), so both are cast here, once
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
    total = torch.zeros((), dtype=torch.float32, device=x.device)
    for first in range(0, x.size(0), EVAL_CHUNK_ROWS):
        rows = slice(first, first + EVAL_CHUNK_ROWS)
        logits = (x[rows] @ weight.t()).float()  # (n, V), softmax in float32
        total += F.cross_entropy(logits, targets[rows], ignore_index=-1, reduction="sum")
    return total / (targets != -1).sum().clamp(min=1)

