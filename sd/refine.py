"""python -m sd.refine --model REFINER --image IN.png --prompt "..." --out OUT.png

Refine any image with the SDXL Refiner (stabilityai/stable-diffusion-xl-refiner-1.0's diffusers folder or
its id in the local Hugging Face cache), as InstaFlow's demo refines its one-step images: the image is
resized to --size (1024 by default), noised to the level of the last int(steps x strength) Euler-discrete
steps and denoised with classifier-free guidance (sd/sampling/refiner.py). Prints the time of each part.
`python -m sd.generate ... --refiner REFINER` does the same to a freshly generated image.
Bad input (a folder that is not a refiner, strength outside (0, 1], too few steps) exits with code 2.
"""
import argparse
import sys
from pathlib import Path

import torch

from .checkpoints.images import fit, read_image, resize
from .cli import (DTYPES, ERRORS, IMAGE_SUFFIXES, HelpFormatter, add_refine_args, check_out, check_refine_args, device_of, fail,
                  print_times, refine_kwargs, save_png)
from .sampling.refiner import load_refiner


def build_parser():
    p = argparse.ArgumentParser(prog="python -m sd.refine", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="the SDXL Refiner's diffusers folder or model id")
    p.add_argument("--image", required=True, type=Path, help="PNG/JPEG to refine")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative-prompt", help="(with --guidance > 1; default: the empty prompt)")
    p.add_argument("--seed", type=int, default=0, help="one CPU generator: the VAE posterior sample, then the noise")
    add_refine_args(p)
    p.add_argument("--variant", help="weights variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                   help="fp16 on a GPU; bf16 on a CPU with bf16 instructions, else fp32 (the VAE stays fp32)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=Path("refined.png"), help="image file, .png or .jpg; missing folders are created")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        dev = device_of(args.device)
        check_refine_args(args)
        check_out(args.out, suffixes=IMAGE_SUFFIXES)
        image = read_image(args.image)
        if args.size:
            image = resize(image, args.size, args.size, mode="bicubic")
        image, note = fit(image)
        if note:
            print(note)
        refiner = load_refiner(args.model, dtype=DTYPES[args.dtype], device=dev, variant=args.variant)
        out = refiner.refine(image, args.prompt, args.negative_prompt, seed=args.seed, **refine_kwargs(args))
    except ERRORS as e:
        return fail(e)
    save_png(out.images[0], args.out)
    print_times(out.seconds)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
