"""What the commands (`python -m sd.generate`, `sd.invert`, `sd.reflow`, `sd.tiny`) share: dtype names,
the errors a user can cause, and the checks every command runs *before* it loads a model or trains
(device, sizes, steps, output paths, input files), so that a typo costs a second, not a model load.

A user's error is one line on stderr, `error: <what, where, what would be valid>`, and exit code 2.
"""
import sys
from pathlib import Path

import torch

from rectflow.checks import HelpFormatter, positive_int, writable

from .checkpoints.images import ImageError
from .checkpoints.loaders import CheckpointError
from .checkpoints.safetensors_io import SafeOpen, SafetensorsError
from .edits.lora import LoraError
from .models.tokenizer import TokenizerError
from .sampling.pipeline import PipelineError, check_size

ERRORS = (PipelineError, CheckpointError, SafetensorsError, TokenizerError, ImageError, LoraError, RuntimeError)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

__all__ = ["DTYPES", "ERRORS", "HelpFormatter", "device_of", "check_out", "check_sizes", "check_steps",
           "check_file", "check_safetensors", "fail", "save_png"]


def fail(error):
    """Print a user's error as one line and return the exit code 2."""
    print(f"error: {str(error).splitlines()[0] if str(error) else type(error).__name__}", file=sys.stderr)
    return 2


def device_of(name):
    """--device NAME as a torch.device; CUDA asked for where there is none is a PipelineError."""
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise PipelineError(f"--device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"--device {name}: CUDA is not available")
    return dev


def check_out(path, flag="--out", folder=False):
    """The output path can be written (checked before any model loads); missing folders are created later."""
    return writable(path, flag, folder=folder, error=PipelineError)


def check_sizes(height, width, multiple=8):
    """--height / --width, where given, are positive multiples of the VAE's factor."""
    for name, value in (("--height", height), ("--width", width)):
        if value is not None:
            check_size(name, value, multiple)


def check_steps(steps, flag="--steps"):
    """A step count is a positive integer (the pipeline's wording, rectflow.checks.positive_int)."""
    positive_int(steps, flag, PipelineError)


def check_file(path, flag):
    """An input file exists (a folder is accepted where `path` may be a model folder: not here)."""
    if not Path(path).is_file():
        raise PipelineError(f"{flag} {path}: no such file" + (" (it is a folder)" if Path(path).is_dir() else ""))
    return Path(path)


def check_safetensors(path, flag):
    """An input file exists and is a safetensors file (its header is read; no tensor is)."""
    check_file(path, flag)
    with SafeOpen(path) as f:
        return list(f.keys())


def save_png(array, path):
    """uint8 [H, W, 3] to a PNG file, creating its folder."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, array)
