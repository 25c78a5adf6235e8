"""
The model as Hugging Face's GPT-2 sees it: the mapping between the two state dicts, both
ways, and the export of a model as a directory that transformers loads as it is.

    hf_to_our_state_dict   GPT-2's weights from transformers, for GPT.from_pretrained
    our_to_hf_state_dict   the other way
    export                 GPT.save_pretrained's work: config, weights, tokenizer files

The parameter names are the same on both sides (OpenAI's); only four matrices are
stored transposed. Nothing here imports model.py, so model.py can call it.
"""

import torch

from machinery import tokenizer as tokenizers

# OpenAI's checkpoint stores its Linear layers as "Conv1D" modules whose weight is
# (in, out), the transpose of nn.Linear's (out, in): these four move transposed.
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def hf_to_our_state_dict(hf_sd, our_sd):
    """Map a Hugging Face GPT-2 state dict onto ours, checking every shape."""
    out = {}
    for key, ours in our_sd.items():
        if key not in hf_sd:
            raise ValueError(f"the pretrained weights have no {key}")
        theirs = hf_sd[key].t() if key.endswith(TRANSPOSED) else hf_sd[key]
        if theirs.shape != ours.shape:
            raise ValueError(f"{key}: pretrained shape {tuple(theirs.shape)}, model shape {tuple(ours.shape)}")
        out[key] = theirs
    return out


def our_to_hf_state_dict(our_sd, hf_sd):
    """The other way: our state dict in Hugging Face's layout (hf_sd gives its keys and
    shapes). GPT-2 always has biases; a model trained with bias=False gets zero ones,
    which compute the same thing."""
    out = {}
    for key, theirs in hf_sd.items():
        if key in our_sd:
            out[key] = our_sd[key].t() if key.endswith(TRANSPOSED) else our_sd[key]
        elif key.endswith(".bias"):
            out[key] = torch.zeros_like(theirs)
        else:
            raise ValueError(f"the model has no {key}")
        if out[key].shape != theirs.shape:
            raise ValueError(f"{key}: model shape {tuple(out[key].shape)}, Hugging Face shape {tuple(theirs.shape)}")
    return out


def export(model, directory, tokenizer=None):
    """Write model as a Hugging Face GPT-2: config.json, the weights as model.safetensors,
    generation_config.json, and the files of tokenizer (machinery/tokenizer.py's: it
    writes them itself). Without a tokenizer, GPT-2's, for a model with GPT-2's
    vocabulary; any other vocabulary needs the tokenizer it was trained with.
    transformers' AutoModelForCausalLM, AutoTokenizer and pipeline("text-generation")
    then load the directory as it is."""
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

    c = model.config
    if tokenizer is None:
        tokenizer = tokenizers.gpt2()
        if not tokenizer.n_vocab <= c.vocab_size <= tokenizers.padded_vocab(tokenizer.n_vocab):
            raise ValueError(f"a model of {c.vocab_size:,} tokens was not trained with GPT-2's tokenizer: pass the "
                             f"tokenizer it was trained with, save_pretrained(directory, tokenizer)")
    eot = tokenizer.eot  # <|endoftext|> begins and ends a document
    hf_config = GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
        resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout if c.attn_dropout else 0.0,
        bos_token_id=eot, eos_token_id=eot,
    )
    hf_model = GPT2LMHeadModel(hf_config)
    hf_model.load_state_dict(our_to_hf_state_dict(model.state_dict(), hf_model.state_dict()))
    # rows past the tokenizer's ids only pad the vocabulary: they stand for no text,
    # so Hugging Face's generate must never pick them
    padding_ids = list(range(tokenizer.n_vocab, c.vocab_size))
    hf_model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=eot, suppress_tokens=padding_ids or None)
    hf_model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
