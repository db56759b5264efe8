"""Memory and time of the LPIPS distillation loss per 512x512 image: the student's latents decoded by SD's
full-size VAE decoder (random weights) and compared with LPIPS-VGG, forward and backward to the latents,
with the decoder's activations kept (plain) or recomputed block by block (checkpointed, what
`sd.reflow distill --loss lpips` does). Each in a fresh process; "peak added" is the process's peak
resident memory (VmHWM) minus its memory after building the models.

    python bench/lpips_memory.py [--size 512] [--batch 1]
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def worker(size, batch, checkpoint):
    import torch
    sys.path.insert(0, str(ROOT))
    from sd.models.lpips import LPIPS
    from sd.models.vae import VAE
    from sd.training.objectives import lpips_distance
    torch.manual_seed(0)
    vae, lp = VAE().eval().requires_grad_(False), LPIPS().eval().requires_grad_(False)

    def plain(pred, target):                              # the same loss with the decoder's activations kept
        x = vae.decode(pred / vae.scaling_factor)
        with torch.no_grad():
            y = vae.decode(target / vae.scaling_factor)
        return lp(x, y).mean()
    d = lpips_distance(lp, vae) if checkpoint else plain
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(batch, 4, size // 8, size // 8, generator=g, requires_grad=True)
    target = torch.randn(batch, 4, size // 8, size // 8, generator=g)
    base = status_mb("VmRSS")
    t0 = time.perf_counter()
    d(pred, target).backward()
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_added_mb": status_mb("VmHWM") - base,
                      "grad_norm": pred.grad.norm().item()}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--worker", choices=["plain", "checkpointed"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.size, args.batch, args.worker == "checkpointed")
    import torch
    print(f"\nLPIPS distillation loss, forward + backward, {args.batch} image(s) of {args.size}x{args.size}, "
          f"SD's VAE decoder and LPIPS-VGG in fp32, CPU ({torch.get_num_threads()} threads), one run each\n")
    print("| decoder | seconds | peak memory added (MiB) | per image (MiB) | gradient norm |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for mode in ("plain", "checkpointed"):
        out = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--batch", str(args.batch),
                              "--worker", mode], capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        r = json.loads(out)
        print(f"| {mode} | {r['seconds']:.1f} | {r['peak_added_mb']:.0f} | {r['peak_added_mb'] / args.batch:.0f} | "
              f"{r['grad_norm']:.6g} |", flush=True)


if __name__ == "__main__":
    main()
