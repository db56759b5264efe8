"""python -m toy solvers: is reflow worth its training, or would a better solver do?

Trains what `python -m toy` trains (1-RF, 2-RF, the one-step student, same seed and budget), then scores W2 at 1, 2,
4 and 8 model evaluations (NFE) of
    the 1-RF with Euler (= DDIM on this path), Heun and RK4 on uniform steps (NFE / 2 and NFE / 4 steps),
             DPM-Solver++(2M) (from t = 1e-3, as diffusers) and DEIS's tAB2 (rectflow/solvers.py, one evaluation a
             step),
             and Euler, DPM-Solver++(2M) and tAB2 on a searched grid;
    the 2-RF with Euler, and the student's one step,
on the evaluation sets of `python -m toy` (the same numbers its table shows for Euler).

The searched grid: for each solver and NFE, the time shift (`shifted_grid`) among SHIFTS with the lowest W2 on the
validation split's noises and targets (other draws than the evaluation sets; 512 points a score), reported on the
evaluation sets. The costs beside it are the 2-RF's: its reflow pairs and training, in seconds and evaluations.
"""
import time

import rectflow as rf
from rectflow.solvers import ddim, deis_tab2, dpmpp_2m, shifted_grid

from .experiment import Bench, run

NFES = (1, 2, 4, 8)
SHIFTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)   # 1 is the uniform grid; > 1 moves steps to the noise end
CALIBRATION_POINTS = 512                               # (or n_eval, if fewer: a fast run)
# solver -> (its function on a grid, the grid's first time). DPM-Solver++(2M) starts at t = 1e-3 as diffusers' flow
# solver does: from t = 0, where lambda = -inf, its second step would be first order (at NFE 2 it would be Euler).
MULTISTEP = {"euler": (ddim, 0.0), "dpmpp_2m": (dpmpp_2m, 1e-3), "deis_tab2": (deis_tab2, 0.0)}


def runge_kutta(method, evals_per_step):
    """A uniform-step solver of rectflow/ode.py at a given NFE (None where NFE is not a multiple of its stages)."""
    return lambda v, z, nfe: rf.solve(v, z, nfe // evals_per_step, method) if nfe % evals_per_step == 0 else None


def uniform(name):
    solver, t0 = MULTISTEP[name]
    return lambda v, z, nfe: solver(v, z, shifted_grid(nfe, t0=t0))


# Euler through rectflow/ode.py, the sampler of `python -m toy` (the same steps as ddim on the uniform grid)
ROWS = {"euler": runge_kutta("euler", 1), "heun": runge_kutta("heun", 2), "rk4": runge_kutta("rk4", 4),
        "dpmpp_2m": uniform("dpmpp_2m"), "deis_tab2": uniform("deis_tab2")}


def search_shift(v, name, nfe, z, target):
    """The shift in SHIFTS whose grid gives solver `name` the lowest W2 from the calibration noises z to the
    calibration target, and every shift's score."""
    solver, t0 = MULTISTEP[name]
    scores = {s: rf.w2(solver(v, z, shifted_grid(nfe, s, t0)), target) for s in SHIFTS}
    return min(scores, key=scores.get), scores


def run_solvers(cfg):
    """The metrics record: {"w2": {row: {nfe: W2}}, "shift": {solver: {nfe: chosen shift}}, "search": every
    calibration score, "reflow_cost": the 2-RF's, "w2_floor", "seconds"}."""
    t0 = time.perf_counter()
    res = run(cfg)
    v, n = res.models["1-rf"], cfg.n_eval
    ev, cal = Bench(cfg), Bench(cfg, "validation")
    z, target = ev.z_eval.to(ev.dev), ev.target[:n]
    m = min(CALIBRATION_POINTS, n)
    zc, target_c = cal.z_eval[:m].to(ev.dev), cal.target[:m]

    def score(x):
        return rf.w2(x[:n].cpu(), target)

    w2 = {f"1-rf {name}": {k: score(x) for k in NFES if (x := row(v, z, k)) is not None}
          for name, row in ROWS.items()}
    shift, search = {}, {}
    for name, (solver, t0) in MULTISTEP.items():
        w2[f"1-rf {name}, searched grid"], shift[name], search[name] = {}, {}, {}
        for k in NFES[1:]:                                   # one step has one grid, [t0, 1]
            best, scores = search_shift(v, name, k, zc, target_c)
            shift[name][k], search[name][k] = best, scores
            w2[f"1-rf {name}, searched grid"][k] = score(solver(v, z, shifted_grid(k, best, t0)))
    w2["2-rf euler"] = {k: score(rf.euler(res.models["2-rf"], z, k)) for k in NFES}
    w2["2-rf-distilled (one step)"] = {1: score(rf.euler(res.models["2-rf-distilled"], z, 1))}
    secs = res.metrics["seconds"]
    return {"w2": w2, "shift": shift, "search": search, "w2_floor": res.metrics["w2_floor"],
            "reflow_cost": {"seconds": round(secs["pairs-1"] + secs["2-rf"], 1),
                            "pair_evaluations": cfg.n_pairs * cfg.pair_steps * 4,
                            "training_iterations": cfg.iters},
            "distill_cost": {"seconds": round(secs["pairs-2"] + secs["distill"], 1)},
            "seconds": round(time.perf_counter() - t0, 1)}
