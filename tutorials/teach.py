"""What the tutorials share: fast mode, read one way, and `claim`, which prints whether a sentence of the text
holds on the numbers the notebook has just computed.

Fast mode (tiny iterations, the same code path; CI runs every notebook so): set RECTFLOW_FAST=1 before starting
Jupyter, or run `%env RECTFLOW_FAST=1` in a cell before the notebook's first one. Its numbers mean nothing, so
claims are not judged there.
"""
import os
import shutil
import tempfile
from pathlib import Path

FAST = os.environ.get("RECTFLOW_FAST") == "1"


def mini_folder(root):
    """The mini InstaFlow's run folder (notebooks 06, 07, 09): runs/mini in full mode; in fast mode a new temporary
    folder, which starts as a copy of the finished fast run that RECTFLOW_MINI_FAST names, if any (CI names the
    test session's `python -m sd.mini --fast`), whose stages `sd.mini.run.run` then reuses instead of training."""
    if not FAST:
        return Path(root) / "runs" / "mini"
    out = Path(tempfile.mkdtemp()) / "mini"
    if os.environ.get("RECTFLOW_MINI_FAST"):
        shutil.copytree(os.environ["RECTFLOW_MINI_FAST"], out)
    return out


def claim(holds, text):
    """Print `claim ✓ text` if `holds`, else `claim ✗ text` (`claim - text (fast mode: not judged)` in fast mode).
    The committed notebooks are executed in full mode and show no ✗ (tests/test_notebooks.py reads them)."""
    if FAST:
        print(f"claim - {text} (fast mode: not judged)")
    else:
        print(f"claim {'✓' if holds else '✗'} {text}")
