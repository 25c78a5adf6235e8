"""
How fast does this machine train the model, and which speed-ups earn their keep?

    python bench.py                                           # train.py's default model and batch
    python bench.py --n_layer 12 --n_head 12 --n_embd 768 --block_size 1024   # GPT-2 124M shape
    python bench.py --sample                                  # sampling speed, GPT-2 124M shape
    python bench.py --data 100                                # tokenizing and training on a 100 MB text
    python bench.py --optimizers                              # a whole training step with AdamW, then with Muon
    python bench.py --tokenizers                              # text per second with GPT-2's vocabulary and a BPE

Every train.py constant is also a flag here. Each mode (the plain float32 reference,
each speed-up alone, and train.py's default combination) runs in a fresh process, so
its peak memory is its own; the modes run in turn, then again in reverse order, so
that a noisy neighbour does not favour one of them. A micro-step is one forward,
backward and optimizer step on a B x T batch of random tokens.
"""

import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

import train
from machinery.cli import UsageError, add_flags, flag_parser, run_main
from model import GPT, pretrained_config
from machinery.data import DataLoader, load_tokens
from machinery.optimizer import configure_optimizers, describe_optimizer
from machinery.tokenizer import padded_vocab
from machinery.speed import TrainingLoss, choose_dtype, cpu_has_native_bf16, physical_cores, prepare_device, want_compile

# (name, dtype, compile, chunked loss); "auto" is what train.py does by default
MODES = [
    ("float32 eager (reference)", "float32", "False", False),
    ("bf16 autocast", "bfloat16", "False", False),
    ("torch.compile", "float32", "True", False),
    ("chunked loss", "float32", "False", True),
    ("train.py default", "auto", "auto", True),
]


@dataclass
class Settings:
    steps: int = 5  # timed micro-steps per mode and round
    warmup: int = 2  # untimed micro-steps first (after compiling)
    rounds: int = 2  # passes over the modes, alternating their order
    sample: bool = False  # measure sampling (new tokens/sec) instead of training
    repeats: int = 3  # with --sample: timed generations per mode
    offline: bool = False  # time how long sample.py takes to say that GPT-2 cannot be fetched offline
    data: float = 0.0  # if above 0: write a text of this many MB from input, and time tokenizing and training on it
    optimizers: bool = False  # time whole training steps with each optimizer (adamw, muon) instead
    tokenizers: bool = False  # time whole training steps with GPT-2's vocabulary and a BPE of 4096, in bytes of text/sec
    child: Optional[str] = None  # internal: run one mode in this process and print its figures as JSON


def parse_args(argv=None):
    """(bench.py's own settings, the train.py constants given as flags)."""
    parser = flag_parser(train.Config, "bench.py", "Measure training throughput, mode against mode.")
    add_flags(parser, Settings)
    flags = vars(parser.parse_args(argv))
    own = {name: flags.pop(name) for name in list(flags) if name in Settings.__dataclass_fields__}
    return Settings(**own), flags


# ----------------------------------------------------------------------------
# One mode, in its own process


def reset_peak_memory():
    """Linux keeps the process's peak resident memory (VmHWM); writing 5 to clear_refs
    resets it, so that the peak measured is the training's, not start-up's or compilation's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(device_type):
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux, since start


def build(flags):
    """The model, its optimizer and its training loss as train.py sets them up (on random
    tokens), and what was switched on: a dict."""
    cfg = train.Config(**flags)
    device, device_type, dtype, ctx = prepare_device(cfg.device, cfg.dtype, cfg.threads)
    torch.manual_seed(cfg.seed)
    model = GPT(train.model_shape(cfg)).to(device)
    optimizer = configure_optimizers(model, cfg.weight_decay, cfg.max_lr, cfg.betas, device_type, cfg.optimizer,
                                     cfg.adamw_lr_ratio, dtype)
    train_loss, compiled, compile_seconds = TrainingLoss(model, chunked=cfg.chunked_loss), False, 0.0
    if want_compile(cfg.compile, device_type):
        start = time.time()
        train_loss, note = train.compile_training_loss(train_loss, cfg, device, ctx)
        compile_seconds = time.time() - start
        if note == "off (failed)":
            raise UsageError("torch.compile failed here; run with --compile False")
        compiled = True
    return dict(cfg=cfg, device=device, device_type=device_type, dtype=dtype, ctx=ctx, model=model, optimizer=optimizer,
                train_loss=train_loss, compiled=compiled, compile_seconds=compile_seconds)


def run_mode(flags, steps, warmup):
    """Time one mode's micro-steps (forward, backward and an optimizer step each); returns a dict of figures."""
    run = build(flags)
    cfg, device_type = run["cfg"], run["device_type"]
    x, y = torch.randint(0, cfg.vocab_size, (2, cfg.B, cfg.T), device=run["device"])

    def micro_step():
        train.micro_step(run["train_loss"], x, y, run["ctx"], 1)
        run["optimizer"].step()
        run["optimizer"].zero_grad(set_to_none=True)

    times, peak_mb = time_repeatedly(micro_step, device_type, steps, warmup)
    return dict(times=times, compile_seconds=run["compile_seconds"], peak_mb=peak_mb, dtype=run["dtype"],
                compiled=run["compiled"], chunked=cfg.chunked_loss, flops_per_token=flops_per_token(run["model"].config, cfg.T))


def run_training_step(flags, steps, warmup):
    """Time whole training steps as train.py takes them (every micro-batch of total_batch_size,
    clipping, the optimizer's step); returns a dict of figures."""
    run = build(flags)
    cfg = run["cfg"]
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=cfg.total_batch_size + 1).astype(np.uint16)
    loader = DataLoader(tokens, cfg.B, cfg.T)
    accum = train.micro_steps_per_step(cfg)

    def step():
        train.train_step(run["train_loss"], run["optimizer"], loader, accum, cfg, run["device"], run["ctx"])

    times, peak_mb = time_repeatedly(step, run["device_type"], steps, warmup)
    return dict(times=times, peak_mb=peak_mb, dtype=run["dtype"], compiled=run["compiled"],
                optimizer=describe_optimizer(cfg.optimizer, run["dtype"]))


def time_repeatedly(work, device_type, steps, warmup):
    """([seconds of each timed call of work], peak MB during them), after warmup calls."""
    def timed():
        start = time.perf_counter()
        work()
        if device_type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        timed()
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_memory()
    times = [timed() for _ in range(steps)]
    return times, peak_memory_mb(device_type)


def flops_per_token(config, T):
    """Forward plus backward, counted the usual way: 6 per weight of every matrix product
    (2 forward, 4 backward) plus the attention scores, 12 * n_layer * n_embd * T.
    The token embedding counts once, as the lm_head; position embeddings are a lookup."""
    with torch.device("meta"):
        n = GPT(config).num_params(non_embedding=True)
    return 6 * n + 12 * config.n_layer * config.n_embd * T


# ----------------------------------------------------------------------------
# The machine, and the table


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def matmul_peak_gflops(dtype, device, n=2048, repeats=5):
    """This machine's own ceiling: the best GFLOP/s of a large square matrix product."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def native_bf16(device):
    """Whether this device multiplies bf16 natively (train.py's dtype=auto picks it then)."""
    return choose_dtype("auto", device) == "bfloat16"


def modes_to_run(native):
    """All modes, but no forced bf16 where it would be emulated: that takes hours, not minutes."""
    return [mode for mode in MODES if native or mode[1] != "bfloat16"]


def run_child(mode, flags, bench):
    name, dtype, compile_, chunked = mode
    args = [sys.executable, os.path.abspath(__file__), "--child", name, "--steps", str(bench.steps),
            "--warmup", str(bench.warmup), "--dtype", dtype, "--compile", compile_, "--chunked_loss", str(chunked)]
    args += flag_args({key: value for key, value in flags.items() if key not in ("dtype", "compile", "chunked_loss")})
    return run_json(args, name)


def run_json(args, name):
    """Run a child process of this script and read the JSON line it prints last."""
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench.py: mode {name!r} failed:\n{result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def alternate(names, rounds, run_one):
    """{name: [run_one(name) of each round]}: every name in turn, then in reverse order,
    and so on, so that a noisy neighbour favours none of them."""
    results = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            results[name].append(run_one(name))
            print(f"  round {round_ + 1}: {name} done", file=sys.stderr, flush=True)
    return results


def start_parent(flags):
    """(train.py's constants, the device) for a comparison that runs its modes in child
    processes, after printing the machine it runs on."""
    cfg = train.Config(**flags)
    device, device_type, _, _ = prepare_device(cfg.device, cfg.dtype, cfg.threads)
    print_machine(device_type)
    return cfg, device


def print_machine(device_type):
    print(f"cpu: {cpu_name()} | cores {physical_cores()} (logical {os.cpu_count()}) | "
          f"native bf16 {cpu_has_native_bf16()} | torch {torch.__version__} | threads {torch.get_num_threads()}")
    if device_type == "cuda":
        print(f"gpu: {torch.cuda.get_device_name()}")


def bench_training(bench, flags):
    cfg, device = start_parent(flags)
    print(f"model: n_layer {cfg.n_layer}, n_head {cfg.n_head}, n_embd {cfg.n_embd}, vocab {cfg.vocab_size} | "
          f"micro-batch B={cfg.B} x T={cfg.T} | {bench.warmup} warm-up + {bench.steps} timed micro-steps "
          f"x {bench.rounds} rounds per mode")
    native = native_bf16(device)
    modes = modes_to_run(native)
    peak = {d: matmul_peak_gflops(getattr(torch, d), device) for d in ["float32"] + ["bfloat16"] * native}
    print("matmul peak (2048^3): " + ", ".join(f"{d} {peak[d]:.0f} GFLOP/s" for d in sorted(peak, reverse=True)))

    by_name = {mode[0]: mode for mode in modes}
    results = alternate(list(by_name), bench.rounds, lambda name: run_child(by_name[name], flags, bench))

    labels = {name: name if name != "train.py default" else f"{name} ({describe(runs[0])})" for name, runs in results.items()}
    width = max(map(len, labels.values()))
    print()
    print(f"{'mode':<{width}} {'tok/sec':>9} {'ms/micro-step':>14} {'speed-up':>9} {'GFLOP/s':>8} {'MFU':>6} "
          f"{'peak MB':>8} {'compile s':>10}")
    reference = None
    for name, runs in results.items():
        median = statistics.median(t for run in runs for t in run["times"])
        tokens_per_sec = cfg.B * cfg.T / median
        reference = reference or tokens_per_sec  # the first mode is the reference
        gflops = runs[0]["flops_per_token"] * tokens_per_sec / 1e9
        mfu = gflops / peak[runs[0]["dtype"]]
        print(f"{labels[name]:<{width}} {tokens_per_sec:9.0f} {median * 1000:14.1f} {tokens_per_sec / reference:8.2f}x "
              f"{gflops:8.1f} {mfu:6.1%} {max(r['peak_mb'] for r in runs):8.0f} {runs[0]['compile_seconds']:10.1f}")
    for name in (mode[0] for mode in MODES if mode not in modes):
        print(f"{name:<{width}} skipped: no native bf16 here, and emulated bf16 is far slower than float32")


# ----------------------------------------------------------------------------
# Optimizers: a whole training step of train.py's default mode with each


def bench_optimizers(bench, flags):
    """Whole training steps with AdamW and with Muon, each in its own process, in turn and
    then in reverse: Muon's Newton-Schulz iterations should cost little next to the
    forward and backward passes, on every CPU (they run in the run's own precision)."""
    cfg, _ = start_parent(flags)
    print(f"model: n_layer {cfg.n_layer}, n_head {cfg.n_head}, n_embd {cfg.n_embd} | {cfg.total_batch_size:,} tokens per "
          f"step in micro-batches of B={cfg.B} x T={cfg.T} | {bench.warmup} warm-up + {bench.steps} timed steps x "
          f"{bench.rounds} rounds per optimizer")

    def run_one(name):
        args = [sys.executable, os.path.abspath(__file__), "--child", f"step:{name}", "--steps", str(bench.steps),
                "--warmup", str(bench.warmup), *flag_args(flags)]
        return run_json(args, name)

    results = alternate(["adamw", "muon"], bench.rounds, run_one)
    print()
    width = max(len(runs[0]["optimizer"]) for runs in results.values())
    print(f"{'optimizer':<{width}} {'s/step':>7} {'tok/sec':>8} {'vs adamw':>9} {'peak MB':>8}")
    seconds = {name: statistics.median(t for run in runs for t in run["times"]) for name, runs in results.items()}
    for name, runs in results.items():
        print(f"{runs[0]['optimizer']:<{width}} {seconds[name]:7.2f} {cfg.total_batch_size / seconds[name]:8.0f} "
              f"{seconds[name] / seconds['adamw']:8.2f}x {max(r['peak_mb'] for r in runs):8.0f}")


def bench_tokenizers(bench, flags):
    """Whole training steps with GPT-2's vocabulary and with a BPE of train.BPE_VOCAB_SIZE
    tokens trained on the text, in turn and then in reverse, in tokens and in bytes of
    text per second: a small vocabulary shrinks the output layer, the largest matrix
    product of a small model, while each token stands for a little less text."""
    cfg, _ = start_parent(flags)
    shapes = {}
    with tempfile.TemporaryDirectory() as cache, contextlib.redirect_stdout(io.StringIO()):  # never the user's cache
        for name in ("gpt2", "bpe"):
            loaded = load_tokens(cfg.input_file, cache, name, train.BPE_VOCAB_SIZE)
            shapes[name] = (padded_vocab(loaded.tokenizer.n_vocab), loaded.train_bytes / loaded.n_train)
    print(f"model: n_layer {cfg.n_layer}, n_head {cfg.n_head}, n_embd {cfg.n_embd} | {cfg.total_batch_size:,} tokens per "
          f"step | bytes per token on the training text of {cfg.input_file} | {bench.warmup} warm-up + {bench.steps} "
          f"timed steps x {bench.rounds} rounds per tokenizer")

    def run_one(name):
        args = [sys.executable, os.path.abspath(__file__), "--child", "step:adamw", "--steps", str(bench.steps),
                "--warmup", str(bench.warmup), *flag_args({**flags, "vocab_size": shapes[name][0]})]
        return run_json(args, name)

    results = alternate(list(shapes), bench.rounds, run_one)
    print()
    print(f"{'tokenizer':<10} {'rows':>6} {'bytes/token':>12} {'s/step':>7} {'tok/sec':>8} {'bytes/sec':>10} {'vs gpt2':>8}")
    speed = {}
    for name, runs in results.items():
        seconds = statistics.median(t for run in runs for t in run["times"])
        rows, per_token = shapes[name]
        speed[name] = cfg.total_batch_size * per_token / seconds
        print(f"{name:<10} {rows:>6} {per_token:12.2f} {seconds:7.2f} {cfg.total_batch_size / seconds:8.0f} "
              f"{speed[name]:10.0f} {speed[name] / speed['gpt2']:7.2f}x")


def flag_args(flags):
    """train.py constants as command-line flags again, for a child process."""
    args = []
    for key, value in flags.items():
        args += [f"--{key}", *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return args


# ----------------------------------------------------------------------------
# Sampling: batch 1, an 8-token prompt, 256 new tokens, GPT-2 124M shape, random weights

SAMPLE_MODES = [  # (name, whose code, KV cache, dtype)
    ("no cache, float32", "ours", False, "float32"),
    ("cache, float32", "ours", True, "float32"),
    ("cache, bfloat16", "ours", True, "bfloat16"),
    ("Hugging Face generate, float32", "hf", True, "float32"),
]
PROMPT_TOKENS, NEW_TOKENS = 8, 256


def run_sampling_mode(name, repeats):
    """Time one sampling mode in this process; returns a dict of figures."""
    _, whose, use_cache, dtype = next(mode for mode in SAMPLE_MODES if mode[0] == name)
    before = current_memory_mb()
    torch.manual_seed(0)
    prompt = torch.randint(0, 50257, (1, PROMPT_TOKENS))
    config = pretrained_config("gpt2")
    if whose == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        model = GPT2LMHeadModel(GPT2Config()).eval()

        def generate(n):
            model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=50,
                           max_new_tokens=n, min_new_tokens=n, pad_token_id=50256)
    else:
        model = GPT(config).eval().to(getattr(torch, dtype))

        def generate(n):
            model.generate(prompt, n, top_k=50, generator=torch.Generator().manual_seed(0), use_cache=use_cache)

    generate(8)  # warm-up
    reset_peak_memory()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate(NEW_TOKENS)
        times.append(time.perf_counter() - start)
    element = torch.finfo(getattr(torch, dtype)).bits // 8
    weights_mb = sum(p.numel() for p in model.parameters()) * element / 2**20
    # our cache holds block_size positions; Hugging Face's grows to prompt + new tokens
    positions = config.block_size if whose == "ours" else PROMPT_TOKENS + NEW_TOKENS
    cache_mb = 2 * config.n_layer * positions * config.n_embd * element / 2**20 if use_cache else 0.0
    return dict(times=times, peak_mb=peak_memory_mb("cpu") - before, weights_mb=weights_mb, cache_mb=cache_mb)


def current_memory_mb():
    try:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) / 1024
    except (OSError, StopIteration):
        return 0.0


def bench_sampling(bench):
    torch.set_num_threads(physical_cores())
    print_machine("cpu")
    print(f"sampling: GPT-2 124M shape, random weights | batch 1, {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} new "
          f"tokens, top_k 50 | median of {bench.repeats} runs after a warm-up | CPU")
    results = {}
    for name, _, _, dtype in SAMPLE_MODES:
        if dtype == "bfloat16" and not native_bf16("cpu"):
            continue
        args = [sys.executable, os.path.abspath(__file__), "--child", f"sample:{name}", "--repeats", str(bench.repeats)]
        results[name] = run_json(args, name)
        print(f"  {name} done", file=sys.stderr, flush=True)
    print()
    width = max(map(len, results))
    print(f"{'mode':<{width}} {'tokens/sec':>10} {'s per run':>10} {'vs no cache':>12} {'vs HF':>6} "
          f"{'peak MB':>8} {'weights+cache MB':>17} {'ratio':>6}")
    rate = {name: NEW_TOKENS / statistics.median(r["times"]) for name, r in results.items()}
    for name, r in results.items():
        own = r["weights_mb"] + r["cache_mb"]
        print(f"{name:<{width}} {rate[name]:10.1f} {NEW_TOKENS / rate[name]:10.2f} "
              f"{rate[name] / rate[SAMPLE_MODES[0][0]]:11.2f}x {rate[name] / rate[SAMPLE_MODES[-1][0]]:5.2f}x "
              f"{r['peak_mb']:8.0f} {own:17.0f} {r['peak_mb'] / own:6.2f}")
    if len(results) < len(SAMPLE_MODES):
        print("cache, bfloat16: skipped: no native bf16 here, and emulated bf16 is far slower than float32")


def bench_offline():
    """With an empty Hugging Face cache and no network, how long does `sample.py --init_from
    gpt2` take to refuse? It should be seconds, not a minute of retries."""
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        start = time.perf_counter()
        r = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample.py"),
                            "--init_from", "gpt2", "--prompt", "hi"], env={**env, "HF_HUB_CACHE": cache},
                           capture_output=True, text=True)
        seconds = time.perf_counter() - start
    print(f"sample.py --init_from gpt2, empty cache, no HF_HUB_OFFLINE: exit code {r.returncode} after {seconds:.1f} s")
    print(r.stderr.strip())


# ----------------------------------------------------------------------------
# Data: tokenizing a large text, and a 1-step run of a tiny model on it

DATA_RUN = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--B", "2", "--T", "32", "--total_batch_size", "64",
            "--max_steps", "1", "--warmup_steps", "0", "--eval_steps", "1", "--compile", "False"]


def write_text(path, megabytes):
    """A text of about this many MB: input again and again, each copy headed by its number."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "input"), encoding="utf-8") as f:
        text = f.read()
    written, copy = 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while written < megabytes * 1e6:
            piece = f"[copy {copy}]\n\n{text}\n\n"
            out.write(piece)
            written += len(piece.encode("utf-8"))
            copy += 1


def timed_run(args):
    """(seconds, peak resident MB, stdout) of train.py with args, in its own process."""
    here = os.path.dirname(os.path.abspath(__file__))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.join(here, "train.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench.py: train.py {' '.join(args)} failed:\n{stdout}")
    return seconds, usage.ru_maxrss / 1024, stdout


def bench_data(megabytes):
    print_machine("cpu")
    print(f"data: a {megabytes:g} MB text made from input | a 1-step run of a tiny model (2 layers, 64 wide), "
          f"no compilation | peak MB: the whole process's resident memory")
    with tempfile.TemporaryDirectory() as folder:  # the text, the logs and a token cache of its own, never the user's
        text, cache = os.path.join(folder, "text.txt"), os.path.join(folder, "cache")
        write_text(text, megabytes)
        args = ["--input_file", text, "--data_cache", cache, *DATA_RUN]
        first = timed_run(["--log_dir", os.path.join(folder, "log"), *args])
        tokenized = next(line for line in first[2].splitlines() if line.startswith("tokenized "))
        # the same run in a new log_dir, as a second experiment on the same text would be: it reads the cache
        second = timed_run(["--log_dir", os.path.join(folder, "log2"), *args])
        assert not any(line.startswith("tokenized ") for line in second[2].splitlines()), "tokenized again"
    print(tokenized.split(": ")[0])
    print()
    print(f"{'run':<44} {'seconds':>8} {'peak MB':>8}")
    print(f"{'first: tokenize, then 1 step':<44} {first[0]:8.1f} {first[1]:8.0f}")
    print(f"{'second: new log_dir, tokens cached, 1 step':<44} {second[0]:8.1f} {second[1]:8.0f}")


def main(argv=None):
    bench, flags = parse_args(argv)
    child = bench.child
    if child is not None and child.startswith("sample:"):
        print(json.dumps(run_sampling_mode(child[len("sample:"):], bench.repeats)))
    elif child is not None and child.startswith("step:"):
        print(json.dumps(run_training_step({**flags, "optimizer": child[len("step:"):]}, bench.steps, bench.warmup)))
    elif child is not None:
        print(json.dumps(run_mode(flags, bench.steps, bench.warmup)))
    elif bench.sample:
        bench_sampling(bench)
    elif bench.offline:
        bench_offline()
    elif bench.data > 0:
        bench_data(bench.data)
    elif bench.optimizers:
        bench_optimizers(bench, flags)
    elif bench.tokenizers:
        bench_tokenizers(bench, flags)
    else:
        bench_training(bench, flags)


def describe(run):
    """What train.py's default turned on here, for example "bf16 + compile + chunked"."""
    parts = [run["dtype"].replace("bfloat16", "bf16")] + ["compile"] * run["compiled"] + ["chunked"] * run["chunked"]
    return " + ".join(parts)


if __name__ == "__main__":
    run_main("bench.py", main)
