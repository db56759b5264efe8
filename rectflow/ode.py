"""Solvers for the flow ODE  dZ_t = v(Z_t, t) dt,  t from 0 to 1  (Sec. 2 of the paper).

All solvers take a velocity model v(x, t[, cond]) with t of shape [B], a start Z_0 of any shape
[B, ...], and a number of uniform steps N (dt = 1 / N). They return Z_1, or the whole trajectory
[N + 1, B, ...] with `return_trajectory=True`.
"""
import torch

from .checks import positive_int
from .flow import call_velocity


def _step_euler(v, z, t, dt, cond):
    """Euler:  Z_{t+dt} = Z_t + dt v(Z_t, t)."""
    return z + dt * call_velocity(v, z, t, cond)


def _step_heun(v, z, t, dt, cond):
    """Heun (explicit trapezoid, 2nd order):
    k1 = v(Z_t, t),  k2 = v(Z_t + dt k1, t + dt),  Z_{t+dt} = Z_t + dt (k1 + k2) / 2."""
    k1 = call_velocity(v, z, t, cond)
    k2 = call_velocity(v, z + dt * k1, t + dt, cond)
    return z + dt * (k1 + k2) / 2


def _step_rk4(v, z, t, dt, cond):
    """Classical Runge-Kutta (4th order):
    Z_{t+dt} = Z_t + dt (k1 + 2 k2 + 2 k3 + k4) / 6."""
    k1 = call_velocity(v, z, t, cond)
    k2 = call_velocity(v, z + dt / 2 * k1, t + dt / 2, cond)
    k3 = call_velocity(v, z + dt / 2 * k2, t + dt / 2, cond)
    k4 = call_velocity(v, z + dt * k3, t + dt, cond)
    return z + dt * (k1 + 2 * k2 + 2 * k3 + k4) / 6


SOLVERS = {"euler": _step_euler, "heun": _step_heun, "rk4": _step_rk4}


@torch.no_grad()
def solve(v, z0, steps, method="euler", cond=None, return_trajectory=False):
    """Integrate dZ_t = v(Z_t, t) dt from t = 0 to t = 1 with `steps` uniform steps."""
    positive_int(steps, "steps")
    if method not in SOLVERS:
        raise ValueError(f"unknown ODE solver {method!r}: choose one of {sorted(SOLVERS)}")
    step, dt = SOLVERS[method], 1.0 / steps
    z, traj = z0, [z0]
    for i in range(steps):
        t = torch.full((z.shape[0],), i * dt, dtype=z.dtype, device=z.device)
        z = step(v, z, t, dt, cond)
        if return_trajectory:
            traj.append(z)
    return torch.stack(traj) if return_trajectory else z


def euler(v, z0, steps, cond=None, return_trajectory=False):
    """N-step Euler sampling,  Z_{(i+1)/N} = Z_{i/N} + (1/N) v(Z_{i/N}, i/N)  (Sec. 2)."""
    return solve(v, z0, steps, "euler", cond, return_trajectory)
