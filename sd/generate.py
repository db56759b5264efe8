"""python -m sd.generate --model PATH --prompt "..." --out image.png

One-step (by default) text-to-image with a rectified-flow SD model such as InstaFlow: prints the
time of the text encoder, of each Euler step and of the VAE; writes a grid when --batch > 1.
--init-image PATH --strength S: image-to-image (start at t = 1 - S on the line to the image's latents).
--noise FILE: start from a noise written by `python -m sd.invert` (regenerate or edit an image).
--lora FILE[:SCALE] (repeatable), --merge-delta BASE FINETUNED[:ALPHA]: InstaFlow with LoRAs / fine-tunes.
--controlnet PATH --control-image PATH [--control-scale S] (repeatable pairs), --canny LOW,HIGH: with ControlNets.
--refiner PATH [--refine-strength 0.3] [--refine-steps 50] [--refine-guidance 5] [--refine-size 1024]: refine each
image with the SDXL Refiner, as InstaFlow's demo does (--out gets the refined image, OUT_one_step.png the other).
Bad input (sizes, steps, prompts, a missing or wrong model, an unreadable image) exits with code 2.
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from rectflow.checks import positive_int

from .checkpoints.images import fit, read_image
from .checkpoints.loaders import CheckpointError, holds, locate
from .checkpoints.safetensors_io import load_file
from .cli import (DTYPES, ERRORS, IMAGE_SUFFIXES, HelpFormatter, add_model_args, add_refine_args, check_file,
                  check_model_args, check_out, check_refine_args, check_sizes, fail, load_edited, print_times,
                  refine_kwargs, save_png)
from .controlnet import canny, load_controlnet
from .sampling.pipeline import PipelineError, default_sampler
from .sampling.refiner import check_refiner_folder, load_refiner


def grid(images):
    """uint8 [B, H, W, 3] -> one image, as square as possible."""
    b, h, w, c = images.shape
    cols = math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    out = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for k, img in enumerate(images):
        r, q = divmod(k, cols)
        out[r * h:(r + 1) * h, q * w:(q + 1) * w] = img
    return out


def read_noise(path):
    """The "noise" tensor [B, C, h, w] of a file written by `python -m sd.invert`."""
    check_file(path, "--noise")
    tensors = load_file(path)
    if "noise" not in tensors or tensors["noise"].ndim != 4:
        raise PipelineError(f"{path}: not a noise file: expected a tensor 'noise' [B, C, h, w] from "
                            f"python -m sd.invert; it holds {holds(tensors)}")
    return tensors["noise"].float()


def control_args(args):
    """The control images of --controlnet/--control-image/--control-scale/--canny, checked before anything
    is loaded: as many images as ControlNets, one scale or one each; with --canny, their edges."""
    nets, images, scales = args.controlnet, args.control_image, args.control_scale
    for f in nets:
        try:
            locate(f)                                  # a folder, a v1.x file, or an id in the local cache
        except CheckpointError as e:
            raise PipelineError(f"--controlnet {e}") from None
    if len(images) != len(nets):
        raise PipelineError(f"{len(nets)} --controlnet but {len(images)} --control-image: give one image per ControlNet")
    if len(scales) not in (0, 1, len(nets)) or (scales and not nets):
        raise PipelineError(f"{len(scales)} --control-scale for {len(nets)} --controlnet: give one, or one each")
    if args.canny and not nets:
        raise PipelineError("--canny needs a --controlnet and its --control-image")
    out = [read_image(f) for f in images]
    if args.canny:
        try:
            low, high = (float(v) for v in args.canny.split(","))
        except ValueError:
            raise PipelineError(f"--canny {args.canny!r}: expected two thresholds LOW,HIGH such as 100,200") from None
        if min(low, high) < 0:
            raise PipelineError(f"--canny {args.canny!r}: thresholds must be >= 0")
        out = [canny(im, low, high) for im in out]
    return out


def scale_arg(scales):
    """--control-scale given never (1), once (for all) or once per ControlNet."""
    return 1.0 if not scales else scales[0] if len(scales) == 1 else scales


def build_parser():
    p = argparse.ArgumentParser(prog="python -m sd.generate", description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p)
    p.add_argument("--prompt", required=True, action="append", help="repeat for several prompts")
    p.add_argument("--negative-prompt", action="append", help="one per --prompt (used with --guidance > 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (the reference pipelines' "
                   "convention: a seed gives their image)")
    p.add_argument("--height", type=int, help="pixels, a multiple of 8 (default 512, or the init image's / noise's size)")
    p.add_argument("--width", type=int, help="pixels, a multiple of 8 (default 512, or the init image's / noise's size)")
    p.add_argument("--batch", type=int, default=1, help="images per prompt")
    p.add_argument("--init-image", type=Path, help="PNG/JPEG to start from (image-to-image)")
    p.add_argument("--strength", type=float, default=0.6,
                   help="with --init-image: how far back towards noise to start, in (0, 1] (1 = text-to-image)")
    p.add_argument("--noise", type=Path, help="start from this noise (a .safetensors written by python -m sd.invert)")
    p.add_argument("--controlnet", action="append", default=[], type=Path, metavar="PATH",
                   help="a ControlNet (diffusers folder or v1.x single file); repeatable, one --control-image each")
    p.add_argument("--control-image", action="append", default=[], type=Path, metavar="PATH",
                   help="its control image (PNG/JPEG, resized to the output size), in the order of --controlnet")
    p.add_argument("--control-scale", action="append", default=[], type=float, metavar="S",
                   help="its conditioning scale (default 1): once for all, or once per --controlnet")
    p.add_argument("--canny", metavar="LOW,HIGH", help="turn each control image into its Canny edges first "
                   "(sd.controlnet.canny, as cv2.Canny(image, LOW, HIGH))")
    p.add_argument("--refiner", type=Path, metavar="PATH",
                   help="refine the images with the SDXL Refiner (its diffusers folder or model id)")
    add_refine_args(p, "refine-")
    p.add_argument("--out", type=Path, default=Path("image.png"), help="image file, .png or .jpg (a grid when several "
                   "images); missing folders are created")
    return p


def one_step_path(out):
    """Where the unrefined images go when --refiner writes the refined ones to --out."""
    return out.with_name(out.stem + "_one_step" + out.suffix)


def check_args(args):
    """Everything that can be checked without the model, before it loads: returns the pipeline's keyword
    arguments that come from files (init image, control images, noise)."""
    dev = check_model_args(args)
    check_out(args.out, suffixes=IMAGE_SUFFIXES)
    check_sizes(args.height, args.width)
    positive_int(args.batch, "--batch", PipelineError)
    if args.negative_prompt and len(args.negative_prompt) != len(args.prompt):
        raise PipelineError(f"{len(args.prompt)} prompt(s) but {len(args.negative_prompt)} negative prompt(s): "
                            f"give one per prompt")
    if args.init_image and args.noise:
        raise PipelineError("give --init-image or --noise, not both")
    if args.noise and (args.height or args.width):
        raise PipelineError("--noise fixes the size (its latents' size x 8): drop --height / --width")
    if not 0 < args.strength <= 1:
        raise PipelineError(f"--strength must lie in (0, 1], got {args.strength}")
    if args.init_image and args.sampler not in ("euler", "auto"):
        raise PipelineError(f"--init-image runs the rectified flow (--sampler euler), not {args.sampler}")
    kw = dict(height=args.height, width=args.width)
    control_images = control_args(args)
    if args.controlnet:
        kw.update(control_image=control_images, control_scale=scale_arg(args.control_scale))
    if args.init_image:
        kw["init_image"], note = fit(read_image(args.init_image), args.height, args.width)
        kw.update(strength=args.strength, height=None, width=None)
        if note:
            print(note)
    if args.noise:
        kw["latents"] = read_noise(args.noise)
    if args.refiner:
        check_refine_args(args, "refine-")
        check_out(one_step_path(args.out))
        check_refiner_folder(args.refiner)
    return dev, kw


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        dev, kw = check_args(args)
        pipe = load_edited(args, dev)
        if args.controlnet:
            kw["controlnet"] = [load_controlnet(f, dtype=DTYPES[args.dtype], device=dev) for f in args.controlnet]
        if args.noise:
            kw["height"], kw["width"] = (n * pipe.vae_factor for n in kw["latents"].shape[-2:])
        sampler = default_sampler(pipe.path) if args.sampler == "auto" else args.sampler
        call = dict(steps=args.steps, guidance=args.guidance, seed=args.seed, batch=args.batch, compile=args.compile,
                    sampler=sampler, **kw)
        if args.compile:                    # compile in a first, untimed call: the times printed are the steps'
            if dev.type == "cpu":
                print("note: --compile on a CPU takes minutes and gains nothing here (docs/benchmarks.md)")
            t0 = time.perf_counter()
            pipe(args.prompt, args.negative_prompt, progress=False, **call)
            print(f"compiled in a first call of {time.perf_counter() - t0:.1f} s")
        out = pipe(args.prompt, args.negative_prompt, **call)
        s = out.seconds
        print(f"{sampler}: text encoder {s['text_encoder'] * 1e3:.0f} ms | " + " | ".join(
              f"step {i + 1} {t * 1e3:.0f} ms" for i, t in enumerate(s["steps"])) + f" | VAE {s['vae'] * 1e3:.0f} ms")
        images = out.images
        if args.refiner:
            save_png(grid(images) if len(images) > 1 else images[0], one_step_path(args.out))
            pipe.refiner = load_refiner(args.refiner, dtype=DTYPES[args.dtype], device=dev)
            prompts = [p for p in args.prompt for _ in range(args.batch)]
            refined = []
            for image, prompt in zip(images, prompts):
                r = pipe.refine(image, prompt, size=args.refine_size or None, seed=args.seed, **refine_kwargs(args, "refine-"))
                print_times(r.seconds)
                refined.append(r.images[0])
            images = np.stack(refined)
    except ERRORS as e:
        return fail(e)
    save_png(grid(images) if len(images) > 1 else images[0], args.out)
    print(f"wrote {len(images)} image(s) to {args.out}" + (f" (unrefined: {one_step_path(args.out)})" if args.refiner else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
