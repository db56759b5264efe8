"""The few-step families on the comparison bench (`python -m toy compare`): how each is trained on the
toy, sampled with N steps, and what it costs. The objectives are rectflow's (one file each).

    method       family (rectflow/)                 starts from   gradient steps            N-step sampler
    cd           consistency distillation           1-rf          1-rf's + distill_iters    multistep consistency
                 (consistency.py; teacher 1-rf)                                             sampling, fresh noise
    ct           consistency training               fresh         iters + distill_iters     the same
    meanflow     MeanFlow (meanflow.py)             fresh         iters + distill_iters     N average-velocity steps
    shortcut     shortcut model (shortcut.py)       fresh         iters + distill_iters     N steps told d = 1/N
                                                                                            (N a power of 2 <= 128)
    progressive  progressive distillation           1-rf          1-rf's + distill_iters    the N-step student of
                 (progressive.py; 16 -> 8 -> 4 -> 2 -> 1, distill_iters / 4 per round)      its round (N <= 8)
    dmd2, sid    distribution matching              1-rf          1-rf's + distill_iters    one step
                 (distribution_matching.py; teacher 1-rf;         (generator and fake
                 generator and fake velocity start from it)        velocity together)

Every method gets the budget of 1-rf + its student (2 x 3000 gradient steps by default), the same MLP
(with one more input for MeanFlow's r and the shortcut's d) and batch; the learning rate and main knob are
each method's search's (TUNED in toy/compare.py). CD is the consistency
paper's: an EMA copy of the weights as the target (decay 0.95), a fixed grid of 18 intervals, the squared
distance. CT has two recipes: iCT's, the default (Song & Dhariwal 2023; rectflow/consistency.py: the
online weights as the target, the Karras grid on its doubling curriculum, lognormal intervals weighted
by lambda, the pseudo-Huber distance), and the consistency paper's (an EMA target, the growing uniform
grid, the squared distance), which its search chose (TUNED). MeanFlow and the shortcut model also have
a velocity (u(x, t, t), s(x, t, 0)): their straightness is measured on it. DMD2 and SiD split their
distill_iters gradient steps between the generator and the fake velocity in their papers' ratios (1:5 and 1:1).
"""
import copy

import torch

import rectflow as rf
from rectflow.consistency import consistency_sample, train_consistency
from rectflow.distribution_matching import RECIPES, train_distribution_matching
from rectflow.meanflow import meanflow_sample, train_meanflow
from rectflow.progressive import train_progressive
from rectflow.shortcut import shortcut_sample, train_shortcut

from .experiment import evaluate

# name: (parent flow or None, label for the table, what it needs beyond a flow)
FEW_STEP = {
    "cd": ("1-rf", "CD (1-rf)", "a teacher flow, an EMA copy"),
    "ct": (None, "CT", "an EMA copy"),
    "meanflow": (None, "MeanFlow", "a jvp per batch"),
    "shortcut": (None, "shortcut", "2 extra forward passes per self-consistency sample"),
    "progressive": ("1-rf", "PD (1-rf)", "a teacher flow per round, 4 rounds"),
    "dmd2": ("1-rf", "DMD2 (1-rf)", "a teacher flow, a fake velocity (5 of its steps per generator step)"),
    "sid": ("1-rf", "SiD (1-rf)", "a teacher flow, a fake velocity, gradients through both"),
}
CD_INTERVALS, EMA, PD_START, SHORTCUT_M = 18, 0.95, 16, 128
DM_LR = 3e-4      # distribution matching's default constant learning rate, small as in both papers (searched: TUNED)


def train_few_step(name, b, teacher, real=None):
    """Train method `name` on the bench `b` (teacher: the parent flow, or None). Returns (model, (gradient steps
    of this stage, teacher evaluations, jvp calls), progressive's rounds). real: distribution matching's
    v_real when it is not the teacher whose weights start the generator and the fake velocity (the exact flow of
    bench/dm_teacher_ablation.py)."""
    cfg, s = b.cfg, b.cfg.settings.get(name, {})          # s: the searched settings (toy/tuning.py), if any
    fit_kw = {**b.fit_kw, "lr": s.get("lr", cfg.lr)}
    knob = {k: v for k, v in s.items() if k != "lr"}      # the method's main knob: a keyword of its trainer
    draw = rf.independent_coupling(b.ds.sample0, b.ds.sample1)
    budget = cfg.iters + cfg.distill_iters
    n = cfg.batch_size
    rounds = {}
    if name == "cd":
        model = copy.deepcopy(teacher)
        train_consistency(model, draw, cfg.distill_iters, teacher=teacher, n_intervals=CD_INTERVALS,
                          seed=cfg.seed + 400, desc=name, **{"ema": EMA, **knob}, **fit_kw)
        cost = (cfg.distill_iters, cfg.distill_iters * n, 0)
    elif name == "ct":
        model = b.new_model()
        ict = knob.get("ict", True)       # iCT's recipe, whose target is the online weights; or the paper's, an EMA
        train_consistency(model, draw, budget, ict=ict, ema=0.0 if ict else EMA, seed=cfg.seed + 401, desc=name,
                          **fit_kw)
        cost = (budget, 0, 0)
    elif name == "meanflow":
        model = b.new_model(extra=1)
        train_meanflow(model, draw, budget, seed=cfg.seed + 402, desc=name, **knob, **fit_kw)
        cost = (budget, 0, budget)
    elif name == "shortcut":
        model = b.new_model(extra=1)
        train_shortcut(model, draw, budget, m=SHORTCUT_M, seed=cfg.seed + 403, desc=name, **knob, **fit_kw)
        cost = (budget, 0, 0)
    elif name == "progressive":
        model = copy.deepcopy(teacher)
        start = knob.get("start_steps", PD_START)
        n_rounds = start.bit_length() - 1                     # start -> start / 2 -> ... -> 1
        per_round = max(1, cfg.distill_iters // n_rounds)
        train_progressive(model, draw, per_round, start, seed=cfg.seed + 404, desc=name,
                          on_round=lambda steps, m: rounds.__setitem__(steps, copy.deepcopy(m)), **fit_kw)
        cost = (n_rounds * per_round, n_rounds * per_round * n * 2, 0)
    elif name in ("dmd2", "sid"):
        model, fake = copy.deepcopy(teacher), copy.deepcopy(teacher)
        gen_steps = max(1, cfg.distill_iters // (1 + knob.get("fake_updates", RECIPES[name]["fake_updates"])))
        out = train_distribution_matching(model, teacher if real is None else real, fake, b.ds.sample0, gen_steps,
                                          method=name, lr=s.get("lr", DM_LR), batch_size=n, seed=cfg.seed + 405,
                                          desc=name, progress=cfg.progress, **knob)
        cost = (out["generator_steps"] + out["fake_steps"], out["teacher_evals"], 0)
    else:
        raise ValueError(f"unknown few-step method {name!r}: {', '.join(FEW_STEP)}")
    return model, cost, rounds


def score_few_step(name, b, model, rounds):
    """W2 at the step counts each method can take (its own N-step rule), straightness where it has a velocity."""
    steps = b.cfg.steps
    if name in ("cd", "ct"):
        def sampler(m, z, k):
            gen = torch.Generator().manual_seed(b.cfg.seed + 300 + k + b.noise_offset)
            return consistency_sample(m, z, k, generator=gen, source=b.ds.sample0)
        return b.score(name, model, steps, flow=False, sampler=sampler)
    if name == "meanflow":
        return b.score(name, model, steps, sampler=meanflow_sample, velocity=lambda x, t: model(x, t, t))
    if name == "shortcut":
        powers = tuple(k for k in steps if k <= SHORTCUT_M and k & (k - 1) == 0)
        return b.score(name, model, powers, sampler=shortcut_sample,
                       velocity=lambda x, t: model(x, t, torch.zeros_like(t)))
    if name in ("dmd2", "sid"):
        return b.score(name, model, (1,), flow=False)                    # a one-step generator
    entry = b.score(name, model, (1,), flow=False)                       # progressive: the final student...
    z = b.z_eval.to(b.dev)
    for k, student in sorted(rounds.items()):                            # ...and each round's, at its N
        if k > 1 and k in steps:
            w2s, samples = evaluate(student, z, b.target, b.cfg, (k,))
            entry["w2"].update(w2s)
            b.res.samples.update({f"{name}_{n}": x for n, x in samples.items()})
    entry["w2"] = dict(sorted(entry["w2"].items(), key=lambda kv: int(kv[0])))
    return entry
