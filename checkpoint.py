"""
Weights on disk: the checkpoints train.py writes and resumes from, and OpenAI's GPT-2
weights fetched through Hugging Face.

    save_checkpoint        write a checkpoint so that a crash never destroys the last one
    load_checkpoint        read one back (only plain data: tensors, numbers, strings)
    model_from_checkpoint  the GPT a checkpoint holds
    load_pretrained        GPT.from_pretrained, with a one-line error when offline

A checkpoint is a dict: "model" (the state dict), "config" (the GPTConfig as a plain
dict, so the file explains itself) and, from train.py, what it needs to continue:
"optimizer", "step", "val_loss", "train_config", "data_position", "rng_state".
"""

import os
import socket
from urllib.parse import urlparse

import torch

from cli import UsageError
from model import GPT, PRETRAINED, GPTConfig


def save_checkpoint(path, state):
    """Write to a temporary file beside the checkpoint, then rename it over the old one:
    the rename is atomic, so a crash while saving never destroys the last good checkpoint."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, device="cpu"):
    """The checkpoint dict in a file that train.py wrote. It holds plain data only, so it
    is loaded with weights_only=True: unpickling arbitrary objects could run code."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say so in one line
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise UsageError(f"cannot load the checkpoint {path} ({e.__class__.__name__}: {reason})") from None
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise UsageError(f"{path} is not a checkpoint written by train.py: it has no model and config")
    return ckpt


def model_from_checkpoint(ckpt):
    """The GPT whose shape and weights the checkpoint holds."""
    model = GPT(GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model


# ----------------------------------------------------------------------------
# OpenAI's GPT-2, from a directory, the Hugging Face cache or the hub


def load_pretrained(name_or_path, dropout=0.0):
    """GPT.from_pretrained(name_or_path), downloading only when the hub can be reached,
    so that an offline machine gets a clear message in seconds instead of a minute of
    retries."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # keep the learner's screen for the samples
    hf_logging.disable_progress_bar()
    if os.path.isdir(name_or_path):
        return GPT.from_pretrained(name_or_path, dropout=dropout)
    if name_or_path not in PRETRAINED:
        raise UsageError(f"{name_or_path!r} is neither a directory nor one of {', '.join(PRETRAINED)}")
    try:
        return GPT.from_pretrained(name_or_path, local_files_only=True, dropout=dropout)
    except OSError:
        pass  # not in the cache yet
    if not hub_reachable():
        raise UsageError(
            f"{name_or_path} is not in the Hugging Face cache and huggingface.co cannot be reached. "
            f"On a machine with internet run: python -c \"from transformers import GPT2LMHeadModel; "
            f"GPT2LMHeadModel.from_pretrained('{name_or_path}').save_pretrained('{name_or_path}-local')\" "
            f"and pass the directory {name_or_path}-local instead."
        )
    return GPT.from_pretrained(name_or_path, dropout=dropout)


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
