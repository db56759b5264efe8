"""Argument checks shared by the package, with one wording for every error, and the commands' --help format."""
import argparse


def positive_int(value, name, error=ValueError):
    """Return `value` if it is an int >= 1 (bool excluded), else raise `error` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}")
    return value


def listing(items, limit=5):
    """A long list in an error message, shortened with a count: a, b, c, ... (260 more)."""
    items = [repr(i) if not isinstance(i, str) else i for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def writable(path, name, folder=False, error=ValueError):
    """Check, before any heavy work, that `path` can be written as a file (or, with folder=True, used as
    an output folder): whatever exists on the way to it must be a folder we may write into, and the path
    itself, if it exists, must be of the right kind. Folders that do not exist yet will be created.
    Returns the path; raises `error` naming the argument and the problem."""
    import os
    from pathlib import Path
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help for every command: the description as written, and after each option's help its default,
    where it has one (None, False and [] are "no default" and are not shown)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" not in text and action.option_strings and not isinstance(action.default, bool)
                and action.default not in (None, [], argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text
