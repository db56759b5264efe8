"""python -m toy: 1-RF -> reflow -> 2-RF (-> 3-RF) -> one-step distillation on a 2D dataset.

Prints a table (stage x straightness, W2 at 1/2/4/100 Euler steps, seconds) and the error of
inverting then regenerating the target points, and writes metrics.json, samples.npz and figures to --out.

python -m toy compare: interpolations (linear, VP, cosine), couplings (independent, minibatch OT,
reflow) and one-step students side by side on one budget (toy/compare.py); writes compare.json,
samples.npz, w2_vs_steps.png, straightness.png, trajectories.png, few_step_samples.png to --out.
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
from .compare import ALL, CompareConfig, run_compare
from .few_step import FEW_STEP
from .compare import __doc__ as compare_doc
from .solvers import __doc__ as solvers_doc
from .solvers import NFES, run_solvers
from .slim import __doc__ as slim_doc
from .slim import gaussian_source, run_slim
from .cli import FAST_NOTE, HelpFormatter, positive_int, writable
from .experiment import Config, run
from .tuning import KNOBS, SCORED_STEPS, tune
from .plots import plot_inversion, plot_samples, plot_straightness, plot_trajectories, plot_w2_vs_steps


MODES = {"toy": ("python -m toy", __doc__, "metrics.json"),
         "compare": ("python -m toy compare", compare_doc, "compare.json"),
         "solvers": ("python -m toy solvers", solvers_doc, "solvers.json"),
         "slim": ("python -m toy slim", slim_doc, "slim.json")}


def default_out(mode, fast, tune=False):
    """runs/toy, runs/toy-compare, runs/toy-solvers or runs/toy-tune, with -fast for a smoke run (which never writes
    where a full run lives)."""
    name = "runs/toy-tune" if tune else "runs/toy" if mode == "toy" else f"runs/toy-{mode}"
    return Path(name + ("-fast" if fast else ""))


def build_parser(mode="toy"):
    prog, doc, _ = MODES[mode]
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=HelpFormatter)
    p.add_argument("--dataset", default="8gaussians" if mode == "slim" else "paper", choices=list(DATASETS),
                   help="source/target pair (paper: the paper's 3-Gaussian tutorial pair"
                   + ("; slim needs a N(0, I) source, which paper has not)" if mode == "slim" else ")"))
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the initial weights and the training")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--iters", type=positive_int, help="training iterations of each flow (default 3000; 150 with --fast)")
    p.add_argument("--distill-iters", type=positive_int,
                   help="training iterations of the student (default 3000; 150 with --fast)")
    if mode == "compare":
        p.add_argument("--ot-block", type=positive_int, default=256,
                       help="rows per exact assignment of the minibatch-OT coupling")
        p.add_argument("--methods", default="all", help="comma-separated methods to run (with the flows they "
                       "start from): " + ", ".join(ALL) + "; or all")
        p.add_argument("--tune", metavar="METHOD", choices=list(KNOBS),
                       help="instead of a comparison, run METHOD's search (8 settings at seed 0, scored on validation "
                       "sets; toy/tuning.py) and write tune_METHOD.json to --out (default runs/toy-tune): "
                       + ", ".join(KNOBS))
    elif mode == "toy":
        p.add_argument("--reflows", type=positive_int, default=1, help="1: 2-RF, 2: 3-RF, ...")
    p.add_argument("--fast", action="store_true", help="a smoke run of seconds (nothing converges; its numbers mean "
                   "nothing), written to its own folder")
    p.add_argument("--out", type=Path, help=f"output folder (default: {default_out(mode, False)}, or "
                                            f"{default_out(mode, True)} with --fast)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def parse_args(argv=None, mode="toy"):
    p = build_parser(mode)
    args = p.parse_args(argv)
    try:
        dev = torch.device(args.device)
    except RuntimeError as e:
        p.error(f"--device {args.device!r}: {e}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device {args.device!r}: CUDA is not available on this machine")
    if mode == "slim" and not gaussian_source(DATASETS[args.dataset]):
        p.error(f"--dataset {args.dataset}: its source is not N(0, I), which SlimFlow's annealing needs; "
                f"choose one of {', '.join(n for n, d in DATASETS.items() if gaussian_source(d))}")
    tune = getattr(args, "tune", None)
    args.out = args.out or default_out(mode, args.fast, tune)
    try:
        writable(args.out, "--out", folder=True)
        record = f"tune_{tune}.json" if tune else MODES[mode][2]
        check_not_full(args.out / record, args.fast)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    return args


def check_not_full(record, fast):
    """A fast run never overwrites a full run's results."""
    if not fast or not record.exists():
        return
    m = json.loads(record.read_text())
    if not m.get("fast"):
        raise ValueError(f"--out {record.parent} holds a full run ({record.name}); a fast run would overwrite it: "
                         f"give another --out (the default for --fast is its own folder)")


def config_of(args, cls, **extra):
    kw = dict(dataset=args.dataset, seed=args.seed, device=args.device, progress=not args.no_progress, **extra)
    if args.iters:
        kw["iters"] = args.iters
    if args.distill_iters:
        kw["distill_iters"] = args.distill_iters
    return cls.fast(**kw) if args.fast else cls(**kw)


def timed_run(fn, cfg):
    t0 = time.perf_counter()
    res = fn(cfg)
    res.metrics["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    return res


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20        # Linux reports KiB


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
    lines.append("invert then generate, E||x_1' - x_1||^2 on the target points, N steps each way "
                 "(the student: N backward steps of its teacher, 1 forward):")
    lines.append(f"{'':<18}" + "".join(f"{'N=' + k:>10}" for k in steps))
    for stage, errs in metrics.get("inversion", {}).items():
        lines.append(f"{stage:<18}" + "".join(f"{errs[k]:>10.3f}" for k in steps))
    return "\n".join(lines)


def format_compare_table(metrics):
    steps = [str(n) for n in metrics["config"]["steps"]]
    head = (f"{'method':<16}{'path':<8}{'coupling':<13}{'S':>9}" + "".join(f"{'W2@' + s:>8}" for s in steps)
            + f"{'grad steps':>11}{'ODE evals':>11}{'assign s':>9}{'cost s':>8}")
    lines = [head, "-" * len(head)]
    for name, m in metrics["stages"].items():
        s = m.get("straightness")
        coupling = {"pairs": f"{m['parent']} pairs", "distill": "1 step"}.get(m["coupling"], m["coupling"])
        row = f"{name:<16}{m['path'] or '-':<8}{coupling:<13}" + (f"{s:>9.3f}" if s is not None else f"{'-':>9}")
        row += "".join(f"{m['w2'][k]:>8.3f}" if k in m["w2"] else f"{'-':>8}" for k in steps)
        row += f"{m['grad_steps']:>11}{m['ode_evals']:>11.2e}{m['assign_s']:>9.1f}{m['cost_s']:>8.1f}"
        lines.append(row)
    few = {name: m for name, m in metrics["stages"].items() if "needs" in m}
    if few:
        lines.append("few-step methods: what they need, teacher evaluations and jvp calls spent in training:")
        lines += [f"  {name:<12} {m['needs']}; teacher evals {m['teacher_evals']:.2e}, jvp calls {m['jvp_calls']}"
                  for name, m in few.items()]
    shares = {name: m["mode_shares_1"] for name, m in metrics["stages"].items() if "mode_shares_1" in m}
    if shares:
        lines.append(f"share of one-step samples nearest each target mode ({1 / len(next(iter(shares.values()))):.3f} "
                     "each in the target; 0: a mode dropped):")
        lines += [f"  {name:<16}" + " ".join(f"{x:.3f}" for x in s) for name, s in shares.items()]
    lines.append("best W2 at each number of Euler steps: "
                 + ", ".join(f"{n}: {name}" for n, name in metrics["best"].items()))
    lines.append(f"W2 between two target sets (floor of the estimate): {metrics['w2_floor']:.3f}")
    return "\n".join(lines)


def main_compare(argv):
    args = parse_args(argv, mode="compare")
    methods = () if args.methods == "all" else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    try:
        cfg = config_of(args, CompareConfig, ot_block=args.ot_block, methods=methods)
        cfg.validate()
    except ValueError as e:
        print(f"error: --methods {args.methods}: {e}", file=sys.stderr)
        return 2
    if args.tune:
        return main_tune(args, cfg)
    res = timed_run(run_compare, cfg)
    note = save_record(args, res, "compare.json")
    plot_w2_vs_steps(res, args.out / "w2_vs_steps.png", note=note)
    plot_straightness(res, args.out / "straightness.png", title="straightness of each flow", note=note)
    plot_trajectories(res, args.out / "trajectories.png", note=note)
    few = [m for m in ("1-rf", "2-rf-distilled", *FEW_STEP) if m in res.metrics["stages"]]
    plot_samples(res, args.out / "few_step_samples.png", note=note, stages=few, steps=[1, 2, 4, 16],
                 title="few-step methods: samples after N steps of each method's own rule (colour) over the target (grey)")
    print((FAST_NOTE + "\n" if args.fast else "") + format_compare_table(res.metrics))
    print(f"total {res.metrics['seconds']['total']:.1f} s, peak RSS {peak_rss_gb():.2f} GB; wrote compare.json, "
          f"samples.npz, w2_vs_steps.png, straightness.png, trajectories.png, few_step_samples.png to {args.out}")
    return 0


def format_solvers_table(m):
    """W2 at each NFE for each solver row (the searched grids with their chosen shift), then the reflow's cost."""
    head = f"{'model and solver':<34}" + "".join(f"{'NFE ' + str(k):>16}" for k in NFES)
    lines = [head, "-" * len(head)]
    for row, w2 in m["w2"].items():
        solver = row.removeprefix("1-rf ").removesuffix(", searched grid")
        shifts = m["shift"].get(solver, {}) if row.endswith("searched grid") else {}
        cells = [f"{w2[k]:.3f}" + (f" (s={shifts[k]:g})" if k in shifts else "") if k in w2 else "-" for k in NFES]
        lines.append(f"{row:<34}" + "".join(f"{c:>16}" for c in cells))
    lines.append(f"W2 between two target sets (floor of the estimate): {m['w2_floor']:.3f}")
    c = m["reflow_cost"]
    lines.append(f"the 2-RF's cost: {c['pair_evaluations']} evaluations of the 1-RF for its pairs and "
                 f"{c['training_iterations']} training iterations, {c['seconds']:.0f} s; the student's: "
                 f"{m['distill_cost']['seconds']:.0f} s more")
    return "\n".join(lines)


def format_slim_table(m):
    """One row a width: its parameters, then each method's 2-RF and student at one step (W2, smallest mode share)."""
    def cell(e):
        return f"{e['w2']:.3f}" + (f" ({e['min_mode_share']:.2f})" if e["min_mode_share"] is not None else "")
    head = (f"{'width':>6}{'params':>9}" + "".join(f"{h:>18}" for h in ("plain 2-rf", "plain student",
                                                                         "slimflow 2-rf", "slimflow student")))
    lines = ["one-step W2 (smallest mode share of the one-step samples)", head, "-" * len(head)]
    for w, e in m["widths"].items():
        cells = [cell(e[method][stage]) for method in ("plain", "slimflow") for stage in ("2-rf", "student")]
        lines.append(f"{w:>6}{e['params']:>9}" + "".join(f"{c:>18}" for c in cells))
    lines.append(f"the 1-RF teacher (width {m['teacher_width']}) at one step: {cell(m['teacher'])}; "
                 f"W2 between two target sets (floor of the estimate): {m['w2_floor']:.3f}")
    return "\n".join(lines)


def main_study(argv, mode, run_study, table):
    """python -m toy solvers / slim: run the study on `python -m toy`'s configuration, write its record (with "fast")
    to --out, print its table."""
    args = parse_args(argv, mode=mode)
    metrics = {**run_study(config_of(args, Config)), "fast": args.fast}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / MODES[mode][2]).write_text(json.dumps(metrics, indent=2))
    print((FAST_NOTE + "\n" if args.fast else "") + table(metrics))
    print(f"wrote {MODES[mode][2]} to {args.out}")
    return 0


def main_tune(args, cfg):
    """--tune METHOD: the search's table (each setting's validation score and W2), and tune_METHOD.json."""
    t0 = time.perf_counter()
    rows, best = tune(args.tune, cfg)
    knob, steps = KNOBS[args.tune][0], [str(n) for n in SCORED_STEPS]
    lines = [f"{'lr':>8} {knob:>22} {'score':>7}" + "".join(f"{'W2@' + n:>8}" for n in steps)]
    for settings, score, w2 in rows:
        lines.append(f"{settings['lr']:>8.0e} {str(settings[knob]):>22} {score:>7.3f}"
                     + "".join(f"{w2[n]:>8.3f}" if n in w2 else f"{'-':>8}" for n in steps))
    print((FAST_NOTE + "\n" if args.fast else "") + "\n".join(lines))
    print(f"chosen for {args.tune}: {best} (lowest validation score; write it in toy/compare.py's TUNED); "
          f"{time.perf_counter() - t0:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"method": args.tune, "fast": args.fast, "best": best,
              "rows": [{"settings": st, "score": sc, "w2": w2} for st, sc, w2 in rows]}
    (args.out / f"tune_{args.tune}.json").write_text(json.dumps(record, indent=2))
    return 0


def save_record(args, res, record):
    """The run's record (metrics, with "fast") and samples.npz in --out; returns the figures' note (fast runs)."""
    res.metrics["fast"] = args.fast
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / record).write_text(json.dumps(res.metrics, indent=2))
    np.savez(args.out / "samples.npz", **res.samples)
    return FAST_NOTE if args.fast else None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        return main_compare(argv[1:])
    if argv[:1] == ["solvers"]:
        return main_study(argv[1:], "solvers", run_solvers, format_solvers_table)
    if argv[:1] == ["slim"]:
        return main_study(argv[1:], "slim", run_slim, format_slim_table)
    args = parse_args(argv)
    res = timed_run(run, config_of(args, Config, reflows=args.reflows))
    note = save_record(args, res, "metrics.json")
    plot_samples(res, args.out / "samples.png", note=note)
    plot_trajectories(res, args.out / "trajectories.png", note=note)
    plot_straightness(res, args.out / "straightness.png", note=note)
    plot_inversion(res, args.out / "inversion.png", note=note)
    print((FAST_NOTE + "\n" if args.fast else "") + format_table(res.metrics))
    print(f"total {res.metrics['seconds']['total']:.1f} s, peak RSS {peak_rss_gb():.2f} GB; wrote metrics.json, samples.npz, "
          f"samples.png, trajectories.png, straightness.png, inversion.png to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
