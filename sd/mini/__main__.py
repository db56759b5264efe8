"""python -m sd.mini [--fast] [--out runs/mini]: the whole mini InstaFlow, then metrics.json and grid.png."""
import argparse
import json

from .run import MiniConfig, run


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sd.mini", description=__doc__)
    ap.add_argument("--fast", action="store_true", help="a smoke run of every stage (about a minute)")
    ap.add_argument("--out", default="runs/mini", help="output folder (a finished stage there is reused)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = MiniConfig(seed=args.seed)
    m = run(cfg.fast() if args.fast else cfg, args.out)
    print(f"{'model':28s} {'steps':>5s} {'fidelity':>9s} {'colour':>7s} {'position':>9s} {'MSE to teacher':>15s}")
    for name, r in m.items():
        if isinstance(r, dict) and "fidelity" in r:
            print(f"{name:28s} {r['steps']:5d} {r['fidelity']:9.3f} {r['colour']:7.3f} {r['position']:9.3f} "
                  f"{r['mse_to_teacher']:15.4f}")
    print("straightness:", json.dumps({k: round(v, 3) for k, v in m["straightness"].items()}))
    for name, r in m["controlnet"].items():
        print(f"{name:45s} IoU with the control mask {r['iou']:.3f}, colour {r['colour']:.3f}")
    print(f"wrote {args.out}/metrics.json and {args.out}/grid.png in {m['seconds']['total']:.0f} s")


if __name__ == "__main__":
    main()
