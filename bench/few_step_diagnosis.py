"""Where the few-step models of `python -m toy compare` go wrong, measured against the exact flow.

On the paper pair the 1-RF velocity has a closed form (toy/exact.py), so the true ODE endpoint of any
point is known: run the exact flow from (X_t, t) to t = 1 (RK4, 200 steps). For X_t drawn from the
marginal t X_1 + (1 - t) X_0 (X_0 ~ pi_0, X_1 ~ pi_1 independent), at each t this prints the RMS distance
to that endpoint of
    exact posterior mean  x + (1 - t) v_exact(x, t) = E[X_1 | X_t]: what a regression onto X_1 learns
    1-rf's ODE            the learned 1-RF run to t = 1 (RK4, 100 steps): the teacher's own error
    1-rf's jump           x + (1 - t) v_1rf(x, t): CD's starting point
    cd, ct                the consistency function f(x, t) = x + (1 - t) F(x, t)
    meanflow              x + (1 - t) u(x, t, 1), MeanFlow's jump to the end
then W2 of CD's and CT's multistep samples (N = 1..16; mean and spread over 8 re-noising draws) re-noised
with N(0, I) and with fresh draws of pi_0, the source the models were trained on.

    python bench/few_step_diagnosis.py [--seeds 0,1,2] [--figure docs/figures/few_step_diagnosis.png]

About 10 minutes per seed on 2 CPU cores (the 1-RF, CD, CT and MeanFlow of the default compare, with its
searched settings; most of the time is its 160 exact W2 assignments).
"""
import argparse
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rectflow as rf  # noqa: E402
from rectflow.consistency import consistency_fn, consistency_sample  # noqa: E402
from toy.cli import seed_list, writable  # noqa: E402
from toy.compare import CompareConfig, run_compare  # noqa: E402
from toy.datasets import PAPER_MEANS0, PAPER_MEANS1, VAR  # noqa: E402
from toy.exact import mixture_velocity  # noqa: E402
from toy.experiment import Bench  # noqa: E402

TS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
STEPS = (1, 2, 4, 8, 16)
RENOISE = 8           # re-noising draws per multistep W2: its spread is printed beside it


def endpoint_maps(models):
    """name -> map(x, t) estimating the ODE endpoint X_1 from (x, t), t a float."""
    exact = mixture_velocity(PAPER_MEANS0, PAPER_MEANS1, VAR)
    return {
        "exact posterior mean E[X_1 | X_t]": lambda x, t: rf.data_end(exact, x, t),
        "1-rf's ODE (the teacher)": lambda x, t: rf.solve(models["1-rf"], x, 100, "rk4", t0=t),
        "1-rf's jump (CD's start)": lambda x, t: rf.data_end(models["1-rf"], x, t),
        "cd": lambda x, t: consistency_fn(models["cd"], x, t),
        "ct": lambda x, t: consistency_fn(models["ct"], x, t),
        "meanflow": lambda x, t: rf.data_end(lambda y, s: models["meanflow"](y, s, torch.ones_like(s)), x, t),
    }, exact


@torch.no_grad()
def endpoint_errors(maps, exact, ds, n=2048, seed=7):
    """{name: [RMS ||map(X_t, t) - exact endpoint|| for t in TS]}, X_t from the independent coupling."""
    gen = torch.Generator().manual_seed(seed)
    out = {name: [] for name in maps}
    for t in TS:
        xt = rf.interpolate(ds.sample0(n, gen), ds.sample1(n, gen), torch.full((n,), t))
        end = rf.solve(exact, xt, 200, "rk4", t0=t)
        for name, f in maps.items():
            out[name].append((f(xt, t) - end).pow(2).sum(1).mean().sqrt().item())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=seed_list, default=[0], help="comma-separated integer seeds, e.g. 0,1,2")
    p.add_argument("--figure", type=Path)
    args = p.parse_args()
    if args.figure:                                           # refused before 10 minutes of training, not after
        try:
            writable(args.figure, "--figure", suffixes=(".png",))
        except ValueError as e:
            p.error(str(e))
    torch.set_num_threads(2)
    for seed in args.seeds:
        cfg = CompareConfig(seed=seed, methods=("cd", "ct", "meanflow"))
        res = run_compare(cfg)
        b = Bench(cfg)                                        # the compare's evaluation sets
        ds, z, target = b.ds, b.z_eval[:cfg.n_eval], b.target[:cfg.n_eval]
        maps, exact = endpoint_maps(res.models)
        errs = endpoint_errors(maps, exact, ds)
        print(f"\nseed {seed}: RMS distance to the exact ODE endpoint from X_t")
        print("| map | " + " | ".join(f"t = {t:.1f}" for t in TS) + " |")
        print("| --- |" + " ---: |" * len(TS))
        for name, e in errs.items():
            print(f"| {name} | " + " | ".join(f"{x:.2f}" for x in e) + " |")
        print(f"\nseed {seed}: W2 of multistep consistency samples, mean ± std over {RENOISE} re-noising draws "
              f"(floor {res.metrics['w2_floor']:.3f})")
        print("| method | re-noised with | " + " | ".join(f"N = {k}" for k in STEPS) + " |")
        print("| --- | --- |" + " ---: |" * len(STEPS))
        for m in ("cd", "ct"):
            for label, source in (("N(0, I)", None), ("pi_0", ds.sample0)):
                w = torch.tensor([[rf.w2(consistency_sample(res.models[m], z, k, source=source,
                                                            generator=torch.Generator().manual_seed(1000 * r + k)),
                                         target) for k in STEPS]
                                  for r in tqdm(range(RENOISE), desc=f"{m}, {label} noise", leave=False)])
                print(f"| {m} | {label} | " + " | ".join(f"{a:.2f} ± {b:.2f}" for a, b in zip(w.mean(0), w.std(0)))
                      + " |")
        if args.figure and seed == args.seeds[0]:
            plot(errs, args.figure, seed)


def plot(errs, path, seed):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, e in errs.items():
        ax.plot(TS, e, marker="o", label=name, linestyle="--" if name.startswith(("exact", "1-rf's ODE")) else "-")
    ax.set_xlabel("t (0: noise, 1: data)")
    ax.set_ylabel("RMS distance to the exact ODE endpoint")
    ax.set_yscale("log")
    ax.set_title(f"endpoint estimates from X_t, paper pair, seed {seed}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
