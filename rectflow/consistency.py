"""Consistency models (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models", arXiv 2303.01469),
in this project's time: noise X_0 at t = 0, data X_1 at t = 1, X_t = t X_1 + (1 - t) X_0.

A consistency function maps every point of an ODE trajectory to the trajectory's data end,
f(Z_t, t) = Z_1. Its boundary condition, f(x, 1) = x, is built into the parameterisation

    f_theta(x, t) = x + (1 - t) F_theta(x, t)                                     (Sec. 3, adapted)

with F_theta a velocity-shaped network, so f(x, 0) = x + F(x, 0) is one Euler step of F: a trained
flow is a sensible starting point. Training makes f agree with itself at neighbouring times of a grid
t_n = n / N (n = 0 .. N - 1), against an EMA copy theta^- of the weights:

    L = E[ d( f_theta(X_{t_n}, t_n),  f_{theta^-}(X_hat_{t_{n+1}}, t_{n+1}) ) ]     (Eq. 7 / Eq. 10)

- consistency distillation (CD): X_hat_{t_{n+1}} = X_{t_n} + (1/N) v_teacher(X_{t_n}, t_n), one Euler
  step of a teacher flow (here a trained 1-RF) from the interpolation's point;
- consistency training (CT): X_hat_{t_{n+1}} = X_{t_{n+1}} of the same pair (X_0, X_1), i.e. the step
  taken with the pair's own velocity X_1 - X_0, no teacher; N grows during training as in the original
  paper's schedule N(k) = ceil(sqrt(k / K ((s1 + 1)^2 - s0^2) + s0^2) - 1) + 1, s0 = 2, s1 = 150.
d is the squared L2 distance (the paper's L2); iCT's pseudo-Huber (`rectflow.flow.pseudo_huber`) can be
passed as `loss_fn`.

Sampling (Algorithm 1): X_1 = f(X_0, 0); for N steps, at t_k = k / N (k = 1 .. N - 1) the estimate is
sent back to time t_k with fresh noise, X_{t_k} = t_k X_1 + (1 - t_k) Z, and mapped again: X_1 = f(X_{t_k}, t_k).
Z must be a fresh draw from the source pi_0 (the paper's Gaussian; here `source`), or X_{t_k} lies off the
marginal f was trained on: N(0, I) noise on a mixture source makes more steps worse (docs/toy.md).
"""
import copy
import itertools
import math

import torch

from .checks import positive_int
from .flow import append_dims, call_velocity, data_end, interpolate, mse
from .train import ema_update, fit_coupling


def consistency_fn(model, x, t, cond=None):
    """f(x, t) = x + (1 - t) F(x, t), F's data-end estimate: f(x, 1) = x whatever F is (the boundary condition)."""
    return data_end(model, x, t, cond)


def ct_schedule(k, total, s0=2, s1=150):
    """The original CT discretisation N(k) (Song et al. 2023, Appendix C): from s0 + 1 ... to s1 + 1 grid
    points, so N(k) - 1 intervals."""
    return math.ceil(math.sqrt(k / total * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1


def consistency_loss(model, target_model, x0, x1, n_intervals, teacher=None, cond=None, generator=None,
                     loss_fn=mse, n=None):
    """d(f_theta(X_{t_n}, t_n), f_{theta^-}(X_hat_{t_{n+1}}, t_{n+1})) at a random grid index n (drawn
    from `generator` unless given, one per sample).

    With `teacher` (a velocity model): CD, X_hat one Euler step of the teacher. Without: CT, X_hat the
    same pair's interpolation at t_{n+1}."""
    positive_int(n_intervals, "n_intervals")
    if n is None:
        n = torch.randint(0, n_intervals, (x0.shape[0],), generator=generator)
    n = n.to(x0.device)
    t, t_next = n.to(x0.dtype) / n_intervals, (n + 1).to(x0.dtype) / n_intervals
    xt = interpolate(x0, x1, t)
    with torch.no_grad():
        if teacher is not None:                       # CD: one teacher ODE step, t_n -> t_{n+1}
            x_next = xt + append_dims(t_next - t, xt) * call_velocity(teacher, xt, t, cond)
        else:                                         # CT: the pair's own step, = X_{t_{n+1}}
            x_next = interpolate(x0, x1, t_next)
        target = consistency_fn(target_model, x_next, t_next, cond)
    pred = consistency_fn(model, xt, t, cond)
    return loss_fn(pred, target)


def train_consistency(model, coupling, iters, teacher=None, n_intervals=18, ema=0.95, batch_size=1024, seed=0,
                      ct_growth=True, loss_fn=mse, desc="consistency", **fit_kwargs):
    """CD (with `teacher`, on a fixed grid of `n_intervals`) or CT (without; the grid grows by
    `ct_schedule` when ct_growth) on batches of `coupling` (independent noise and data), with the distance
    `loss_fn` (iCT: `pseudo_huber`, and ema=0, the target the online weights themselves). Returns losses."""
    target = copy.deepcopy(model).requires_grad_(False)
    step = itertools.count()                          # fit_coupling calls the loss once per iteration

    def loss(m, x0, x1, cond, gen):
        i = next(step)
        ema_update(target.parameters(), m.parameters(), ema)   # theta^-: the EMA after step i - 1
        n = ct_schedule(i, iters) - 1 if teacher is None and ct_growth else n_intervals
        return consistency_loss(m, target, x0, x1, n, teacher, cond, gen, loss_fn)
    return fit_coupling(model, coupling, loss, iters, batch_size, seed, desc=desc, **fit_kwargs)


@torch.no_grad()
def consistency_sample(model, x0, steps=1, cond=None, generator=None, callback=None, source=None):
    """Multistep consistency sampling (Algorithm 1) on the grid t_k = k / steps, re-noising with
    `source(n, generator)`, fresh draws of pi_0 (default: standard normal noise, x0's shape).
    callback(k, X_1 estimate) runs after each of the `steps` evaluations."""
    positive_int(steps, "steps")
    x1 = consistency_fn(model, x0, 0.0, cond)
    for k in range(1, steps + 1):
        if callback:
            callback(k - 1, x1)
        if k == steps:
            return x1
        t = k / steps
        z = torch.randn(x0.shape, generator=generator) if source is None else source(len(x0), generator)
        z = z.to(x0.device, x0.dtype)
        x1 = consistency_fn(model, t * x1 + (1 - t) * z, t, cond)
