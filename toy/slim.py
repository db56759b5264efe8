"""python -m toy slim: how small can a one-step student be? SlimFlow's two steps against plain reflow + distillation.

Trains the 1-RF of `python -m toy` (the full-width MLP) on a dataset with a Gaussian source (8gaussians by default:
SlimFlow's noise annealing needs one), simulates its reflow pairs once, then for each width in WIDTHS trains from
scratch, on the same pairs and the same number of gradient steps,
    plain     reflow (Eq. (1) on the pairs) -> the small 2-RF; its own pairs -> one-step distillation (Algorithm 1)
    slimflow  annealing reflow -> the small 2-RF; flow-guided distillation from it (rectflow/slimflow.py)
and scores one-step W2 and the smallest mode share of each student (and of each small 2-RF's one Euler step) on the
evaluation sets of `python -m toy`. Costs: plain simulates its 2-RF's pairs (n_pairs x 4 pair_steps evaluations of
the small net); slimflow evaluates the small 2-RF once per sample of each distillation step.
"""
import copy

import rectflow as rf
from rectflow.slimflow import train_annealed_reflow, train_flow_guided

from .datasets import standard_normal
from .experiment import Bench

WIDTHS = (128, 64, 32, 16)          # hidden units of each of the MLP's layers; 128 is the teacher's


def gaussian_source(ds):
    """Whether the dataset's source is N(0, I) (SlimFlow's annealing assumes it)."""
    return ds.sample0 is standard_normal


def run_slim(cfg, widths=WIDTHS):
    """The record: {"teacher": the 1-RF's W2 at one step, "widths": {w: {"params", "plain": {...}, "slimflow": {...}}},
    "w2_floor", "seconds"}; each method's entry has the 2-RF's and the student's one-step W2 and smallest mode share,
    and its seconds."""
    b = Bench(cfg)
    if not gaussian_source(b.ds):
        raise ValueError(f"dataset {cfg.dataset!r} has a non-Gaussian source; SlimFlow's annealing needs N(0, I)")
    teacher = b.new_model()
    b.timed("1-rf", lambda: rf.train_flow(teacher, rf.independent_coupling(b.ds.sample0, b.ds.sample1), cfg.iters,
                                          seed=cfg.seed, desc="1-rf", **b.fit_kw))
    z0, z1 = b.pairs(teacher, 1, "pairs of the 1-rf")
    z = b.z_eval.to(b.dev)

    def one_step(model):
        x = rf.euler(model, z, 1).cpu()
        return {"w2": rf.w2(x[:cfg.n_eval], b.target[:cfg.n_eval]),
                "min_mode_share": min(rf.mode_shares(x, b.ds.modes)) if b.ds.modes else None}

    out = {"teacher": one_step(teacher), "teacher_width": cfg.hidden, "widths": {}}
    kw = dict(batch_size=cfg.batch_size, lr=cfg.lr, progress=cfg.progress)
    for w in widths:
        flow = b.new_model(hidden=w)
        b.timed(f"plain-{w}", lambda: rf.train_flow(flow, rf.pairs_coupling(z0, z1), cfg.iters, seed=cfg.seed + 1,
                                                    desc=f"reflow, width {w}", **kw))
        student = copy.deepcopy(flow)
        p0, p1 = b.pairs(flow, 10 + w, f"pairs of the width-{w} 2-rf")
        b.timed(f"plain-{w}-distill", lambda: rf.train_student(student, rf.pairs_coupling(p0, p1), cfg.distill_iters,
                                                               seed=cfg.seed + 99, desc=f"distill, width {w}", **kw))
        plain = {"2-rf": one_step(flow), "student": one_step(student)}

        flow = b.new_model(hidden=w)
        b.timed(f"slim-{w}", lambda: train_annealed_reflow(flow, z0, z1, cfg.iters, seed=cfg.seed + 1,
                                                           desc=f"annealing reflow, width {w}", **kw))
        student = copy.deepcopy(flow)
        b.timed(f"slim-{w}-distill", lambda: train_flow_guided(student, flow, z0, z1, cfg.distill_iters,
                                                               seed=cfg.seed + 99,
                                                               desc=f"flow-guided distillation, width {w}", **kw))
        slim = {"2-rf": one_step(flow), "student": one_step(student)}
        out["widths"][w] = {"params": sum(p.numel() for p in flow.parameters()), "plain": plain, "slimflow": slim}
    secs = b.finish().metrics["seconds"]
    return {**out, "w2_floor": b.res.metrics["w2_floor"], "seconds": secs}
