"""The whole rectified-flow story on a 2D dataset:

    1-RF  --pairs-->  2-RF  (--pairs--> 3-RF ...)  --pairs-->  one-step distilled student

Each stage is scored by its straightness S(Z) and by the exact W2 distance of its N-step Euler
samples to fresh target samples, N in {1, 2, 4, 100}.
"""
import copy
import time
from dataclasses import asdict, dataclass, field

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


def evaluate(model, z0, target, cfg, steps, sampler=None):
    """W2 of N-step samples for each N in `steps` (Euler, or `sampler(model, z0, N)`), and the samples."""
    w2s, samples = {}, {}
    for n in steps:
        x = (rf.euler(model, z0, n) if sampler is None else sampler(model, z0, n)).cpu()
        samples[n] = x.numpy()
        w2s[str(n)] = rf.w2(x[:cfg.n_eval], target[:cfg.n_eval])
    return w2s, samples


def config_record(cfg):
    """The configuration as metrics.json records it (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


# The seed offset of each split's sets: far apart, so that no run's validation sets are another seed's evaluation sets.
SPLITS = {"evaluation": 1, "validation": 50_001}


class Bench:
    """What every toy experiment shares: the data, the fixed evaluation sets, the scoring of a
    model (W2 of its N-step Euler samples, straightness and trajectories of a flow), reflow pairs,
    and the clock. `run` below and `toy/compare.py` are written on it."""

    def __init__(self, cfg, split="evaluation"):
        cfg.validate()
        self.cfg, self.ds, self.dev = cfg, get_dataset(cfg.dataset), torch.device(cfg.device)
        gen = torch.Generator().manual_seed(cfg.seed + SPLITS[split])
        self.noise_offset = SPLITS[split] - SPLITS["evaluation"]   # samplers' own noise seeds, apart per split too
        # Quasi-Monte Carlo evaluation sets (see toy/datasets.py), so that W2 measures the model and
        # not the luck of the draw. W2 uses the first n_eval points (a power of 2 suits Sobol).
        # split="validation" draws other sets, which a search may score on (toy/tuning.py).
        self.z_eval = self.ds.sample0(cfg.n_samples, gen, qmc=True)
        self.target = self.ds.sample1(cfg.n_samples, gen, qmc=True)
        target_b = self.ds.sample1(cfg.n_samples, gen, qmc=True)
        self.res = Result(cfg)
        self.res.samples["target"] = self.target.numpy()
        self.secs = {}
        self.stages = self.res.metrics.setdefault("stages", {})
        # Two independent target sets are not at W2 = 0: this is the floor of the estimate.
        self.res.metrics.update(dataset=cfg.dataset, seed=cfg.seed,
                                w2_floor=rf.w2(self.target[:cfg.n_eval], target_b[:cfg.n_eval]))
        self.fit_kw = dict(batch_size=cfg.batch_size, lr=cfg.lr, progress=cfg.progress)

    def new_model(self, extra=0, hidden=None):
        """A fresh velocity MLP, initialised from the run's seed (the same weights every time); `extra`
        inputs for MeanFlow's r or a shortcut model's d; `hidden` units other than the run's (SlimFlow's students)."""
        torch.manual_seed(self.cfg.seed)
        return VelocityMLP(hidden=hidden or self.cfg.hidden, depth=self.cfg.depth, extra=extra).to(self.dev)

    def timed(self, key, fn):
        t0 = time.perf_counter()
        out = fn()
        self.secs[key] = time.perf_counter() - t0
        return out

    def score(self, name, model, steps, flow=True, sampler=None, velocity=None):
        """W2 at each step count in `steps` (Euler, or `sampler(model, z, N)`); for a flow (or a model with
        a `velocity` v(x, t)) also S(Z) and 300 Euler trajectories."""
        t0 = time.perf_counter()
        z = self.z_eval.to(self.dev)
        w2s, samples = evaluate(model, z, self.target, self.cfg, steps, sampler)
        entry = {"w2": w2s}
        v = model if velocity is None and flow else velocity
        if v is not None:
            entry = {"straightness": rf.straightness(v, z, self.cfg.straightness_steps), **entry}
            self.res.trajectories[name] = rf.euler(v, z[:300], self.cfg.straightness_steps,
                                                   return_trajectory=True).cpu().numpy()
        self.stages[name] = entry
        self.res.samples.update({f"{name}_{n}": x for n, x in samples.items()})
        self.res.models[name] = model
        self.secs["eval"] = self.secs.get("eval", 0.0) + time.perf_counter() - t0
        return entry

    def pairs(self, model, k, desc):
        """Reflow pairs (Z_0, ODE_v(Z_0)) of a flow, from n_pairs fresh draws seeded by k (RK4)."""
        z0 = self.ds.sample0(self.cfg.n_pairs, torch.Generator().manual_seed(self.cfg.seed + 100 + k))
        return self.timed(f"pairs-{k}", lambda: rf.generate_pairs(model, z0, self.cfg.pair_steps, "rk4",
                                                                  progress=self.cfg.progress, desc=desc))

    def finish(self):
        cfg = self.cfg
        self.res.metrics["seconds"] = {k: round(v, 2) for k, v in self.secs.items()}
        self.res.metrics["config"] = config_record(cfg)
        return self.res


def run(cfg: Config) -> Result:
    b = Bench(cfg)
    # Stage 1: 1-rectified flow on the independent coupling (X_0, X_1), Eq. (1).
    model = b.new_model()
    b.timed("1-rf", lambda: rf.train_flow(model, rf.independent_coupling(b.ds.sample0, b.ds.sample1),
                                          cfg.iters, seed=cfg.seed, desc="1-rf", **b.fit_kw))
    b.score("1-rf", model, cfg.steps)

    # Reflow: the (k+1)-RF rectifies the coupling (Z_0, Z_1) of the k-RF (Algorithm 1).
    # Each new flow starts from the weights of the previous one (as InstaFlow does).
    for k in range(1, cfg.reflows + 1):
        z0, z1 = b.pairs(model, k, f"pairs of {k}-rf")
        model = copy.deepcopy(model)
        b.timed(f"{k + 1}-rf", lambda: rf.train_flow(model, rf.pairs_coupling(z0, z1), cfg.iters,
                                                     seed=cfg.seed + k, desc=f"{k + 1}-rf", **b.fit_kw))
        b.score(f"{k + 1}-rf", model, cfg.steps)

    # Distillation of the last flow into one Euler step, initialised from it (Algorithm 1).
    last = f"{cfg.reflows + 1}-rf"
    z0, z1 = b.pairs(model, cfg.reflows + 1, f"pairs of {last}")
    student = copy.deepcopy(model)
    b.timed("distill", lambda: rf.train_student(student, rf.pairs_coupling(z0, z1), cfg.distill_iters, k=1,
                                                seed=cfg.seed + 99, desc="distill", **b.fit_kw))
    b.score(f"{last}-distilled", student, (1,), flow=False)

    b.res.metrics["inversion"] = inversion(b.res.models, b.target[:cfg.n_eval].to(b.dev), cfg.steps)
    return b.finish()


def inversion(models, x1, steps):
    """Invert, then generate: data -> noise (backwards Euler) -> data, with N steps each way, for each flow
    "<k>-rf" and the "<k>-rf-distilled" student in `models`. The one-step student has no backward map of its
    own: it is inverted with N backward steps of the flow it was distilled from, then regenerated in one step."""
    inv = {}
    for name, m in models.items():
        flow = name.endswith("-rf")
        back = m if flow else models[name.removesuffix("-distilled")]
        inv[name] = {str(n): rf.reconstruction_error(back, m, x1, n, None if flow else 1) for n in steps}
    return inv
