"""python -m sd.mini [--fast] [--out DIR]: the whole mini InstaFlow (teacher, triplets, 2-RF, one-step student,
its rival LCM on the same budget, inversion and edits, a ControlNet), then metrics.json, grid.png, edit.png
and control.png in DIR.

docs/training.md gives each stage's time. --fast is a smoke run of every stage whose numbers mean nothing,
written to its own folder (runs/mini-fast), so it never touches a full run's. A folder resumes only with the
configuration it was started with."""
import argparse
import json
import sys

from toy.cli import FAST_NOTE, HelpFormatter, writable

from ..cli import fail
from ..training.objectives import resolve_loss
from .run import MiniConfig, MiniRunError, run


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m sd.mini", description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--fast", action="store_true", help="a smoke run of every stage (its numbers mean nothing)")
    ap.add_argument("--out", help="output folder; a finished stage there is reused (default: runs/mini, "
                                  "or runs/mini-fast with --fast)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data, the training and the evaluation")
    ap.add_argument("--distill-loss", default="l2", help="the student's loss: l2, lpips, or a sum such as "
                                                          "l2+0.5*lpips (LPIPS of the 16x16 images)")
    ap.add_argument("--lpips-vgg", help="with an LPIPS loss: torchvision's VGG16 weights (else random weights)")
    ap.add_argument("--lpips-lin", help="with an LPIPS loss: the lpips package's weights/v0.1/vgg.pth")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    cfg = (MiniConfig.fast if args.fast else MiniConfig)(seed=args.seed, distill_loss=args.distill_loss)
    out = args.out or ("runs/mini-fast" if args.fast else "runs/mini")
    try:
        writable(out, "--out", folder=True)
        resolve_loss(args.distill_loss, lpips=lambda p, t: 0)          # the name, checked before any work
        if bool(args.lpips_vgg) != bool(args.lpips_lin):
            raise ValueError("give both --lpips-vgg and --lpips-lin, or neither (random LPIPS weights)")
        files = (args.lpips_vgg, args.lpips_lin) if args.lpips_vgg else None
        m = run(cfg, out, lpips_files=files)             # checks the folder's configuration before any work
    except (MiniRunError, ValueError) as e:            # ValueError: the trainer refusing to resume another run
        return fail(e)
    if cfg.mode == "fast":
        print(FAST_NOTE)
    print(f"{'model':28s} {'steps':>5s} {'fidelity':>9s} {'colour':>7s} {'position':>9s} {'MSE to teacher':>15s} "
          f"{'FD':>8s} {'caption score':>14s}")
    for name, r in m.items():
        if isinstance(r, dict) and "steps" in r:
            print(f"{name:28s} {r['steps']:5d} {r['fidelity']:9.3f} {r['colour']:7.3f} {r['position']:9.3f} "
                  f"{r['mse_to_teacher']:15.4f} {r['fd']:8.2f} {r['caption_score']:14.3f}")
    h = m["held-out renders"]
    print(f"{'held-out renders (floor)':28s} {'':5s} {h['judge']:9.3f} {'':7s} {'':9s} {'':15s} {h['fd']:8.2f} "
          f"{h['caption_score']:14.3f}  (feature net's accuracy {h['feature_net_accuracy']:.3f})")
    print("straightness:", json.dumps({k: round(v, 3) for k, v in m["straightness"].items()}))
    for name, r in m["controlnet"].items():
        print(f"{name:45s} IoU with the control mask {r['iou']:.3f}, colour {r['colour']:.3f}")
    print(f"wrote metrics.json, grid.png, edit.png and control.png to {out} in {m['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
