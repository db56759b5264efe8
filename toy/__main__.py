"""python -m toy: 1-RF -> reflow -> 2-RF (-> 3-RF) -> one-step distillation on a 2D dataset.

Prints a table (stage x straightness, W2 at 1/2/4/100 Euler steps, seconds) and writes
metrics.json, samples.npz and figures to --out.
"""
import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .datasets import DATASETS
from .experiment import Config, run
from .plots import plot_samples, plot_straightness, plot_trajectories


def positive_int(text):
    try:
        val = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if val < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {val}")
    return val


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m toy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="paper", choices=list(DATASETS),
                   help="source/target pair (default: the paper's 3-Gaussian tutorial pair)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--iters", type=positive_int, help="training iterations of each flow")
    p.add_argument("--distill-iters", type=positive_int, help="training iterations of the student")
    p.add_argument("--reflows", type=positive_int, default=1, help="1: 2-RF (default), 2: 3-RF, ...")
    p.add_argument("--fast", action="store_true", help="a smoke run of seconds (nothing converges)")
    p.add_argument("--out", type=Path, default=Path("runs/toy"))
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = p.parse_args(argv)
    try:
        dev = torch.device(args.device)
    except RuntimeError as e:
        p.error(f"--device {args.device!r}: {e}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device!r}: CUDA is not available on this machine")
    return args


def format_table(metrics):
    steps = ["1", "2", "4", "100"]
    head = f"{'stage':<18}{'straightness':>13}" + "".join(f"{'W2@' + s:>9}" for s in steps) + f"{'train s':>9}"
    lines = [head, "-" * len(head)]
    secs = metrics["seconds"]
    for stage, m in metrics["stages"].items():
        s = m.get("straightness")
        row = f"{stage:<18}" + (f"{s:>13.4f}" if s is not None else f"{'-':>13}")
        row += "".join(f"{m['w2'][k]:>9.3f}" if k in m["w2"] else f"{'-':>9}" for k in steps)
        key = "distill" if stage.endswith("distilled") else stage
        lines.append(row + f"{secs.get(key, 0.0):>9.1f}")
    lines.append(f"W2 between two target sets (floor of the estimate): {metrics['w2_floor']:.3f}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    kw = dict(dataset=args.dataset, seed=args.seed, device=args.device, reflows=args.reflows,
              progress=not args.no_progress)
    if args.iters:
        kw["iters"] = args.iters
    if args.distill_iters:
        kw["distill_iters"] = args.distill_iters
    cfg = Config.fast(**kw) if args.fast else Config(**kw)
    t0 = time.perf_counter()
    res = run(cfg)
    res.metrics["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(res.metrics, indent=2))
    np.savez(args.out / "samples.npz", **res.samples)
    plot_samples(res, args.out / "samples.png")
    plot_trajectories(res, args.out / "trajectories.png")
    plot_straightness(res, args.out / "straightness.png")
    print(format_table(res.metrics))
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20        # Linux reports KiB
    print(f"total {res.metrics['seconds']['total']:.1f} s, peak RSS {rss_gb:.2f} GB; wrote metrics.json, samples.npz, "
          f"samples.png, trajectories.png, straightness.png to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
