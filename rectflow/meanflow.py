"""MeanFlow (Geng, Deng, Bai, Kolter & He 2025, "Mean Flows for One-step Generative Modeling",
arXiv 2505.13447), in this project's time: noise X_0 at t = 0, data X_1 at t = 1.

Instead of the instantaneous velocity v(z, t), a network learns the average velocity over a span,
from the current time t (where z is) to a later time r >= t:

    u(Z_t, t, r) = 1 / (r - t) int_t^r v(Z_s, s) ds,     so   Z_r = Z_t + (r - t) u(Z_t, t, r).

Differentiating (r - t) u(Z_t, t, r) = int_t^r v ds in t gives the MeanFlow identity (their Eq. 6,
written in this time direction)

    u(Z_t, t, r) = v(Z_t, t) + (r - t) d/dt u(Z_t, t, r),
    d/dt u = (du/dz) v + du/dt,   a Jacobian-vector product with tangent (v, 1, 0) on (z, t, r).

Training regresses u_theta on that right-hand side with a stop-gradient, v replaced by the pair's
velocity X_1 - X_0 as in flow matching:

    L = E || u_theta(X_t, t, r) - sg( (X_1 - X_0) + (r - t) jvp(u_theta, (X_t, t, r), (X_1 - X_0, 1, 0)) ) ||^2

At r = t this is the rectified-flow loss (Eq. (1)); a fraction of the batch uses r = t. One step:
X_1 = X_0 + u(X_0, 0, 1); N steps along the grid t_k = k / N. On a straight flow v is constant along
each path, so u = v and one step is exact: MeanFlow learns in one network what reflow gets by
straightening.

The network is called as u(z, t, r), i.e. a model v(x, t, cond) with cond = r.
"""
import torch
from torch.func import jvp

from .flow import append_dims, interpolate, mse, velocity_target
from .ode import euler
from .train import fit_coupling


def sample_span(n, equal_fraction=0.75, generator=None, device=None):
    """(t, r) with 0 <= t <= r <= 1: two uniforms sorted; for `equal_fraction` of them r = t (flow
    matching; MeanFlow's best setting used 75%)."""
    a, b = torch.rand(n, generator=generator), torch.rand(n, generator=generator)
    t, r = torch.minimum(a, b), torch.maximum(a, b)
    same = torch.rand(n, generator=generator) < equal_fraction
    r = torch.where(same, t, r)
    return t.to(device), r.to(device)


def meanflow_target(model, xt, t, r, v):
    """(u, sg(v + (r - t) du/dt)): the network's u and its regression target, du/dt along (v, 1, 0)."""
    u, dudt = jvp(lambda z, tt, rr: model(z, tt, rr), (xt, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))
    return u, (v + append_dims(r - t, xt) * dudt).detach()


def meanflow_loss(model, x0, x1, cond=None, generator=None, equal_fraction=0.75, adaptive_p=0.0, adaptive_c=0.01):
    """The MeanFlow objective on a batch of pairs (conditioning other than r is not supported). With adaptive_p > 0,
    MeanFlow's adaptive weighting (their Sec. 4.3): each sample's squared error e = ||Delta||^2 (summed over
    coordinates) is weighted by sg(1 / (e + c)^p); p = 1 and c = 0.01 are the official code's defaults."""
    if cond is not None:
        raise ValueError("meanflow_loss: the model's conditioning slot carries r; class conditions are not supported")
    t, r = sample_span(x0.shape[0], equal_fraction, generator, x0.device)
    t, r = t.to(x0.dtype), r.to(x0.dtype)
    u, target = meanflow_target(model, interpolate(x0, x1, t), t, r, velocity_target(x0, x1))
    if not adaptive_p:
        return mse(u, target)
    err = (u - target).pow(2).flatten(1).sum(1)                     # e = ||Delta||^2 per sample
    return (err / (err.detach() + adaptive_c) ** adaptive_p).mean()  # w = sg(1 / (e + c)^p): large errors damped


def train_meanflow(model, coupling, iters, batch_size=1024, seed=0, equal_fraction=0.75, adaptive_p=0.0,
                   desc="meanflow", **fit_kwargs):
    def loss(m, x0, x1, cond, gen):
        return meanflow_loss(m, x0, x1, cond, gen, equal_fraction, adaptive_p)
    return fit_coupling(model, coupling, loss, iters, batch_size, seed, desc=desc, **fit_kwargs)


def meanflow_sample(model, x0, steps=1):
    """N average-velocity steps: Z_{t_{k+1}} = Z_{t_k} + (1/N) u(Z_{t_k}, t_k, t_{k+1}), i.e. Euler
    (rectflow.ode) on the field u(z, t, t + 1/N)."""
    return euler(lambda z, t: model(z, t, t + 1 / steps), x0, steps)
