"""python tutorials/clean_outputs.py tutorials/*.ipynb: after executing a notebook in full mode, keep its
committed outputs readable: each progress bar's final state only (not its hundreds of redraws, which Jupyter
stores as separate outputs), and no tqdm "IProgress not found" warning (which also shows a path of the machine
that ran it).
tests/test_docs.py checks the committed notebooks for both."""
import json
import re
import sys
from pathlib import Path


def clean(text):
    """A stream's text: carriage-return redraws reduced to the last one, tqdm's IProgress warning dropped."""
    out = []
    lines = text.split("\n")
    skip = False
    for line in lines:
        if "TqdmWarning" in line:
            skip = True              # the warning line, then its source line
            continue
        if skip and line.strip().startswith("from .autonotebook"):
            skip = False
            continue
        skip = False
        if "\r" in line:
            line = [s for s in line.split("\r") if s.strip()][-1] if line.strip() else ""
        out.append(line)
    return "\n".join(out)


BAR = re.compile(r"([^\r\n]*?):\s+\d+%\|[^|]*\|\s*(\d+)/")      # tqdm's "desc:  40%|████  | 1200/3000"


def redraws(before, after):
    """Whether `after` redraws the progress bar that `before` ends with: the same description, not fewer steps."""
    a, b = BAR.findall(before.rsplit("\n", 1)[-1]), BAR.match(after.lstrip("\r"))
    return bool(a and b) and a[-1][0] == b[1] and int(b[2]) >= int(a[-1][1])


def merged_streams(outputs):
    """Consecutive outputs of one stream joined into one. Jupyter stores each tqdm redraw as an output of its
    own: one that redraws the bar before it is joined with a carriage return (which clean() collapses)."""
    out = []
    for o in outputs:
        prev = out[-1] if out else None
        if o.get("output_type") == "stream" and prev and prev.get("output_type") == "stream" \
                and prev["name"] == o["name"]:
            text, new = "".join(prev["text"]), "".join(o["text"])
            sep = "\r" if redraws(text, new) else ("" if text.endswith("\n") or new.startswith("\r") else "\n")
            prev["text"] = text + sep + new
        else:
            out.append(o)
    return out


def clean_notebook(path):
    p = Path(path)
    nb = json.loads(p.read_text())
    for c in nb["cells"]:
        keep = []
        for o in merged_streams(c.get("outputs", [])):
            if o.get("output_type") == "stream":
                text = clean("".join(o["text"]))
                if not text.strip():
                    continue
                o["text"] = text.splitlines(keepends=True)
            keep.append(o)
        if "outputs" in c:
            c["outputs"] = keep
    p.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    for f in sys.argv[1:]:
        clean_notebook(f)
