"""Load time and peak memory of a full-size SD 1.5 UNet, or of the SDXL Refiner's (2.3 B parameters), from
random weights in the real layout (fp16 safetensors) with sd.load_unet against safetensors.torch.load_file
and diffusers' from_pretrained, in fp16 (the file's dtype) and in bf16 (cast while loading).

    python bench/load_unet.py [--model sd15|sdxl-refiner] [--dir /tmp/rectflow-bench]   (needs requirements-dev.txt)

Each loader runs in a fresh process with the file in the page cache, the loaders taking turns; "peak RSS added" is the
process's peak resident memory (VmHWM) minus its resident memory after imports. Like for like: a
dict of tensors (sd.load_file vs safetensors.torch.load_file) and a model (sd.load_unet vs diffusers).
Memory-mapped loaders read nothing until a tensor is used, so each is also measured after reading
every weight once ("+ read all"), which is what the first forward pass does.
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["sd.load_file", "safetensors.torch.load_file", "sd.load_unet", "diffusers from_pretrained",
           "sd.load_unet bf16", "diffusers from_pretrained bf16"]
REFERENCES = {"sd.load_file": "safetensors.torch.load_file", "sd.load_unet": "diffusers from_pretrained",
              "sd.load_unet bf16": "diffusers from_pretrained bf16"}


def status_mb(field):
    """VmRSS (now) or VmHWM (peak of this process image; unlike ru_maxrss it does not inherit the
    parent's peak across fork/exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def worker(method, folder, read_all):
    import diffusers
    import safetensors.torch
    import torch
    sys.path.insert(0, str(ROOT))
    import sd
    f = folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    loaders = {"sd.load_file": lambda: sd.load_file(f),
               "safetensors.torch.load_file": lambda: safetensors.torch.load_file(f),
               "sd.load_unet": lambda: sd.load_unet(folder, variant="fp16"),
               "diffusers from_pretrained": lambda: diffusers.UNet2DConditionModel.from_pretrained(
                   folder, subfolder="unet", variant="fp16", torch_dtype=torch.float16),
               "sd.load_unet bf16": lambda: sd.load_unet(folder, variant="fp16", dtype=torch.bfloat16),
               "diffusers from_pretrained bf16": lambda: diffusers.UNet2DConditionModel.from_pretrained(
                   folder, subfolder="unet", variant="fp16", torch_dtype=torch.bfloat16)}
    base = status_mb("VmRSS")
    t0 = time.perf_counter()
    out = loaders[method]()
    if read_all:
        tensors = out.values() if isinstance(out, dict) else out.parameters()
        total = sum(float(t.float().sum()) for t in tensors)  # noqa: F841 - touch every weight
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "peak_added_mb": status_mb("VmHWM") - base}))


def make_checkpoint(folder, model):
    """unet/config.json and unet/diffusion_pytorch_model.fp16.safetensors with random weights (N(0, 0.02^2),
    made tensor by tensor in fp16: the refiner's 2.3 B parameters never exist in fp32 here)."""
    f = folder / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    if f.exists():
        return f
    import torch

    sys.path.insert(0, str(ROOT))
    from sd.checkpoints.safetensors_io import save_file
    from sd.models.unet import SD15_UNET, SDXL_REFINER_UNET, UNet
    config = {"sd15": SD15_UNET, "sdxl-refiner": SDXL_REFINER_UNET}[model]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UNet(config).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(shape, generator=g) * 0.02).half() for k, shape in tqdm(shapes.items(), desc=f"random {model}")}
    f.parent.mkdir(parents=True, exist_ok=True)
    (f.parent / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel", **config}))
    save_file(tensors, f, metadata={"format": "pt"})
    return f


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["sd15", "sdxl-refiner"], default="sd15")
    p.add_argument("--dir", type=Path, default=Path("/tmp/rectflow-bench"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--read-all", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    folder = args.dir / args.model
    if args.worker:
        return worker(args.worker, folder, args.read_all)
    f = make_checkpoint(folder, args.model)
    size_mb = f.stat().st_size / 2 ** 20
    f.read_bytes()   # warm the page cache for everyone
    runs = {}
    # interleaved, so that drifts of the machine hit every loader alike
    jobs = [(read_all, method) for _ in range(args.repeats) for read_all in (False, True) for method in METHODS]
    for read_all, method in tqdm(jobs, desc="loads"):
        cmd = [sys.executable, __file__, "--model", args.model, "--dir", str(args.dir), "--worker", method] + \
            ["--read-all"] * read_all
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
        runs.setdefault(method + " + read all" * read_all, []).append(json.loads(out))
    rows = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    refs = REFERENCES
    name = {"sd15": "SD 1.5 UNet", "sdxl-refiner": "SDXL Refiner UNet"}[args.model]
    print(f"\nfull-size {name}, fp16 safetensors: {size_mb:.0f} MiB; median of {args.repeats} runs each "
          f"(fp16 and bf16 weigh the same: RSS / file size is RSS / the weights in the chosen dtype)\n")
    print("| loader | seconds | peak RSS added (MiB) | RSS / file size | time / reference's |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        base, suffix = (name.split(" + ") + [""])[:2]
        ref = rows.get(refs.get(base, "") + (" + " + suffix if suffix else ""))
        ratio = f"{r['seconds'] / ref['seconds']:.2f}" if ref else "(reference)"
        print(f"| {name} | {r['seconds']:.2f} | {r['peak_added_mb']:.0f} | {r['peak_added_mb'] / size_mb:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
