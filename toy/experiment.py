"""The whole rectified-flow story on a 2D dataset:

    1-RF  --pairs-->  2-RF  (--pairs--> 3-RF ...)  --pairs-->  one-step distilled student

Each stage is scored by its straightness S(Z) and by the exact W2 distance of its N-step Euler
samples to fresh target samples, N in {1, 2, 4, 100}.
"""
import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

import rectflow as rf
from rectflow.checks import positive_int

from .datasets import get_dataset
from .model import VelocityMLP


@dataclass
class Config:
    dataset: str = "paper"
    seed: int = 0
    iters: int = 3000             # training iterations of every flow (1-RF, each reflow)
    distill_iters: int = 3000     # training iterations of the one-step student
    reflows: int = 1              # 1 -> 2-RF, 2 -> 3-RF, ...
    batch_size: int = 1024
    lr: float = 3e-3
    hidden: int = 128             # width and number of hidden layers of the velocity MLP
    depth: int = 4
    n_pairs: int = 20000          # reflow pairs simulated from each flow
    pair_steps: int = 25          # RK4 steps per pair (100 velocity evaluations)
    n_samples: int = 2048         # samples kept in samples.npz per stage and step count
    n_eval: int = 1024            # points used for the exact W2 (an O(n^3) assignment)
    steps: tuple = (1, 2, 4, 100)
    straightness_steps: int = 100
    device: str = "cpu"
    progress: bool = True

    @classmethod
    def fast(cls, **kw):
        """A smoke run of seconds: every stage runs, nothing is expected to converge."""
        base = dict(iters=150, distill_iters=150, n_pairs=2048, pair_steps=10, n_eval=256)
        return cls(**{**base, **kw})

    def validate(self):
        get_dataset(self.dataset)
        for name in ("iters", "distill_iters", "reflows", "batch_size", "n_pairs", "pair_steps",
                     "n_samples", "n_eval", "straightness_steps", "hidden", "depth"):
            positive_int(getattr(self, name), name)
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.steps):
            raise ValueError(f"steps must be positive integers, got {self.steps!r}")
        if self.n_eval > self.n_samples:
            raise ValueError(f"n_eval ({self.n_eval}) cannot exceed n_samples ({self.n_samples})")


@dataclass
class Result:
    config: Config
    models: dict = field(default_factory=dict)    # stage -> velocity model
    metrics: dict = field(default_factory=dict)   # as in metrics.json
    samples: dict = field(default_factory=dict)   # "target" and "<stage>_<steps>" -> [n, 2]
    trajectories: dict = field(default_factory=dict)  # stage -> [steps + 1, m, 2]


def evaluate(model, z0, target, cfg, steps):
    """W2 of N-step Euler samples for each N in `steps`, and the samples themselves."""
    w2s, samples = {}, {}
    for n in steps:
        x = rf.euler(model, z0, n).cpu()
        samples[n] = x.numpy()
        w2s[str(n)] = rf.w2(x[:cfg.n_eval], target[:cfg.n_eval])
    return w2s, samples


def run(cfg: Config) -> Result:
    cfg.validate()
    torch.manual_seed(cfg.seed)
    ds, dev = get_dataset(cfg.dataset), torch.device(cfg.device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    # Quasi-Monte Carlo evaluation sets (see toy/datasets.py), so that W2 measures the model and
    # not the luck of the draw. W2 uses the first n_eval points (a power of 2 suits Sobol).
    z_eval = ds.sample0(cfg.n_samples, gen, qmc=True)
    target = ds.sample1(cfg.n_samples, gen, qmc=True)
    target_b = ds.sample1(cfg.n_samples, gen, qmc=True)
    res = Result(cfg)
    res.samples["target"] = target.numpy()
    secs = {}
    stages = res.metrics.setdefault("stages", {})
    # Two independent target sets are not at W2 = 0: this is the floor of the estimate.
    res.metrics.update(dataset=cfg.dataset, seed=cfg.seed,
                       w2_floor=rf.w2(target[:cfg.n_eval], target_b[:cfg.n_eval]))

    def score(name, model, steps):
        t0 = time.perf_counter()
        w2s, samples = evaluate(model, z_eval.to(dev), target, cfg, steps)
        entry = {"w2": w2s}
        if name.endswith("-rf"):
            entry = {"straightness": rf.straightness(model, z_eval.to(dev), cfg.straightness_steps), **entry}
            res.trajectories[name] = rf.euler(model, z_eval[:300].to(dev), cfg.straightness_steps,
                                              return_trajectory=True).cpu().numpy()
        stages[name] = entry
        res.samples.update({f"{name}_{n}": x for n, x in samples.items()})
        res.models[name] = model
        secs["eval"] = secs.get("eval", 0.0) + time.perf_counter() - t0

    def timed(key, fn):
        t0 = time.perf_counter()
        out = fn()
        secs[key] = time.perf_counter() - t0
        return out

    fit_kw = dict(batch_size=cfg.batch_size, lr=cfg.lr, progress=cfg.progress)
    # Stage 1: 1-rectified flow on the independent coupling (X_0, X_1), Eq. (1).
    model = VelocityMLP(hidden=cfg.hidden, depth=cfg.depth).to(dev)
    timed("1-rf", lambda: rf.train_flow(model, rf.independent_coupling(ds.sample0, ds.sample1),
                                        cfg.iters, seed=cfg.seed, desc="1-rf", **fit_kw))
    score("1-rf", model, cfg.steps)

    def pairs_of(model, k):
        z0 = ds.sample0(cfg.n_pairs, torch.Generator().manual_seed(cfg.seed + 100 + k))
        return timed(f"pairs-{k}", lambda: rf.generate_pairs(model, z0, cfg.pair_steps, "rk4",
                                                             progress=cfg.progress, desc=f"pairs of {k}-rf"))

    # Reflow: the (k+1)-RF rectifies the coupling (Z_0, Z_1) of the k-RF (Algorithm 1).
    # Each new flow starts from the weights of the previous one (as InstaFlow does).
    for k in range(1, cfg.reflows + 1):
        z0, z1 = pairs_of(model, k)
        model = copy.deepcopy(model)
        timed(f"{k + 1}-rf", lambda: rf.train_flow(model, rf.pairs_coupling(z0, z1), cfg.iters,
                                                   seed=cfg.seed + k, desc=f"{k + 1}-rf", **fit_kw))
        score(f"{k + 1}-rf", model, cfg.steps)

    # Distillation of the last flow into one Euler step, initialised from it (Algorithm 1).
    last = f"{cfg.reflows + 1}-rf"
    z0, z1 = pairs_of(model, cfg.reflows + 1)
    student = copy.deepcopy(model)
    timed("distill", lambda: rf.train_student(student, rf.pairs_coupling(z0, z1), cfg.distill_iters, k=1,
                                              seed=cfg.seed + 99, desc="distill", **fit_kw))
    score(f"{last}-distilled", student, (1,))
    res.metrics["seconds"] = {k: round(v, 2) for k, v in secs.items()}
    res.metrics["config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    return res
