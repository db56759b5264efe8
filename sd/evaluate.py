"""python -m sd.evaluate --model PATH --captions FILE --n 5000 --out DIR --inception FILE --clip PATH \\
       (--ref-stats FILE.npz | --ref-images DIR)   [--steps 1 --guidance 1 --batch 8 --dtype fp16 ...]
python -m sd.evaluate stats --images DIR --inception FILE --out ref.npz

InstaFlow's quality table from one command: generates one image per caption (image k from caption k and
the noise of seed + k, so image k is `python -m sd.generate --seed (seed + k)`'s), then measures them:
FID against reference statistics (a pytorch-fid .npz, or the images of --ref-images) and CLIP score
against the captions. Writes DIR/images/00000.png ... as it goes (a rerun resumes and regenerates
nothing), DIR/metrics.json (fid, clip_score, clip_score_100, n, seconds_per_image, the configuration)
and DIR/grid.png (the first 16 with their captions).

Several GPUs: torchrun --nproc_per_node K -m sd.evaluate --num-images N ... splits the captions by rank
(rank r makes images r, r + K, ...); rank 0 measures after a barrier. (--num-images is --n's other name:
torchrun takes --n as an abbreviation of its own options and stops.) Bad input exits with code 2, nothing overwritten.
"""
import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import torch
from tqdm import tqdm

from rectflow.checks import positive_int

from .cli import (ERRORS, HelpFormatter, add_model_args, check_file, check_model_args, check_out, check_sizes,
                  device_of, fail, load_edited, save_png)
from .evaluation import (InceptionError, StatsError, frechet_distance, load_clip, load_inception, load_stats,
                         save_stats, statistics)
from .evaluation.captions import CaptionsError, read_captions
from .evaluation.measure import image_files, measure
from .sampling.pipeline import PipelineError, default_sampler, noise

EVAL_ERRORS = ERRORS + (CaptionsError, InceptionError, StatsError)
GENERATION_KEYS = ("model", "captions", "steps", "guidance", "sampler", "negative_prompt", "seed", "height", "width",
                   "dtype", "lora", "merge_delta")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m sd.evaluate", description=__doc__, formatter_class=HelpFormatter)
    add_model_args(p)
    p.add_argument("--captions", required=True, type=Path,
                   help="MS-COCO captions_*.json (the first caption of each image, by image id) or a text file, "
                        "one caption per line")
    p.add_argument("--n", "--num-images", dest="n", type=int, help="how many captions (images); default: all of the "
                   "file. Under torchrun write --num-images: torchrun's own parser reads --n as one of its options")
    p.add_argument("--out", required=True, type=Path, help="the run's folder: images/, metrics.json, grid.png")
    p.add_argument("--inception", required=True, type=Path,
                   help="FID's Inception weights: pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--clip", type=Path, help="a transformers CLIPModel folder for CLIP score (InstaFlow used "
                   "ViT-g/14); without it CLIP score is not measured")
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--ref-stats", type=Path, help="reference statistics, pytorch-fid's .npz (mu, sigma)")
    ref.add_argument("--ref-images", type=Path, help="a folder of reference images (PNG/JPEG, centre-cropped)")
    p.add_argument("--negative-prompt", default="", help="used with --guidance > 1")
    p.add_argument("--seed", type=int, default=0, help="image k starts from the noise of seed + k")
    p.add_argument("--batch", type=int, default=8, help="images per generation batch (and per metric batch x 4)")
    p.add_argument("--height", type=int, default=512, help="pixels, a multiple of 8")
    p.add_argument("--width", type=int, default=512, help="pixels, a multiple of 8")
    return p


def stats_parser():
    p = argparse.ArgumentParser(prog="python -m sd.evaluate stats", formatter_class=HelpFormatter,
                                description="FID reference statistics (pytorch-fid's .npz) of a folder of images.")
    p.add_argument("--images", required=True, type=Path, help="folder of PNG/JPEG images (centre-cropped to squares)")
    p.add_argument("--inception", required=True, type=Path, help="pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--out", required=True, type=Path, help="the .npz file to write")
    p.add_argument("--batch", type=int, default=50, help="images per Inception batch")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return p


def folder_images(folder, flag, at_least=2):
    """The images of an input folder, at least two (a covariance needs them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineError(f"{flag} {folder}: no such folder")
    files = image_files(folder)
    if len(files) < at_least:
        raise PipelineError(f"{flag} {folder}: holds {len(files)} PNG/JPEG image(s); FID needs at least {at_least}")
    return files


def stats_main(argv):
    args = stats_parser().parse_args(argv)
    try:
        dev = device_of(args.device)
        positive_int(args.batch, "--batch", PipelineError)
        if args.out.suffix != ".npz":
            raise PipelineError(f"--out {args.out}: statistics are written as .npz (pytorch-fid's format)")
        check_out(args.out)
        files = folder_images(args.images, "--images")
        inception = load_inception(args.inception, dev)
    except EVAL_ERRORS as e:
        return fail(e)
    feats, _ = measure(files, inception, batch=args.batch, device=dev, desc="Inception")
    save_stats(args.out, *statistics(feats))
    print(f"wrote the statistics of {len(files)} images to {args.out}")
    return 0


# ---- torchrun -------------------------------------------------------------------------------------

def distributed(dev):
    """(rank, world size, device) under torchrun (gloo on CPUs, NCCL on GPUs: rank r takes cuda:LOCAL_RANK);
    (0, 1, dev) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, dev
    import torch.distributed as dist
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), world, dev


def barrier_sum(values, world):
    """Wait for every rank; return the sums of `values` (floats) over the ranks."""
    if world == 1:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)                                    # a collective: every rank reaches it, so also a barrier
    return t.tolist()


# ---- the run --------------------------------------------------------------------------------------

def configuration(args):
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k in GENERATION_KEYS}


def check_folder(out, config):
    """A run folder holds the images of one configuration: resuming with another is refused."""
    record = out / "config.json"
    if record.is_file():
        old = json.loads(record.read_text())
        diff = [f"{k} {old.get(k)!r} vs {config[k]!r}" for k in config if old.get(k) != config[k]]
        if diff:
            raise PipelineError(f"--out {out}: holds images of another configuration ({'; '.join(diff[:3])}); "
                                f"use another --out, or delete the folder")


def write_atomic(path, text):
    tmp = path.with_name("." + path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def generate(pipe, args, captions, mine, images_dir):
    """Make the images of indices `mine` that are not on disk yet, in batches; returns (seconds spent in
    the pipeline after the first batch, images they made, images made in all)."""
    todo = [k for k in mine if not (images_dir / f"{k:05d}.png").exists()]
    sampler = default_sampler(pipe.path) if args.sampler == "auto" else args.sampler
    seconds, timed, made = 0.0, 0, 0
    for i in tqdm(range(0, len(todo), args.batch), desc="generate", unit="batch", disable=not todo):
        ks = todo[i:i + args.batch]
        x0 = torch.cat([noise(pipe.latent_shape(1, args.height, args.width), args.seed + k) for k in ks])
        start = time.perf_counter()
        out = pipe([captions[k] for k in ks], [args.negative_prompt] * len(ks), steps=args.steps,
                   guidance=args.guidance, latents=x0, compile=args.compile, sampler=sampler, progress=False,
                   height=args.height, width=args.width)
        if i > 0:                                  # the first batch warms up (and compiles): not timed
            seconds, timed = seconds + time.perf_counter() - start, timed + len(ks)
        for k, image in zip(ks, out.images):       # written whole, then renamed: no half-written PNG survives
            tmp = images_dir / f".{k:05d}.part.png"
            save_png(image, tmp)
            os.replace(tmp, images_dir / f"{k:05d}.png")
        made += len(ks)
    return seconds, timed, made


def caption_grid(files, captions, path):
    """The first 16 images with their captions, a 4 x 4 figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .checkpoints.images import read_image
    n = min(16, len(files))
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k in range(n):
        ax = axes.flat[k]
        ax.imshow(read_image(files[k]))
        ax.set_title("\n".join(textwrap.wrap(captions[k], 36)[:3]), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["stats"]:
        return stats_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:                                                   # every check before any model loads
        dev = check_model_args(args)
        check_sizes(args.height, args.width)
        positive_int(args.batch, "--batch", PipelineError)
        if args.n is not None:
            positive_int(args.n, "--n", PipelineError)
        check_out(args.out, folder=True)
        captions = read_captions(args.captions, args.n)
        config = configuration(args)
        check_folder(args.out, config)
        check_file(args.inception, "--inception")
        ref_files = folder_images(args.ref_images, "--ref-images") if args.ref_images else None
        ref = load_stats(args.ref_stats) if args.ref_stats else None
        inception = load_inception(args.inception)     # every rank reads the metric models (so that a wrong
        clip = load_clip(args.clip) if args.clip else None     # file stops them all); rank 0 keeps them
        rank, world, dev = distributed(dev)
        pipe = load_edited(args, dev)
    except EVAL_ERRORS as e:
        return fail(e)
    n = len(captions)
    images_dir = args.out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0 and not (args.out / "config.json").exists():
        write_atomic(args.out / "config.json", json.dumps(config, indent=2))
    seconds, timed, made = generate(pipe, args, captions, range(rank, n, world), images_dir)
    seconds, timed, made = barrier_sum([seconds, timed, made], world)
    if rank != 0:
        return 0
    del pipe
    inception, clip = inception.to(dev), None if clip is None else clip.to(dev)
    files = [images_dir / f"{k:05d}.png" for k in range(n)]
    feats, cos = measure(files, inception, clip, captions, batch=4 * args.batch, device=dev, desc="metrics")
    if ref_files is not None:
        ref_feats, _ = measure(ref_files, inception, batch=4 * args.batch, device=dev, desc="reference")
        ref = statistics(ref_feats)
    fid = frechet_distance(*statistics(feats), *ref)
    old = json.loads((args.out / "metrics.json").read_text()) if (args.out / "metrics.json").exists() else {}
    metrics = dict(
        fid=fid,
        clip_score=None if cos is None else float(cos.mean()),
        clip_score_100=None if cos is None else float(100 * cos.clamp(min=0).mean()),
        n=n,
        seconds_per_image=seconds / timed if timed else old.get("seconds_per_image"),
        images_generated=int(made), world_size=world, device=str(dev),
        configuration={**config, "n": n, "batch": args.batch, "compile": args.compile, "inception": str(args.inception),
                       "clip": None if args.clip is None else str(args.clip),
                       "reference": str(args.ref_stats or args.ref_images)},
    )
    not_measured = {"clip_score": "no --clip model given (e.g. openai/clip-vit-large-patch14's folder)",
                    "clip_score_100": "no --clip model given",
                    "seconds_per_image": "no image was timed here (they existed, or only the first batch, which "
                                         "warms up and is not timed, was made)"}
    metrics["not_measured"] = {k: why for k, why in not_measured.items() if metrics[k] is None}
    write_atomic(args.out / "metrics.json", json.dumps(metrics, indent=2))
    caption_grid(files, captions, args.out / "grid.png")
    clip_text = "" if cos is None else f", CLIP score {metrics['clip_score']:.4f} ({metrics['clip_score_100']:.2f} x 100)"
    speed = "" if metrics["seconds_per_image"] is None else f", {metrics['seconds_per_image']:.3f} s per image"
    print(f"FID of {n} images {fid:.2f}{clip_text}{speed}; "
          f"made {int(made)} image(s); wrote {args.out / 'metrics.json'} and {args.out / 'grid.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
