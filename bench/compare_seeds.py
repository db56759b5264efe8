"""The default `python -m toy compare` at several seeds, as mean ± spread: the table docs/toy.md's verdict reads.

    python bench/compare_seeds.py [--seeds 0,1,2,3] [--out runs/toy-compare-seeds]

Each seed's metrics are written to OUT/seed{k}.json when its run ends, and reused on the next call if they were
made with today's configuration (TUNED settings included), so an interrupted run resumes; a record made with
another configuration is run again. About 11 minutes a seed on 2 CPU cores (two calls with OMP_NUM_THREADS=1 and
different seeds share them better than one call with both threads). Prints markdown:
- for each method, its straightness S (a flow, or a model with a velocity) and W2 at each step count, mean ±
  standard deviation over the seeds, and the smallest mode share of its one-step samples (a dropped mode shows
  as 0), averaged over the seeds;
- for each step count, the best method at each seed: a ranking that changes with the seed shows as such.
It also draws OUT/mode_shares.png: each method's smallest one-step mode share at each seed (docs/toy.md shows it).
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toy.cli import seed_list, writable  # noqa: E402
from toy.compare import CompareConfig, run_compare  # noqa: E402
from toy.experiment import config_record  # noqa: E402


def seed_record(seed, out):
    """The metrics of the default compare at `seed`: OUT/seed{k}.json if made with today's configuration, else run."""
    path = out / f"seed{seed}.json"
    cfg = CompareConfig(seed=seed)                          # progress bars on: a seed takes minutes
    if path.exists():
        record = json.loads(path.read_text())
        if {**record["config"], "progress": cfg.progress} == json.loads(json.dumps(config_record(cfg))):
            return record                                   # (whether it showed bars changes no number)
        print(f"{path} was made with another configuration: running seed {seed} again", flush=True)
    metrics = run_compare(cfg).metrics
    path.write_text(json.dumps(metrics, indent=1))
    return metrics


def mean_std(vals):
    return (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summary(records, steps):
    """{method: {"S": (mean, std) or None, "w2": {N: (mean, std)}, "min_share": mean over seeds of the smallest
    one-step mode share or None}} over the records (one per seed) that scored the method at N."""
    out = {}
    for m in records[0]["stages"]:
        straight = [r["stages"][m]["straightness"] for r in records if r["stages"][m].get("straightness") is not None]
        w2 = {}
        for n in steps:
            vals = [r["stages"][m]["w2"][str(n)] for r in records if str(n) in r["stages"][m]["w2"]]
            if vals:
                w2[n] = mean_std(vals)
        shares = [min(r["stages"][m]["mode_shares_1"]) for r in records if "mode_shares_1" in r["stages"][m]]
        out[m] = {"S": mean_std(straight) if straight else None, "w2": w2,
                  "min_share": statistics.mean(shares) if shares else None}
    return out


def best_per_seed(records, steps):
    """{N: [the method with the lowest W2 at N, for each record]} (a one-step model counts at N = 1)."""
    return {n: [r["best"][str(n)] for r in records] for n in steps if all(str(n) in r["best"] for r in records)}


def markdown(records, seeds):
    steps = records[0]["config"]["steps"]
    rows = summary(records, steps)
    lines = [f"W2, mean ± standard deviation over seeds {', '.join(map(str, seeds))}; min share: the smallest "
             "one-step mode share, averaged", "",
             "| method | S | " + " | ".join(f"W2@{n}" for n in steps) + " | min share |",
             "| --- |" + " ---: |" * (len(steps) + 2)]
    for m, row in rows.items():
        s = "—" if row["S"] is None else f"{row['S'][0]:.3g} ± {row['S'][1]:.2g}"
        cells = [f"{row['w2'][n][0]:.3f} ± {row['w2'][n][1]:.3f}" if n in row["w2"] else "—" for n in steps]
        share = "—" if row["min_share"] is None else f"{row['min_share']:.3f}"
        lines.append(f"| {m} | {s} | " + " | ".join(cells) + f" | {share} |")
    lines += ["", "| steps | best method at each seed |", "| ---: | --- |"]
    lines += [f"| {n} | {' / '.join(best)} |" for n, best in best_per_seed(records, steps).items()]
    return "\n".join(lines)


def mode_share_figure(records, seeds, path):
    """Each method's smallest one-step mode share, one marker per seed, against the balanced 1/K; returns the figure."""
    methods = [m for m in records[0]["stages"] if "mode_shares_1" in records[0]["stages"][m]]
    k = len(records[0]["stages"][methods[0]]["mode_shares_1"])
    fig = Figure(figsize=(9, 3.6))
    ax = fig.subplots()
    for j, (seed, r) in enumerate(zip(seeds, records)):
        x = [i + 0.15 * (j - (len(seeds) - 1) / 2) for i in range(len(methods))]
        ax.scatter(x, [min(r["stages"][m]["mode_shares_1"]) for m in methods], s=18, label=f"seed {seed}")
    ax.axhline(1 / k, color="gray", ls="--", lw=1, label=f"balanced: 1/{k}")
    ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("smallest mode share\n(one-step samples)")
    ax.set_xlabel("method (1-rf: the paper's recipe; the others: their searched settings)")
    ax.set_ylim(0, 0.4)
    ax.set_title("A dropped mode shows as a share near 0", fontsize=10)
    ax.legend(fontsize=7, ncol=len(seeds) + 1, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2, 3], help="comma-separated integer seeds, e.g. 0,1,2,3")
    p.add_argument("--out", type=Path, default=Path("runs/toy-compare-seeds"))
    args = p.parse_args(argv)
    if len(args.seeds) < 2:
        p.error("--seeds: give at least two seeds, e.g. 0,1,2,3 (a spread needs more than one)")
    try:
        writable(args.out, "--out", folder=True)                # refused before an hour of training, not after
    except ValueError as e:
        p.error(str(e))
    records = [seed_record(s, args.out) for s in args.seeds]
    print(markdown(records, args.seeds))
    mode_share_figure(records, args.seeds, args.out / "mode_shares.png")


if __name__ == "__main__":
    main()
