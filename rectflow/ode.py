"""Solvers for the flow ODE  dZ_t = v(Z_t, t) dt  (Sec. 2 of the paper).

All solvers take a velocity model v(x, t[, cond]) with t of shape [B], a start state of any shape
[B, ...], and a number of uniform steps N over a time span [t0, t1]: by default t0 = 0 (noise) to
t1 = 1 (data), dt = 1 / N. Any span works, forwards (t0 < t1) or backwards (t0 > t1, dt < 0):
the same steps then run the flow in reverse, e.g. Euler backwards

    X_{t - |dt|} = X_t - |dt| v(X_t, t),

which is how `invert` maps data back to noise. They return the state at t1, or the whole trajectory
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
def solve(v, z0, steps, method="euler", cond=None, return_trajectory=False, t0=0.0, t1=1.0):
    """Integrate dZ_t = v(Z_t, t) dt from t = t0 to t = t1 with `steps` uniform steps of
    dt = (t1 - t0) / steps (negative when t0 > t1: the flow run backwards)."""
    positive_int(steps, "steps")
    if method not in SOLVERS:
        raise ValueError(f"unknown ODE solver {method!r}: choose one of {sorted(SOLVERS)}")
    for name, val in (("t0", t0), ("t1", t1)):
        if not 0.0 <= float(val) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {val!r}")
    step, dt = SOLVERS[method], (t1 - t0) / steps
    z, traj = z0, [z0]
    for i in range(steps):
        t = torch.full((z.shape[0],), t0 + i * dt, dtype=z.dtype, device=z.device)
        z = step(v, z, t, dt, cond)
        if return_trajectory:
            traj.append(z)
    return torch.stack(traj) if return_trajectory else z


def euler(v, z0, steps, cond=None, return_trajectory=False, t0=0.0, t1=1.0):
    """N-step Euler sampling,  Z_{(i+1)/N} = Z_{i/N} + (1/N) v(Z_{i/N}, i/N)  (Sec. 2); over [t0, t1]
    in general: Z_{t+dt} = Z_t + dt v(Z_t, t), dt = (t1 - t0) / N."""
    return solve(v, z0, steps, "euler", cond, return_trajectory, t0, t1)


def invert(v, x1, steps, method="euler", cond=None, return_trajectory=False):
    """Run the flow from data back to noise: integrate dZ_t = v(Z_t, t) dt from t = 1 to t = 0.

    With Euler, X_{t - 1/N} = X_t - (1/N) v(X_t, t) for t = 1, 1 - 1/N, ..., 1/N. The velocity is
    evaluated at the *start* of each backward step, so backwards-then-forwards is exact only when v
    does not change along the path (a straight flow): the straighter the flow, the fewer steps an
    exact inversion needs.
    """
    return solve(v, x1, steps, method, cond, return_trajectory, t0=1.0, t1=0.0)
