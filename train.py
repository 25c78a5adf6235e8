"""
Train a GPT on a plain text file, end to end.

    python train.py                                  # the default 6-layer model on ./input
    python train.py --max_steps 10 --n_layer 4 --B 2 # every constant below is also a flag
    python train.py --init_from resume               # continue from log/ckpt.pt
    python train.py --init_from gpt2                 # fine-tune OpenAI's GPT-2 124M

Edit the constants in Config, or pass them as flags (`python train.py --help`).
The story of a run is at the bottom: main() (settings, one process or several), set_up()
(model, data, optimizer) and train() (the loop).
"""

import atexit
import dataclasses
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional

import torch

from checkpoint import (check_tokenizer, checkpoint_tokenizer, load_checkpoint, load_pretrained, model_from_checkpoint,
                        save_checkpoint)
from machinery.budget import (MIN_TIMED_STEPS, Clock, check_fits, eval_interval_for, evaluates_at, evaluations_after,
                    format_minutes, passed_evaluation, planned_seconds, steps_that_fit, timed_steps)
from machinery.cli import AutoBool, RunFailure, UsageError, check_fields, flag_parser, pyplot, require, require_at_least, run_main
from machinery.data import DataLoader, cache_root, load_tokens, split_tokens
from model import GPT, GPTConfig
from machinery.optimizer import configure_optimizers, describe_optimizer
from machinery.speed import (FastDropout, Processes, TrainingLoss, check_device, compile_model, set_up_device, use_fast_dropout,
                   want_compile)
from machinery.tokenizer import Tokenizer, gpt2

# ----------------------------------------------------------------------------
# The constants a learner edits. Each is also a command-line flag of the same name.


@dataclass
class Config:
    # the model (ignored by --init_from resume and by pretrained weights, which bring their own shape)
    n_layer: int = 6  # transformer blocks
    n_head: int = 6  # attention heads per block
    n_embd: int = 384  # width of the residual stream
    block_size: int = 256  # longest context the model can see
    tokenizer: Literal["gpt2", "bpe"] = "gpt2"  # gpt2: GPT-2's 50,257 tokens; bpe: a byte-level BPE trained on your training text
    vocab_size: int = 50304  # the model's output rows: GPT-2's 50,257 tokens padded to a multiple of 64; with bpe, the tokens to learn (4096 when not given)
    dropout: float = 0.0  # fraction of activations zeroed in training; 0.0 for short runs
    attn_dropout: bool = True  # dropout on the attention weights too, as GPT-2; False: only elsewhere, which keeps the fused attention kernel
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
    time_budget: float = 0.0  # minutes for the whole command, or 0: off. Instead of max_steps: fixed from the first steps' times
    optimizer: Literal["adamw", "muon"] = "adamw"  # adamw, as GPT-2; muon: Muon for the matrices inside the blocks
    adamw_lr_ratio: float = 1.0  # with muon: the learning rate of what AdamW still trains (embeddings, biases, LayerNorms), as a fraction of max_lr
    weight_decay: float = 0.1  # pulls matrices towards zero each step (AdamW's and, with muon, Muon's); not biases or LayerNorms
    betas: tuple = (0.9, 0.95)  # AdamW's moving-average rates for the gradient and its square
    grad_clip: float = 1.0  # clip the gradient's global norm to this (0: no clipping)
    # the run
    input_file: str = "input"  # the training text, UTF-8: a file, a directory (every *.txt in it) or a glob
    log_dir: str = "log"  # log.txt, loss.png and ckpt.pt go here
    data_cache: str = "auto"  # the token cache, shared by every run: auto is $XDG_CACHE_HOME/homegpt, else ~/.cache/homegpt
    device: str = "auto"  # auto (CUDA, then Intel XPU, then Apple MPS, then CPU), cpu, cuda, cuda:1, xpu, mps
    seed: int = 1337  # seeds the weights' initialisation and dropout
    eval_interval: int = 10  # evaluate and save a checkpoint every this many steps (and at the end)
    evaluations: int = 6  # with time_budget: evaluations (each with a checkpoint) spread over the run, instead of eval_interval
    eval_steps: int = 10  # validation batches per evaluation, spread evenly over the split (always the same ones)
    eval_sample_tokens: int = 30  # tokens sampled from sample_prompt at each evaluation, on one line; 0: none
    sample_prompt: str = "ROMEO:"  # the text those samples continue
    init_from: str = "scratch"  # scratch, resume (log_dir/ckpt.pt), a GPT-2 name, a Hugging Face directory, or a checkpoint file to fine-tune
    # speed (docs/performance.md); each one can be turned off
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bfloat16 autocast where the hardware has native bf16 matmuls, else float32
    compile: AutoBool = "auto"  # auto: torch.compile on CUDA and on CPUs with a C++ compiler; True or False to force
    chunked_loss: bool = True  # compute the loss in chunks instead of materialising all the logits
    threads: int = 0  # CPU threads; 0: one per physical core

    def __post_init__(self):
        check_fields(self)  # each value has its constant's type, whether it came from a flag or from code
        if self.min_lr is None:
            self.min_lr = self.max_lr * 0.1
        self.check()

    def check(self):
        """Every constant's value, checked before any work starts: a UsageError names the first bad one."""
        require_at_least(self, 1, "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "total_batch_size",
                         "B", "T", "max_steps", "eval_interval", "evaluations", "eval_steps")
        require_at_least(self, 0, "time_budget", "warmup_steps", "threads", "min_lr", "weight_decay", "grad_clip", "eval_sample_tokens")
        require(self.max_lr > 0, f"max_lr must be above 0, not {self.max_lr}")
        require(self.adamw_lr_ratio > 0, f"adamw_lr_ratio must be above 0, not {self.adamw_lr_ratio}")
        require(self.optimizer == "muon" or self.adamw_lr_ratio == 1.0,
                f"adamw_lr_ratio={self.adamw_lr_ratio} only applies with --optimizer muon (with adamw, max_lr is AdamW's rate)")
        require(0 <= self.dropout < 1, f"dropout must be at least 0 and below 1, not {self.dropout}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1), not {self.betas}")
        require(self.tokenizer == "gpt2" or 320 <= self.vocab_size <= 65536,
                f"vocab_size={self.vocab_size} with --tokenizer bpe must be 320 to 65536: the 256 bytes and at least 63 "
                f"merges, and ids that fit the token cache's 16 bits")
        require(self.n_embd % self.n_head == 0,
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}: each head gets n_embd / n_head channels")
        require(self.time_budget > 0 or self.warmup_steps <= self.max_steps,
                f"warmup_steps={self.warmup_steps} is more than max_steps={self.max_steps}: lower --warmup_steps")
        require(self.init_from != "scratch" or self.T <= self.block_size,
                f"T={self.T} is longer than block_size={self.block_size}: lower --T or raise --block_size")
        require(self.total_batch_size % (self.B * self.T) == 0,
                f"total_batch_size={self.total_batch_size} must be a multiple of B x T = {self.B} x {self.T} = "
                f"{self.B * self.T}: change --total_batch_size, --B or --T")
        check_device(self.device)


def parse_flags(argv=None):
    """The constants given on the command line, as a dict."""
    return vars(flag_parser(Config, "train.py", "Train a GPT on a text file.").parse_args(argv))


def model_shape(cfg):
    """The GPTConfig the constants describe."""
    return GPTConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(GPTConfig)})


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


def set_learning_rate(optimizer, lr):
    """This step's learning rate into every param group, times the group's lr_ratio where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)


# ----------------------------------------------------------------------------
# One step: forward and backward on each micro-batch, then one update


def micro_step(train_loss, x, y, ctx, grad_accum_steps):
    """Forward and backward on one micro-batch (x, y on the model's device); returns the
    micro-batch's share of the step's loss, as a float."""
    with ctx:
        loss = train_loss(x, y)
    # backward() adds each micro-batch's gradient to .grad; dividing each loss by
    # the number of micro-batches makes that sum the mean over the whole batch
    loss = loss / grad_accum_steps
    loss.backward()
    return loss.item()


def train_step(train_loss, optimizer, loader, grad_accum_steps, cfg, device, ctx, processes=None):
    """One optimizer step over grad_accum_steps micro-batches (this process's share of
    them under torchrun); returns (loss, grad norm)."""
    processes = processes or Processes()
    optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for i in range(grad_accum_steps):
        x, y = loader.next_batch()
        with processes.sync_gradients(train_loss, last_micro_step=i == grad_accum_steps - 1):
            loss += micro_step(train_loss, x.to(device), y.to(device), ctx, grad_accum_steps)
    # one unusually large gradient (a bad batch) should not throw the weights far off
    norm = torch.nn.utils.clip_grad_norm_(train_loss.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    optimizer.step()
    return loss, norm.item()


def compile_training_loss(train_loss, cfg, device, ctx):
    """torch.compile'd train_loss, compiled now on one dummy micro-batch; see speed.compile_model."""
    x = torch.zeros(cfg.B, cfg.T, dtype=torch.long, device=device)
    y = torch.zeros_like(x)  # a separate tensor: passing x twice would compile a special case
    return compile_model(train_loss, lambda compiled: micro_step(compiled, x, y, ctx, 1))


# ----------------------------------------------------------------------------
# Evaluation, and a sample to watch the model learn


class Evaluation(NamedTuple):
    """A validation loss, two ways."""

    loss: float  # nats per token: the mean cross-entropy, what training minimises
    bits_per_byte: float  # the same surprise per byte of text, comparable across tokenizers

    def __str__(self):
        return f"{self.loss:.4f} ({self.bits_per_byte:.4f} bits per byte)"


def evaluate(loss_fn, val_tokens, cfg, device, ctx, byte_lengths):
    """The loss over eval_steps batches spread evenly over the whole validation split:
    always the same tokens, so numbers from different steps and runs are comparable,
    and not only the split's first pages, which need not be typical."""
    span = len(val_tokens) - cfg.B * cfg.T - 1  # the last position a batch can start at
    starts = [round(i * span / max(1, cfg.eval_steps - 1)) for i in range(cfg.eval_steps)]
    return mean_loss(loss_fn, [batch_at(val_tokens, start, cfg.B, cfg.T) for start in starts], device, ctx,
                     byte_lengths)


# The final evaluation reads every window of the validation split up to about this much
# text, and beyond it a sample of that size spread evenly over the split: input's
# validation split (258 KB) is always read whole, and a split of any size takes seconds.
FINAL_EVAL_BYTES = 300_000
FINAL_EVAL_BATCH_TOKENS = 8192  # windows per forward pass: as many as make this many tokens


def evaluate_windows(loss_fn, tokens, starts, T, device, ctx, byte_lengths):
    """The loss over the windows of T tokens at starts: many windows per forward pass and
    no autograd, so that the final evaluation costs a small share of the run."""
    per_batch = max(1, FINAL_EVAL_BATCH_TOKENS // T)
    batches = (batch_of_windows(tokens, starts[i : i + per_batch], T) for i in range(0, len(starts), per_batch))
    return mean_loss(loss_fn, batches, device, ctx, byte_lengths)


def final_windows(n_tokens, T, max_tokens):
    """The start of every window of T tokens in a split of n_tokens (each needs one more
    token for its last target), or, when they hold more than max_tokens, of max_tokens // T
    of them spread evenly over the split: always the same ones for the same split."""
    n_windows = (n_tokens - 1) // T
    n_kept = max(1, min(n_windows, max_tokens // T))
    return [(i * n_windows // n_kept) * T for i in range(n_kept)]


def describe_windows(starts, n_tokens, T):
    """(which windows, how many tokens) of a split of n_tokens, for the final evaluation's lines."""
    if len(starts) == (n_tokens - 1) // T:
        return "on the whole validation split, every window", f"{len(starts) * T:,} tokens"
    return f"on {len(starts):,} windows spread evenly over the validation split", f"{len(starts) * T:,} of its {n_tokens:,} tokens"


def batch_at(tokens, start, B, T):
    """B consecutive windows of T tokens from start, and their next-token targets."""
    return DataLoader(tokens, B, T, position=start).next_batch()


def batch_of_windows(tokens, starts, T):
    """The windows of T tokens at starts, stacked, and their next-token targets: (len(starts), T) each."""
    windows = [batch_at(tokens, start, 1, T) for start in starts]
    return torch.cat([x for x, _ in windows]), torch.cat([y for _, y in windows])


def mean_loss(loss_fn, batches, device, ctx, byte_lengths):
    """The Evaluation of batches (x, y): loss_fn(x, y) is the mean over one batch; no
    autograd, so no graph is kept. Bits per byte is the sum over the targets of
    -log2 p(target), divided by the bytes of text they stand for (byte_lengths[id];
    <|endoftext|> counts 0)."""
    loss_fn.eval()
    nats, n_tokens, n_bytes = 0.0, 0, 0
    with torch.inference_mode():
        for x, y in batches:
            with ctx:
                loss = loss_fn(x.to(device), y.to(device))
            nats += loss.item() * y.numel()
            n_tokens, n_bytes = n_tokens + y.numel(), n_bytes + int(byte_lengths[y.numpy()].sum())
    loss_fn.train()
    return Evaluation(nats / n_tokens, nats / math.log(2) / max(1, n_bytes))


def sample_line(model, enc, cfg, device, ctx):
    """A short sample from sample_prompt at a fixed seed, on one line with its newlines
    shown as \\n: printed at each evaluation, to watch the model go from commas to words
    to verse. None when the prompt has tokens beyond the model's vocabulary."""
    prompt = enc.encode(cfg.sample_prompt).tolist()
    if not prompt or max(prompt) >= model.config.vocab_size:
        return None
    idx = torch.tensor([prompt], dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    model.eval()
    with ctx:
        out = model.generate(idx, cfg.eval_sample_tokens, top_k=50, generator=generator, n_vocab=enc.n_vocab)
    out = out[0, len(prompt):].tolist()
    model.train()
    text = cfg.sample_prompt + enc.decode(out)
    return text.replace("\n", "\\n")


# ----------------------------------------------------------------------------
# Starting and stopping a run


def resolve_config(flags):
    """(Config, the checkpoint to resume or None). On resume the constants are
    the defaults < the checkpoint's constants < flags given on the command line."""
    ckpt_path = os.path.join(flags.get("log_dir", Config.log_dir), "ckpt.pt")
    if flags.get("time_budget", 0) > 0 and "max_steps" in flags:
        raise UsageError("--time_budget fixes max_steps from the first steps' times: give --time_budget or --max_steps, "
                         "not both (--time_budget 0 turns a recipe's budget off)")
    if flags.get("init_from") != "resume":
        cfg = Config(**with_defaults(flags))  # a bad constant is named first
        if os.path.exists(ckpt_path):
            raise UsageError(
                f"{ckpt_path} exists from an earlier run: continue it with --init_from resume, "
                f"keep it by choosing another --log_dir, or delete it to start over"
            )
        if cfg.init_from != "scratch":
            check_tokenizer(flags.get("tokenizer"), cfg.init_from)
        return cfg, None
    if not os.path.exists(ckpt_path):
        raise UsageError(f"--init_from resume, but there is no {ckpt_path}: train first with `python train.py`")
    resumed = load_checkpoint(ckpt_path)
    missing = sorted(RESUME_KEYS - set(resumed))
    if missing:
        raise UsageError(f"{ckpt_path} cannot be resumed: it has no {', '.join(missing)}; fine-tune from it instead "
                         f"with --init_from {ckpt_path} --log_dir NEW_DIR")
    saved_optimizer = resumed["train_config"].get("optimizer", "adamw")
    if flags.get("optimizer", saved_optimizer) != saved_optimizer:
        raise UsageError(f"{ckpt_path} was trained with --optimizer {saved_optimizer}, whose state it holds: resume "
                         f"with that, or train a new model in another --log_dir")
    check_tokenizer(flags.get("tokenizer"), ckpt_path, resumed)
    changed = [f"--{k} {v}" for k, v in flags.items() if k in SHAPE_KEYS and resumed["config"].get(k) != v]
    if changed:
        shape = ", ".join(f"{k}={resumed['config'][k]}" for k in SHAPE_KEYS)
        raise UsageError(f"--init_from resume continues the checkpoint's model ({shape}), so {' '.join(changed)} "
                         f"cannot apply: drop it, or train a new model in another --log_dir")
    return Config(**{**resumed["train_config"], **flags}), resumed


def with_defaults(flags):
    """flags, with the defaults that depend on other flags: when max_steps is below the
    default warmup and --warmup_steps was not given, a warmup of a tenth of the steps
    (`python train.py --max_steps 5` just works); with --tokenizer bpe and no
    --vocab_size, a vocabulary of BPE_VOCAB_SIZE tokens."""
    max_steps = flags.get("max_steps", Config.max_steps)
    if "warmup_steps" not in flags and max_steps < Config.warmup_steps:
        flags = {**flags, "warmup_steps": short_warmup(max_steps)}
    if flags.get("tokenizer") == "bpe" and "vocab_size" not in flags:
        flags = {**flags, "vocab_size": BPE_VOCAB_SIZE}
    return flags


BPE_VOCAB_SIZE = 4096


def short_warmup(max_steps):
    return max(1, max_steps // 10)


# what resuming needs from a checkpoint, and the constants that fix a model's shape
RESUME_KEYS = {"model", "config", "optimizer", "step", "val_loss", "train_config", "data_position", "rng_state"}
SHAPE_KEYS = [f.name for f in dataclasses.fields(GPTConfig) if f.name not in ("dropout", "attn_dropout")]


def make_log_dir(log_dir):
    """Create log_dir and make sure files can be written there, before any work starts."""
    try:
        os.makedirs(log_dir, exist_ok=True)
        probe = os.path.join(log_dir, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UsageError(f"cannot write to log_dir {log_dir!r} ({e.strerror or e}): choose another --log_dir") from None


def micro_steps_per_step(cfg, world_size=1):
    """The number of micro-batches each process runs per step (Config.check made sure that
    B x T divides the batch), or a UsageError if the processes cannot share them evenly."""
    micro_steps = cfg.total_batch_size // (cfg.B * cfg.T)
    if micro_steps % world_size != 0:
        raise UsageError(f"total_batch_size / (B x T) = {micro_steps} micro-batches per step cannot be shared evenly "
                         f"among {world_size} processes: change --total_batch_size, --B or --T, or the process count")
    return micro_steps // world_size


def build_model(cfg, resumed):
    """(The model to train, the tokenizer whose ids its weights know): from a checkpoint
    (resumed), from another checkpoint file (this project's or nanoGPT's) or from
    pretrained GPT-2, which bring their tokenizer; or from scratch, which brings none (None)."""
    if resumed is not None:
        return model_from_checkpoint(resumed, cfg.dropout, cfg.attn_dropout), checkpoint_tokenizer(resumed)
    if cfg.init_from == "scratch":
        return GPT(model_shape(cfg)), None
    if cfg.init_from.endswith(".pt") and not os.path.exists(cfg.init_from):
        raise UsageError(f"no checkpoint at {cfg.init_from}: check the path given to --init_from")
    if os.path.isfile(cfg.init_from):
        ckpt = load_checkpoint(cfg.init_from)
        model, tok = model_from_checkpoint(ckpt, cfg.dropout, cfg.attn_dropout), checkpoint_tokenizer(ckpt)
        print(f"fine-tuning {cfg.init_from}: {ckpt['kind']}, {tok.name} tokenizer")
    else:
        model, tok = load_pretrained(cfg.init_from, cfg.dropout, cfg.attn_dropout), gpt2()
    changed = [f"{k}={v} (was {getattr(cfg, k)})" for k, v in dataclasses.asdict(model.config).items() if getattr(cfg, k) != v]
    if changed:
        print(f"{cfg.init_from} brings its own shape: {', '.join(changed)}")
    return model, tok


def load_splits(cfg, brought):
    """(training tokens, validation tokens, the Tokens they came from), made with the
    tokenizer the model brought or, from scratch, the one cfg.tokenizer names; each split
    checked against the batch."""
    loaded = load_tokens(cfg.input_file, cache_root(cfg.data_cache),  # "auto" is resolved here, never stored
                         brought or cfg.tokenizer, cfg.vocab_size)
    train_tokens, val_tokens = split_tokens(loaded.tokens, loaded.n_train, cfg.B, cfg.T, cfg.input_file)
    return train_tokens, val_tokens, loaded


def padded_vocab(n_vocab):
    """The model's output rows for n_vocab tokens: a multiple of 64, for faster matmuls."""
    return -(-n_vocab // 64) * 64


def training_state(model, optimizer, cfg, loader, step, val_loss, tokenizer, elapsed, steps_fixed):
    """Everything a resumed run needs to continue exactly where this one stopped."""
    return {
        "elapsed": elapsed,  # seconds of training so far, all runs together: log.txt's last column goes on from it
        "steps_fixed": steps_fixed,  # False while a time budget has not fixed max_steps yet
        "tokenizer": tokenizer.to_dict(),  # so the checkpoint samples, fine-tunes and exports without the text
        "model": model.state_dict(),  # the plain model's: no "_orig_mod." prefixes from compile
        "config": dataclasses.asdict(model.config),
        "model_args": nanogpt_model_args(model.config),  # the same, under the name nanoGPT reads
        "optimizer": optimizer.state_dict(),
        "step": step,  # steps done: a resumed run starts here
        "val_loss": val_loss,
        "train_config": dataclasses.asdict(cfg),
        "data_position": loader.position,
        "rng_state": torch.get_rng_state(),
    }


def nanogpt_model_args(config):
    """The GPTConfig as nanoGPT's GPTConfig takes it: without attn_dropout, which it lacks."""
    return {name: value for name, value in dataclasses.asdict(config).items() if name != "attn_dropout"}


class Interrupt:
    """The first Ctrl-C (SIGINT), or the SIGTERM that `timeout` and cluster schedulers send
    before they kill, asks the loop to stop after the current step and save. Alone, a
    second signal of either kind quits at once, without saving; and once the last step is
    saved (after_training), the first one does. Under torchrun further signals are
    ignored: Ctrl-C reaches torchrun too, which then sends every process a SIGTERM, and
    all processes must reach the end of the step together for the save to happen."""

    def __init__(self, alone=True):
        self.signal = None  # the signal that asked to stop, once one has
        self.alone = alone
        self.at_once = False
        signal.signal(signal.SIGINT, self.handle)
        signal.signal(signal.SIGTERM, self.handle)

    @property
    def requested(self):
        return self.signal is not None

    def after_training(self):
        """From now on a signal ends the run at once: the checkpoint is already on disk.
        A signal that came during the last step ends it here."""
        self.at_once = self.alone
        if self.at_once and self.requested:
            raise Quit(self.signal)

    def handle(self, signum, frame):
        if self.alone and (self.at_once or self.requested):
            raise Quit(signum)
        if self.requested:
            return  # under torchrun: the save is already on its way
        self.signal = signum
        print(f"\n{SIGNAL_NAMES[signum]}: saving a checkpoint after this step (Ctrl-C again to quit without saving)",
              flush=True)


class Quit(BaseException):
    """Raised by a signal that ends the run at once. Not an Exception, so that no
    `except Exception` on the way can swallow it."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


SIGNAL_NAMES = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}


def diverged(what, step):
    """The RunFailure for a run whose numbers blew up: nothing is saved after it."""
    return RunFailure(f"{what} at step {step}: the learning rate is usually too high (lower --max_lr, or raise "
                      f"--warmup_steps) or, in bfloat16, the precision too low (try --dtype float32). Nothing was "
                      f"saved after the last good checkpoint")


def typical_step(step_times):
    """The mean step time, leaving out the first step and its one-off warm-up."""
    return sum(step_times[1:]) / (len(step_times) - 1) if len(step_times) > 1 else step_times[0]


def recent_step(step_times, cfg):
    """The mean time of the last eval_interval steps, never the first and its one-off
    warm-up: what a time budget plans the next steps with."""
    recent = step_times[max(1, len(step_times) - cfg.eval_interval):] or step_times
    return sum(recent) / len(recent)


def format_eta(step_times, steps_left):
    """Time left at the typical step time."""
    return format_minutes(typical_step(step_times) * steps_left)


# ----------------------------------------------------------------------------
# log/: the losses as lines, and as a picture


def trim_log(log_path, first_step):
    """On resume, drop log lines from steps the checkpoint had not reached yet."""
    if not os.path.exists(log_path):
        return
    with open(log_path) as f:
        kept = [line for line in f if int(line.split()[0]) < first_step]
    with open(log_path, "w") as f:
        f.writelines(kept)


def read_log(log_path):
    """{kind: {step: value}} from train.py's log.txt, whose lines are `step kind value seconds`:
    train (the training loss), val (the validation loss) and val_bpb (its bits per byte),
    and the seconds since the run began when the line was written. The seconds of the
    train lines are under "seconds" (logs from before they were written have none)."""
    curves = {"train": {}, "val": {}, "val_bpb": {}, "seconds": {}}
    with open(log_path) as f:
        for line in f:
            step, kind, value, *seconds = line.split()
            curves[kind][int(step)] = float(value)
            if kind == "train" and seconds:
                curves["seconds"][int(step)] = float(seconds[0])
    return curves


def plot_losses(log_path, png_path, title, tokens_per_step):
    """Draw the training loss of every step and the validation loss at its steps into
    png_path. Returns False, after saying so, when matplotlib cannot be imported."""
    plt = pyplot("no loss plot")
    if plt is None:
        return False
    curves = read_log(log_path)
    train_losses, val_losses = curves["train"], curves["val"]
    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    ax.plot(list(train_losses), list(train_losses.values()), color="tab:blue", linewidth=1, label="training loss (each step)")
    ax.plot(list(val_losses), list(val_losses.values()), color="tab:orange", marker="o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats per token)")
    tokens = ax.secondary_xaxis("top", functions=(lambda s: s * tokens_per_step, lambda t: t / tokens_per_step))
    tokens.xaxis.set_major_formatter(lambda t, _: f"{t / 1e6:g}M" if t >= 1e6 else f"{t / 1e3:g}k" if t >= 1e3 else f"{t:g}")
    tokens.set_xlabel("tokens seen")
    if curves["val_bpb"]:
        # every evaluation reads the same tokens, so bits per byte is the validation loss
        # times one fixed factor: a second scale on the right reads it off
        last = max(curves["val_bpb"])
        ratio = curves["val_bpb"][last] / val_losses[last] if val_losses.get(last) else 1.0
        bits = ax.secondary_yaxis("right", functions=(lambda n: n * ratio, lambda b: b / ratio))
        bits.set_ylabel("validation loss in bits per byte")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    tmp = png_path + ".tmp"
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)  # a viewer never sees a half-written picture
    return True


# ----------------------------------------------------------------------------
# The run


@dataclass
class Run:
    """What the loop works with, set up once by main()."""

    cfg: Config
    processes: Processes
    device: str
    ctx: object  # the autocast context, or nothing to switch on
    model: GPT  # the plain model: evaluated, saved
    train_loss: torch.nn.Module  # the model as training calls it: chunked, compiled, wrapped in DDP
    eval_loss: torch.nn.Module  # the plain model's loss: compiling it again for inference would not pay
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    val_tokens: object
    tokenizer: Tokenizer  # its byte_lengths turn losses into bits per byte
    bytes_per_token: float  # of this text: the final evaluation's cap is in bytes
    grad_accum_steps: int  # micro-steps per step, in this process
    first_step: int
    val_loss: Optional[float]
    clock: Clock  # seconds since this process started
    elapsed_before: float  # seconds of the runs this one resumes
    steps_fixed: bool  # False while a time budget has yet to fix max_steps
    steps_announced: int  # the step count the time budget's lines last said

    def elapsed(self):
        """Seconds of training so far, the runs this one resumes included."""
        return self.elapsed_before + self.clock.elapsed()


def main(argv=None):
    clock = Clock()  # a time budget counts from the process's start
    # settings, and the machine: one process, or one of several under torchrun
    cfg, resumed = resolve_config(parse_flags(argv))
    processes = Processes()
    grad_accum_steps = micro_steps_per_step(cfg, processes.world_size)
    processes.start(cfg.device)
    if not processes.main:
        sys.stdout = open(os.devnull, "w")  # only the first process prints
    try:
        run = set_up(cfg, resumed, processes, grad_accum_steps, clock)
        train(run)
        # leave together, and only after a run that did not fail (a failed process may never
        # come): one that closed while another still worked could abort in gloo
        processes.barrier()
    finally:
        processes.close()


def set_up(cfg, resumed, processes, grad_accum_steps, clock):
    """The model, the data, the optimizer and the loss to train, ready for the loop."""
    if processes.main:
        make_log_dir(cfg.log_dir)
    device, device_type, dtype, ctx = set_up_device(cfg.device, cfg.dtype, cfg.threads, processes)
    model, train_tokens, val_tokens, loaded = model_and_data(cfg, resumed, processes)
    model.to(device)
    if device_type == "cpu":
        use_fast_dropout(model)  # the same dropout, from cheaper random numbers
    loader = DataLoader(train_tokens, cfg.B, cfg.T, rank=processes.rank, world_size=processes.world_size)

    # the optimizer, and the loss that training calls (compiled where it helps)
    optimizer = configure_optimizers(model, cfg.weight_decay, cfg.max_lr, cfg.betas, device_type, cfg.optimizer,
                                     cfg.adamw_lr_ratio, dtype)
    train_loss, compile_note = TrainingLoss(model, chunked=cfg.chunked_loss), "off"
    if want_compile(cfg.compile, device_type):
        train_loss, compile_note = compile_training_loss(train_loss, cfg, device, ctx)
    train_loss = processes.wrap(train_loss, device)
    first_step, val_loss = 0, None
    log_path = os.path.join(cfg.log_dir, "log.txt")
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        loader.position = resumed["data_position"]
        torch.set_rng_state(resumed["rng_state"])
        first_step, val_loss = resumed["step"], resumed["val_loss"]
        if processes.main:
            trim_log(log_path, first_step)
        print(f"resuming from {os.path.join(cfg.log_dir, 'ckpt.pt')} at step {first_step}")
    elif processes.main and os.path.exists(log_path):
        os.remove(log_path)  # a new run starts a new log
    steps_fixed = cfg.time_budget == 0 or (resumed is not None and resumed.get("steps_fixed", True))
    if not steps_fixed:
        cfg = dataclasses.replace(cfg, max_steps=UNFIXED_STEPS, eval_interval=UNFIXED_STEPS)
    elif cfg.time_budget > 0:
        print(f"the time budget fixed max_steps at {cfg.max_steps} when this run began: resuming keeps it")
    shortened = cfg.max_steps < Config.warmup_steps and cfg.warmup_steps == short_warmup(cfg.max_steps)
    print(
        f"device {device} | dtype {dtype} | threads {torch.get_num_threads()} | compile {compile_note} | "
        f"chunked loss {'on' if cfg.chunked_loss else 'off'} | {dropout_note(cfg, model)}"
        f"optimizer {describe_optimizer(cfg.optimizer, dtype)} | "
        f"{'warmup ' + str(cfg.warmup_steps) + ' (a tenth of max_steps) | ' if shortened else ''}"
        f"{budget_note(cfg, steps_fixed)}"
        f"parameters {model.num_params():,} | tokens per step {cfg.total_batch_size:,} | "
        f"grad accumulation steps {grad_accum_steps * processes.world_size} | world size {processes.world_size} | "
        f"train/val tokens {len(train_tokens):,}/{len(val_tokens):,} | "
        f"tokens {'cached' if loaded.cached else 'new'}: {loaded.entry}",
        flush=True,
    )
    return Run(cfg, processes, device, ctx, model, train_loss, TrainingLoss(model, chunked=cfg.chunked_loss), optimizer,
               loader, val_tokens, loaded.tokenizer, loaded.text_bytes / len(loaded.tokens), grad_accum_steps,
               first_step, val_loss, clock, resumed.get("elapsed", 0.0) if resumed else 0.0, steps_fixed,
               cfg.max_steps)


def budget_note(cfg, steps_fixed):
    """The start-up line's words on the time budget, if it is still to fix the steps."""
    if steps_fixed:
        return ""
    return f"time budget {cfg.time_budget:g} min: max_steps fixed after step {timed_steps(cfg.warmup_steps) - 1} | "


def dropout_note(cfg, model):
    """The start-up line's words on dropout, if there is any, and whether its masks are
    drawn the fast way (speed.FastDropout)."""
    if cfg.dropout == 0:
        return ""
    fast = any(isinstance(module, FastDropout) for module in model.modules())
    return f"dropout {cfg.dropout:g}{' (16-bit masks)' if fast else ''} | "


def model_and_data(cfg, resumed, processes):
    """(the model, the training and validation tokens, the Tokens they came from). A model
    from a checkpoint or GPT-2 brings its tokenizer; from scratch, the tokens come first,
    since a BPE's vocabulary, and so the model's rows, is known only once it is trained."""
    torch.manual_seed(cfg.seed)
    model, brought = build_model(cfg, resumed)
    if cfg.T > model.config.block_size:
        raise UsageError(f"T={cfg.T} is longer than the model's block_size={model.config.block_size}: lower --T")
    if not processes.main:
        processes.barrier()  # wait while the first process tokenizes, then read the entry it cached
    train_tokens, val_tokens, loaded = load_splits(cfg, brought)
    if processes.main:
        processes.barrier()
    tok = loaded.tokenizer
    if brought is None and tok.name == "bpe" and padded_vocab(tok.n_vocab) != model.config.vocab_size:
        torch.manual_seed(cfg.seed)  # the BPE learned fewer tokens than vocab_size: fewer rows
        model = GPT(dataclasses.replace(model_shape(cfg), vocab_size=padded_vocab(tok.n_vocab)))
    if loaded.max_token >= model.config.vocab_size:
        raise UsageError(f"{cfg.input_file} has tokens beyond the model's vocab_size={model.config.vocab_size}")
    print(f"tokenizer {tok.name} | {tok.n_vocab:,} tokens | {loaded.train_bytes / loaded.n_train:.2f} bytes per token "
          f"on the training text | {cfg.sample_prompt!r} is {tok.show(cfg.sample_prompt)}")
    return model, train_tokens, val_tokens, loaded


def train(run):
    """The loop: a step, its line, and at every eval_interval an evaluation and a checkpoint.
    With a time budget, the first evaluation and checkpoint come after the timed steps and
    fix the step count (fix_steps); each later evaluation may move it (adjust_steps), and
    between evaluations every step may move it earlier."""
    processes = run.processes
    ckpt_path, log_path = os.path.join(run.cfg.log_dir, "ckpt.pt"), os.path.join(run.cfg.log_dir, "log.txt")
    interrupt = Interrupt(alone=processes.world_size == 1)
    step_times, save_seconds, budget_costs = [], 0.0, None
    plotting = processes.main and pyplot("no loss plot") is not None  # imported now, so that no evaluation's time holds it
    val_loss = run.val_loss
    deciding_at = budget_decision_step(run)
    step = run.first_step
    while step < run.cfg.max_steps:
        cfg = run.cfg  # fix_steps replaces it once, with a time budget
        last_step = step == cfg.max_steps - 1
        step_start = time.time()
        lr = get_lr(step, cfg)
        set_learning_rate(run.optimizer, lr)
        loss, norm = train_step(run.train_loss, run.optimizer, run.loader, run.grad_accum_steps, cfg, run.device, run.ctx,
                                processes)
        loss, stop = processes.agree(loss, interrupt.requested)  # the same loss and decision in every process
        if not math.isfinite(loss):  # the weights are broken now: never save them
            raise diverged(f"the loss became {loss}", step)
        if run.device.startswith("cuda"):
            torch.cuda.synchronize()  # the GPU works asynchronously: wait for it before timing
        dt = time.time() - step_start
        step_times.append(dt)
        if deciding_at is not None and step == run.first_step:
            check_fits(cfg.time_budget, run.clock.elapsed(), 0, "start-up, compiling and the first step")
        print(
            f"step {step:4d} | loss {loss:.6f} | lr {lr:.4e} | norm {norm:.4f} | dt {dt * 1000:.2f}ms | "
            f"tok/sec {cfg.total_batch_size / dt:.2f} | eta {eta(run, step_times, step)}",
            flush=True,
        )
        holding = not run.steps_fixed and deciding_at is None and not last_step and not evaluates_after(step, cfg)
        if holding:  # between evaluations; a resumed run has no costs until its first evaluation, and keeps its count
            costs = None if budget_costs is None else budget_costs._replace(step=recent_step(step_times, cfg))
            run.cfg = adjust_steps(run, step, costs, earlier_only=True)
        evaluating = evaluates_after(step, cfg) or step == deciding_at or (holding and passed_evaluation(step, cfg, run.cfg))
        adjusting = not run.steps_fixed and evaluating and not last_step and step != deciding_at
        if not processes.main:
            if step == deciding_at:
                run.cfg = fix_steps(run, step)  # as the first process fixed them
                deciding_at = None
            elif adjusting:
                run.cfg = adjust_steps(run, step)
            if stop and not last_step:
                return  # the first process saves and says how to continue
            step += 1
            continue
        write_log(log_path, step, "train", f"{loss:.6f}", run)
        evaluation_start = time.time()
        if evaluating:
            val_loss, evaluate_seconds, plotting = evaluate_and_show(run, step, log_path, plotting)
        if step == deciding_at:  # before the first save: a run refused here leaves no checkpoint behind
            check_fits(cfg.time_budget, run.clock.elapsed(), final_eval_seconds(run, evaluate_seconds),
                       f"start-up, compiling, {step + 1 - run.first_step} steps and an evaluation")
        if adjusting:  # before the save, so that the checkpoint holds the count the run goes on with
            evaluation_seconds = time.time() - evaluation_start + save_seconds
            budget_costs = BudgetCosts(recent_step(step_times, cfg), evaluation_seconds, evaluate_seconds)
            run.cfg = adjust_steps(run, step, budget_costs, extra_seconds=save_seconds)
        if processes.world_size == 1:
            stop = interrupt.requested  # a Ctrl-C during the evaluation counts now; under torchrun, at the next step
        if evaluating or stop:
            save_start = time.time()
            save_training_state(run, ckpt_path, step, val_loss, steps_fixed=deciding_at is None)
            save_seconds = time.time() - save_start
        if step == deciding_at:
            budget_costs = BudgetCosts(typical_step(step_times), time.time() - evaluation_start, evaluate_seconds)
            run.cfg = fix_steps(run, step, budget_costs)
            save_training_state(run, ckpt_path, step, val_loss, steps_fixed=True)
            deciding_at = None
        if stop and not last_step:
            log_flag = f" --log_dir {cfg.log_dir}" if cfg.log_dir != Config.log_dir else ""
            print(f"saved {ckpt_path} after step {step}; continue with: python train.py --init_from resume{log_flag}")
            if processes.world_size == 1:
                sys.exit(128 + interrupt.signal)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
            return  # under torchrun, exit code 0: torchrun reports any other code as a crash
        step += 1

    if processes.main:
        finish(run, interrupt, val_loss, ckpt_path)


def evaluates_after(step, cfg):
    """Whether an evaluation and a checkpoint follow step: every eval_interval steps and at
    the last. A time budget counts them back from the last step, which it may move."""
    if cfg.time_budget > 0:
        return evaluates_at(step, cfg.max_steps, cfg.eval_interval)
    return (step + 1) % cfg.eval_interval == 0 or step == cfg.max_steps - 1


def evaluate_and_show(run, step, log_path, plotting):
    """The validation loss, its lines in the output and in log.txt, the loss plot and a
    sample. Returns (the loss, the seconds the evaluation itself took, whether to keep
    plotting: False once matplotlib turned out to be missing)."""
    cfg = run.cfg
    started = time.time()
    evaluation = evaluate(run.eval_loss, run.val_tokens, cfg, run.device, run.ctx, run.tokenizer.byte_lengths)
    evaluate_seconds = time.time() - started
    if not math.isfinite(evaluation.loss):
        raise diverged(f"the validation loss became {evaluation.loss}", step)
    print(f"step {step:4d} | val loss {evaluation}", flush=True)
    write_log(log_path, step, "val", f"{evaluation.loss:.4f}", run)
    write_log(log_path, step, "val_bpb", f"{evaluation.bits_per_byte:.4f}", run)
    if plotting:
        shape = run.model.config
        title = f"{run.model.num_params() / 1e6:.1f}M-parameter GPT ({shape.n_layer} layers, {shape.n_embd} wide) on {cfg.input_file}"
        plotting = plot_losses(log_path, os.path.join(cfg.log_dir, "loss.png"), title, cfg.total_batch_size)
    if cfg.eval_sample_tokens > 0 and (text := sample_line(run.model, run.tokenizer, cfg, run.device, run.ctx)) is not None:
        print(f"step {step:4d} | sample: {text}", flush=True)
    return evaluation.loss, evaluate_seconds, plotting


def save_training_state(run, ckpt_path, step, val_loss, steps_fixed):
    """The checkpoint after step, once the weights are checked to still be numbers."""
    if not all(torch.isfinite(p).all() for p in run.model.parameters()):
        raise diverged("the weights stopped being numbers (inf or nan)", step)
    save_checkpoint(ckpt_path, training_state(run.model, run.optimizer, run.cfg, run.loader, step + 1, val_loss,
                                              run.tokenizer, run.elapsed(), steps_fixed))


def write_log(log_path, step, kind, value, run):
    """One line of log.txt: the step, what was measured, its value, and the seconds since the run began."""
    with open(log_path, "a") as f:
        f.write(f"{step} {kind} {value} {run.elapsed():.1f}\n")


# ----------------------------------------------------------------------------
# The time budget: max_steps fixed from the first steps' times (the arithmetic is in budget.py)

UNFIXED_STEPS = 10**9  # max_steps and eval_interval until the budget fixes them: the cosine has not begun


class BudgetCosts(NamedTuple):
    """What the timed start of a run measured, in seconds."""

    step: float  # a typical training step
    evaluation: float  # an evaluation with its lines, plot, sample and checkpoint
    evaluate: float  # the validation loss alone, over eval_steps batches


def budget_decision_step(run):
    """The step after which the time budget fixes max_steps, or None when it is fixed already."""
    if run.steps_fixed:
        return None
    # the warmup from step 0; a run resumed before the decision times a few steps of its own
    return max(timed_steps(run.cfg.warmup_steps), run.first_step + MIN_TIMED_STEPS) - 1


def fix_steps(run, step, costs=None):
    """The Config with max_steps and eval_interval fixed so that the command ends within
    its time budget, after the timed steps. The first process decides from costs and
    tells the others."""
    cfg = run.cfg
    max_steps = 0
    if costs is not None:  # the decision's own checkpoint comes next: one more save
        max_steps = steps_for_budget(run, step, costs, cfg.evaluations, extra_seconds=costs.evaluation)
        end = planned_end(run, step, max_steps, costs, cfg.evaluations, extra_seconds=costs.evaluation)
        print(f"time budget {cfg.time_budget:g} min: {max_steps} steps of {costs.step:.1f} s, {cfg.evaluations} "
              f"evaluations of {costs.evaluation:.1f} s and a final one of about "
              f"{final_eval_seconds(run, costs.evaluate):.0f} s; the run should end after {format_minutes(end)}",
              flush=True)
    max_steps = run.processes.share(max_steps)
    run.steps_announced = max_steps
    interval = eval_interval_for(max_steps - 1 - step, cfg.evaluations)  # over the steps after this one
    return dataclasses.replace(cfg, max_steps=max_steps, eval_interval=interval)


def adjust_steps(run, step, costs=None, extra_seconds=0.0, earlier_only=False):
    """The Config with max_steps moved at an evaluation, when the steps have become slower
    or faster since it was fixed (a machine's speed drifts), so that the run still ends
    within its budget: the cosine then ends at the new last step, and the evaluations
    still to come are spread over the steps still to come. extra_seconds: the save still
    to come at this step. earlier_only: between evaluations, after every step, the last
    step only moves earlier, when the steps have slowed so that the run would end late,
    and the evaluations to come with it (one it passes comes at once: passed_evaluation);
    an evaluation, which measures everything again, may move it later. The first process
    decides from costs and tells the others, and says a move made at an evaluation, or
    between evaluations one of more than 1% since the count it last said."""
    cfg = run.cfg
    left = max(1, evaluations_after(step, cfg.max_steps, cfg.eval_interval))
    max_steps = cfg.max_steps
    if costs is not None:
        max_steps = steps_for_budget(run, step, costs, left, extra_seconds)
        if earlier_only:  # and never before the next step, which then evaluates and saves
            max_steps = max(step + 2, min(max_steps, cfg.max_steps))
    max_steps = run.processes.share(max_steps)
    # between evaluations the interval stays, so the evaluations still to come move earlier with the last step;
    # spread again after every step, they would slide ahead of the run and never come
    interval = cfg.eval_interval if earlier_only else eval_interval_for(max_steps - 1 - step, left)
    moved = abs(max_steps - run.steps_announced)
    if costs is not None and moved > 0 and (not earlier_only or moved > run.steps_announced // 100):
        end = planned_end(run, step, max_steps, costs, left, extra_seconds)
        print(f"time budget {cfg.time_budget:g} min: steps now take {costs.step:.2f} s, so {max_steps} steps "
              f"instead of {run.steps_announced}, evaluating every {interval}; the run should end after "
              f"{format_minutes(end)}", flush=True)
        run.steps_announced = max_steps
    return dataclasses.replace(cfg, max_steps=max_steps, eval_interval=interval)


def steps_for_budget(run, step, costs, evaluations, extra_seconds=0.0):
    """max_steps: as many steps after `step` as fit in what is left of the budget, with
    `evaluations` evaluations, the final one and extra_seconds of other work."""
    now = run.clock.elapsed() + extra_seconds
    more = steps_that_fit(run.cfg.time_budget * 60 - now, costs.step, evaluations, costs.evaluation,
                          final_eval_seconds(run, costs.evaluate))
    return step + 1 + more


def planned_end(run, step, max_steps, costs, evaluations, extra_seconds=0.0):
    """When a run that goes on to max_steps should end, in seconds from the start."""
    more = max_steps - 1 - step
    return run.clock.elapsed() + extra_seconds + planned_seconds(more, costs.step, evaluations, costs.evaluation,
                                                                 final_eval_seconds(run, costs.evaluate))


def final_eval_seconds(run, evaluate_seconds):
    """The final evaluation's time, from that of a periodic one (evaluate_seconds): the
    same forward passes over more tokens."""
    cfg = run.cfg
    starts = final_windows(len(run.val_tokens), cfg.T, int(FINAL_EVAL_BYTES / run.bytes_per_token))
    return evaluate_seconds * len(starts) * cfg.T / (cfg.eval_steps * cfg.B * cfg.T)


def eta(run, step_times, step):
    """The time left: to the end of the time budget when there is one, else at the typical step time."""
    if not run.steps_fixed:
        return format_minutes(run.cfg.time_budget * 60 - run.clock.elapsed())
    return format_eta(step_times, run.cfg.max_steps - step - 1)


def finish(run, interrupt, val_loss, ckpt_path):
    """After the last step, whose checkpoint is saved: the final evaluation and the closing
    lines. A signal now ends the run within seconds, with the shell's exit code."""
    cfg, tokens = run.cfg, run.val_tokens
    try:
        interrupt.after_training()
        if run.first_step >= cfg.max_steps:
            print(f"the checkpoint is at step {run.first_step} and max_steps is {cfg.max_steps}: no steps to "
                  f"take (raise --max_steps to train further)")
        starts = final_windows(len(tokens), cfg.T, int(FINAL_EVAL_BYTES / run.bytes_per_token))
        scope, size = describe_windows(starts, len(tokens), cfg.T)
        print(f"final evaluation {scope} ({size})", flush=True)
        started = time.time()
        final = evaluate_windows(run.eval_loss, tokens, starts, cfg.T, run.device, run.ctx, run.tokenizer.byte_lengths)
        last = f", final val loss {val_loss:.4f}" if val_loss is not None else ""
        print(f"done: checkpoint in {ckpt_path}{last} ({scope}: {final} over {size}, in {time.time() - started:.1f}s)")
        print(f'sample from it with: python sample.py --ckpt {ckpt_path} --prompt "ROMEO:"')
        if not run.steps_fixed:
            print(f"time budget {cfg.time_budget:g} min: {cfg.max_steps} steps, and the command took "
                  f"{format_minutes(run.clock.elapsed())} to this line", flush=True)
    except Quit as quit:
        print(f"\n{SIGNAL_NAMES[quit.signum]}: the checkpoint {ckpt_path} was saved after the last step; "
              f"stopped before the final evaluation ended", flush=True)
        sys.exit(128 + quit.signum)


def exit_without_teardown():
    """Ends a run that finished, at once. The interpreter's teardown frees every object
    one by one, where the OS frees the whole process in a blink: it took 1.5 s after a
    2-minute run and about 10 s after a 2-hour one (Xeon), past the time budget. The
    atexit callbacks still run, and the output is flushed first."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    try:
        run_main("train.py", main)
    except KeyboardInterrupt:  # Ctrl-C before the loop began
        print("quit without saving", file=sys.stderr)
        sys.exit(130)
    except Quit as quit:  # a second signal
        print("quit without saving", file=sys.stderr)
        sys.exit(128 + quit.signum)
    exit_without_teardown()
