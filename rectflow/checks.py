"""The argument checks the method's functions share, with one wording for every error."""


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
