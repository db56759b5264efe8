"""Argument checks shared by the package, with one wording for every error."""


def positive_int(value, name, error=ValueError):
    """Return `value` if it is an int >= 1 (bool excluded), else raise `error` naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{name} must be a positive integer, got {value!r}")
    return value
