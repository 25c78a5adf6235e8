"""
The command line, shared by train.py, sample.py and bench.py.

    flag_parser     one flag per constant of a script's Config, typed like the constant
    check_fields    the same reading and checking for constants set in code
    UsageError      bad input from the user: one line on stderr, exit code 2
    RunFailure      a run that cannot go on: one line on stderr, exit code 1
    run_main        runs a script's main() and turns either into that one line
                    (SHOW_TRACEBACK=1 shows the traceback instead)
    pyplot          matplotlib for drawing into files, or one line on what is missed without it

Booleans have one spelling everywhere: `--flag True` or `--flag False` (also 1/0,
yes/no, and `--flag` alone for True); three-way settings add `auto`.
"""

import argparse
import dataclasses
import inspect
import io
import math
import os
import shlex
import sys
import tokenize
import typing
from typing import Literal, Union

# A setting that is True, False, or "auto" (the script decides from the machine)
AutoBool = Union[bool, Literal["auto"]]


class UsageError(Exception):
    """Bad input from the user or the disk: reported as one line, exit code 2."""

    exit_code = 2


class RunFailure(UsageError):
    """A run that cannot go on (a loss that is no longer a number, a checkpoint that
    cannot be written): reported the same way, exit code 1."""

    exit_code = 1


# set it (SHOW_TRACEBACK=1 python train.py ...) to see the full Python traceback of an error
TRACEBACK_VARIABLE = "SHOW_TRACEBACK"


def describe_error(e):
    """An exception in a few words for a one-line message: its class and its first line."""
    first_line = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{e.__class__.__name__}: {first_line}" if first_line else e.__class__.__name__


def run_main(prog, main):
    """Run main(); a UsageError becomes `prog: error: message` on stderr and its exit code."""
    try:
        main()
    except UsageError as e:
        if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process meets the same error: one says it
            print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


# ----------------------------------------------------------------------------
# Reading values


def parse_bool(text):
    if isinstance(text, bool):
        return text
    if str(text).lower() in ("true", "1", "yes"):
        return True
    if str(text).lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def parse_auto_bool(text):
    if str(text).lower() == "auto":
        return "auto"
    try:
        return parse_bool(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto, True or False, got {text!r}") from None


def check_constant(name, value, annotation):
    """value read as the type its constant is declared with, or a UsageError that names it.
    Configs call this for every field, so a value set in code is checked like a flag."""
    reader = value_reader(annotation)
    try:
        if isinstance(reader, tuple):  # a choice among fixed strings
            if value not in reader:
                raise argparse.ArgumentTypeError(f"expected one of {', '.join(reader)}, got {value!r}")
            return value
        if annotation is tuple:
            return tuple(check_constant(name, v, float) for v in value)
        if value is None:
            return None
        if not isinstance(reader, type):  # parse_bool or parse_auto_bool
            return reader(value)
        if reader is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(value, str):
            value = reader(value)
        elif not isinstance(value, reader) or (reader is int and isinstance(value, bool)):
            raise TypeError(f"expected {reader.__name__}, got {value!r}")
        if reader is float and not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return value
    except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
        raise UsageError(f"{name}: {e}") from None


def value_reader(annotation):
    """The function that reads a flag's text for a constant of this type (or its choices)."""
    if annotation is bool:
        return parse_bool
    if annotation == AutoBool:
        return parse_auto_bool
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) is Union:  # Optional[X]: read as X
        return next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if annotation is tuple:
        return float
    return annotation


def require(condition, message):
    """A UsageError with message unless condition holds: one check of a constant's value."""
    if not condition:
        raise UsageError(message)


def require_at_least(config, minimum, *names):
    for name in names:
        value = getattr(config, name)
        require(value >= minimum, f"{name} must be at least {minimum}, not {value}")


def check_fields(config):
    """Check and convert every field of a dataclass instance in place."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        setattr(config, field.name, check_constant(field.name, getattr(config, field.name), hints[field.name]))


# ----------------------------------------------------------------------------
# Flags from constants


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, whose errors become a UsageError (one line, exit code 2) like any other,
    and which reads flags from a file named with @: `python train.py @recipes/30min.txt`."""

    def __init__(self, **kwargs):
        super().__init__(fromfile_prefix_chars="@", **kwargs)

    def error(self, message):
        raise UsageError(f"{message} (see --help)")

    def parse_args(self, args=None, namespace=None):
        """argparse's, with a flags file that is not there named in one line first."""
        for arg in sys.argv[1:] if args is None else args:
            if str(arg).startswith("@") and not os.path.exists(arg[1:]):
                raise UsageError(missing_flags_file(arg[1:]))
        return super().parse_args(args, namespace)

    def convert_arg_line_to_args(self, line):
        """A line of a flags file: a flag and its value, with an optional # comment."""
        try:
            return shlex.split(line, comments=True)
        except ValueError as e:  # an unclosed quote
            raise UsageError(f"cannot read the flags file line {line.strip()!r}: {e}") from None


# recipe files that one file per budget replaced: it sizes the model for the machine it runs on
RETIRED_RECIPES = {"10min-float32.txt": "10min.txt", "30min-float32.txt": "30min.txt", "30min-slow.txt": "30min.txt",
                   "2h-float32.txt": "2h.txt"}


def missing_flags_file(path):
    """The one line for a flags file (@path) that is not there."""
    name = os.path.basename(path)
    if name in RETIRED_RECIPES:
        return (f"{path} is retired: @{os.path.join(os.path.dirname(path), RETIRED_RECIPES[name])} sizes the model "
                f"for the machine it runs on, whatever its CPU")
    return f"no flags file {path}: check the path after @"


def flag_parser(config_class, prog, description):
    """An argparse parser with one flag per field of config_class, named and typed like
    the field, with the comment beside the field as its help. Flags that are not given
    stay absent from the result (default=SUPPRESS), so that a resumed run can tell
    which constants the user wants to change."""
    parser = OneLineArgumentParser(prog=prog, description=description, allow_abbrev=False)
    add_flags(parser, config_class)
    return parser


def add_flags(parser, config_class):
    """Add one flag per field of config_class to parser (see flag_parser)."""
    hints = typing.get_type_hints(config_class)
    comments = field_comments(config_class)
    for field in dataclasses.fields(config_class):
        help_text = f"{comments.get(field.name, '')} (default: {field.default})".strip()
        kwargs = dict(default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))  # argparse formats help with %
        reader = value_reader(hints[field.name])
        if isinstance(reader, tuple):
            kwargs["choices"] = reader
        elif hints[field.name] is tuple:
            kwargs.update(type=float, nargs=len(field.default))
        elif hints[field.name] in (bool, AutoBool):
            kwargs.update(type=reader, nargs="?", const=True)  # `--flag` alone means True
        else:
            kwargs["type"] = reader
        parser.add_argument(f"--{field.name}", **kwargs)


def field_comments(config_class):
    """{field: the comment at the end of its line} in the class's source, so that --help
    explains each flag in the words a learner reads at the top of the script. Python's
    own tokenizer finds the comments; a field without one just has no help text."""
    try:
        source = inspect.getsource(config_class)
    except (OSError, TypeError):  # no source to read (a frozen or compiled-only module)
        return {}
    names = {field.name for field in dataclasses.fields(config_class)}
    first_name, comments = {}, {}  # by line number
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        line = token.start[0]
        if token.type == tokenize.NAME:
            first_name.setdefault(line, token.string)
        elif token.type == tokenize.COMMENT and first_name.get(line) in names:
            comments[first_name[line]] = token.string.lstrip("#").strip()
    return comments


def pyplot(without):
    """matplotlib.pyplot, drawing to files; None when it cannot be imported, after saying
    so in one line that begins with `without`: what the run does without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # draw to a file; no window, no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        print(f"{without}: matplotlib cannot be imported ({e}); pip install matplotlib")
        return None
    return plt
