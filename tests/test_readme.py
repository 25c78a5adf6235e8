"""README's commands, checked the way a learner meets them.

Every `python train.py ...`, `python sample.py ...` and `torchrun ...` line in a code block
of README.md, of every page in docs/ and of each markdown page README.md links to, goes through the checks its
script makes before any work starts: the flags parse; the constants pass Config.check();
train.py's checkpoint rules hold (no new run over an existing log_dir/ckpt.pt, no resume
without one); torchrun's process count shares out the micro-batches; the text, a prompt
file and a checkpoint to sample from exist. Nothing trains. Each page is a story, walked
in order in a folder laid out like the repository, where a training command leaves its
checkpoint behind for the commands after it."""

import ast
import contextlib
import dataclasses
import glob
import importlib.metadata
import io
import os
import re
import shlex
import sys

import pytest
import torch.distributed.run as torchrun

import sample
import train
from checkpoint import save_checkpoint, training_state
from machinery.logbook import make_log_dir
from machinery.cli import UsageError
from conftest import ROOT
from machinery.data import DataLoader, text_files
from model import GPT
from machinery.optimizer import configure_optimizers
from machinery.tokenizer import gpt2

# What a story's folder shares with the repository: the text, and the recipes' flags files
FROM_THE_REPO = ["input", "recipes"]
# Files the commands name as the learner's own, and what the test puts in them
EXAMPLE_FILES = {
    "my-flags.txt": "--n_layer 4\n--n_head 4\n--n_embd 256  # a smaller model\n",
    "prompt.txt": "ROMEO:\nBut soft, what light through yonder window breaks?\n",
    "my-text.txt": "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n" * 40,
}
# Commands a page shows in order to demonstrate an error, and the error each must give
REFUSALS = {
    "python train.py --n_embd 66 --n_head 4 --log_dir log/odd": "n_embd=66 must be divisible by n_head=4",
}
PLACEHOLDER = b"a checkpoint to be: the test writes a real one when a command resumes it\n"


# ----------------------------------------------------------------------------
# Finding the commands


def linked_pages(page):
    """The markdown pages a page links to, relative to the repository, in order of first mention."""
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        targets = re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", f.read())
    here = os.path.dirname(page)
    return list(dict.fromkeys(os.path.normpath(os.path.join(here, target)) for target in targets))


def find_commands(markdown):
    """(line number, the line as written, its words) for each command of train.py,
    sample.py or torchrun in the code blocks of markdown. A line ending in a backslash
    goes on in the next; other lines of a block (a sample of output) are no commands."""
    found, in_block, start, joined = [], False, 0, ""
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        start = start if joined else number
        joined = f"{joined} {line.strip()}" if joined else line.strip()
        if joined.endswith("\\"):
            joined = joined[:-1].rstrip()
            continue
        found += [(start, joined, words) for words in commands_in(joined)]
        joined = ""
    return found


def commands_in(line):
    """The checked commands of one shell line, as word lists: the line split at && || ; |
    and &, with # comments and leading variable assignments (SHOW_TRACEBACK=1) left out."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # an unclosed quote: harmless in a sample of output, not in a command
        if any(checked(words) for words in split_at_operators(line.split())):
            raise ValueError(f"cannot read {line!r} as a shell command: a quote is not closed") from None
        return []
    return [words for words in split_at_operators(words) if checked(words)]


def split_at_operators(words):
    """A shell line's words as one list per command, without the variables set before each."""
    commands, current = [], []
    for word in words + [";"]:
        if word in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        elif current or not re.fullmatch(r"[A-Za-z_]\w*=.*", word):  # SHOW_TRACEBACK=1 sets a variable
            current.append(word)
    return commands


def checked(words):
    """Whether words run one of the scripts this test checks."""
    return words[:2] in (["python", "train.py"], ["python", "sample.py"]) or words[:1] == ["torchrun"]


# ----------------------------------------------------------------------------
# A learner's folder, and each script's checks before it starts work


class Story:
    """A folder laid out like the repository, walked one command at a time: the
    checkpoints in it are those the commands so far have written."""

    def __init__(self, folder):
        for name in FROM_THE_REPO:
            os.symlink(os.path.join(ROOT, name), os.path.join(folder, name))
        for name, text in EXAMPLE_FILES.items():
            with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
                f.write(text)
        self.placeholders = {}  # checkpoint path: the Config of the run that wrote it

    def check(self, words):
        """None when the command gets past its script's checks (or, for one of REFUSALS,
        is refused with its error), else what went wrong."""
        expected = REFUSALS.get(shlex.join(words))
        try:
            if words[0] == "torchrun":
                self.torchrun(words[1:])
            elif words[1] == "train.py":
                self.train(words[2:])
            else:
                self.sample(words[2:])
        except UsageError as e:
            script = "train.py" if words[0] == "torchrun" else words[1]
            return None if expected and expected in str(e) else f"{script}: error: {e}"
        return f"the page shows it refused with {expected!r}, but it would run" if expected else None

    def train(self, argv, world_size=1):
        """train.py's checks, in main()'s order, as far as they go without a model or tokens;
        then the checkpoint the run would save exists."""
        flags = parse(train.parse_flags, argv)
        if flags is None:
            return
        if flags.get("init_from") == "resume":
            self.make_resumable(os.path.join(flags.get("log_dir", train.Config.log_dir), "ckpt.pt"))
        cfg, _ = train.resolve_config(flags)
        train.micro_steps_per_step(cfg, world_size)
        make_log_dir(cfg.log_dir)
        text_files(cfg.input_file)
        path = os.path.join(cfg.log_dir, "ckpt.pt")
        with open(path, "wb") as f:
            f.write(PLACEHOLDER)
        self.placeholders[path] = cfg

    def torchrun(self, argv):
        """torchrun's own parser; then train.py's checks for nnodes x nproc_per_node processes."""
        try:
            with contextlib.redirect_stderr(io.StringIO()) as errors:
                args = torchrun.get_args_parser().parse_args(argv)
        except SystemExit:
            raise UsageError(f"torchrun refuses its flags: {errors.getvalue().strip().splitlines()[-1]}") from None
        if args.training_script != "train.py":
            raise UsageError(f"torchrun starts {args.training_script}; only train.py trains in several processes")
        nodes = torchrun.parse_min_max_nnodes(args.nnodes)[1]  # the most nodes it may have
        self.train(args.training_script_args, world_size=nodes * int(args.nproc_per_node))

    def sample(self, argv):
        """sample.py's checks before it loads a model: the constants, the prompt, the checkpoint's file."""
        flags = parse(sample.parse_flags, argv)
        if flags is None:
            return
        cfg = sample.Config(**flags)
        sample.read_prompt(cfg.prompt)
        if cfg.init_from is None and not os.path.exists(cfg.ckpt):  # where load_model starts
            raise UsageError(f"no checkpoint at {cfg.ckpt} at this point of the page")

    def make_resumable(self, path):
        """A resumed run reads its checkpoint: the placeholder left by the run that wrote it
        becomes a real checkpoint of that run's shape and constants."""
        cfg = self.placeholders.pop(path, None)
        if cfg is not None:
            save_checkpoint(path, finished_run(cfg))


def parse(parse_flags, argv):
    """parse_flags(argv), or None for --help, which prints every flag and exits."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return parse_flags(argv)
    except SystemExit as e:
        if e.code:
            raise
        return None


def finished_run(cfg):
    """What train.py saves at the end of a run from scratch with these constants, from
    fresh weights: a resumed run reads its constants and shape, not what the weights learned."""
    assert cfg.init_from in ("scratch", "resume"), "a fine-tune's shape comes from weights this test cannot fetch"
    model = GPT(train.model_shape(cfg))
    optimizer = configure_optimizers(model, cfg.weight_decay, cfg.max_lr, cfg.betas, "cpu", cfg.optimizer, cfg.adamw_lr_ratio)
    return training_state(model, optimizer, dataclasses.asdict(cfg), DataLoader(None, cfg.B, cfg.T), cfg.max_steps, None,
                          gpt2(), elapsed=60.0, steps_fixed=True)


@pytest.fixture
def story(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return Story(tmp_path)


# ----------------------------------------------------------------------------
# The tests


def test_commands_are_read_from_code_blocks_and_output_is_skipped():
    page = "\n".join([
        "Run `python train.py --max_steps 1` (not in a block), then:",  # 1
        "```bash",
        "pip install -r requirements.txt && python train.py",  # 3
        "SHOW_TRACEBACK=1 python train.py --n_embd 66 \\",  # 4
        "    --n_head 4   # a comment",
        "python bench.py",
        "```",
        "```",
        "step    9 | sample: ROMEO:\\nI'll go",  # output, with a quote left open
        "done: sample from it with: python sample.py --ckpt log/ckpt.pt",
        "```",
    ])
    assert find_commands(page) == [
        (3, "pip install -r requirements.txt && python train.py", ["python", "train.py"]),
        (4, "SHOW_TRACEBACK=1 python train.py --n_embd 66 --n_head 4   # a comment",
         ["python", "train.py", "--n_embd", "66", "--n_head", "4"]),
    ]


def test_a_new_run_over_the_quick_starts_checkpoint_is_refused(story):
    assert story.check(["python", "train.py"]) is None
    assert "log/ckpt.pt exists from an earlier run" in story.check(["python", "train.py", "--max_steps", "5"])


def test_a_resume_reads_the_checkpoint_of_the_run_before(story):
    assert story.check(shlex.split("python train.py --n_layer 1 --n_head 1 --n_embd 32 --optimizer muon")) is None
    problem = story.check(shlex.split("python train.py --init_from resume --optimizer adamw"))
    assert "was trained with --optimizer muon" in problem


def test_torchrun_shares_the_micro_batches_among_nodes_times_processes(story):
    # the default step is 8 micro-batches: one for each of 2 x 4 processes, too few for 2 x 8
    assert story.check(shlex.split("torchrun --nnodes 2 --nproc_per_node 4 train.py --log_dir a")) is None
    problem = story.check(shlex.split("torchrun --nnodes 2 --nproc_per_node 8 train.py --log_dir b"))
    assert "8 micro-batches per step cannot be shared evenly among 16 processes" in problem


def test_sampling_needs_a_checkpoint_first(story):
    assert "no checkpoint at log/ckpt.pt" in story.check(shlex.split('python sample.py --prompt "ROMEO:"'))


def pages():
    """README.md, every page in docs/, and the other pages README.md links to."""
    docs = sorted(os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md"))
    return list(dict.fromkeys(["README.md", *docs, *linked_pages("README.md")]))


def test_readme_links_to_every_page_of_docs():
    unlinked = set(pages()) - set(linked_pages("README.md")) - {"README.md", os.path.join("docs", "README.md")}
    assert not unlinked, f"README.md never links to {sorted(unlinked)}"


@pytest.mark.parametrize("page", pages())
def test_the_pages_commands_run_in_order(page, story):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        commands = find_commands(f.read())
    assert commands or page != "README.md", "README.md has no train.py, sample.py or torchrun command in a code block"
    failures = [f"{page}:{line}: {text}\n    {problem}" for line, text, words in commands
                if (problem := story.check(words)) is not None]
    if failures:
        pytest.fail("commands that would not run where they stand:\n" + "\n".join(failures), pytrace=False)


def heading_anchors(page):
    """The #anchors GitHub gives a page's headings: lower case, without punctuation, spaces
    as hyphens, and -1, -2 after a heading seen before. Code blocks hold no headings."""
    anchors, seen, in_block = set(), {}, False
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        for line in f:
            in_block ^= line.startswith("```")
            if in_block or not (heading := re.match(r"#{1,6} (.+)", line)):
                continue
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_link_and_anchor_a_page_gives_leads_somewhere():
    broken = []
    for page in pages():
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            links = re.findall(r"\]\(([^)\s]+)\)", f.read())
        for link in links:
            if re.match(r"[a-z]+:", link):  # https: and the like: not checked offline
                continue
            path, _, fragment = link.partition("#")
            target = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(os.path.join(ROOT, target)):
                broken.append(f"{page}: {link} (no {target})")
            elif fragment and fragment not in heading_anchors(target):
                broken.append(f"{page}: {link} (no heading #{fragment} in {target})")
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)


def test_requirements_name_every_package_the_code_imports():
    sources = [os.path.join(ROOT, path) for folder in ("", "machinery", "tests") for path in glob.glob(f"{folder}/*.py".lstrip("/"), root_dir=ROOT)]
    ours = {os.path.splitext(os.path.basename(source))[0] for source in sources} | {"machinery"}
    imported = set()
    for source in sources + [os.path.join(ROOT, "docs", "draw.py")]:
        with open(source, encoding="utf-8") as f:
            for node in ast.walk(ast.parse(f.read())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    needed = {distributions[name][0].lower().replace("-", "_") for name in imported - ours - set(sys.stdlib_module_names)}
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        listed = {re.match(r"[\w.-]+", line).group().lower().replace("-", "_") for line in f if line[0].isalnum()}
    assert needed <= listed, f"imported but not in requirements.txt: {sorted(needed - listed)}"


def test_every_picture_a_page_shows_exists():
    for page in pages():
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            pictures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", f.read())
        for picture in pictures:
            assert os.path.exists(os.path.join(ROOT, os.path.dirname(page), picture)), f"{page} shows {picture}, which is missing"


def test_docs_draw_draws_the_schedule_and_the_recipes_curves(tmp_path):
    import importlib.util

    from machinery.cli import pyplot

    spec = importlib.util.spec_from_file_location("draw", os.path.join(ROOT, "docs", "draw.py"))
    draw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(draw)
    plt = pyplot("no pictures")
    for drawing in (draw.draw_schedule, draw.draw_recipes):
        path = tmp_path / f"{drawing.__name__}.png"
        drawing(plt, str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    minutes, bpb = draw.validation_by_minute(os.path.join(ROOT, "docs", "runs", "30min-sized-zen4.log.txt"))
    assert len(minutes) == len(bpb) >= 6 and max(minutes) <= 30 and bpb[-1] < bpb[0]


def test_every_log_in_docs_runs_is_linked_from_a_page_or_drawn():
    """docs/runs holds only the logs a page quotes, each linked from it, and those docs/draw.py reads."""
    linked = set()
    for page in pages():
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            linked |= {os.path.basename(link) for link in re.findall(r"\]\(([^)\s#]+)", f.read()) if "runs/" in link}
    with open(os.path.join(ROOT, "docs", "draw.py"), encoding="utf-8") as f:
        drawn = set(re.findall(r'"([\w.-]+\.log\.txt)"', f.read()))
    kept = set(os.listdir(os.path.join(ROOT, "docs", "runs")))
    assert not kept - linked - drawn, f"logs no page links and draw.py does not read: {sorted(kept - linked - drawn)}"
    assert drawn <= kept, f"draw.py reads logs that are not there: {sorted(drawn - kept)}"


# ----------------------------------------------------------------------------
# The figures README.md repeats: each is checked against the page it comes from


def read(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def prose(page):
    """A page's text with every run of white space, line breaks among them, as one space."""
    return " ".join(read(page).split())


def code_blocks(markdown):
    """The lines of each fenced code block, in order."""
    return [block.splitlines() for block in re.findall(r"^```[^\n]*\n(.*?)^```", markdown, re.M | re.S)]


def recipe_results(markdown):
    """{(recipe, machine): cell} from a page's table whose first column is `recipe`; a
    machine is its column's heading up to the parenthesis."""
    lines = [line for line in markdown.splitlines() if line.startswith("| recipe |")]
    assert len(lines) == 1, "the page should have one table of the recipes' results"
    rows = markdown[markdown.index(lines[0]):].split("\n\n")[0].splitlines()
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    machines = [heading.split(" (")[0] for heading in cells[0][1:]]
    return {(row[0], machine): cell for row in cells[2:] for machine, cell in zip(machines, row[1:])}


def test_readme_quotes_the_first_run_as_training_md_shows_it():
    source = "\n".join(line for block in code_blocks(read("docs/training.md")) for line in block)
    quoted = next(block for block in code_blocks(read("README.md")) if block[0].startswith("device cpu"))
    for line in quoted:
        assert line == "..." or line.removesuffix(" ...") in source, f"README.md quotes a line docs/training.md lacks: {line}"
    took = re.search(r"The run took ([\d a-z]+ s) on that (Zen \d)", prose("README.md"))
    assert took and f"on the {took[2]}" in prose("docs/training.md") and f"run took {took[1]}" in prose("docs/training.md")


def test_readme_gives_the_recipes_results_as_recipes_readme_does():
    ours, theirs = recipe_results(read("README.md")), recipe_results(read("recipes/README.md"))
    assert ours.keys() == theirs.keys(), "README.md and recipes/README.md should have the same recipes and machines"
    for key, cell in ours.items():
        assert theirs[key].startswith(cell), f"{key}: README.md says {cell!r}, recipes/README.md {theirs[key]!r}"


def test_readme_gives_the_test_count_and_time_of_testing_md():
    ours = re.search(r"\): (\d+) in (\d+) min on an? (Zen \d|Xeon)", prose("README.md"))
    theirs = re.search(r"passed (\d+) tests in (\d+) min \d+ s in a clean clone on the (Zen \d|Xeon)", prose("docs/testing.md"))
    assert ours and theirs and ours.groups() == theirs.groups(), "README.md's test count differs from docs/testing.md's"
