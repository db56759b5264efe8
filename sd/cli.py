"""What the commands (`python -m sd.generate`, `sd.invert`, `sd.reflow`, `sd.tiny`) share: dtype names,
the errors a user can cause, and the checks every command runs *before* it loads a model or trains
(device, sizes, steps, output paths, input files), so that a typo costs a second, not a model load.

A user's error is one line on stderr, `error: <what, where, what would be valid>`, and exit code 2.
"""
import sys
from pathlib import Path

import torch

from rectflow.checks import positive_int
from toy.cli import HelpFormatter, writable

from .checkpoints.images import ImageError
from .checkpoints.loaders import CheckpointError, check_model_folder, load_tiny_vae, locate
from .checkpoints.safetensors_io import SafeOpen, SafetensorsError
from .edits.lora import LoraError, split_scale
from .models.tokenizer import TokenizerError
from .sampling.pipeline import PipelineError, check_size, load_pipeline

ERRORS = (PipelineError, CheckpointError, SafetensorsError, TokenizerError, ImageError, LoraError, RuntimeError)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

__all__ = ["DTYPES", "ERRORS", "IMAGE_SUFFIXES", "HelpFormatter", "device_of", "check_out", "check_sizes", "check_steps",
           "check_file", "check_safetensors", "fail", "save_png", "add_model_args", "check_model_args", "load_edited",
           "add_refine_args", "check_refine_args", "refine_kwargs", "print_times"]


def fail(error):
    """Print a user's error as one line (a message of several lines joined, never cut) and return the exit code 2."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
    print(f"error: {text.replace(':;', ':')}", file=sys.stderr)
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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")          # what save_png writes (JPEG through matplotlib's Pillow)


def check_out(path, flag="--out", folder=False, suffixes=None):
    """The output path can be written (tried before any model loads: toy.cli.writable), with one of `suffixes`."""
    return writable(path, flag, folder=folder, error=PipelineError, suffixes=suffixes)


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
    """uint8 [H, W, 3] to a PNG (or, by its name, JPEG) file, creating its folder."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.image
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(path, array)


def add_model_args(p, model_required=True):
    """The options of every command that samples a model (sd.generate, sd.evaluate, sd.demo): the model,
    its edits (LoRAs, fine-tune deltas), the sampler, steps and guidance, dtype and device."""
    p.add_argument("--model", required=model_required, type=Path,
                   help="diffusers model folder, single checkpoint file, or a model id (owner/name) in the local "
                        "Hugging Face cache (python -m sd.tiny writes a small random one to try)")
    p.add_argument("--steps", type=int, default=1, help="Euler steps (UNet calls), at least 1")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale; 1 = no CFG")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                   help="fp16 on a GPU; bf16 on a CPU with bf16 instructions, else fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--compile", nargs="?", const="default", default=False, metavar="MODE",
                   choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile the UNet, the VAE decoder and the fused Euler step in torch.compile's MODE "
                        "(default when no MODE is given; reduce-overhead adds CUDA graphs on a GPU)")
    p.add_argument("--sampler", choices=["euler", "ddim", "dpm++", "auto"], default="euler",
                   help="euler: rectified flow (InstaFlow, 2-RF); ddim / dpm++: an epsilon-prediction "
                        "teacher such as SD 1.5; auto: from the folder's scheduler config")
    p.add_argument("--merge-delta", nargs=2, metavar=("BASE", "FINETUNED[:ALPHA]"),
                   help="add ALPHA (default 1) x (FINETUNED - BASE) to the UNet and take FINETUNED's VAE and text "
                        "encoder (InstaFlow's recipe for fine-tuned SD 1.5 models such as dreamshaper-7)")
    p.add_argument("--tiny-vae", metavar="PATH",
                   help="decode with TAESD (a diffusers AutoencoderTiny folder or id, e.g. madebyollin/taesd): "
                        "a fast preview decoder instead of the full VAE")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="merge a LoRA (kohya/CivitAI, diffusers or peft .safetensors) at SCALE (default 1); repeatable, "
                        "they stack")


def check_model_args(args):
    """add_model_args' options, checked before anything loads: the device (returned), a --model of another kind,
    steps, LoRA files."""
    dev = device_of(args.device)
    if args.model is not None and Path(args.model).is_dir():
        check_model_folder(args.model)
    check_steps(args.steps)
    for spec in args.lora:
        check_safetensors(split_scale(spec)[0], "--lora")
    if args.merge_delta:
        split_scale(args.merge_delta[1])
    if args.tiny_vae:
        locate(args.tiny_vae)                       # a folder, or an id in the local Hugging Face cache
    return dev


def load_edited(args, dev):
    """The pipeline of --model in --dtype on `dev`, with --merge-delta and --lora applied (each said)."""
    pipe = load_pipeline(args.model, dtype=DTYPES[args.dtype], device=dev, tiny_vae=args.tiny_vae)
    if args.merge_delta:
        finetuned, alpha = split_scale(args.merge_delta[1])
        pipe.merge_delta(args.merge_delta[0], finetuned, alpha)
        print(f"merged {alpha:g} x (fine-tuned - base) into the UNet; VAE and text encoder from {finetuned}")
        if args.tiny_vae:                           # the fine-tuned VAE came with the delta; the preview one stays
            pipe.vae = load_tiny_vae(args.tiny_vae, dtype=DTYPES[args.dtype], device=dev)
    for spec in args.lora:
        path, scale = split_scale(spec)
        pipe.load_lora(path, scale)
        print(f"LoRA {path} (scale {scale:g})")
    return pipe


def add_refine_args(p, prefix=""):
    """The SDXL Refiner's options: --strength, --steps, --guidance, --size (sd.refine), or the same with
    `prefix` (sd.generate's --refine-strength, ...). Defaults: InstaFlow's demo (0.3 of 50 steps, guidance 5)."""
    p.add_argument(f"--{prefix}strength", type=float, default=0.3,
                   help="how much of the schedule to run, in (0, 1]: the last int(steps x strength) steps")
    p.add_argument(f"--{prefix}steps", type=int, default=50, help="Euler-discrete steps of the full schedule")
    p.add_argument(f"--{prefix}guidance", type=float, default=5.0, help="classifier-free guidance scale; 1 = no CFG")
    p.add_argument(f"--{prefix}size", type=int, default=1024,
                   help="resize the image to SIZE x SIZE first (bicubic; the refiner was trained at 1024); 0 keeps its size")
    p.add_argument(f"--{prefix}aesthetic-score", type=float, default=6.0, help="the refiner's aesthetic-score condition")
    p.add_argument(f"--{prefix}negative-aesthetic-score", type=float, default=2.5,
                   help="the negative prompt's aesthetic-score condition (with guidance > 1)")


def check_refine_args(args, prefix=""):
    """The refiner's options, checked before anything loads (the pipeline's wording)."""
    dest = prefix.replace("-", "_")
    strength, steps, size = (getattr(args, dest + k) for k in ("strength", "steps", "size"))
    if not 0 < strength <= 1:
        raise PipelineError(f"--{prefix}strength must lie in (0, 1], got {strength}")
    check_steps(steps, f"--{prefix}steps")
    if int(steps * strength) == 0:
        raise PipelineError(f"--{prefix}strength {strength} of --{prefix}steps {steps} runs no step "
                            f"(int(steps x strength) = 0): raise one of them")
    if size:
        check_size(f"--{prefix}size", size, 8)


def refine_kwargs(args, prefix=""):
    """Refiner.refine's keyword arguments from the options of add_refine_args."""
    dest = prefix.replace("-", "_")
    return {k: getattr(args, dest + k) for k in ("strength", "steps", "guidance", "aesthetic_score",
                                                 "negative_aesthetic_score")}


def print_times(seconds, label="refine"):
    """The refiner's time per part, one line."""
    s = seconds
    print(f"{label}: text encoder {s['text_encoder'] * 1e3:.0f} ms | VAE encode {s['vae_encode'] * 1e3:.0f} ms | "
          f"{len(s['steps'])} steps {sum(s['steps']) * 1e3:.0f} ms | VAE {s['vae'] * 1e3:.0f} ms")
