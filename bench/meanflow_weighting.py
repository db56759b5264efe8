"""MeanFlow's adaptive loss weighting on the toy: the compare's MeanFlow (its searched lr and share of r = t) with the
plain squared loss (p = 0, what the compare runs) and with the adaptive weighting of the official code (p = 1,
c = 0.01). The learning rate is the one searched for p = 0.

    python bench/meanflow_weighting.py [--seeds 0,1,2]             about 5 minutes a seed on 2 CPU cores

Both arms start from the same weights and draw the same random numbers; only the loss's weighting differs. Prints
markdown: W2 at 1, 2, 4 and 8 steps per seed and arm, and each arm's one-step mean ± standard deviation.
"""
import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.compare_seeds import mean_std  # noqa: E402
from toy.cli import seed_list  # noqa: E402
from toy.compare import TUNED, CompareConfig, run_compare  # noqa: E402

ARMS = {"p = 0 (the compare's)": 0.0, "p = 1 (the official code's)": 1.0}
STEPS = ("1", "2", "4", "8")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=seed_list, default=(0, 1, 2))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    rows = {}
    for seed in args.seeds:
        for arm, power in ARMS.items():
            settings = copy.deepcopy(TUNED)
            settings["meanflow"]["adaptive_p"] = power
            cfg = CompareConfig(seed=seed, methods=("meanflow",), settings=settings, progress=not args.no_progress)
            rows[arm, seed] = run_compare(cfg).metrics["stages"]["meanflow"]["w2"]
        print(f"seed {seed} done", flush=True)
    print("\n| weighting | seed | " + " | ".join(f"W2 @ {n}" for n in STEPS) + " |")
    print("| --- | ---: |" + " ---: |" * len(STEPS))
    for arm in ARMS:
        for seed in args.seeds:
            print(f"| {arm} | {seed} | " + " | ".join(f"{rows[arm, seed][n]:.2f}" for n in STEPS) + " |")
    for arm in ARMS:
        print(f"{arm}: one step {'{:.2f} ± {:.2f}'.format(*mean_std([rows[arm, s]['1'] for s in args.seeds]))}")


if __name__ == "__main__":
    main()
