"""InstaFlow sampling speed: the fused Euler update, and end-to-end one-step text-to-image with a
full-size SD 1.5-shaped model (random weights) against InstaFlow's loop on diffusers modules, in each
dtype asked for; for a half dtype also the largest pixel difference of its image to the fp32 image
(same weights, prompt and seed).

    python bench/pipeline.py [--sizes 256 512] [--repeats 3] [--device cpu] [--dtypes fp32 bf16] [--compile]
    (needs requirements-dev.txt; uses OpenAI's vocabulary when installed, see the README)
"""
import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.models import random_sd  # noqa: E402
from bench.timing import machine, median_time  # noqa: E402
from sd.sampling.euler import cfg_euler_step, compile_step  # noqa: E402
from sd.generate import DTYPES  # noqa: E402
from tests.reference import instaflow_reference  # noqa: E402


def cast(pipe, ref, dtype):
    """Copies of our pipeline and of the reference modules in `dtype` (the same weights)."""
    p = copy.copy(pipe)
    p.unet, p.vae, p.text_encoder = (copy.deepcopy(m).to(dtype) for m in (pipe.unet, pipe.vae, pipe.text_encoder))
    p._compiled = {}
    r = copy.copy(ref)
    r.unet, r.vae, r.text = (copy.deepcopy(m).to(dtype) for m in (ref.unet, ref.vae, ref.text))
    return p, r


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="*", default=[256, 512], help="none: only the update benchmark")
    p.add_argument("--update-iters", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--compile", action="store_true", help="also time our pipeline with compile=True")
    args = p.parse_args()
    dev = torch.device(args.device)
    print(f"{machine(dev)}, median of {args.repeats} (compiled: after one warm-up call)\n")

    # 1. the update alone, at SD's shape with CFG: eager (several kernels) vs torch.compile (one)
    print("| CFG + Euler update, 1x4x64x64 | dtype | eager (us) | compiled (us) | ratio |")
    print("| --- | --- | ---: | ---: | ---: |")
    for dt in args.dtypes:
        g = torch.Generator().manual_seed(0)
        lat = torch.randn(1, 4, 64, 64, generator=g).to(dev, DTYPES[dt])
        v = torch.randn(2, 4, 64, 64, generator=g).to(dev, DTYPES[dt])
        fused, n = compile_step(), args.update_iters
        eager_t = median_time(lambda: [cfg_euler_step(lat, v, 7.5, 1.0, True) for _ in range(n)], args.repeats, dev) / n
        fused_t = median_time(lambda: [fused(lat, v, 7.5, 1.0, True) for _ in range(n)], args.repeats, dev) / n
        print(f"| per step | {dt} | {eager_t * 1e6:.1f} | {fused_t * 1e6:.1f} | {fused_t / eager_t:.2f} |")
    print()
    if not args.sizes:
        return

    # 2. one step, text to image, full-size random model; the same weights in every dtype and in diffusers
    pipe32, ref32 = random_sd("full", dev, torch.float32)
    prompt = ["a hyper-realistic photo of a cute cat"]
    print("| one step, text to image | dtype | ours (s) | ours, compiled (s) | diffusers modules (s) | ours / ref |"
          " compiled / ref | max pixel diff to fp32 |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with torch.inference_mode():
        for size in args.sizes:
            base = pipe32(prompt, height=size, width=size, progress=False).images
            for dt in args.dtypes:
                pipe, ref = (pipe32, ref32) if dt == "fp32" else cast(pipe32, ref32, DTYPES[dt])
                ref_t = median_time(lambda: instaflow_reference(ref.unet, ref.vae, ref.text, ref.tokenizer, prompt,
                                                                [""], 1, 1.0, 0, size), args.repeats, dev)
                ours_t = median_time(lambda: pipe(prompt, height=size, width=size, progress=False), args.repeats, dev)
                comp_t = (median_time(lambda: pipe(prompt, height=size, width=size, progress=False, compile=True),
                                      args.repeats, dev) if args.compile else float("nan"))
                img = pipe(prompt, height=size, width=size, progress=False).images
                px = int(np.abs(img.astype(int) - base.astype(int)).max())
                print(f"| {size}x{size} | {dt} | {ours_t:.3f} | {comp_t:.3f} | {ref_t:.3f} | {ours_t / ref_t:.2f} | "
                      f"{comp_t / ref_t:.2f} | {px if dt != 'fp32' else '-'} |", flush=True)


if __name__ == "__main__":
    main()
