"""What every command of the project shares, `python -m toy` and `python -m sd.*` alike (sd/ builds on toy/, never
the other way): the --help format, the output-path check run before any work, the argparse type of a count, and
the one line a fast (smoke) run prints and draws on its figures."""
import argparse
import os
from pathlib import Path

FAST_NOTE = "FAST MODE (a smoke run): these numbers and figures mean nothing"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help for every command: the description as written, and after each option's help its default,
    where it has one (None, False and [] are "no default" and are not shown)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" not in text and action.option_strings and not isinstance(action.default, bool)
                and action.default not in (None, [], argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def positive_int(text):
    """argparse type of a count: a positive integer."""
    try:
        val = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if val < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {val}")
    return val


def writable(path, name, folder=False, error=ValueError):
    """Check, before any heavy work, that `path` can be written as a file (or, with folder=True, used as
    an output folder): whatever exists on the way to it must be a folder we may write into, and the path
    itself, if it exists, must be of the right kind. Folders that do not exist yet will be created.
    Returns the path; raises `error` naming the argument and the problem."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise error(f"{name} {path}: is a file, not a folder")
        if not folder and path.is_dir():
            raise error(f"{name} {path}: is a folder; give a file name such as {path / 'out.png'}")
    parent = path if folder and path.exists() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise error(f"{name} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"{name} {path}: cannot write into {parent} (permission denied)")
    return path
