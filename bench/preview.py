"""One-step 512x512 text-to-image on this machine, decoded by the full SD VAE or by TAESD (the tiny
autoencoder of sd/models/tiny_vae.py): the time of each part and its share of the total, in each dtype
asked for. Random weights in SD 1.5's and TAESD's configurations (the cost does not depend on them); the
full VAE is the reference, measured in the same run.

    python bench/preview.py [--repeats 3] [--dtypes fp32 bf16] [--size 512]     about 2 min on 2 CPU cores
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.models import random_sd  # noqa: E402
from sd.generate import DTYPES  # noqa: E402
from sd.models.tiny_vae import TinyVAE  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--size", type=int, default=512)
    args = p.parse_args()
    print(f"one step at {args.size}x{args.size}, batch 1, {torch.get_num_threads()} threads; medians of {args.repeats} "
          f"after a warm-up; seconds (share of the total)")
    print("| dtype | decoder | text encoder | UNet step | decoder | total | speed-up |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.dtypes:
        dtype = DTYPES[name]
        pipe, _ = random_sd("full", "cpu", dtype, reference=False)
        full = pipe.vae
        torch.manual_seed(0)
        tiny = TinyVAE().to(dtype).eval()
        rows = {}
        for label, vae in (("full VAE", full), ("TAESD", tiny)):
            pipe.vae = vae
            runs = []
            for k in range(args.repeats + 1):
                t0 = time.perf_counter()
                out = pipe("a photo of a cat", steps=1, seed=k, height=args.size, width=args.size, progress=False)
                total = time.perf_counter() - t0
                runs.append((out.seconds["text_encoder"], sum(out.seconds["steps"]), out.seconds["vae"], total))
            runs = runs[1:]                                               # the first call warms up
            med = [sorted(r[i] for r in runs)[len(runs) // 2] for i in range(4)]
            rows[label] = med
        for label, med in rows.items():
            share = " | ".join(f"{m:.2f} ({m / med[3]:.0%})" for m in med[:3])
            print(f"| {name} | {label} | {share} | {med[3]:.2f} | {rows['full VAE'][3] / med[3]:.2f}x |")


if __name__ == "__main__":
    main()
