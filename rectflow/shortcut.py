"""Shortcut models (Frans, Hafner, Levine & Abbeel 2024, "One Step Diffusion via Shortcut Models",
arXiv 2410.12557), in this project's time: noise X_0 at t = 0, data X_1 at t = 1.

One network s(x, t, d) is told the step size d it will be used with; x + d s(x, t, d) is its step.
At d = 0 it is the flow's velocity, trained by flow matching (Eq. (1)); larger steps are trained by
self-consistency: one step of 2d is two steps of d (their Eq. 5),

    s(x_t, t, 2d) = sg( (s(x_t, t, d) + s(x'_{t+d}, t + d, d)) / 2 ),   x'_{t+d} = x_t + d s(x_t, t, d),

for 2d in {1/M, 2/M, 4/M, ..., 1} (M = 128 by default), t on the grid of multiples of 2d so that
t + 2d <= 1. The finest level 2d = 1/M is made of two half steps of the flow itself (d = 1/(2M) taken
with s(., ., 0)), so every level rests on flow matching. A fraction of each batch (1/4, as the paper)
trains self-consistency, the rest flow matching. N-step sampling (N a power of 2, at most M): d = 1/N,
x <- x + d s(x, t, d).

The network is called as s(x, t, d), i.e. a model v(x, t, cond) with cond = d.
"""
import math

import torch

from .flow import append_dims, interpolate, velocity_target
from .ode import euler
from .train import fit_coupling


def levels(m=128):
    """The step sizes with a self-consistency target: 1/M, 2/M, ..., 1 (M a power of two)."""
    k = int(round(math.log2(m)))
    if 2 ** k != m:
        raise ValueError(f"M must be a power of two, got {m}")
    return [2.0 ** -j for j in range(k, -1, -1)]


def shortcut_target(model, xt, t, d, finest):
    """sg((s(x_t, t, d) + s(x', t + d, d)) / 2) with x' = x_t + d s(x_t, t, d): the target of s(., ., 2d).
    A d below the finest level is queried as d = 0 (the flow's velocity) and stepped by d."""
    with torch.no_grad():
        d_in = torch.where(d < finest, torch.zeros_like(d), d)
        s1 = model(xt, t, d_in)
        s2 = model(xt + append_dims(d, xt) * s1, t + d, d_in)
    return (s1 + s2) / 2


def shortcut_loss(model, x0, x1, cond=None, generator=None, m=128, consistency_fraction=0.25):
    """Flow matching at d = 0 on most of the batch; self-consistency at random levels on the rest."""
    if cond is not None:
        raise ValueError("shortcut_loss: the model's conditioning slot carries d; class conditions are not supported")
    n, lv = x0.shape[0], levels(m)
    n_sc = int(round(n * consistency_fraction))
    # flow matching: s(X_t, t, 0) ~ X_1 - X_0
    t = torch.rand(n - n_sc, generator=generator).to(x0.device, x0.dtype)
    fm = model(interpolate(x0[n_sc:], x1[n_sc:], t), t, torch.zeros_like(t))
    loss_fm = (fm - velocity_target(x0[n_sc:], x1[n_sc:])).pow(2).sum()
    if n_sc == 0:
        return loss_fm / fm.numel()
    # self-consistency: a level 2d, a grid time t = j 2d, the target from two steps of d
    two_d = torch.tensor(lv, dtype=x0.dtype)[torch.randint(len(lv), (n_sc,), generator=generator)]
    j = torch.floor(torch.rand(n_sc, generator=generator) / two_d)              # t + 2d <= 1
    two_d, t = two_d.to(x0.device), (j * two_d).to(x0.device, x0.dtype)
    xt = interpolate(x0[:n_sc], x1[:n_sc], t)
    target = shortcut_target(model, xt, t, two_d / 2, lv[0])
    sc = model(xt, t, two_d)
    return ((sc - target).pow(2).sum() + loss_fm) / (sc.numel() + fm.numel())


def train_shortcut(model, coupling, iters, batch_size=1024, seed=0, m=128, consistency_fraction=0.25, desc="shortcut",
                   **fit_kwargs):
    def loss(mdl, x0, x1, cond, gen):
        return shortcut_loss(mdl, x0, x1, cond, gen, m, consistency_fraction)
    return fit_coupling(model, coupling, loss, iters, batch_size, seed, desc=desc, **fit_kwargs)


def shortcut_sample(model, x0, steps=1):
    """N steps of size d = 1/N, each told its size: x <- x + d s(x, t, d), i.e. Euler (rectflow.ode) on
    the field s(x, t, 1/N)."""
    return euler(lambda x, t: model(x, t, torch.full_like(t, 1 / steps)), x0, steps)
