"""
Train a GPT on a plain text file, end to end.

    python train.py                                  # the default 6-layer model on ./input
    python train.py --max_steps 10 --n_layer 4 --B 2 # every constant below is also a flag
    python train.py --init_from resume               # continue from log/ckpt.pt
    python train.py --init_from gpt2                 # fine-tune OpenAI's GPT-2 124M

Edit the constants in Config, or pass them as flags (`python train.py --help`).
Read it top to bottom: the constants; the learning rate, a step, an evaluation and the
sample line; then set_up() (tokenizer, tokens, model, optimizer), train() (the loop)
and finish() (the final evaluation). The machinery they call lives in machinery/.
"""

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional

import torch

from checkpoint import (build_model, check_tokenizer, restore, resumable, save_checkpoint, source_tokenizer,
                        starting_point, training_state)
from machinery.averaging import WeightAverage
from machinery.budget import Clock, Steps, TimeBudget, size_model
from machinery.cli import AutoBool, RunFailure, UsageError, check_fields, flag_parser, require, require_at_least, run_main
from machinery.data import FINAL_EVAL_BYTES, DataLoader, Windows, cache_root, final_windows, load_splits, periodic_windows
from machinery.logbook import Logbook, make_log_dir
from machinery.optimizer import configure_optimizers, describe_optimizer
from machinery.processes import SIGNAL_NAMES, Interrupt, Processes, Quit, exit_at_once
from machinery.speed import (TrainingLoss, check_device, compile_model, describe_dropout, prepare_device, rung_speed,
                             seconds_since, use_fast_dropout, want_compile)
from machinery.tokenizer import Tokenizer, padded_vocab
from model import GPT, GPTConfig

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
    size: Literal["fixed", "auto"] = "fixed"  # auto, with time_budget: the model's shape, batch, dropout and weight decay chosen for this machine and text (a flag or an edited constant wins)
    optimizer: Literal["adamw", "muon"] = "adamw"  # adamw, as GPT-2; muon: Muon for the matrices inside the blocks
    adamw_lr_ratio: float = 1.0  # with muon: the learning rate of what AdamW still trains (embeddings, biases, LayerNorms), as a fraction of max_lr
    weight_decay: float = 0.1  # pulls matrices towards zero each step (AdamW's and, with muon, Muon's); not biases or LayerNorms
    betas: tuple = (0.9, 0.95)  # AdamW's moving-average rates for the gradient and its square
    grad_clip: float = 1.0  # clip the gradient's global norm to this (0: no clipping)
    ema_decay: float = 0.0  # keep a moving average of the weights, this much of it kept each step, as the model (0: off)
    shuffle: bool = True  # each pass over the text after the first reads its windows in a fresh order (off: in order)
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
        require(0 <= self.ema_decay < 1, f"ema_decay must be at least 0 and below 1, not {self.ema_decay}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1), not {self.betas}")
        require(self.tokenizer == "gpt2" or 320 <= self.vocab_size <= 65536,
                f"vocab_size={self.vocab_size} with --tokenizer bpe must be 320 to 65536: the 256 bytes and at least 63 "
                f"merges, and ids that fit the token cache's 16 bits")
        require(self.n_embd % self.n_head == 0,
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}: each head gets n_embd / n_head channels")
        require(self.size == "fixed" or self.time_budget > 0, "--size auto sizes the model for a time budget: give --time_budget")
        require(self.time_budget > 0 or self.warmup_steps <= self.max_steps,
                f"warmup_steps={self.warmup_steps} is more than max_steps={self.max_steps}: lower --warmup_steps")
        require(self.init_from != "scratch" or self.T <= self.block_size,
                f"T={self.T} is longer than block_size={self.block_size}: lower --T or raise --block_size")
        require(self.total_batch_size % (self.B * self.T) == 0,
                f"total_batch_size={self.total_batch_size} must be a multiple of B x T = {self.B} x {self.T} = "
                f"{self.B * self.T}: change --total_batch_size, --B or --T")
        check_device(self.device)


# The values Config ships with for the constants --size auto chooses: one still at its
# shipped value was not edited, so the sizing may choose it (tests/test_code.py checks them)
SHIPPED = dict(n_layer=6, n_head=6, n_embd=384, B=4, total_batch_size=8192, dropout=0.0, weight_decay=0.1)


def parse_flags(argv=None):
    """The constants given on the command line, as a dict."""
    return vars(flag_parser(Config, "train.py", "Train a GPT on a text file.").parse_args(argv))


def model_shape(cfg, vocab_size=None):
    """The GPTConfig the constants describe; vocab_size, if given, replaces theirs."""
    shape = GPTConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(GPTConfig)})
    return shape if vocab_size is None else dataclasses.replace(shape, vocab_size=vocab_size)


# ----------------------------------------------------------------------------
# The learning-rate schedule


def get_lr(step, max_steps, cfg):
    """Linear warmup to max_lr over warmup_steps, then cosine decay to min_lr at max_steps.
    Warmup keeps the first updates small while Adam's estimates are still noisy."""
    if step < cfg.warmup_steps:
        return cfg.max_lr * (step + 1) / cfg.warmup_steps
    if step >= max_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps)  # 0 -> 1
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


def evaluate(loss_fn, tokens, windows, device, ctx, byte_lengths):
    """The Evaluation of the windows (machinery/data.py's Windows) of tokens: the periodic
    evaluation's few batches, or the final one's every window. loss_fn(x, y) is the mean
    over one batch; no autograd, so no graph is kept. Bits per byte is the sum over the
    targets of -log2 p(target), divided by the bytes of text they stand for
    (byte_lengths[id]; <|endoftext|> counts 0)."""
    loss_fn.eval()
    nats, n_tokens, n_bytes = 0.0, 0, 0
    with torch.inference_mode():
        for x, y in windows.batches(tokens):
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
# Setting up a run


def resolve_config(flags):
    """(Config, the checkpoint to resume or None). On resume the constants are
    the defaults < the checkpoint's constants < flags given on the command line."""
    ckpt_path = os.path.join(flags.get("log_dir", Config.log_dir), "ckpt.pt")
    if flags.get("time_budget", 0) > 0 and "max_steps" in flags:
        raise UsageError("--time_budget fixes max_steps from the first steps' times: give --time_budget or --max_steps, "
                         "not both (--time_budget 0 turns a recipe's budget off)")
    if flags.get("init_from") == "resume":
        resumed = resumable(ckpt_path, flags)
        return Config(**{**resumed["train_config"], **flags}), resumed
    cfg = Config(**with_defaults(flags))  # a bad constant is named first
    if os.path.exists(ckpt_path):
        raise UsageError(f"{ckpt_path} exists from an earlier run: continue it with --init_from resume, keep it by "
                         f"choosing another --log_dir, or delete it to start over")
    if cfg.init_from != "scratch":
        check_tokenizer(flags.get("tokenizer"), cfg.init_from)
    return cfg, None


BPE_VOCAB_SIZE = 4096


def with_defaults(flags):
    """flags, with the defaults that depend on others: a warmup of a tenth of max_steps below the default
    warmup (`python train.py --max_steps 5` just works); BPE_VOCAB_SIZE tokens for a bpe."""
    max_steps = flags.get("max_steps", Config.max_steps)
    if "warmup_steps" not in flags and max_steps < Config.warmup_steps:
        flags = {**flags, "warmup_steps": short_warmup(max_steps)}
    if flags.get("tokenizer") == "bpe" and "vocab_size" not in flags:
        flags = {**flags, "vocab_size": BPE_VOCAB_SIZE}
    return flags


def short_warmup(max_steps):
    return max(1, max_steps // 10)


def micro_steps_per_step(cfg, world_size=1):
    """The micro-batches each process runs per step, or a UsageError if the processes cannot share them evenly."""
    micro_steps = cfg.total_batch_size // (cfg.B * cfg.T)
    if micro_steps % world_size != 0:
        raise UsageError(f"total_batch_size / (B x T) = {micro_steps} micro-batches per step cannot be shared evenly "
                         f"among {world_size} processes: change --total_batch_size, --B or --T, or the process count")
    return micro_steps // world_size


def model_to_train(cfg, source, tok):
    """The model to train, on the CPU: from source's weights, or from scratch with a row
    per token of tok (a BPE may learn fewer tokens than vocab_size), seeded."""
    torch.manual_seed(cfg.seed)
    vocab_size = padded_vocab(tok.n_vocab) if source == "scratch" and tok.name == "bpe" else None
    model = build_model(source, model_shape(cfg, vocab_size), cfg.dropout, cfg.attn_dropout)
    changed = [f"{k}={v} (was {getattr(cfg, k)})" for k, v in dataclasses.asdict(model.config).items() if getattr(cfg, k) != v]
    if cfg.init_from not in ("scratch", "resume") and changed:
        print(f"{cfg.init_from} brings its own shape: {', '.join(changed)}")
    if cfg.T > model.config.block_size:
        raise UsageError(f"T={cfg.T} is longer than the model's block_size={model.config.block_size}: lower --T")
    return model


@dataclass
class Run:
    """What the loop works with, set up once by set_up()."""

    cfg: Config
    processes: Processes
    interrupt: Interrupt  # Ctrl-C and SIGTERM: stop after this step and save
    budget: Steps  # the step count, and when to evaluate: fixed, or a TimeBudget
    log: Logbook  # log.txt and loss.png
    device: str
    ctx: object  # the autocast context, or nothing to switch on
    model: GPT  # the plain model: evaluated, saved
    average: WeightAverage  # the weights' moving average, or nothing: the weights kept as the model
    train_loss: torch.nn.Module  # the model as training calls it: chunked, compiled, wrapped in DDP
    eval_loss: torch.nn.Module  # the kept weights' loss (the average's, or the plain model's): not compiled, it would not pay
    optimizer: torch.optim.Optimizer
    loader: DataLoader
    val_tokens: object
    tokenizer: Tokenizer  # its byte_lengths turn losses into bits per byte
    grad_accum_steps: int  # micro-steps per step, in this process
    first_step: int
    val_loss: Optional[float]
    final_windows: Windows  # what the final evaluation reads
    ckpt_path: str


def main(argv=None):
    clock = Clock()  # a time budget counts from the process's start
    # settings, and the machine: one process, or one of several under torchrun
    flags = parse_flags(argv)
    cfg, resumed = resolve_config(flags)
    processes = Processes()
    micro_steps_per_step(cfg, processes.world_size)  # the batch must divide among the processes: checked before any work
    processes.start(cfg.device)
    try:
        train(set_up(cfg, resumed, flags, processes, clock))
        # leave together, and only after a run that did not fail (a failed process may never
        # come): one that closed while another still worked could abort in gloo
        processes.barrier()
    finally:
        processes.close()


def set_up(cfg, resumed, flags, processes, clock):
    """The tokenizer, then the tokens, then (sized for this machine with --size auto) the
    model; the optimizer and the loss to train; the step count: all the loop works with."""
    if processes.main:
        make_log_dir(cfg.log_dir)
    device, device_type, dtype, ctx = prepare_device(cfg.device, cfg.dtype, cfg.threads, processes)
    source = starting_point(cfg.init_from, resumed)
    if isinstance(source, dict) and resumed is None:
        print(f"fine-tuning {cfg.init_from}: {source['kind']}, {source_tokenizer(source).name} tokenizer")
    train_tokens, val_tokens, loaded = load_splits(cfg.input_file, cache_root(cfg.data_cache), source_tokenizer(source) or
                                                   cfg.tokenizer, cfg.vocab_size, cfg.B, cfg.T, processes)
    tok = loaded.tokenizer
    if "sample_prompt" not in flags and cfg.input_file != Config.input_file:  # your own text: the samples start from it
        cfg = dataclasses.replace(cfg, sample_prompt=tok.decode(val_tokens[:8].tolist()).split("\n")[0] or cfg.sample_prompt)
    if cfg.size == "auto":
        cfg = sized(cfg, flags, source, tok, (train_tokens, val_tokens), processes, clock, device_type, dtype, ctx, device)
    grad_accum_steps = micro_steps_per_step(cfg, processes.world_size)
    print(f"tokenizer {tok.name} | {tok.n_vocab:,} tokens | {loaded.train_bytes / loaded.n_train:.2f} bytes per token "
          f"on the training text | {cfg.sample_prompt!r} is {tok.show(cfg.sample_prompt)}")
    model = model_to_train(cfg, source, tok)
    if loaded.max_token >= model.config.vocab_size:
        raise UsageError(f"{cfg.input_file} has tokens beyond the model's vocab_size={model.config.vocab_size}")
    model.to(device)
    if device_type == "cpu":
        use_fast_dropout(model)  # the same dropout, from cheaper random numbers
    loader = DataLoader(train_tokens, cfg.B, cfg.T, rank=processes.rank, world_size=processes.world_size,
                        seed=cfg.seed if cfg.shuffle else None)

    # the optimizer, and the loss that training calls (compiled where it helps)
    optimizer = configure_optimizers(model, cfg.weight_decay, cfg.max_lr, cfg.betas, device_type, cfg.optimizer,
                                     cfg.adamw_lr_ratio, dtype)
    train_loss, compile_note = TrainingLoss(model, chunked=cfg.chunked_loss), "off"
    if want_compile(cfg.compile, device_type):
        train_loss, compile_note = compile_training_loss(train_loss, cfg, device, ctx)
    train_loss = processes.wrap(train_loss, device)
    first_step, val_loss = restore(resumed, optimizer, loader) if resumed is not None else (0, None)
    average = WeightAverage(model, cfg.ema_decay, resumed)
    if resumed is not None:
        print(f"resuming from {os.path.join(cfg.log_dir, 'ckpt.pt')} at step {first_step}")
    # the step count: max_steps, or a time budget, which a resumed run keeps once it fixed it; the final
    # evaluation's time follows from a periodic one's, by the windows each reads
    final = final_windows(len(val_tokens), cfg.T, int(FINAL_EVAL_BYTES / (loaded.text_bytes / len(loaded.tokens))))
    fixed = (cfg.max_steps, cfg.eval_interval) if resumed is not None and resumed.get("steps_fixed", True) else None
    budget = Steps(cfg.max_steps, cfg.eval_interval) if cfg.time_budget == 0 else TimeBudget(
        cfg.time_budget, cfg.evaluations, cfg.warmup_steps, len(final.starts) / (cfg.eval_steps * cfg.B), processes,
        clock, first_step, fixed)
    elapsed_before = resumed.get("elapsed", 0.0) if resumed else 0.0
    title = (f"{model.num_params() / 1e6:.1f}M-parameter GPT ({model.config.n_layer} layers, {model.config.n_embd} wide) "
             f"on {cfg.input_file}")
    log = Logbook(cfg.log_dir, processes.main, first_step, lambda: elapsed_before + clock.elapsed(), title,
                  cfg.total_batch_size)
    shortened = cfg.max_steps < Config.warmup_steps and cfg.warmup_steps == short_warmup(cfg.max_steps)
    print(
        f"device {device} | dtype {dtype} | threads {torch.get_num_threads()} | compile {compile_note} | "
        f"chunked loss {'on' if cfg.chunked_loss else 'off'} | {describe_dropout(model, cfg.dropout)}"
        f"optimizer {describe_optimizer(cfg.optimizer, dtype)} | {'' if average.ema is None else f'model: {average} | '}"
        f"{'warmup ' + str(cfg.warmup_steps) + ' (a tenth of max_steps) | ' if shortened else ''}{budget.note()}"
        f"parameters {model.num_params():,} | tokens per step {cfg.total_batch_size:,} | "
        f"grad accumulation steps {grad_accum_steps * processes.world_size} | world size {processes.world_size} | "
        f"train/val tokens {len(train_tokens):,}/{len(val_tokens):,} | "
        f"tokens {'cached' if loaded.cached else 'new'}: {loaded.entry}",
        flush=True,
    )
    return Run(cfg, processes, Interrupt(alone=processes.world_size == 1), budget, log, device, ctx, model, average, train_loss,
               TrainingLoss(average.weights(model), chunked=cfg.chunked_loss), optimizer, loader, val_tokens, tok, grad_accum_steps,
               first_step, val_loss, final, os.path.join(cfg.log_dir, "ckpt.pt"))


def sized(cfg, flags, source, tok, splits, processes, clock, device_type, dtype, ctx, device):
    """cfg with the constants --size auto owns chosen for this machine and text (budget.py's size_model),
    but for those given as flags or edited above. Weights to start from bring their own shape."""
    if source != "scratch":
        print(f"--size auto: {cfg.init_from} brings the model's shape, so it is not sized")
        return cfg
    shape = model_shape(cfg, padded_vocab(tok.n_vocab) if tok.name == "bpe" else None)
    speed = rung_speed(shape, cfg, device_type, dtype, ctx, device)
    sizing = size_model(cfg.time_budget, clock, len(splits[0]), speed, processes)
    max_batch = min((len(split) - 1) // cfg.T for split in splits)  # a batch of windows fits in either split
    chosen = {k: v for k, v in sizing.constants(cfg.T, processes.world_size, max_batch).items()
              if k not in flags and getattr(cfg, k) == SHIPPED[k]}
    print(sizing.describe(chosen), flush=True)
    return dataclasses.replace(cfg, **chosen)


# ----------------------------------------------------------------------------
# The loop


def train(run):
    """A step, its line, and when the budget says so an evaluation and a checkpoint. The
    budget (machinery/budget.py) owns the step count: max_steps, or with a time budget
    as many steps as fit, fixed after the timed first steps and moved as the speed drifts."""
    cfg, budget, interrupt = run.cfg, run.budget, run.interrupt
    step, val_loss = run.first_step, run.val_loss
    while step < budget.steps():
        started = time.time()
        lr = get_lr(step, budget.steps(), cfg)
        set_learning_rate(run.optimizer, lr)
        loss, norm = train_step(run.train_loss, run.optimizer, run.loader, run.grad_accum_steps, cfg, run.device,
                                run.ctx, run.processes)
        run.average.update(run.model)
        loss, stop = run.processes.agree(loss, interrupt.requested)  # the same loss and decision in every process
        if not math.isfinite(loss):  # the weights are broken now: never save them
            raise diverged(f"the loss became {loss}", step)
        dt = budget.step_took(step, seconds_since(started, run.device))
        print(f"step {step:4d} | loss {loss:.6f} | lr {lr:.4e} | norm {norm:.4f} | dt {dt * 1000:.2f}ms | "
              f"tok/sec {cfg.total_batch_size / dt:.2f} | eta {budget.eta(step)}", flush=True)
        run.log.write(step, "train", f"{loss:.6f}")
        evaluating = budget.evaluates_after(step)
        if evaluating:
            val_loss = evaluate_and_show(run, step)
        stop = interrupt.stops(stop)  # alone, a signal during the evaluation counts now; under torchrun, at the next step
        if evaluating or stop:
            save(run, step, val_loss)
        if stop and step < budget.steps() - 1:
            return stopped(run, step)
        step += 1
    finish(run, val_loss)


def evaluate_and_show(run, step):
    """The validation loss after step, in the first process: its line, log.txt, the plot
    and a sample. The budget hears what it cost in every process, and may move the last step."""
    if not run.processes.main:
        return run.budget.evaluated(step, 0.0, 0.0)
    started = time.time()
    cfg = run.cfg
    windows = periodic_windows(len(run.val_tokens), cfg.B, cfg.T, cfg.eval_steps)
    evaluation = evaluate(run.eval_loss, run.val_tokens, windows, run.device, run.ctx, run.tokenizer.byte_lengths)
    evaluate_seconds = time.time() - started
    if not math.isfinite(evaluation.loss):
        raise diverged(f"the validation loss became {evaluation.loss}", step)
    print(f"step {step:4d} | val loss {evaluation}", flush=True)
    run.log.evaluation(step, evaluation)
    if cfg.eval_sample_tokens > 0 and (text := sample_line(run.average.weights(run.model), run.tokenizer, cfg, run.device,
                                                           run.ctx)) is not None:
        print(f"step {step:4d} | sample: {text}", flush=True)
    run.budget.evaluated(step, evaluate_seconds, time.time() - started)
    return evaluation.loss


def save(run, step, val_loss):
    """The checkpoint after step, in the first process, once the weights are checked to still be
    numbers. It keeps the budget's step count now; the budget hears what it cost, in every process."""
    started = time.time()
    if run.processes.main:
        if not all(torch.isfinite(p).all() for p in run.model.parameters()):
            raise diverged("the weights stopped being numbers (inf or nan)", step)
        train_config = {**dataclasses.asdict(run.cfg), **run.budget.constants()}
        save_checkpoint(run.ckpt_path, training_state(run.model, run.optimizer, train_config, run.loader, step + 1, val_loss,
                                                      run.tokenizer, run.log.elapsed(), run.budget.fixed, run.average))
    run.budget.saved(step, time.time() - started)


def diverged(what, step):
    """The RunFailure for a run whose numbers blew up: nothing is saved after it."""
    return RunFailure(f"{what} at step {step}: the learning rate is usually too high (lower --max_lr, or raise "
                      f"--warmup_steps) or, in bfloat16, the precision too low (try --dtype float32). Nothing was "
                      f"saved after the last good checkpoint")


# ----------------------------------------------------------------------------
# The end


def stopped(run, step):
    """A signal stopped the run after step, whose checkpoint is saved: say how to go on,
    and exit with the shell's code for the signal (alone; under torchrun, 0)."""
    log_flag = f" --log_dir {run.cfg.log_dir}" if run.cfg.log_dir != Config.log_dir else ""
    print(f"saved {run.ckpt_path} after step {step}; continue with: python train.py --init_from resume{log_flag}")
    if run.interrupt.exit_code():
        sys.exit(run.interrupt.exit_code())


def finish(run, val_loss):
    """After the last step, whose checkpoint is saved: the final evaluation, in the first process,
    and the closing lines. A signal now ends the run within seconds, with the shell's exit code."""
    if not run.processes.main:
        return
    try:
        run.interrupt.after_training()
        if run.first_step >= run.budget.steps():
            print(f"the checkpoint is at step {run.first_step} and max_steps is {run.budget.steps()}: no steps to "
                  f"take (raise --max_steps to train further)")
        scope, size = run.final_windows.describe(len(run.val_tokens))
        print(f"final evaluation {scope} ({size})", flush=True)
        started = time.time()
        final = evaluate(run.eval_loss, run.val_tokens, run.final_windows, run.device, run.ctx, run.tokenizer.byte_lengths)
        last = f", final val loss {val_loss:.4f}" if val_loss is not None else ""
        print(f"done: checkpoint in {run.ckpt_path}{last} ({scope}: {final} over {size}, in {time.time() - started:.1f}s)")
        if run.average.ema is not None:  # what the average gained over the weights it averages
            last_step = evaluate(TrainingLoss(run.model), run.val_tokens, run.final_windows, run.device, run.ctx, run.tokenizer.byte_lengths)
            print(f"the checkpoint's model is {run.average}; the last step's weights: {last_step}")
        print(f'sample from it with: python sample.py --ckpt {run.ckpt_path} --prompt "ROMEO:"')
        if (summary := run.budget.summary()) is not None:
            print(summary, flush=True)
    except Quit as quit:
        print(f"\n{SIGNAL_NAMES[quit.signum]}: the checkpoint {run.ckpt_path} was saved after the last step; "
              f"stopped before the final evaluation ended", flush=True)
        sys.exit(128 + quit.signum)


if __name__ == "__main__":
    try:
        run_main("train.py", main)
    except KeyboardInterrupt:  # Ctrl-C before the loop began
        print("quit without saving", file=sys.stderr)
        sys.exit(130)
    except Quit as quit:  # a second signal
        print("quit without saving", file=sys.stderr)
        sys.exit(128 + quit.signum)
    exit_at_once()
