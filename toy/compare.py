"""`python -m toy compare`: the ways to get a fast flow, side by side, on one budget.

Every method is trained through `rectflow/` with the same MLP, the same initial weights, batch and
number of gradient steps per training stage (`iters` for a flow, `distill_iters` for a student), each
with the learning rate and main knob of the same search (TUNED below; toy/tuning.py), on the same
dataset, and scored on the same quasi-random evaluation sets as
`python -m toy` (W2 of N-step Euler samples, straightness S along 100 Euler steps).

    method          interpolation  coupling                                   starts from
    1-rf            linear         independent                                 fresh weights
    1-rf-2x         linear         independent, 2 x iters (2-RF's budget)      fresh weights
    vp              vp             independent                                 fresh weights
    cosine          cosine         independent                                 fresh weights
    ot              linear         minibatch OT (exact, blocks of `ot_block`)  fresh weights
    2-rf            linear         pairs (Z_0, Z_1) of 1-rf (reflow)           1-rf
    ot-2-rf         linear         pairs of ot (reflow after minibatch OT)     ot
    <flow>-distilled one Euler step, distilled on the pairs of <flow>          <flow>
    cd, ct, meanflow, shortcut, progressive, dmd2, sid: the few-step families (toy/few_step.py)

The reflow and OT couplings are pools of `n_pairs` pairs (20 000 by default) drawn once, as
`python -m toy` does for reflow; the students of 1-rf and ot reuse the pairs their reflow was
trained on. 1-rf is the very run of `python -m toy` (same seeds, same numbers), and so are 2-rf and
2-rf-distilled at the default settings (settings={}), before their searched settings (TUNED) change
them. Each method's cost is what it takes from scratch, its ancestors included: gradient steps,
velocity evaluations spent simulating pairs (RK4: 4 per step), seconds of assignment, and
wall-clock seconds of all that (evaluation excluded); the few-step rows add the teacher evaluations
and jvp calls they spend. On a target with modes (paper, 8gaussians), each row also records the share of
its one-step samples nearest each mode, so that a dropped mode shows as a 0. --methods a,b,c runs a
subset (with the flows they start from).
"""
import copy
import time
from dataclasses import dataclass, field

import torch

import rectflow as rf
from rectflow.checks import positive_int

from .experiment import Bench, Config
from .few_step import FEW_STEP, score_few_step, train_few_step

# name: (interpolation path, coupling, parent). Coupling "independent" / "ot" trains a flow from
# fresh weights; "pairs" trains a flow on the parent's pairs (reflow); "distill" a one-step student.
METHODS = {
    "1-rf": ("linear", "independent", None),
    "1-rf-2x": ("linear", "independent", None),
    "vp": ("vp", "independent", None),
    "cosine": ("cosine", "independent", None),
    "ot": ("linear", "ot", None),
    "2-rf": ("linear", "pairs", "1-rf"),
    "ot-2-rf": ("linear", "pairs", "ot"),
    "1-rf-distilled": (None, "distill", "1-rf"),
    "ot-distilled": (None, "distill", "ot"),
    "2-rf-distilled": (None, "distill", "2-rf"),
}
# The settings each method's search chose (`--tune`, toy/tuning.py; the tables in docs/toy.md): method -> {lr, its
# knob}. Every method but 1-rf (the paper's recipe) has had its search; one left out would run with its defaults.
TUNED = {
    "1-rf-2x": {"lr": 3e-4, "time_sampler": "logit_normal"},
    "vp": {"lr": 3e-3, "time_sampler": "logit_normal"},
    "cosine": {"lr": 1e-3, "time_sampler": "logit_normal"},
    "ot": {"lr": 1e-2, "ot_block": 256},
    "2-rf": {"lr": 1e-2, "time_sampler": "uniform"},
    "ot-2-rf": {"lr": 1e-2, "time_sampler": "uniform"},
    "1-rf-distilled": {"lr": 1e-2, "loss": "pseudo_huber"},
    "ot-distilled": {"lr": 1e-2, "loss": "mse"},
    "2-rf-distilled": {"lr": 3e-3, "loss": "mse"},
    "cd": {"lr": 1e-2, "ema": 0.95},
    "ct": {"lr": 3e-4, "ict": False},
    "meanflow": {"lr": 1e-3, "equal_fraction": 0.5},
    "shortcut": {"lr": 1e-2, "consistency_fraction": 0.5},
    "progressive": {"lr": 1e-2, "start_steps": 16},
    "dmd2": {"lr": 1e-3, "fake_updates": 5},
    "sid": {"lr": 3e-4, "alpha": 1.0},
}
PAIR_SEEDS = {"1-rf": 1, "2-rf": 2, "ot": 3}      # the k of Bench.pairs (1-RF's and 2-RF's as in run)
ALL = list(METHODS) + list(FEW_STEP)


def parent_of(name):
    return METHODS[name][2] if name in METHODS else FEW_STEP[name][0]


def with_ancestors(names):
    """The methods to run for `names`: each with the flows it starts from, in the table's order."""
    need = set()
    for n in names:
        while n is not None:
            need.add(n)
            n = parent_of(n)
    return [n for n in ALL if n in need]


@dataclass
class CompareConfig(Config):
    steps: tuple = (1, 2, 4, 8, 16, 100)
    ot_block: int = 256           # rows per exact assignment of the minibatch-OT coupling
    methods: tuple = ()           # a subset of ALL (empty: all), run with their ancestors
    settings: dict = field(default_factory=lambda: copy.deepcopy(TUNED))   # method -> {lr, its knob}

    def validate(self):
        super().validate()
        positive_int(self.ot_block, "ot_block")
        unknown = [m for m in self.methods if m not in ALL]
        if unknown:
            raise ValueError(f"unknown method(s) {', '.join(unknown)}: choose from {', '.join(ALL)} (or all)")


LOSSES = {"mse": rf.mse, "pseudo_huber": rf.pseudo_huber}


def run_compare(cfg: CompareConfig, split="evaluation", ancestors=None):
    """Train and score the methods of `cfg` on the evaluation sets (or, for a search, the validation sets).
    `ancestors`: a dict kept across the runs of one search, whose runs differ only in the searched method's
    settings. The flows that method starts from are trained and scored in the first run and reused after."""
    b = Bench(cfg, split)
    ds, models = b.ds, b.res.models                          # Bench.score keeps every scored model
    pairs, pair_cost, cost = {}, {}, {}

    def account(name, parent, seconds, steps, assign=0.0):
        """Cost from scratch: the parent's, plus the parent's pairs if any, plus this stage's."""
        base = cost.get(parent, {"grad_steps": 0, "ode_evals": 0, "assign_s": 0.0, "cost_s": 0.0})
        sim_evals, sim_s = pair_cost.get(parent, (0, 0.0))
        cost[name] = {"grad_steps": base["grad_steps"] + steps, "ode_evals": base["ode_evals"] + sim_evals,
                      "assign_s": round(base["assign_s"] + assign, 2),
                      "cost_s": round(base["cost_s"] + sim_s + seconds, 2)}

    def pairs_of(name):
        """The pairs of a flow, simulated once (RK4) and shared by its reflow and its student."""
        if name not in pairs:
            t0 = time.perf_counter()
            pairs[name] = b.pairs(models[name], PAIR_SEEDS[name], f"pairs of {name}")
            pair_cost[name] = (cfg.n_pairs * cfg.pair_steps * 4, time.perf_counter() - t0)
        return pairs[name]

    run = with_ancestors(cfg.methods or ALL)
    ancestors = {} if ancestors is None else ancestors
    for name, (model, stage_cost, flow_pairs, flow_pair_cost) in ancestors.items():   # trained by an earlier run
        models[name], cost[name] = model, stage_cost
        if flow_pairs is not None:
            pairs[name], pair_cost[name] = flow_pairs, flow_pair_cost
    for name, (path, coupling, parent) in METHODS.items():
        if name not in run or name in ancestors:
            continue
        s = cfg.settings.get(name, {})
        fit_kw = {**b.fit_kw, "lr": s.get("lr", cfg.lr)}
        time_sampler = s.get("time_sampler", "uniform")
        if coupling in ("independent", "ot"):
            t0, assign = time.perf_counter(), 0.0
            model = b.new_model()
            iters = 2 * cfg.iters if name.endswith("-2x") else cfg.iters
            if coupling == "independent":
                draw = rf.independent_coupling(ds.sample0, ds.sample1)
            else:   # minibatch OT: independent draws, re-paired block by block by exact assignment
                gen = torch.Generator().manual_seed(cfg.seed + 200)
                z0, z1, assign = rf.minibatch_ot_pairs(ds.sample0(cfg.n_pairs, gen), ds.sample1(cfg.n_pairs, gen),
                                                       s.get("ot_block", cfg.ot_block))
                draw = rf.pairs_coupling(z0, z1)
            rf.train_flow(model, draw, iters, seed=cfg.seed, desc=name, path=path, time_sampler=time_sampler, **fit_kw)
            account(name, None, time.perf_counter() - t0, iters, assign=assign)
            b.score(name, model, cfg.steps)
            continue
        # reflow ("pairs": rectify the parent's coupling) or one-step distillation ("distill") of the
        # parent's pairs, both from the parent's weights
        draw = rf.pairs_coupling(*pairs_of(parent))
        t0 = time.perf_counter()
        model = copy.deepcopy(models[parent])
        if coupling == "pairs":
            iters = cfg.iters
            rf.train_flow(model, draw, iters, seed=cfg.seed + PAIR_SEEDS[parent], desc=name, path=path,
                          time_sampler=time_sampler, **fit_kw)
        else:
            iters = cfg.distill_iters
            rf.train_student(model, draw, iters, k=1, seed=cfg.seed + 99, desc=name,
                             loss_fn=LOSSES[s.get("loss", "mse")], **fit_kw)
        account(name, parent, time.perf_counter() - t0, iters)
        flow = coupling == "pairs"
        b.score(name, model, cfg.steps if flow else (1,), flow=flow)
    extra = {}
    for name in (n for n in FEW_STEP if n in run):
        parent = FEW_STEP[name][0]
        t0 = time.perf_counter()
        model, (steps, teacher_evals, jvps), rounds = train_few_step(name, b, models.get(parent))
        base = cost.get(parent, {"grad_steps": 0, "ode_evals": 0, "assign_s": 0.0, "cost_s": 0.0})
        cost[name] = {**base, "grad_steps": base["grad_steps"] + steps,
                      "cost_s": round(base["cost_s"] + time.perf_counter() - t0, 2)}
        extra[name] = {"teacher_evals": teacher_evals, "jvp_calls": jvps, "needs": FEW_STEP[name][2]}
        score_few_step(name, b, model, rounds)
    for name in (n for n in run if cfg.methods and n not in cfg.methods and n not in ancestors):
        ancestors[name] = (models[name], cost[name], pairs.get(name), pair_cost.get(name))
    res = b.finish()
    for name in (n for n in run if n in res.metrics["stages"]):
        path, coupling, parent = METHODS[name] if name in METHODS else ("linear", FEW_STEP[name][1], FEW_STEP[name][0])
        res.metrics["stages"][name].update(path=path, coupling=coupling, parent=parent, **cost[name],
                                           **extra.get(name, {}))
        if b.ds.modes:              # where the one-step samples land: a 0 is a dropped mode
            shares = rf.mode_shares(res.samples[f"{name}_1"][:cfg.n_eval], b.ds.modes)
            res.metrics["stages"][name]["mode_shares_1"] = [round(x, 4) for x in shares]
    res.metrics["best"] = best_per_steps(res.metrics["stages"], cfg.steps)
    return res


def best_per_steps(stages, steps):
    """For each number of Euler steps some method was scored at, the method with the lowest W2 (a student counts
    at 1 step)."""
    out = {}
    for n in steps:
        scored = {m: s["w2"][str(n)] for m, s in stages.items() if str(n) in s["w2"]}
        if scored:
            out[str(n)] = min(scored, key=scored.get)
    return out
