"""python -m sd.invert --model PATH --image photo.png --prompt "..." --steps N --out noise.safetensors

Inversion with a rectified flow: the image's latents X_1 (VAE posterior mean x scaling factor) are run
backwards to noise with N Euler steps, X_{t - 1/N} = X_t - (1/N) v(X_t, t, c) from t = 1 to 0 (CFG as in
sampling), and saved as the tensor "noise". The noise is then regenerated with the same prompt and
steps, and the reconstruction PSNR printed: near-exact for a straight flow (2-RF, InstaFlow), lossy
for a curved one. Edit: `python -m sd.generate --noise noise.safetensors --prompt "<another prompt>"`.
Bad input exits with code 2 and a message.
"""
import argparse
import sys
from pathlib import Path

import torch

from .checkpoints.images import fit, psnr, read_image
from .checkpoints.safetensors_io import save_file
from .cli import (DTYPES, ERRORS, IMAGE_SUFFIXES, HelpFormatter, check_out, check_sizes, check_steps, device_of, fail,
                  save_png)
from .sampling.pipeline import load_pipeline


def build_parser():
    p = argparse.ArgumentParser(prog="python -m sd.invert", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="model folder, single file or local hub id")
    p.add_argument("--image", required=True, type=Path, help="PNG or JPEG")
    p.add_argument("--prompt", required=True, help="the prompt the image is inverted under")
    p.add_argument("--negative-prompt", help="used with --guidance > 1")
    p.add_argument("--steps", type=int, default=1, help="backward Euler steps (and forward ones for the check), at least 1")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale; 1 = no CFG")
    p.add_argument("--height", type=int, help="resize the image to this, a multiple of 8 (default: its size rounded down to x8)")
    p.add_argument("--width", type=int, help="resize the image to this, a multiple of 8 (default: its size rounded down to x8)")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="fp16 on a GPU; bf16 or fp32 on a CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--out", type=Path, default=Path("noise.safetensors"), help="the noise (tensor 'noise'), for "
                   "python -m sd.generate --noise")
    p.add_argument("--reconstruction", type=Path, help="also write the regenerated image here (.png or .jpg)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        dev = device_of(args.device)
        check_out(args.out, suffixes=(".safetensors",))
        if args.reconstruction:
            check_out(args.reconstruction, "--reconstruction", suffixes=IMAGE_SUFFIXES)
        check_steps(args.steps)
        check_sizes(args.height, args.width)
        image, note = fit(read_image(args.image), args.height, args.width)
        if note:
            print(note)
        pipe = load_pipeline(args.model, dtype=DTYPES[args.dtype], device=dev)
        x0 = pipe.invert(args.prompt, image, steps=args.steps, guidance=args.guidance,
                         negative_prompt=args.negative_prompt)
        again = pipe(args.prompt, args.negative_prompt, steps=args.steps, guidance=args.guidance, latents=x0.cpu(),
                     height=image.shape[0], width=image.shape[1], progress=False).images[0]
    except ERRORS as e:
        return fail(e)
    meta = {"prompt": args.prompt, "steps": str(args.steps), "guidance": str(args.guidance),
            "height": str(image.shape[0]), "width": str(image.shape[1])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"noise": x0.float().cpu().contiguous()}, args.out, metadata=meta)
    if args.reconstruction:
        save_png(again, args.reconstruction)
    print(f"inverted {args.image} with {args.steps} Euler step(s) backwards; wrote {args.out} "
          f"(noise {tuple(x0.shape)}); reconstruction PSNR {psnr(again, image):.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
