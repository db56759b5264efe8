"""MeanFlow's adaptive loss weighting on the toy: the compare's MeanFlow with the plain squared loss (p = 0, what the
compare runs, at its searched settings) and with the adaptive weighting of the official code (p = 1, c = 0.01) at
settings found by the same search (toy/tuning.py's 8 configurations, seed 0, validation sets).

    python bench/meanflow_weighting.py [--seeds 0,1,2] [--no-search]     about 17 minutes on 2 CPU cores

The search gives p = 1 the tuning effort p = 0 had (the adaptive weight changes each sample's gradient scale, so a
learning rate chosen for p = 0 need not suit it); --no-search runs p = 1 at p = 0's settings instead. Both arms start
from the same weights and draw the same random numbers. Prints markdown: the search's table, then W2 at 1, 2, 4 and
8 steps per seed and arm, and each arm's one-step mean ± standard deviation.
"""
import argparse
import copy
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.compare_seeds import mean_std  # noqa: E402
from toy.cli import seed_list  # noqa: E402
from toy.compare import TUNED, CompareConfig, run_compare  # noqa: E402
from toy.tuning import tune  # noqa: E402

STEPS = ("1", "2", "4", "8")
ADAPTIVE = 1.0


def with_adaptive_weighting(cfg, **kw):
    """run_compare with p = 1 added to the settings the search gives meanflow."""
    settings = {**cfg.settings, "meanflow": {**cfg.settings["meanflow"], "adaptive_p": ADAPTIVE}}
    return run_compare(replace(cfg, settings=settings), **kw)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=seed_list, default=(0, 1, 2))
    p.add_argument("--no-search", action="store_true", help="p = 1 at p = 0's settings")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    arms = {"p = 0 (the compare's)": TUNED["meanflow"]}
    if args.no_search:
        arms["p = 1, p = 0's settings"] = {**TUNED["meanflow"], "adaptive_p": ADAPTIVE}
    else:
        searched, best = tune("meanflow", CompareConfig(progress=not args.no_progress), run=with_adaptive_weighting)
        print("search with p = 1 (validation score: mean W2 over 1, 2, 4, 8 steps)\n| lr | equal_fraction | score |\n"
              "| ---: | ---: | ---: |\n" + "\n".join(f"| {st['lr']:.0e} | {st['equal_fraction']} | {sc:.3f} |"
                                              for st, sc, _ in searched), flush=True)
        arms["p = 1, its own search"] = {**best, "adaptive_p": ADAPTIVE}
    rows = {}
    for seed in args.seeds:
        for arm, settings in arms.items():
            all_settings = copy.deepcopy(TUNED)
            all_settings["meanflow"] = settings
            cfg = CompareConfig(seed=seed, methods=("meanflow",), settings=all_settings,
                                progress=not args.no_progress)
            rows[arm, seed] = run_compare(cfg).metrics["stages"]["meanflow"]["w2"]
        print(f"seed {seed} done", flush=True)
    print("\n| weighting | settings | seed | " + " | ".join(f"W2 @ {n}" for n in STEPS) + " |")
    print("| --- | --- | ---: |" + " ---: |" * len(STEPS))
    for arm, settings in arms.items():
        for seed in args.seeds:
            print(f"| {arm} | lr {settings['lr']:.0e}, r = t for {settings['equal_fraction']:.0%} | {seed} | "
                  + " | ".join(f"{rows[arm, seed][n]:.2f}" for n in STEPS) + " |")
    for arm in arms:
        print(f"{arm}: one step {'{:.2f} ± {:.2f}'.format(*mean_std([rows[arm, s]['1'] for s in args.seeds]))}")


if __name__ == "__main__":
    main()
