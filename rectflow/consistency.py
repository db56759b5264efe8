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

iCT (Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models", arXiv 2310.14189), `ict_loss`,
works in EDM's noise level sigma. In this project's time X_t = t (X_1 + sigma X_0), so sigma = (1 - t) / t and
t = 1 / (1 + sigma). Its recipe, each part below:
- the Karras grid sigma_1 < ... < sigma_N (rho = 7) instead of t_n = n / N;
- the interval index i drawn with the probability a lognormal sigma (P_mean, P_std) gives [sigma_i, sigma_{i+1}];
- the weight lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i). f's two sides differ by O(sigma_{i+1} - sigma_i), so
  without it the widest intervals dominate the loss;
- the pseudo-Huber distance;
- the curriculum N(k) = min(s0 2^floor(k / K'), s1) + 1, s0 = 10, s1 = 1280, K' = K / (log2(s1 / s0) + 1);
- the target theta^- the online weights themselves, without an EMA (ema=0; iCT keeps an EMA only to sample).
iCT's constants are for data of standard deviation 0.5 against unit noise, a signal-to-noise ratio 0.5 / sigma.
Here data and noise are of the same scale (the toy's pi_0 and pi_1, SD's scaled latents), a ratio 1 / sigma, so
the same ratios sit at twice iCT's sigma: the constants below are doubled, and P_mean moves by log 2.

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
from .flow import append_dims, call_velocity, data_end, interpolate, mse, pseudo_huber
from .train import ema_update, fit_coupling


def consistency_fn(model, x, t, cond=None):
    """f(x, t) = x + (1 - t) F(x, t), F's data-end estimate: f(x, 1) = x whatever F is (the boundary condition)."""
    return data_end(model, x, t, cond)


def ct_schedule(k, total, s0=2, s1=150):
    """The original CT discretisation N(k) (Song et al. 2023, Appendix C): from s0 + 1 ... to s1 + 1 grid
    points, so N(k) - 1 intervals."""
    return math.ceil(math.sqrt(k / total * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1


def consistency_pair(model, target_model, x0, x1, t, t_next, teacher=None, cond=None):
    """The two sides of Eq. (7): f_theta(X_t, t) and f_{theta^-}(X_hat_{t_next}, t_next), t and t_next one per
    sample. With `teacher` (a velocity model): CD, X_hat one Euler step of the teacher. Without: CT, X_hat the
    same pair's interpolation at t_next."""
    xt = interpolate(x0, x1, t)
    with torch.no_grad():
        if teacher is not None:                       # CD: one teacher ODE step, t -> t_next
            x_next = xt + append_dims(t_next - t, xt) * call_velocity(teacher, xt, t, cond)
        else:                                         # CT: the pair's own step, = X_{t_next}
            x_next = interpolate(x0, x1, t_next)
        target = consistency_fn(target_model, x_next, t_next, cond)
    return consistency_fn(model, xt, t, cond), target


def consistency_loss(model, target_model, x0, x1, n_intervals, teacher=None, cond=None, generator=None,
                     loss_fn=mse, n=None):
    """d(f_theta(X_{t_n}, t_n), f_{theta^-}(X_hat_{t_{n+1}}, t_{n+1})) on the grid t_n = n / N at a random
    index n (drawn from `generator` unless given, one per sample); CD with `teacher`, CT without."""
    positive_int(n_intervals, "n_intervals")
    if n is None:
        n = torch.randint(0, n_intervals, (x0.shape[0],), generator=generator)
    n = n.to(x0.device)
    t, t_next = n.to(x0.dtype) / n_intervals, (n + 1).to(x0.dtype) / n_intervals
    return loss_fn(*consistency_pair(model, target_model, x0, x1, t, t_next, teacher, cond))


SIGMA_MIN, SIGMA_MAX, RHO = 2 * 0.002, 2 * 80.0, 7.0     # iCT's Karras grid, doubled for data of noise's scale
P_MEAN, P_STD = -1.1 + math.log(2), 2.0                  # iCT's lognormal over sigma, moved the same way


def karras_sigmas(n_points):
    """sigma_i = (sigma_min^(1/rho) + (i - 1) / (N - 1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, i = 1..N
    (Karras et al. 2022, Eq. 5), ascending."""
    ramp = torch.linspace(0, 1, n_points, dtype=torch.float64)
    lo, hi = SIGMA_MIN ** (1 / RHO), SIGMA_MAX ** (1 / RHO)
    return (lo + ramp * (hi - lo)) ** RHO


def ict_interval_probs(sigmas):
    """p(i) proportional to erf((log sigma_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((log sigma_i - P_mean) /
    (sqrt 2 P_std)): the mass a lognormal sigma puts on each interval (iCT, Sec. 3.5)."""
    cdf = torch.erf((sigmas.log() - P_MEAN) / (math.sqrt(2) * P_STD))
    return cdf[1:] - cdf[:-1]


def ict_schedule(k, total, s0=10, s1=1280):
    """iCT's exponential curriculum: N(k) = min(s0 2^floor(k / K'), s1) + 1 grid points, K' = floor(K /
    (log2 floor(s1 / s0) + 1)), so the number of intervals doubles in equal stages from s0 to s1."""
    stage = math.floor(total / (math.log2(math.floor(s1 / s0)) + 1))
    return min(s0 * 2 ** math.floor(k / max(stage, 1)), s1) + 1


def ict_loss(model, target_model, x0, x1, n_points, teacher=None, cond=None, generator=None):
    """iCT's objective on its grid of `n_points` sigmas: lambda(sigma_i) d(f_theta(X at sigma_{i+1}),
    f_{theta^-}(X_hat at sigma_i)), d pseudo-Huber, i drawn by `ict_interval_probs`."""
    sigmas = karras_sigmas(n_points)
    i = torch.multinomial(ict_interval_probs(sigmas), x0.shape[0], replacement=True, generator=generator)
    noisier, cleaner = sigmas[i + 1], sigmas[i]
    t, t_next = (1 / (1 + s) for s in (noisier, cleaner))          # sigma = (1 - t) / t
    weight = 1 / (noisier - cleaner)                                # lambda(sigma_i)
    cast = dict(device=x0.device, dtype=x0.dtype)
    pred, target = consistency_pair(model, target_model, x0, x1, t.to(**cast), t_next.to(**cast), teacher, cond)
    return pseudo_huber(pred, target, weight=weight.to(**cast))


def train_consistency(model, coupling, iters, teacher=None, n_intervals=18, ema=0.95, batch_size=1024, seed=0,
                      ct_growth=True, loss_fn=mse, ict=False, desc="consistency", **fit_kwargs):
    """CD (with `teacher`, on a fixed grid of `n_intervals`) or CT (without; the grid grows by
    `ct_schedule` when ct_growth) on batches of `coupling` (independent noise and data), with the distance
    `loss_fn`. ict=True: iCT's recipe instead (`ict_loss` on the curriculum `ict_schedule`; its distance and
    grid replace loss_fn and n_intervals; iCT's own target is ema=0). Returns losses."""
    target = copy.deepcopy(model).requires_grad_(False)
    step = itertools.count()                          # fit_coupling calls the loss once per iteration

    def loss(m, x0, x1, cond, gen):
        i = next(step)
        ema_update(target.parameters(), m.parameters(), ema)   # theta^-: the EMA after step i - 1
        if ict:
            return ict_loss(m, target, x0, x1, ict_schedule(i, iters), teacher, cond, gen)
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
