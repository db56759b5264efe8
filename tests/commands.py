"""Running the project's commands as a user does: `python -m MODULE ARGS` in a subprocess from the checkout."""
import subprocess
import sys

from tests.conftest import ROOT


def run_module(module, *args, timeout=120, env=None):
    """`python -m module args...` (cwd the repository), stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)
