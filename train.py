"""
Train a GPT on a plain text file, end to end.

    python train.py                                  # the default 6-layer model on ./input
    python train.py --max_steps 10 --n_layer 4 --B 2 # every constant below is also a flag
    python train.py --init_from resume               # continue from log/ckpt.pt
    python train.py --init_from gpt2                 # fine-tune OpenAI's GPT-2 124M

Edit the constants in Config, or pass them as flags (`python train.py --help`).
"""

import argparse
import dataclasses
import hashlib
import inspect
import math
import os
import re
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from model import GPT, GPTConfig, WeightsNotFound, choose_dtype, get_tokenizer, pick_device

# ----------------------------------------------------------------------------
# The constants a learner edits. Each is also a command-line flag of the same name.


@dataclass
class Config:
    # the model (ignored by --init_from resume and by pretrained weights, which bring their own shape)
    n_layer: int = 6  # transformer blocks
    n_head: int = 6  # attention heads per block
    n_embd: int = 384  # width of the residual stream
    block_size: int = 256  # longest context the model can see
    vocab_size: int = 50304  # GPT-2's 50257 tokens padded to a multiple of 64, for faster matmuls
    dropout: float = 0.0  # fraction of activations zeroed in training; 0.0 for short runs
    bias: bool = True  # biases in Linear and LayerNorm layers
    # the batch: one optimizer step sees total_batch_size tokens, B x T at a time
    total_batch_size: int = 8192  # tokens per optimizer step
    B: int = 4  # sequences per micro-batch
    T: int = 256  # tokens per sequence (at most block_size)
    # the optimizer and its learning-rate schedule
    max_lr: float = 6e-4  # peak learning rate, reached after the warmup
    min_lr: Optional[float] = None  # floor of the cosine decay; None means max_lr * 0.1
    warmup_steps: int = 10  # steps of linear warmup from ~0 to max_lr
    max_steps: int = 50  # optimizer steps in the whole run
    weight_decay: float = 0.1  # AdamW weight decay, on matrices only
    betas: tuple = (0.9, 0.95)  # AdamW's moving-average rates for the gradient and its square
    grad_clip: float = 1.0  # clip the gradient's global norm to this (0: no clipping)
    # the run
    input_file: str = "input"  # the training text, UTF-8
    log_dir: str = "log"  # log.txt, ckpt.pt and the token cache go here
    device: str = "auto"  # auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:1, mps
    seed: int = 1337  # seeds the weights' initialisation and dropout
    eval_interval: int = 10  # evaluate and save a checkpoint every this many steps (and at the end)
    eval_steps: int = 10  # validation batches per evaluation (always the same ones)
    init_from: str = "scratch"  # scratch, resume (log_dir/ckpt.pt), or a GPT-2 name or Hugging Face directory
    # speed (README's Performance section); each one can be turned off
    dtype: str = "auto"  # auto: bfloat16 autocast where the hardware has native bf16 matmuls, else float32
    compile: str = "auto"  # auto: torch.compile on CUDA and on CPUs with a C++ compiler; True or False to force
    chunked_loss: bool = True  # compute the loss in chunks instead of materialising all the logits
    threads: int = 0  # CPU threads; 0: one per physical core

    def __post_init__(self):
        if self.min_lr is None:
            self.min_lr = self.max_lr * 0.1
        self.betas = tuple(self.betas)
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise UsageError(f"dtype must be auto, float32 or bfloat16, not {self.dtype!r}")
        if self.compile.lower() not in ("auto", "true", "false"):
            raise UsageError(f"compile must be auto, True or False, not {self.compile!r}")


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


# ----------------------------------------------------------------------------
# Command-line flags, generated from Config so the two can never drift apart


class OneLineArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_bool(text):
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def flag_parser(prog, description):
    """An argparse parser with one flag per Config field, named and typed like the field.
    Flags that are not given stay absent from the result (default=SUPPRESS), so that a
    resumed run can tell which constants the user wants to change."""
    parser = OneLineArgumentParser(prog=prog, description=description, allow_abbrev=False)
    comments = field_comments(Config)
    for field in dataclasses.fields(Config):
        default = field.default if field.name != "min_lr" else "max_lr * 0.1"
        kwargs = dict(default=argparse.SUPPRESS, help=f"{comments[field.name]} (default: {default})")
        if field.type is bool:
            kwargs["type"] = parse_bool
        elif field.type is tuple:
            kwargs.update(type=float, nargs=len(field.default))
        elif field.type is Optional[float]:
            kwargs["type"] = float
        else:
            kwargs["type"] = field.type
        parser.add_argument(f"--{field.name}", **kwargs)
    return parser


def field_comments(cls):
    """{field: its comment} read from the class's source, so that --help explains each
    flag in the very words a learner reads at the top of this file."""
    lines = inspect.getsource(cls).splitlines()
    matches = (re.match(r"\s+(\w+): [^=]+= .*?  # (.*)$", line) for line in lines)
    return {m[1]: m[2].replace("%", "%%") for m in matches if m}  # argparse formats help with %


def parse_flags(argv=None):
    """The constants given on the command line, as a dict."""
    return vars(flag_parser("train.py", "Train a GPT on a text file.").parse_args(argv))


# ----------------------------------------------------------------------------
# Data: the text file as GPT-2 tokens, cached, split 90/10


def load_tokens(input_file, log_dir):
    """All tokens of the text file (uint16). Tokenizing is done once: the tokens are
    cached in log_dir with the file's sha256, and rebuilt when the text changes."""
    try:
        with open(input_file, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"no training text at {input_file!r}: put a UTF-8 text file there or pass --input_file PATH")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {input_file!r} as UTF-8 text ({e.__class__.__name__}): convert it to UTF-8")
    digest = hashlib.sha256(raw).hexdigest()
    cache = os.path.join(log_dir, "tokens.npz")
    if os.path.exists(cache):
        with np.load(cache) as saved:
            if str(saved["sha256"]) == digest:
                return saved["tokens"]
    tokens = np.array(get_tokenizer().encode_ordinary(text), dtype=np.uint16)  # GPT-2 ids fit in 16 bits
    tmp = cache + ".tmp.npz"
    np.savez(tmp, tokens=tokens, sha256=digest)
    os.replace(tmp, cache)
    return tokens


def split_tokens(tokens, cfg):
    """First 90% to train on, last 10% to validate on, each long enough for one batch."""
    n_train = int(0.9 * len(tokens))
    needed = cfg.B * cfg.T + 1  # one batch of B x T inputs, plus one for the last target
    for name, part in (("training", tokens[:n_train]), ("validation", tokens[n_train:])):
        if len(part) < needed:
            raise UsageError(
                f"{cfg.input_file} has {len(tokens)} tokens, so its {name} split has {len(part)}, but one batch "
                f"of B x T = {cfg.B} x {cfg.T} needs {needed}: use a longer text or smaller --B/--T"
            )
    return tokens[:n_train], tokens[n_train:]


class DataLoader:
    """Walks through a split in order, B x T tokens per batch, wrapping around at the end.
    The targets are the inputs shifted by one: at each position, the next token."""

    def __init__(self, tokens, B, T, position=0):
        self.tokens, self.B, self.T, self.position = tokens, B, T, position

    def next_batch(self):
        B, T = self.B, self.T
        if self.position + B * T + 1 > len(self.tokens):
            self.position = 0  # wrap around: start the next pass over the data
        buf = torch.from_numpy(self.tokens[self.position : self.position + B * T + 1].astype(np.int64))
        x = buf[:-1].view(B, T)  # inputs (B, T)
        y = buf[1:].view(B, T)  # targets (B, T)
        self.position += B * T
        return x, y


# ----------------------------------------------------------------------------
# The learning-rate schedule


def get_lr(step, cfg):
    """Linear warmup to max_lr over warmup_steps, then cosine decay to min_lr at max_steps.
    Warmup keeps the first updates small while Adam's estimates are still noisy."""
    if step < cfg.warmup_steps:
        return cfg.max_lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)  # 0 -> 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return cfg.min_lr + coeff * (cfg.max_lr - cfg.min_lr)


# ----------------------------------------------------------------------------
# Model, checkpoints, device


def build_model(cfg, start):
    """The model to train: from scratch, from pretrained GPT-2, or from a checkpoint (start)."""
    if start is not None:
        model = GPT(GPTConfig(**start["config"]))
        model.load_state_dict(start["model"])
        return model
    if cfg.init_from == "scratch":
        shape = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(GPTConfig)}
        return GPT(GPTConfig(**shape))
    try:
        model = GPT.from_pretrained(cfg.init_from, dropout=cfg.dropout)
    except WeightsNotFound as e:
        raise UsageError(str(e))
    changed = [f"{k}={v} (was {getattr(cfg, k)})" for k, v in dataclasses.asdict(model.config).items() if getattr(cfg, k) != v]
    if changed:
        print(f"{cfg.init_from} brings its own shape: {', '.join(changed)}")
    return model


def save_checkpoint(path, state):
    """Write to a temporary file beside the checkpoint, then rename it over the old one:
    the rename is atomic, so a crash while saving never destroys the last good checkpoint."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------
# Speed: precision, threads, compilation


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


def want_compile(setting, device_type):
    """torch.compile fuses the many small element-wise operations (GELU, LayerNorm, adds)
    into a few generated kernels. On CPU it needs a C++ compiler; on MPS it is young."""
    if setting.lower() != "auto":
        return setting.lower() == "true"
    if device_type == "cuda":
        return True
    has_compiler = any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++"))
    return device_type == "cpu" and has_compiler and sys.platform != "win32"


def compile_model(model, cfg, device, ctx):
    """The compiled model, compiled now on one dummy batch (compilation happens at the
    first call, and is timed here), or the model itself if compilation fails."""
    start = time.time()
    try:
        compiled = torch.compile(model)
        x = torch.zeros(cfg.B, cfg.T, dtype=torch.long, device=device)
        y = torch.zeros_like(x)  # a separate tensor: passing x twice would compile a special case
        with ctx:
            _, loss = compiled(x, y, return_logits=not cfg.chunked_loss)
        loss.backward()
    except Exception as e:  # no compiler, an unsupported platform or op: train without it
        model.zero_grad(set_to_none=True)
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        print(f"torch.compile failed ({e.__class__.__name__}: {reason}); continuing without it")
        return model, "off (failed)"
    model.zero_grad(set_to_none=True)
    return compiled, f"on ({time.time() - start:.1f}s)"


class Interrupt:
    """The first Ctrl-C asks the loop to stop after the current step and save; a second one quits."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit without saving)", flush=True)


# ----------------------------------------------------------------------------
# Training


def evaluate(model, val_tokens, cfg, device, ctx):
    """Mean loss over the first eval_steps batches of the validation split: always the
    same tokens, so numbers from different steps and different runs are comparable."""
    loader = DataLoader(val_tokens, cfg.B, cfg.T)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for _ in range(cfg.eval_steps):
            x, y = loader.next_batch()
            with ctx:
                _, loss = model(x.to(device), y.to(device))
            total += loss.item()
    model.train()
    return total / cfg.eval_steps


def train_step(model, optimizer, loader, grad_accum_steps, cfg, device, ctx):
    """One optimizer step over grad_accum_steps micro-batches; returns (loss, grad norm)."""
    optimizer.zero_grad(set_to_none=True)
    loss_accum = 0.0
    for _ in range(grad_accum_steps):
        x, y = loader.next_batch()
        with ctx:
            _, loss = model(x.to(device), y.to(device), return_logits=not cfg.chunked_loss)
        # backward() adds each micro-batch's gradient to .grad; dividing each loss by
        # the number of micro-batches makes that sum the mean over the whole batch
        loss = loss / grad_accum_steps
        loss_accum += loss.item()
        loss.backward()
    # one unusually large gradient (a bad batch) should not throw the weights far off
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    optimizer.step()
    return loss_accum, norm.item()


def resolve_config(flags):
    """Defaults < the checkpoint's constants (on resume) < flags given on the command line."""
    log_dir = flags.get("log_dir", Config.log_dir)
    ckpt_path = os.path.join(log_dir, "ckpt.pt")
    if flags.get("init_from") != "resume":
        if os.path.exists(ckpt_path):
            raise UsageError(
                f"{ckpt_path} exists from an earlier run: continue it with --init_from resume, "
                f"keep it by choosing another --log_dir, or delete it to start over"
            )
        return Config(**flags), None
    if not os.path.exists(ckpt_path):
        raise UsageError(f"--init_from resume, but there is no {ckpt_path}: train first with `python train.py`")
    start = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return Config(**{**start["train_config"], **flags}), start


def trim_log(log_path, start_step):
    """On resume, drop log lines from steps the checkpoint had not reached yet."""
    if not os.path.exists(log_path):
        return
    with open(log_path) as f:
        kept = [line for line in f if int(line.split()[0]) < start_step]
    with open(log_path, "w") as f:
        f.writelines(kept)


def setup_device(cfg):
    """Device, dtype and threads, chosen once: (device, device_type, dtype, autocast context)."""
    device = pick_device(cfg.device)
    device_type = device.split(":")[0]
    if device_type == "cpu":
        torch.set_num_threads(cfg.threads or physical_cores())
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the matmuls autocast leaves in float32
    dtype = choose_dtype(cfg.dtype, device_type)
    return device, device_type, dtype, autocast_context(device_type, dtype)


def check_batch(cfg):
    """The number of micro-batches per step, or a UsageError if B x T does not divide the batch."""
    if cfg.total_batch_size % (cfg.B * cfg.T) != 0 or cfg.total_batch_size < cfg.B * cfg.T:
        raise UsageError(
            f"total_batch_size={cfg.total_batch_size} must be a multiple of B x T = {cfg.B} x {cfg.T} = "
            f"{cfg.B * cfg.T}: change --total_batch_size, --B or --T"
        )
    return cfg.total_batch_size // (cfg.B * cfg.T)


def main(argv=None):
    cfg, start = resolve_config(parse_flags(argv))
    grad_accum_steps = check_batch(cfg)
    os.makedirs(cfg.log_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.log_dir, "ckpt.pt")
    log_path = os.path.join(cfg.log_dir, "log.txt")
    device, device_type, dtype, ctx = setup_device(cfg)
    torch.manual_seed(cfg.seed)

    model = build_model(cfg, start)
    if cfg.T > model.config.block_size:
        raise UsageError(f"T={cfg.T} is longer than the model's block_size={model.config.block_size}: lower --T")
    model.to(device)
    train_tokens, val_tokens = split_tokens(load_tokens(cfg.input_file, cfg.log_dir), cfg)
    if max(train_tokens.max(), val_tokens.max()) >= model.config.vocab_size:
        raise UsageError(f"{cfg.input_file} has GPT-2 tokens beyond the model's vocab_size={model.config.vocab_size}")

    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.max_lr, cfg.betas, device_type)
    loader = DataLoader(train_tokens, cfg.B, cfg.T)
    compiled, compile_note = model, "off"
    if want_compile(cfg.compile, device_type):
        compiled, compile_note = compile_model(model, cfg, device, ctx)
    if start is not None:
        optimizer.load_state_dict(start["optimizer"])
        loader.position = start["data_position"]
        torch.set_rng_state(start["rng_state"])
        trim_log(log_path, start["step"])
        print(f"resuming from {ckpt_path} at step {start['step']}")
    elif os.path.exists(log_path):
        os.remove(log_path)  # a new run starts a new log
    print(
        f"device {device} | dtype {dtype} | threads {torch.get_num_threads()} | compile {compile_note} | "
        f"chunked loss {'on' if cfg.chunked_loss else 'off'} | parameters {model.num_params():,} | "
        f"tokens per step {cfg.total_batch_size:,} | grad accumulation steps {grad_accum_steps} | "
        f"train/val tokens {len(train_tokens):,}/{len(val_tokens):,}",
        flush=True,
    )

    def checkpoint(step, val_loss):
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(),  # the plain model's: no "_orig_mod." prefixes from compile
            "config": dataclasses.asdict(model.config),
            "optimizer": optimizer.state_dict(),
            "step": step,  # steps done: a resumed run starts here
            "val_loss": val_loss,
            "train_config": dataclasses.asdict(cfg),
            "data_position": loader.position,
            "rng_state": torch.get_rng_state(),
        })

    interrupt = Interrupt()
    step_times = []
    val_loss = start["val_loss"] if start is not None else None
    for step in range(start["step"] if start is not None else 0, cfg.max_steps):
        last_step = step == cfg.max_steps - 1
        t0 = time.time()
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, norm = train_step(compiled, optimizer, loader, grad_accum_steps, cfg, device, ctx)
        if device_type == "cuda":
            torch.cuda.synchronize()  # the GPU works asynchronously: wait for it before timing
        dt = time.time() - t0
        step_times.append(dt)
        print(
            f"step {step:4d} | loss {loss:.6f} | lr {lr:.4e} | norm {norm:.4f} | dt {dt * 1000:.2f}ms | "
            f"tok/sec {cfg.total_batch_size / dt:.2f} | eta {format_eta(step_times, cfg.max_steps - step - 1)}",
            flush=True,
        )
        with open(log_path, "a") as f:
            f.write(f"{step} train {loss:.6f}\n")

        if (step + 1) % cfg.eval_interval == 0 or last_step:
            # the plain model: the compiled one would compile again for evaluation's no_grad
            val_loss = evaluate(model, val_tokens, cfg, device, ctx)
            print(f"step {step:4d} | val loss {val_loss:.4f}", flush=True)
            with open(log_path, "a") as f:
                f.write(f"{step} val {val_loss:.4f}\n")
            checkpoint(step + 1, val_loss)
        elif interrupt.requested:
            checkpoint(step + 1, val_loss)
        if interrupt.requested and not last_step:
            log_flag = f" --log_dir {cfg.log_dir}" if cfg.log_dir != Config.log_dir else ""
            print(f"saved {ckpt_path} after step {step}; continue with: python train.py --init_from resume{log_flag}")
            sys.exit(130)

    print(f"done: checkpoint in {ckpt_path}, final val loss {val_loss:.4f}")
    print(f'sample from it with: python sample.py --ckpt {ckpt_path} --prompt "ROMEO:"')


def format_eta(step_times, steps_left):
    """Time left at the typical step time; the first step, with its one-off warm-up, is left out."""
    typical = sum(step_times[1:]) / (len(step_times) - 1) if len(step_times) > 1 else step_times[0]
    eta = typical * steps_left
    return f"{eta // 60:.0f}m{eta % 60:02.0f}s"


if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("quit without saving", file=sys.stderr)
        sys.exit(130)
