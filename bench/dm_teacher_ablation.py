"""Distribution matching's teacher, ablated: how much of DMD2's and SiD's one-step error on the toy is the teacher's.

    python bench/dm_teacher_ablation.py [--seeds 0,1,2,3]          about 3 minutes a seed on 2 CPU cores

At each seed, DMD2 and SiD (their searched settings, TUNED) are trained as `python -m toy compare` trains them, with
the 1-RF as v_real, and again with the exact 1-RF velocity of the paper's mixtures as v_real (toy/exact.py: what a
perfectly trained 1-RF would be). Both arms start the generator and the fake velocity from the same trained 1-RF's
weights and draw the same random numbers: only the teacher differs. The gap between the rows is the teacher's
error; what the exact row keeps is the distillation's own. Prints markdown: one-step W2 (the floor of two target
sets beside it) and the smallest mode share, per seed and as mean ± standard deviation.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rectflow as rf  # noqa: E402
from bench.compare_seeds import mean_std  # noqa: E402
from toy.cli import seed_list  # noqa: E402
from toy.compare import CompareConfig, run_compare  # noqa: E402
from toy.datasets import PAPER_MEANS0, PAPER_MEANS1, VAR  # noqa: E402
from toy.exact import mixture_velocity  # noqa: E402
from toy.experiment import Bench  # noqa: E402
from toy.few_step import train_few_step  # noqa: E402

METHODS = ("dmd2", "sid")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=seed_list, default=(0, 1, 2, 3))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    exact = mixture_velocity(PAPER_MEANS0, PAPER_MEANS1, VAR)    # what a perfectly trained 1-RF would be
    table, floors = {}, {}
    for seed in args.seeds:
        cfg = CompareConfig(seed=seed, methods=METHODS, progress=not args.no_progress)
        ancestors = {}
        res = run_compare(cfg, ancestors=ancestors)           # the compare's own rows: v_real = the trained 1-RF
        stages, floors[seed] = res.metrics["stages"], res.metrics["w2_floor"]
        b, teacher = Bench(cfg), ancestors["1-rf"][0]
        for m in METHODS:
            table[m, "1-RF", seed] = stages[m]["w2"]["1"], min(stages[m]["mode_shares_1"])
            model = train_few_step(m, b, teacher, real=exact)[0]
            entry = b.score(f"{m} (exact teacher)", model, (1,), flow=False)
            shares = rf.mode_shares(b.res.samples[f"{m} (exact teacher)_1"][:cfg.n_eval], b.ds.modes)
            table[m, "exact", seed] = entry["w2"]["1"], min(shares)
        print(f"seed {seed} done", flush=True)
    seeds = args.seeds
    print("\n| method | v_real | " + " | ".join(f"W2 seed {s}" for s in seeds)
          + " | W2 mean ± std | smallest mode share (per seed) |")
    print("| --- | --- |" + " ---: |" * (len(seeds) + 2))
    for m in METHODS:
        for who in ("1-RF", "exact"):
            w2 = [table[m, who, s][0] for s in seeds]
            spread = "{:.2f} ± {:.2f}".format(*mean_std(w2))
            shares = " / ".join(f"{table[m, who, s][1]:.2f}" for s in seeds)
            print(f"| {m} | {who} | " + " | ".join(f"{x:.2f}" for x in w2) + f" | {spread} | {shares} |")
    print("| (two target sets: the floor) | | " + " | ".join(f"{floors[s]:.2f}" for s in seeds) + " | | |")


if __name__ == "__main__":
    main()
