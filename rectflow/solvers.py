"""Training-free solvers for the flow ODE on this project's path, written as exponential integrators.

The path X_t = alpha_t X_1 + sigma_t X_0 has alpha_t = t, sigma_t = 1 - t, and half log signal-to-noise ratio
lambda_t = log(alpha_t / sigma_t) = log(t / (1 - t)). A velocity v gives the diffusion literature's predictions
    data   D(x, t) = x + (1 - t) v(x, t)      (E[X_1 | X_t = x] for the minimiser of Eq. (1): `data_end`)
    noise  eps(x, t) = x - t v(x, t)          (E[X_0 | X_t = x])
and the ODE dx/dt = v reads dx/dt = (D - x) / (1 - t): a linear part, solved exactly, and D. Variation of
constants (DPM-Solver++'s exact solution, Lu et al. 2022, in this time) gives, from t to s,

    x_s / (1 - s) = x_t / (1 - t) + int_t^s D(x_u, u) / (1 - u)^2 du.                              (*)

Each solver approximates D over the step by a polynomial through its evaluations and integrates (*) exactly:
    ddim       D constant (DDIM, DPM-Solver++(1), DEIS of order 1):
                   x_s = (1 - s) / (1 - t) x_t + (s - t) / (1 - t) D_t  =  x_t + (s - t) v(x_t, t),
               the Euler step: on this path DDIM *is* Euler, on any grid.
    dpmpp_2m   D linear in lambda through the last two evaluations (DPM-Solver++(2M)).
    deis_tab2  D linear in t through the last two evaluations (DEIS's tAB, order 2, Zhang & Chen 2023), on the
               data prediction: the noise form's linear part x / t is singular at the noise end t = 0.
All take a grid ts = (t_0 < t_1 < ... < t_N) and call the model once per step. `shifted_grid` gives the grids
they run on (uniform, or the time shift of SD3 that moves steps toward the noise end).
"""
import math

import torch

from .flow import data_end


def shifted_grid(steps, shift=1.0, t0=0.0):
    """N + 1 times ending at 1: the noise levels sigma_i = 1 - t_i of the uniform grid from t0 to 1, mapped through
    the time shift sigma -> shift sigma / (1 + (shift - 1) sigma)  (Esser et al. 2024, SD3; diffusers' flow_shift).
    shift = 1 is the uniform grid from t0; shift > 1 spends more of the steps near the noise end (and starts below
    t0 when t0 > 0)."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift!r}")
    sigma = (1.0 - t0) * torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (1.0 - shift * sigma / (1 + (shift - 1) * sigma)).tolist()


def _check_grid(ts):
    if len(ts) < 2 or any(not b > a for a, b in zip(ts, ts[1:])) or ts[0] < 0 or ts[-1] > 1:
        raise ValueError(f"a time grid must increase strictly within [0, 1] with at least two points, got {ts!r}")


def ddim_step(x, d, t, s):
    """(*) with D constant: x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) D_t, h = lambda_s - lambda_t,
    which on alpha = t, sigma = 1 - t is (1 - s) / (1 - t) x_t + (s - t) / (1 - t) D_t."""
    return (1 - s) / (1 - t) * x + (s - t) / (1 - t) * d


def dpmpp_2m_step(x, d, d_prev, now, nxt, prev=None):
    """One step of DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) from `now` to `nxt`, each an (alpha, sigma) pair:
        x' = (sigma' / sigma) x + alpha' (1 - e^{-h}) (D + (D - D_prev) / (2 r)),  h = lambda' - lambda,
        r = h_prev / h  (the previous step's h, from `prev` where D_prev was computed).
    First order (DDIM) with no previous step or one from alpha = 0, where lambda = -inf makes the slope 0; the
    step onto sigma' = 0 lands on alpha' D (first order, as diffusers' solver does)."""
    (a, s), (a2, s2) = now, nxt
    if s2 == 0:
        return a2 * d
    e_mh = (a * s2) / (s * a2)                          # e^{-h} = (alpha sigma') / (sigma alpha'), 0 at alpha = 0
    x_new = (s2 / s) * x + a2 * (1 - e_mh) * d
    if d_prev is None or prev is None or prev[0] == 0:
        return x_new
    h = math.log(a2 / s2) - math.log(a / s)
    r = (math.log(a / s) - math.log(prev[0] / prev[1])) / h
    return x_new + a2 * (1 - e_mh) * (d - d_prev) / (2 * r)


def _slope_weight(t, s):
    """(1 - s) int_t^s (u - t) / (1 - u)^2 du = (s - t) + (1 - s) log((1 - s) / (1 - t)): the weight (*) gives
    the slope of D in t over a step (0 log 0 = 0 at s = 1)."""
    return (s - t) + ((1 - s) * math.log((1 - s) / (1 - t)) if s < 1 else 0.0)


@torch.no_grad()
def ddim(v, z, ts, cond=None):
    """DDIM / DPM-Solver++(1) on the grid ts: the Euler step X_s = X_t + (s - t) v(X_t, t) on any grid."""
    _check_grid(ts)
    for t, s in zip(ts, ts[1:]):
        z = ddim_step(z, data_end(v, z, t, cond), t, s)
    return z


@torch.no_grad()
def dpmpp_2m(v, z, ts, cond=None):
    """DPM-Solver++(2M) on the grid ts, in rectified-flow time (alpha = t, sigma = 1 - t). From t_0 = 0, where
    lambda = -inf, its second step is first order too (the slope in lambda through t_0 is 0), and so is its last
    (onto t = 1): two or three steps from t_0 = 0 are Euler steps. diffusers' flow solver starts at t_0 = 1e-3."""
    _check_grid(ts)
    d_prev = None
    for i, (t, s) in enumerate(zip(ts, ts[1:])):
        d = data_end(v, z, t, cond)
        prev = (ts[i - 1], 1 - ts[i - 1]) if i else None
        z = dpmpp_2m_step(z, d, d_prev, (t, 1 - t), (s, 1 - s), prev)
        d_prev = d
    return z


@torch.no_grad()
def deis_tab2(v, z, ts, cond=None):
    """DEIS's tAB of order 2 on the data prediction, on the grid ts: D(u) ~ D_t + (u - t) (D_t - D_p) / (t - p)
    through the previous evaluation at p, integrated exactly in (*):
        x_s = (1 - s) / (1 - t) x_t + (s - t) / (1 - t) D_t + slope [(s - t) + (1 - s) log((1 - s) / (1 - t))].
    Its first step has no previous evaluation and is DDIM."""
    _check_grid(ts)
    d_prev = None
    for i, (t, s) in enumerate(zip(ts, ts[1:])):
        d = data_end(v, z, t, cond)
        z_new = ddim_step(z, d, t, s)
        if d_prev is not None:
            z_new = z_new + (d - d_prev) / (t - ts[i - 1]) * _slope_weight(t, s)
        z, d_prev = z_new, d
    return z


GRID_SOLVERS = {"ddim": ddim, "dpmpp_2m": dpmpp_2m, "deis_tab2": deis_tab2}
