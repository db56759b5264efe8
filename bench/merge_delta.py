"""Peak memory of `sd.edits.deltas.merge_delta` on a full-size SD 1.5 UNet: W_rf + alpha (W_ft - W_base), with
base and fine-tuned read tensor by tensor from memory-mapped safetensors folders.

    python bench/merge_delta.py [--dtype fp16] [--dir /tmp/merge-bench]

Writes two random UNet folders (base, fine-tuned; 1.7 GB each in fp16), holds a third UNet in memory as the
rectified-flow model, merges, and prints the peak growth of the process's anonymous memory (RssAnon, sampled
every 5 ms: the merge's own allocations; the mapped files' pages are file-backed and counted apart as RssFile)
against the size of the largest UNet tensor and of a whole UNet. The script re-runs itself with
MALLOC_MMAP_THRESHOLD_=65536, so that glibc returns every large block to the system when it is freed
and RssAnon shows the live temporaries (otherwise a freed heap is reused and the growth reads 0).
"""
import argparse
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sd.edits.deltas import merge_delta  # noqa: E402
from sd.checkpoints.loaders import save_unet  # noqa: E402
from sd.models.unet import SD15_UNET, UNet  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class Peak:
    """Samples RssAnon and RssFile in a thread; .peak holds their maxima."""

    def __init__(self):
        self.peak, self._stop = {"RssAnon": 0, "RssFile": 0}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for k in self.peak:
                self.peak[k] = max(self.peak[k], status(k))
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def random_unet(seed, dtype):
    torch.manual_seed(seed)
    unet = UNet(SD15_UNET).to(dtype).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02)
    return unet


def main():
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=list(DTYPES), default="fp16")
    p.add_argument("--dir", type=Path, default=Path("/tmp/merge-bench"))
    args = p.parse_args()
    dtype, gib = DTYPES[args.dtype], 2 ** 30
    for name, seed in (("base", 1), ("finetuned", 2)):
        unet = random_unet(seed, dtype)
        save_unet(unet, args.dir / name, dtype)
        del unet
    rf_unet = random_unet(3, dtype)
    sizes = [t.numel() * t.element_size() for t in rf_unet.state_dict().values()]
    pipe = SimpleNamespace(unet=rf_unet)
    anon0, file0 = status("RssAnon"), status("RssFile")
    t0 = time.perf_counter()
    with Peak() as peak:
        merge_delta(pipe, args.dir / "base", args.dir / "finetuned", 0.8, take_vae_and_text=False)
    secs = time.perf_counter() - t0
    print(f"merge_delta, SD 1.5 UNet in {args.dtype} ({sum(sizes) / gib:.2f} GiB, {len(sizes)} tensors), {secs:.1f} s")
    print("| quantity | GiB |\n| --- | ---: |")
    print(f"| one UNet | {sum(sizes) / gib:.3f} |")
    print(f"| largest UNet tensor | {max(sizes) / gib:.3f} |")
    print(f"| peak growth of anonymous memory during the merge | {(peak.peak['RssAnon'] - anon0) / gib:.3f} |")
    print(f"| peak growth of file-backed pages (the memory maps, reclaimable) | {(peak.peak['RssFile'] - file0) / gib:.3f} |")
    shutil.rmtree(args.dir)


if __name__ == "__main__":
    main()
