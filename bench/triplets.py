"""The training data path at growing dataset sizes: resident memory and samples per second of reading the
trainer's batches from a triplet folder, streamed (sd.training.triplets.open_triplets: rows read from the
shards on demand, through the prefetch thread) against everything loaded in memory (triplets.load).

    python bench/triplets.py [--sizes 1000 10000 100000] [--dir /tmp/rectflow-triplets]
    python bench/triplets.py --disk      the disk cost per million 512x512 triplets, from real shard sizes

Tiny latents (4x32x32 float32, 16 KiB a sample; noise regenerated from the seed, the default),
prompts of 77 token ids, shards of 256. Each measurement runs in a fresh process: "peak RSS added" is its
peak resident memory (VmHWM) minus its memory after imports, over opening the folder and reading 100
batches of 64 (the trainer's `rank_batches`, the same seeded epoch permutation). The claim is flat memory
for the streamed path; the in-memory one grows with the dataset.
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE, STEPS, BATCH = (4, 32, 32), 100, 64


def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def make(folder, n):
    import torch
    sys.path.insert(0, str(ROOT))
    from sd.training import triplets
    if (folder / "manifest.json").exists():
        return
    prompts = [f"prompt {j}" for j in range(n)]
    tok = lambda ps: torch.arange(77).repeat(len(ps), 1) % 1000   # noqa: E731 - ids are not what is measured
    triplets.generate(folder, prompts, tok, lambda x0, ids: 0.5 * x0, SHAPE, {"teacher": "bench"}, shard_size=256,
                      batch_size=256, seed=0)


def worker(folder, mode, prefetch):
    sys.path.insert(0, str(ROOT))
    from sd.training import triplets
    from sd.training.trainer import Prefetch, TrainConfig, rank_batches
    base = status_mb("VmRSS")
    t0 = time.perf_counter()
    data = triplets.open_triplets(folder)[0] if mode == "streamed" else triplets.load(folder)[0]
    opened = time.perf_counter() - t0
    cfg = TrainConfig(batch_size=BATCH)
    batches = rank_batches(data, range(STEPS), cfg, 0, 1)
    t0 = time.perf_counter()
    total = 0.0
    for _, b in (Prefetch(batches, prefetch) if prefetch else batches):
        total += float(b["latents"].sum() + b["noise"].sum())            # use every row
    seconds = time.perf_counter() - t0
    print(json.dumps({"open_s": opened, "samples_per_s": STEPS * BATCH / seconds,
                      "peak_added_mb": status_mb("VmHWM") - base}))


def disk_table(folder):
    """One shard of 256 triplets at SD's 512x512 (latents 4x64x64, 77 token ids) per way of storing them; the
    bytes per million triplets follow from the shard's size (the manifest and prompt index are extra, small)."""
    import torch
    sys.path.insert(0, str(ROOT))
    from sd.training import triplets
    n, tok = 256, (lambda ps: torch.zeros(len(ps), 77, dtype=torch.long))
    print("\n| stored | bytes per triplet | GB per million triplets | vs fp32 with noise |")
    print("| --- | ---: | ---: | ---: |")
    base = None
    for label, kw in (("fp32 latents + fp32 noise (before)", dict(store_noise=True)), ("fp32 latents", {}),
                      ("fp16 latents", dict(latent_dtype="fp16")), ("bf16 latents", dict(latent_dtype="bf16"))):
        out = folder / label.split(" (")[0].replace(" ", "_").replace("+", "and")
        triplets.generate(out, [f"p{j}" for j in range(n)], tok, lambda x0, ids: 0.5 * x0, (4, 64, 64),
                          {"teacher": "bench"}, shard_size=n, batch_size=64, seed=0, progress=False, **kw)
        per = (out / triplets.shard_name(0)).stat().st_size / n
        base = base or per
        print(f"| {label} | {per:,.0f} | {per * 1e6 / 1e9:.1f} | {per / base:.2f} |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", nargs="+", type=int, default=[1000, 10000, 100000])
    p.add_argument("--dir", type=Path, default=Path("/tmp/rectflow-triplets"))
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--disk", action="store_true", help="only the disk table at 512x512")
    args = p.parse_args()
    if args.disk:
        return disk_table(args.dir / "disk")
    if args.worker:
        return worker(Path(args.worker[0]), args.worker[1], int(args.worker[2]))
    rows = []
    for n in args.sizes:
        folder = args.dir / f"n{n}"
        make(folder, n)
        disk = sum(f.stat().st_size for f in folder.glob("shard-*.safetensors")) / 2**20
        for mode, prefetch in (("in memory", 0), ("streamed", 0), ("streamed", 2)):
            out = subprocess.run([sys.executable, __file__, "--worker", str(folder), mode.split()[-1], str(prefetch)],
                                 capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            rows.append((n, disk, mode + (f", prefetch {prefetch}" if prefetch else ""), json.loads(out)))
    print(f"\n{STEPS} batches of {BATCH}, latents {'x'.join(map(str, SHAPE))} float32, noise regenerated; one run each\n")
    print("| triplets | shards on disk (MiB) | data path | open (s) | samples / s | peak RSS added (MiB) |")
    print("| ---: | ---: | --- | ---: | ---: | ---: |")
    for n, disk, mode, r in rows:
        print(f"| {n} | {disk:.0f} | {mode} | {r['open_s']:.2f} | {r['samples_per_s']:.0f} | {r['peak_added_mb']:.0f} |")


if __name__ == "__main__":
    main()
