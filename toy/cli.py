"""What every command of the project shares, `python -m toy` and `python -m sd.*` alike (sd/ builds on toy/, never
the other way): the --help format, the output-path check run before any work, the argparse types of a count and of a list of seeds, and
the one line a fast (smoke) run prints and draws on its figures."""
import argparse
import tempfile
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


def seed_list(text):
    """argparse type of a list of seeds: comma-separated integers."""
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def writable(path, name, folder=False, error=ValueError, suffixes=None):
    """Check, before any heavy work, that `path` can be written as a file (or, with folder=True, used as an output
    folder), by doing it: the missing folders are created and a file is created in the folder that will hold
    the output, then whatever the check made is removed, so a refused command leaves nothing. An existing output
    is left untouched (and must be a regular file). `suffixes`: the file endings allowed (the formats written).
    Returns the path; raises `error` naming the argument and the problem."""
    path = Path(path)
    where = path if folder else path.parent
    missing = []
    try:
        if path.exists() and folder and not path.is_dir():
            raise error(f"{name} {path}: is a file, not a folder")
        if path.exists() and not folder and path.is_dir():
            raise error(f"{name} {path}: is a folder; give a file name such as {path / 'out.png'}")
        if path.exists() and not folder and not path.is_file():
            raise error(f"{name} {path}: not a regular file")
        missing = [d for d in [where, *where.parents] if not d.exists()][::-1]
        for d in missing:
            d.mkdir()
        tempfile.TemporaryFile(dir=where).close()
    except OSError as e:
        blocker = next((d for d in [where, *where.parents] if d.exists() and not d.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else f"cannot write there ({e.strerror or e})"
        raise error(f"{name} {path}: {why}") from None
    finally:
        for d in reversed(missing):
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    if suffixes and not folder and path.suffix.lower() not in suffixes:
        raise error(f"{name} {path}: give a file name ending in {' or '.join(suffixes)} (the formats written)")
    return path
