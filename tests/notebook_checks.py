"""What a committed tutorial must show a student, read from its JSON (tests/test_notebooks.py): each function
returns the faults it finds, as short strings (empty: none)."""
import re

HEADER = ("**Objectives.**", "**Prerequisites.**", "**Run time**")
# an exercise's heading: "**Exercise 2** (⋆⋆)", "### Exercise 1 (⋆) — ...", "## Exercise (⋆): ..."
EXERCISE = re.compile(r"\*\*Exercise \d+[^*\n]*\*\*[^\n]*|^#+ Exercise\b(?!s)[^\n]*", re.MULTILINE)
# a failure message that shows the value the check compares with (the names the checks give it)
LEAK = re.compile(r"✗[^\n\"']*\{[^}]*\b(ref|want|wanted|expected|best|reference)\b")


def _text(cell):
    return "".join(cell["source"])


def failed_claims(nb):
    return [line for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
            for line in "".join(o.get("text", [])).splitlines() if line.startswith("claim ✗")]


def missing_header(nb):
    first = _text(nb["cells"][0])
    missing = [h for h in HEADER if h not in first]
    times = first.split("**Run time**", 1)[-1].split("\n\n")[0]
    return missing + ([] if missing or ("full" in times and "fast" in times) else ["run times, full and fast"])


def leaking_checks(nb):
    return [_text(c)[:60] for c in nb["cells"] if c["cell_type"] == "code" and LEAK.search(_text(c))]


def exercise_faults(nb):
    """Every exercise has a difficulty mark and a check (a code cell printing ✓) before the next exercise."""
    faults, open_ = [], None
    for c in nb["cells"]:
        if c["cell_type"] == "markdown":
            for heading in EXERCISE.findall(_text(c)):
                if open_:
                    faults.append(f"no check: {open_}")
                open_ = heading[:50]
                if "⋆" not in heading[:40]:
                    faults.append(f"no difficulty mark: {open_}")
        elif c["cell_type"] == "code" and "✓" in _text(c):
            open_ = None
    return faults + ([f"no check: {open_}"] if open_ else [])


def own_fast_reads(nb):
    """Fast mode is read by tutorials/teach.py alone."""
    return [_text(c)[:60] for c in nb["cells"] if c["cell_type"] == "code" and "RECTFLOW_FAST\")" in _text(c)]
