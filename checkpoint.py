"""
Weights on disk: the checkpoints train.py writes and resumes from, nanoGPT's, OpenAI's
GPT-2 through Hugging Face, and the export of a checkpoint to Hugging Face's format.

    python checkpoint.py --ckpt log/ckpt.pt --out_dir my-gpt   # export for transformers

    training_state         what a checkpoint of train.py holds
    save_checkpoint        write a checkpoint so that a crash never destroys the last one
    load_checkpoint        read one back, ours or nanoGPT's (only plain data is unpickled)
    resumable, restore     the rules for resuming one, and the state it puts back
    starting_point         the weights a run starts from: a checkpoint, GPT-2's, or none
    source_tokenizer       the tokenizer those weights know
    build_model            the GPT to train or sample, from scratch or from those weights
    model_from_checkpoint  the GPT a checkpoint holds
    checkpoint_tokenizer   the tokenizer it was trained with
    check_tokenizer        a one-line error when --tokenizer does not fit the weights training starts from
    load_pretrained        GPT.from_pretrained, with a one-line error when offline
    export                 the command above: a checkpoint as a Hugging Face GPT-2 directory

A checkpoint is a dict: "model" (the state dict), "config" (the GPTConfig as a plain
dict, so the file explains itself) and, from train.py, what it needs to continue:
"optimizer", "step", "val_loss", "train_config", "data_position", "data_pass",
"rng_state", "elapsed" and "steps_fixed" (the seconds trained so far, and whether a time
budget has fixed max_steps yet), "training_weights" where "model" is their average, and
"tokenizer" (Tokenizer.to_dict(): strings only), so that sampling, fine-tuning and the
export need neither the text nor the token cache. It also holds "model_args", the same
shape under the name nanoGPT reads, and the state dict has nanoGPT's keys and shapes
(OpenAI's names, no causal-mask buffer): nanoGPT's sample.py and train.py load it as one
of their own. nanoGPT has no place for a tokenizer, so its sample.py decodes only a
checkpoint trained with GPT-2's.
"""

import dataclasses
import os
import pickle
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

import torch

from machinery import tokenizer
from machinery.cli import RunFailure, UsageError, describe_error, flag_parser, run_main
from model import GPT, PRETRAINED, GPTConfig


# what resuming needs from a checkpoint, and the constants that fix a model's shape
RESUME_KEYS = {"model", "config", "optimizer", "step", "val_loss", "train_config", "data_position", "rng_state"}
SHAPE_KEYS = [f.name for f in dataclasses.fields(GPTConfig) if f.name not in ("dropout", "attn_dropout")]


def training_state(model, optimizer, train_config, loader, step, val_loss, tok, elapsed, steps_fixed, average=None):
    """Everything a resumed run needs to continue exactly where this one stopped. With an
    average of the weights (machinery/averaging.py), "model" holds it, and
    "training_weights" the weights that training goes on from."""
    kept = model if average is None else average.weights(model)
    return {
        "elapsed": elapsed,  # seconds of training so far, all runs together: log.txt's last column goes on from it
        "steps_fixed": steps_fixed,  # False while a time budget has not fixed max_steps yet
        "tokenizer": tok.to_dict(),  # so the checkpoint samples, fine-tunes and exports without the text
        "model": kept.state_dict(),  # the plain model's: no "_orig_mod." prefixes from compile
        **({} if kept is model else {"training_weights": model.state_dict()}),
        "config": dataclasses.asdict(model.config),
        "model_args": nanogpt_model_args(model.config),  # the same, under the name nanoGPT reads
        "optimizer": optimizer.state_dict(),
        "step": step,  # steps done: a resumed run starts here
        "val_loss": val_loss,
        "train_config": train_config,  # train.py's constants, as a dict
        "data_position": loader.position,  # the tokens read in this pass over the training split
        "data_pass": loader.pass_number,  # which pass: each later one reads its windows in a fresh order
        "rng_state": torch.get_rng_state(),
    }


def nanogpt_model_args(config):
    """The GPTConfig as nanoGPT's GPTConfig takes it: without attn_dropout, which it lacks."""
    return {name: value for name, value in dataclasses.asdict(config).items() if name != "attn_dropout"}


def save_checkpoint(path, state):
    """Write to a temporary file beside the checkpoint, then rename it over the old one:
    the rename is atomic, so a crash while saving never destroys the last good checkpoint."""
    tmp = path + ".tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a full disk, a quota, a vanished directory
        if os.path.exists(tmp):
            os.remove(tmp)
        raise RunFailure(f"could not write the checkpoint {path} ({describe_error(e)}); the previous "
                         f"checkpoint is untouched: free some disk space, then resume with --init_from resume") from None


def load_checkpoint(path, device="cpu"):
    """The checkpoint in a file that train.py or nanoGPT's train.py wrote, in this
    project's layout, with "kind" added: a few words on what it is. It holds plain data
    only, so it is loaded with weights_only=True: unpickling arbitrary objects could run code."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise UsageError(f"the checkpoint {path} is empty (0 bytes): it was never written completely; delete it")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" not in str(e).lower():  # not an object it refused to build: a damaged file
            raise UsageError(f"cannot load the checkpoint {path} (UnpicklingError: it is damaged or not a checkpoint)") from None
        raise UsageError(f"refusing to load {path}: it holds Python objects besides tensors, numbers and strings, and "
                         f"unpickling those could run code; load only checkpoints from sources you trust") from None
    except Exception as e:  # a truncated or foreign file: say so in one line
        raise UsageError(f"cannot load the checkpoint {path} ({describe_error(e)})") from None
    if isinstance(ckpt, dict) and "model_args" in ckpt and "train_config" not in ckpt:
        return from_nanogpt(ckpt)
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise UsageError(f"{path} is not a checkpoint written by train.py or nanoGPT: it has no model and config")
    ckpt["kind"] = f"a checkpoint of this project, after {ckpt['step']} steps" if "step" in ckpt else "a checkpoint of this project"
    return ckpt


def resumable(ckpt_path, flags):
    """The checkpoint that --init_from resume continues, once it is checked to hold what
    resuming needs and to fit the flags given (a dict): the same optimizer, tokenizer
    and shape, whose state and weights it holds."""
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
    return resumed


def restore(resumed, optimizer, loader):
    """Put back what the resumed checkpoint holds besides the weights: the optimizer's
    state, the data's position and the random state. Returns (first step, last val loss)."""
    optimizer.load_state_dict(resumed["optimizer"])
    loader.position, loader.pass_number = resumed["data_position"], resumed.get("data_pass", 0)
    torch.set_rng_state(resumed["rng_state"])
    return resumed["step"], resumed["val_loss"]


def from_nanogpt(ckpt):
    """A nanoGPT checkpoint ({"model_args", "model", "iter_num", ...}) in this project's
    layout. nanoGPT saves the state dict of its compiled model as it is, so keys may carry
    torch.compile's "_orig_mod." prefix, and older versions kept the causal mask as a
    buffer named attn.bias; attention here builds its mask on the fly."""
    state = {key.removeprefix("_orig_mod."): value for key, value in ckpt["model"].items()}
    state = {key: value for key, value in state.items() if not key.endswith(".attn.bias")}
    shape = {field.name: ckpt["model_args"][field.name] for field in dataclasses.fields(GPTConfig) if field.name in ckpt["model_args"]}
    iters = f", after {ckpt['iter_num']} iterations" if "iter_num" in ckpt else ""
    return {"model": state, "config": shape, "kind": f"a nanoGPT checkpoint{iters}"}


def model_from_checkpoint(ckpt, dropout=None, attn_dropout=None):
    """The GPT whose shape and weights the checkpoint holds; dropout and attn_dropout, if
    given, replace the checkpoint's (they are not part of the shape)."""
    given = {"dropout": dropout, "attn_dropout": attn_dropout}
    config = {**ckpt["config"], **{name: value for name, value in given.items() if value is not None}}
    try:
        model = GPT(GPTConfig(**config))
        model.load_state_dict(ckpt["model"])
    except (TypeError, RuntimeError, AssertionError) as e:  # unknown fields, missing or misshapen weights
        lines = str(e).strip().splitlines()  # load_state_dict says what is wrong on its second line
        detail = lines[1].strip()[:200] if len(lines) > 1 else describe_error(e)
        raise UsageError(f"the checkpoint's weights do not match its model shape ({detail})") from None
    return model


def checkpoint_tokenizer(ckpt):
    """The tokenizer.Tokenizer the checkpoint's model was trained with: the one it carries,
    or GPT-2's for a checkpoint without one (nanoGPT's, and this project's before it had
    a choice of tokenizer)."""
    if "tokenizer" not in ckpt:
        return tokenizer.gpt2()
    try:
        return tokenizer.from_dict(ckpt["tokenizer"])
    except Exception as e:  # a damaged description: tokenizers raises plain Exceptions
        raise UsageError(f"the checkpoint's tokenizer cannot be read ({describe_error(e)})") from None


def check_tokenizer(given, source, ckpt=None):
    """A UsageError when --tokenizer was given (None: it was not) and is not the tokenizer
    of the weights that training starts from: the checkpoint ckpt (resume), else the
    checkpoint file or pretrained GPT-2 that --init_from names (source). Weights know the
    ids of their own tokenizer only. A source that is none of these does not exist, which
    loading it reports."""
    if given is None:
        return
    if ckpt is None and os.path.isfile(source):
        ckpt = load_checkpoint(source)
    if ckpt is not None:
        brought = checkpoint_tokenizer(ckpt).name
    elif source in PRETRAINED or os.path.isdir(source):
        brought = tokenizer.GPT2Tokenizer.name
    else:
        return
    if given != brought:
        raise UsageError(f"--tokenizer {given} does not fit {source}: its weights know the ids of the {brought} tokenizer "
                         f"only, and keep it; drop --tokenizer, or train a new model from scratch with --tokenizer {given}")


# ----------------------------------------------------------------------------
# The weights a run starts from, and the model built from them


def starting_point(init_from, resumed=None, device="cpu"):
    """The weights a run starts from: the checkpoint it resumes (resumed), a checkpoint
    file's contents (this project's or nanoGPT's), the name of GPT-2's weights or a
    Hugging Face directory, or "scratch": none."""
    if resumed is not None:  # training goes on from its training weights, where it kept an average besides
        return {**resumed, "model": resumed.get("training_weights", resumed["model"])}
    if init_from.endswith(".pt") and not os.path.exists(init_from):
        raise UsageError(f"no checkpoint at {init_from}: check the path given to --init_from")
    if not os.path.isfile(init_from):
        return init_from
    return load_checkpoint(init_from, device)


def source_tokenizer(source):
    """The tokenizer whose ids the weights of source (starting_point's) know; None from
    scratch, where the run makes its own."""
    if source == "scratch":
        return None
    return checkpoint_tokenizer(source) if isinstance(source, dict) else tokenizer.gpt2()


def build_model(source, shape=None, dropout=None, attn_dropout=None):
    """The GPT to train or sample: a new one of shape (a GPTConfig) from scratch, else the
    one source (starting_point's) holds. dropout and attn_dropout, if given, replace
    the weights' own (they are not part of the shape)."""
    if source == "scratch":
        return GPT(shape)
    if isinstance(source, dict):
        return model_from_checkpoint(source, dropout, attn_dropout)
    return load_pretrained(source, *(() if dropout is None else (dropout, attn_dropout)))


# ----------------------------------------------------------------------------
# OpenAI's GPT-2, from a directory, the Hugging Face cache or the hub


def load_pretrained(name_or_path, dropout=0.0, attn_dropout=True):
    """GPT.from_pretrained(name_or_path), downloading only when the hub can be reached,
    so that an offline machine gets a clear message in seconds instead of a minute of
    retries."""
    regularisation = {"dropout": dropout, "attn_dropout": attn_dropout}
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # keep the learner's screen for the samples
    hf_logging.disable_progress_bar()
    if os.path.isdir(name_or_path):
        try:
            return GPT.from_pretrained(name_or_path, **regularisation)
        except Exception as e:  # no config.json, a config with wrong types, weights that do not fit...
            raise UsageError(f"{name_or_path} is not a Hugging Face GPT-2 directory ({describe_error(e)}): "
                             f"pass one that save_pretrained or `python checkpoint.py` wrote") from None
    if name_or_path not in PRETRAINED:
        raise UsageError(f"{name_or_path!r} is neither a directory nor one of {', '.join(PRETRAINED)}")
    try:
        return GPT.from_pretrained(name_or_path, local_files_only=True, **regularisation)
    except OSError:
        pass  # not in the cache yet
    if not hub_reachable():
        raise UsageError(
            f"{name_or_path} is not in the Hugging Face cache and huggingface.co cannot be reached. "
            f"On a machine with internet run: python -c \"from transformers import GPT2LMHeadModel; "
            f"GPT2LMHeadModel.from_pretrained('{name_or_path}').save_pretrained('{name_or_path}-local')\" "
            f"and pass the directory {name_or_path}-local instead."
        )
    return GPT.from_pretrained(name_or_path, **regularisation)


def hub_reachable(timeout=3.0):
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------
# Export: python checkpoint.py --ckpt log/ckpt.pt --out_dir my-gpt


@dataclass
class ExportConfig:
    ckpt: str = os.path.join("log", "ckpt.pt")  # the checkpoint to export (this project's or nanoGPT's)
    out_dir: str = "gpt2-export"  # the directory to write; it must not exist yet, or be empty


def export(argv=None):
    """Turn a checkpoint into a directory that transformers loads as a GPT-2."""
    description = "Export a checkpoint as a Hugging Face GPT-2 directory (config, safetensors weights, tokenizer)."
    cfg = ExportConfig(**vars(flag_parser(ExportConfig, "checkpoint.py", description).parse_args(argv)))
    if os.path.exists(cfg.out_dir) and (not os.path.isdir(cfg.out_dir) or os.listdir(cfg.out_dir)):
        raise UsageError(f"{cfg.out_dir} already exists and is not an empty directory: choose another --out_dir")
    if not os.path.exists(cfg.ckpt):
        raise UsageError(f"no checkpoint at {cfg.ckpt}: train one with `python train.py`, or pass --ckpt PATH")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    ckpt = load_checkpoint(cfg.ckpt)
    tok = checkpoint_tokenizer(ckpt)
    model_from_checkpoint(ckpt).save_pretrained(cfg.out_dir, tok)
    print(f"exported {cfg.ckpt} ({ckpt['kind']}, {tok.name} tokenizer) to {cfg.out_dir}/ as a Hugging Face GPT-2")
    if tok.name == tokenizer.GPT2Tokenizer.name:
        print(f'try it: python sample.py --init_from {cfg.out_dir} --prompt "ROMEO:"')
    else:  # sample.py --init_from reads a directory with GPT-2's tokenizer
        print(f"try it in transformers: pipeline('text-generation', model='{cfg.out_dir}')('ROMEO:')")


if __name__ == "__main__":
    run_main("checkpoint.py", export)
