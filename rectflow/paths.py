"""Interpolation paths: the paper's nonlinear extension of Eq. (1).

Eq. (1) joins X_0 and X_1 by a straight line run at constant speed. The paper's nonlinear
extension replaces it by any smooth path with the same ends,

    X_t = alpha_t X_1 + beta_t X_0,    alpha_0 = 0, alpha_1 = 1, beta_0 = 1, beta_1 = 0,

and regresses v on the path's time derivative,

    min_v  int_0^1 E[ || (alpha'_t X_1 + beta'_t X_0) - v(X_t, t) ||^2 ] dt.

The probability-flow ODEs of score-based diffusion are such flows (the paper's remark): the VP
schedule below, written in this project's time direction (noise at t = 0, data at t = 1), is
the one of Song et al. (2021). Only the linear path has a target that does not depend on t, so
only it can give straight trajectories; `python -m toy compare` measures what the curve costs.

    linear   alpha_t = t,                 beta_t = 1 - t                (Eq. (1), the default)
    vp       alpha_t = exp(-a (1-t)^2 / 4 - b (1-t) / 2),  beta_t = sqrt(1 - alpha_t^2),
             a = beta_max - beta_min = 19.9, b = beta_min = 0.1  (VP SDE, "Score-Based Generative
             Modeling through SDEs"); alpha_0 = 0.0066, not 0: VP's X_0 holds a trace of X_1.
    cosine   alpha_t = sin(pi t / 2),     beta_t = cos(pi t / 2)        (alpha^2 + beta^2 = 1)
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch

from .flow import append_dims, batch_time, call_velocity, mse, sample_time

VP_A, VP_B = 19.9, 0.1     # beta_max - beta_min and beta_min of the VP SDE
VP_T_MAX = 1 - 1e-3        # VP's beta'_t = -alpha_t alpha'_t / beta_t diverges at t = 1


@dataclass(frozen=True)
class Path:
    """X_t = alpha(t) X_1 + beta(t) X_0 and its velocity alpha'(t) X_1 + beta'(t) X_0.

    t is a tensor broadcast against x (shape [B, 1, ...]). Times above `t_max` are evaluated at
    t_max (a path whose derivative diverges at t = 1 stops just before it, as diffusion models do).
    """
    name: str
    alpha: Callable
    beta: Callable
    d_alpha: Callable
    d_beta: Callable
    t_max: float = 1.0

    def clip(self, t):
        return t if self.t_max >= 1 else t.clamp(max=self.t_max)

    def interpolate(self, x0, x1, t):
        """X_t = alpha_t X_1 + beta_t X_0   (t already clipped and broadcast)."""
        return self.alpha(t) * x1 + self.beta(t) * x0

    def target(self, x0, x1, t):
        """dX_t/dt = alpha'_t X_1 + beta'_t X_0, the regression target of the extension."""
        return self.d_alpha(t) * x1 + self.d_beta(t) * x0


def _vp_alpha(t):
    s = 1 - t                                   # the VP SDE's own time (data at s = 0)
    return torch.exp(-VP_A * s * s / 4 - VP_B * s / 2)


def _vp_d_alpha(t):
    """d/dt exp(-a s^2/4 - b s/2) with s = 1 - t:  alpha_t (a s / 2 + b / 2)."""
    return _vp_alpha(t) * (VP_A * (1 - t) / 2 + VP_B / 2)


def _vp_beta(t):
    return torch.sqrt(1 - _vp_alpha(t) ** 2)


def _vp_d_beta(t):
    """d/dt sqrt(1 - alpha_t^2) = -alpha_t alpha'_t / beta_t."""
    return -_vp_alpha(t) * _vp_d_alpha(t) / _vp_beta(t)


HALF_PI = math.pi / 2
PATHS = {
    "linear": Path("linear", lambda t: t, lambda t: 1 - t,
                   lambda t: torch.ones_like(t), lambda t: -torch.ones_like(t)),
    "vp": Path("vp", _vp_alpha, _vp_beta, _vp_d_alpha, _vp_d_beta, t_max=VP_T_MAX),
    "cosine": Path("cosine", lambda t: torch.sin(HALF_PI * t), lambda t: torch.cos(HALF_PI * t),
                   lambda t: HALF_PI * torch.cos(HALF_PI * t), lambda t: -HALF_PI * torch.sin(HALF_PI * t)),
}


def get_path(path):
    """A `Path` from its name ('linear', 'vp', 'cosine') or the Path itself."""
    if isinstance(path, Path):
        return path
    if path not in PATHS:
        raise ValueError(f"unknown interpolation path {path!r}: choose one of {sorted(PATHS)}")
    return PATHS[path]


def path_loss(v, x0, x1, path, cond=None, t=None, time_sampler="uniform", generator=None, loss_fn=mse):
    """Eq. (1) on the path X_t = alpha_t X_1 + beta_t X_0 (the paper's nonlinear extension):

        E_t E[ || (alpha'_t X_1 + beta'_t X_0) - v(X_t, t) ||^2 ].

    `path` is a name of PATHS or a Path; on 'linear' this is `rectflow.flow.rf_loss`, number for number."""
    p = get_path(path)
    if t is None:
        t = sample_time(x0.shape[0], time_sampler, generator=generator, device=x0.device)
    t = p.clip(batch_time(t, x0))
    tb = append_dims(t, x0)
    xt = p.interpolate(x0, x1, tb)          # X_t = alpha_t X_1 + beta_t X_0
    target = p.target(x0, x1, tb)           # alpha'_t X_1 + beta'_t X_0
    return loss_fn(call_velocity(v, xt, t, cond), target)
