"""cli.py: flags made from constants, one spelling of booleans, one way to refuse."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import pytest

import sample
import train
from machinery.cli import AutoBool, UsageError, check_fields, flag_parser, run_main


@dataclass
class Constants:
    with_comment: int = 3  # explained here
    without_comment: float = 0.5
    switch: bool = False  # a boolean
    mode: AutoBool = "auto"
    kind: Literal["a", "b"] = "a"
    name: Optional[str] = None

    def __post_init__(self):
        check_fields(self)


def parse(*argv):
    return vars(flag_parser(Constants, "prog", "").parse_args(list(argv)))


def test_a_constant_without_a_comment_still_gets_a_flag():
    help_text = flag_parser(Constants, "prog", "").format_help()
    assert "explained here (default: 3)" in help_text
    assert "--without_comment" in help_text and "(default: 0.5)" in help_text
    assert parse("--without_comment", "0.25") == {"without_comment": 0.25}


def test_booleans_have_one_spelling():
    for text, value in [("True", True), ("false", False), ("1", True), ("no", False)]:
        assert parse("--switch", text) == {"switch": value}
    assert parse("--switch") == {"switch": True}  # the flag alone means True
    assert parse("--mode", "auto") == {"mode": "auto"} and parse("--mode", "False") == {"mode": False}
    with pytest.raises(UsageError, match="--switch"):
        parse("--switch", "maybe")
    with pytest.raises(UsageError, match="expected auto, True or False"):
        parse("--mode", "sometimes")


def test_constants_set_in_code_are_read_and_checked_like_flags():
    c = Constants(with_comment="7", switch="True", mode="false", name=None)
    assert (c.with_comment, c.switch, c.mode) == (7, True, False)
    assert Constants(without_comment=2).without_comment == 2.0
    with pytest.raises(UsageError, match="kind: expected one of a, b"):
        Constants(kind="c")
    with pytest.raises(UsageError, match="with_comment"):
        Constants(with_comment=1.5)
    with pytest.raises(UsageError, match="with_comment"):
        Constants(with_comment=True)


def test_choices_and_unknown_flags_are_usage_errors():
    with pytest.raises(UsageError, match="invalid choice"):
        parse("--kind", "c")
    with pytest.raises(UsageError, match="unrecognized arguments: --nope"):
        parse("--nope", "1")


def test_usage_error_is_one_line_and_exit_code_2(capsys):
    def main():
        raise UsageError("the text is empty: give a longer one")

    with pytest.raises(SystemExit) as exit_:
        run_main("prog.py", main)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "prog.py: error: the text is empty: give a longer one\n"


def test_both_scripts_read_their_constants_the_same_way():
    assert train.parse_flags(["--compile", "False", "--chunked_loss"]) == {"compile": False, "chunked_loss": True}
    assert sample.parse_flags(["--stream", "--kv_cache", "False", "--stop_at_eot", "auto"]) == {
        "stream": True, "kv_cache": False, "stop_at_eot": "auto"}
    assert train.Config(compile="True").compile is True  # as old checkpoints stored it
    with pytest.raises(UsageError, match="top_p"):
        sample.Config(top_p=0.0)


def test_flags_from_a_file_and_flags_after_it_override(tmp_path):
    recipe = tmp_path / "recipe.txt"
    recipe.write_text("# a recipe: one flag and its value per line\n"
                      "--max_steps 40   # long enough to matter\n\n"
                      "--max_lr 1e-3\n--sample_prompt 'JULIET: O Romeo'  # quoted, with spaces\n")
    flags = train.parse_flags([f"@{recipe}", "--max_steps", "60"])
    assert flags == {"max_steps": 60, "max_lr": 1e-3, "sample_prompt": "JULIET: O Romeo"}
    with pytest.raises(UsageError, match="no flags file .*missing.txt: check the path after @"):
        train.parse_flags([f"@{tmp_path / 'missing.txt'}"])


def test_each_recipe_is_a_valid_flags_file_that_says_why():
    recipes = sorted((Path(__file__).parent.parent / "recipes").glob("*.txt"))
    assert [r.name for r in recipes] == ["10min.txt", "2h.txt", "30min.txt", "5min.txt"]
    log_dirs = set()
    for recipe in recipes:
        flag_lines = [line for line in recipe.read_text().splitlines() if line.startswith("--")]
        assert flag_lines, f"{recipe.name} sets no flags"
        for line in flag_lines:
            assert "#" in line, f"{recipe.name}: say why this value was chosen: {line}"
        flags = train.parse_flags([f"@{recipe}"])
        cfg = train.Config(**flags)
        log_dirs.add(cfg.log_dir)
        # a budget in minutes on the learner's own clock, not a step count
        assert cfg.time_budget == {"5min": 5, "10min": 10, "30min": 30, "2h": 120}[recipe.stem]
        assert "max_steps" not in flags and "eval_interval" not in flags
        # the same file on every machine: the sizing chooses what depends on the machine, and the recipe leaves it alone
        assert cfg.size == "auto" and not set(flags) & set(train.SHIPPED), recipe.name
        assert "reference" not in recipe.read_text()
    assert len(log_dirs) == len(recipes)  # each recipe writes its own checkpoint, none overwrites another's


@pytest.mark.parametrize("retired, replacement", [("30min-slow.txt", "30min.txt"), ("30min-float32.txt", "30min.txt"),
                                                  ("10min-float32.txt", "10min.txt"), ("2h-float32.txt", "2h.txt")])
def test_a_retired_recipe_points_to_the_one_that_replaced_it(retired, replacement):
    with pytest.raises(UsageError, match=f"recipes/{retired} is retired: @recipes/{replacement} sizes the model"):
        train.parse_flags([f"@recipes/{retired}"])
    with pytest.raises(UsageError, match="no flags file recipes/nothing.txt"):
        train.parse_flags(["@recipes/nothing.txt"])
