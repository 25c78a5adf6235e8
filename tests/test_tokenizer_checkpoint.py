"""The checkpoint carries its tokenizer: with its training text gone, a bpe checkpoint
still samples, fine-tunes and exports; the export gives the same ids and logits in
transformers; and --tokenizer that does not fit the weights is a one-line error."""

import dataclasses
import json
import os
import shutil

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import sample
import train
from checkpoint import check_tokenizer, checkpoint_tokenizer, export, load_checkpoint, source_tokenizer, starting_point
from machinery.cli import UsageError
from conftest import ROOT, assert_refused, padding_favourite, randomise, run_script, tiny_model, train_run
from machinery.tokenizer import EOT_TEXT, gpt2, train_bpe

# texts the tokenizer was not trained on, with what byte-level BPE must get right:
# runs of spaces and newlines, tabs, digits, accents, other scripts, emoji, a lone \r
TEXTS = [
    "ROMEO:\nBut soft! What light through yonder window breaks?\n\n",
    "  two  spaces,\tone tab,\n\n\nthree newlines \r\n and 1234567 digits",
    "naïve café, Übermaß, 日本語のテキスト, Ελληνικά, emoji 🎭🎭 and \u00a0 a no-break space",
    "'tis 'twas don't I'm you'll -- ... !!! ??? a space before . , ! ? 's n't",  # which a decode clean-up would drop
]


def padded(n_vocab):
    """The model's rows for a tokenizer of n_vocab ids: a multiple of 64, as train.py makes them."""
    return -(-n_vocab // 64) * 64


@pytest.fixture(scope="module")
def bpe_ckpt(tmp_path_factory):
    """(the path of a checkpoint trained with a BPE tokenizer, that tokenizer). The text it
    was trained on is deleted, and every weight of the model is random."""
    run = tmp_path_factory.mktemp("bpe_run")
    text_path = run / "text.txt"
    with open(os.path.join(ROOT, "input"), encoding="utf-8") as f:
        text_path.write_text(f.read(50_000), encoding="utf-8")
    tok = train_bpe([text_path.read_text(encoding="utf-8")], 400)
    text_path.unlink()
    assert padded(tok.n_vocab) > tok.n_vocab  # some rows are padding
    model = randomise(tiny_model(seed=7, vocab_size=padded(tok.n_vocab)))
    path = run / "ckpt.pt"
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.config), "tokenizer": tok.to_dict()}, path)
    return str(path), tok


@pytest.fixture(scope="module")
def bpe_export(bpe_ckpt, tmp_path_factory):
    """The directory `python checkpoint.py` exports the bpe checkpoint to."""
    out_dir = tmp_path_factory.mktemp("bpe_export") / "hf"
    export(["--ckpt", bpe_ckpt[0], "--out_dir", str(out_dir)])
    return str(out_dir)


@pytest.fixture(scope="module")
def auto_tokenizer(bpe_export):
    """The export's tokenizer, as transformers' AutoTokenizer loads it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bpe_export)


# ---------------------------------------------------------------------------
# Which tokenizer a checkpoint has


def test_a_checkpoint_carries_its_tokenizer(bpe_ckpt):
    path, tok = bpe_ckpt
    carried = checkpoint_tokenizer(load_checkpoint(path))
    assert carried.to_dict() == tok.to_dict() and carried.n_vocab == tok.n_vocab and carried.eot == tok.eot
    assert all(carried.encode(text).tolist() == tok.encode(text).tolist() for text in TEXTS)


def test_a_checkpoint_without_one_has_gpt2s(tmp_path):
    shape = dict(block_size=32, vocab_size=100, n_layer=1, n_head=2, n_embd=32)
    assert checkpoint_tokenizer({"model": {}, "config": shape}) is gpt2()  # an older checkpoint of ours
    nanogpt = tmp_path / "nano.pt"
    torch.save({"model": tiny_model(**shape).state_dict(), "model_args": shape, "iter_num": 1}, nanogpt)
    assert checkpoint_tokenizer(load_checkpoint(nanogpt)) is gpt2()


@pytest.mark.parametrize("description", [{"name": "bpe", "tokenizer.json": "{not json"}, {"name": "bpe"}, "bpe"])
def test_a_damaged_tokenizer_is_a_usage_error(description):
    with pytest.raises(UsageError, match="the checkpoint's tokenizer cannot be read"):
        checkpoint_tokenizer({"model": {}, "config": {}, "tokenizer": description})


# ---------------------------------------------------------------------------
# Sampling and fine-tuning take the checkpoint's tokenizer


def test_sample_py_loads_the_checkpoints_tokenizer(bpe_ckpt):
    path, tok = bpe_ckpt
    model, loaded = sample.load_model(sample.Config(ckpt=path, device="cpu"), "cpu")
    assert loaded.to_dict() == tok.to_dict() and model.config.vocab_size > tok.n_vocab


def test_fine_tuning_brings_the_checkpoints_tokenizer(bpe_ckpt):
    path, tok = bpe_ckpt
    source = starting_point(path)
    model, brought = train.model_to_train(train.Config(init_from=path, T=32), source, tok), source_tokenizer(source)
    assert brought.to_dict() == tok.to_dict() and model.config.vocab_size > tok.n_vocab
    assert source_tokenizer(starting_point("scratch")) is None  # from scratch: the run makes its own


@pytest.mark.slow
def test_sample_py_from_a_bpe_checkpoint(bpe_ckpt):
    path, tok = bpe_ckpt
    r = run_script("sample.py", "--ckpt", path, "--prompt", "ROMEO: naïve 🎭", "--num_samples", 2, "--max_new_tokens", 30)
    assert r.returncode == 0, r.stderr
    assert "bpe tokenizer" in r.stderr
    assert "1> ROMEO: naïve 🎭" in r.stdout and "2> ROMEO: naïve 🎭" in r.stdout


# ---------------------------------------------------------------------------
# The export: the same ids and logits in transformers


def test_the_export_holds_the_tokenizer_files(bpe_export):
    files = set(os.listdir(bpe_export))
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert not {"vocab.json", "merges.txt"} & files  # GPT-2's files would be the wrong tokenizer


def test_autotokenizer_gives_the_same_ids(bpe_ckpt, auto_tokenizer):
    tok, theirs = bpe_ckpt[1], auto_tokenizer
    assert len(theirs) == tok.n_vocab
    assert theirs.eos_token == theirs.bos_token == EOT_TEXT and theirs.eos_token_id == tok.eot
    for text in TEXTS:
        ids = tok.encode(text).tolist()
        assert theirs(text)["input_ids"] == ids
        assert theirs.decode(ids) == text


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=60))
def test_autotokenizer_gives_the_same_ids_for_any_text(bpe_ckpt, auto_tokenizer, text):
    assume(EOT_TEXT not in text)  # transformers reads it as the special token, as it does for GPT-2
    assert auto_tokenizer(text)["input_ids"] == bpe_ckpt[1].encode(text).tolist()


def test_automodel_computes_the_same_logits(bpe_ckpt, bpe_export):
    from transformers import AutoModelForCausalLM

    path, tok = bpe_ckpt
    ours = sample.load_model(sample.Config(ckpt=path, device="cpu"), "cpu")[0].eval()
    theirs = AutoModelForCausalLM.from_pretrained(bpe_export).eval()
    idx = torch.tensor([tok.encode(TEXTS[0] + TEXTS[2])[:32].tolist()])
    with torch.no_grad():
        assert (theirs(idx).logits - ours(idx, idx)[0]).abs().max().item() < 1e-4


def test_the_generation_config_follows_the_tokenizer(bpe_ckpt, bpe_export):
    path, tok = bpe_ckpt
    rows = load_checkpoint(path)["config"]["vocab_size"]
    with open(os.path.join(bpe_export, "generation_config.json")) as f:
        generation = json.load(f)
    with open(os.path.join(bpe_export, "config.json")) as f:
        config = json.load(f)
    assert generation["suppress_tokens"] == list(range(tok.n_vocab, rows))
    assert generation["eos_token_id"] == generation["bos_token_id"] == config["eos_token_id"] == config["bos_token_id"] == tok.eot


def test_hugging_face_generate_never_picks_a_padding_id(bpe_ckpt, tmp_path):
    """The padding rows made the model's favourites: generate still never picks one."""
    from transformers import AutoModelForCausalLM

    tok = bpe_ckpt[1]
    padding_favourite(tok.n_vocab, padded(tok.n_vocab)).save_pretrained(tmp_path, tok)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path)
    prompt = torch.tensor([tok.encode("ROMEO:").tolist()])
    out = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_new_tokens=20, min_new_tokens=20)
    assert out.shape[1] == prompt.shape[1] + 20 and out.max().item() < tok.n_vocab


def test_the_export_says_how_to_try_it(bpe_ckpt, tmp_path, capsys):
    export(["--ckpt", bpe_ckpt[0], "--out_dir", str(tmp_path / "hf")])
    out = capsys.readouterr().out
    assert "bpe tokenizer" in out and "pipeline('text-generation'" in out
    assert "sample.py --init_from" not in out  # sample.py would read the directory with GPT-2's tokenizer


# ---------------------------------------------------------------------------
# --tokenizer that does not fit the weights: one line


def test_tokenizer_must_fit_the_checkpoint_fine_tuned(bpe_ckpt):
    path = bpe_ckpt[0]
    with pytest.raises(UsageError, match=f"--tokenizer gpt2 does not fit {path}: its weights know the ids of the bpe"):
        check_tokenizer("gpt2", path)
    check_tokenizer("bpe", path)  # the same tokenizer
    check_tokenizer(None, path)  # not given: the checkpoint's own


@pytest.mark.parametrize("source", ["gpt2", "gpt2-xl", "hf_dir"])
def test_pretrained_gpt2_takes_no_bpe(source, hf_dir):
    source = hf_dir if source == "hf_dir" else source
    with pytest.raises(UsageError, match="--tokenizer bpe does not fit .*gpt2 tokenizer"):
        check_tokenizer("bpe", source)  # before any download
    check_tokenizer("gpt2", source)


def resumable(tmp_path, tok, **constants):
    """A log_dir whose ckpt.pt can be resumed: a run trained with tok."""
    model = tiny_model(vocab_size=padded(tok.n_vocab))
    cfg = train.Config(**constants, **dataclasses.asdict(model.config))
    state = {"model": model.state_dict(), "config": dataclasses.asdict(model.config), "optimizer": {}, "step": 1,
             "val_loss": None, "train_config": dataclasses.asdict(cfg), "data_position": 0,
             "rng_state": torch.get_rng_state(), "tokenizer": tok.to_dict()}
    torch.save(state, tmp_path / "ckpt.pt")
    return str(tmp_path)


def test_resume_keeps_the_checkpoints_tokenizer(bpe_ckpt, tmp_path):
    log_dir = resumable(tmp_path, bpe_ckpt[1], tokenizer="bpe", T=32)
    with pytest.raises(UsageError, match="--tokenizer gpt2 does not fit .*ckpt.pt: its weights know the ids of the bpe"):
        train.resolve_config({"init_from": "resume", "log_dir": log_dir, "tokenizer": "gpt2"})
    cfg, resumed = train.resolve_config({"init_from": "resume", "log_dir": log_dir})
    assert cfg.tokenizer == "bpe" and source_tokenizer(starting_point("resume", resumed)).to_dict() == bpe_ckpt[1].to_dict()


def test_fine_tune_flags_are_checked_before_any_work(bpe_ckpt, tmp_path):
    flags = {"init_from": bpe_ckpt[0], "log_dir": str(tmp_path / "log"), "tokenizer": "gpt2"}
    with pytest.raises(UsageError, match="does not fit"):
        train.resolve_config(flags)
    with pytest.raises(UsageError, match="--tokenizer bpe does not fit gpt2"):
        train.resolve_config({**flags, "init_from": "gpt2", "tokenizer": "bpe"})


@pytest.mark.slow
def test_the_scripts_refuse_a_tokenizer_that_does_not_fit(bpe_ckpt, tmp_path, text_file):
    assert_refused(train_run(tmp_path, text_file, "--init_from", "gpt2", "--tokenizer", "bpe"), "--tokenizer bpe does not fit gpt2")
    assert_refused(train_run(tmp_path, text_file, "--init_from", bpe_ckpt[0], "--tokenizer", "gpt2"), "--tokenizer gpt2 does not fit")


# ---------------------------------------------------------------------------
# A real bpe run, its text and token cache deleted afterwards


@pytest.mark.slow
def test_a_bpe_run_samples_fine_tunes_and_exports_without_its_text(tmp_path, text_file):
    cache = tmp_path / "cache"
    r = train_run(tmp_path, text_file, "--tokenizer", "bpe", "--vocab_size", 320, "--max_steps", 2, "--data_cache", cache)
    assert r.returncode == 0, r.stderr
    ckpt = str(tmp_path / "log" / "ckpt.pt")
    tok = checkpoint_tokenizer(load_checkpoint(ckpt))
    assert tok.name == "bpe" and tok.n_vocab <= 320
    text_file.unlink()
    shutil.rmtree(cache)  # the token cache holds the tokenizer too

    s = run_script("sample.py", "--ckpt", ckpt, "--prompt", "ROMEO:", "--num_samples", 1, "--max_new_tokens", 10)
    assert s.returncode == 0 and "1> ROMEO:" in s.stdout, s.stderr
    e = run_script("checkpoint.py", "--ckpt", ckpt, "--out_dir", tmp_path / "hf")
    assert e.returncode == 0 and (tmp_path / "hf" / "tokenizer.json").exists(), e.stderr

    other = tmp_path / "other.txt"  # a new text, tokenized with the checkpoint's tokenizer
    with open(os.path.join(ROOT, "input"), encoding="utf-8") as f:
        other.write_text(f.read()[-60_000:], encoding="utf-8")
    t = train_run(tmp_path, other, "--init_from", ckpt, "--log_dir", tmp_path / "tuned", "--max_steps", 2, "--data_cache", cache)
    assert t.returncode == 0, t.stderr
    assert "bpe tokenizer" in t.stdout
    tuned = load_checkpoint(str(tmp_path / "tuned" / "ckpt.pt"))
    assert checkpoint_tokenizer(tuned).to_dict() == tok.to_dict()
