"""The rectified-flow objective (Liu, Gong & Liu 2022, "Flow Straight and Fast", arXiv 2209.03003).

Conventions used everywhere in this project:
  t in [0, 1],  X_0 ~ pi_0 (noise / source),  X_1 ~ pi_1 (data / target).

Eq. (1) of the paper, the whole method in one line:

    min_v  int_0^1 E[ || (X_1 - X_0) - v(X_t, t) ||^2 ] dt,   X_t = t X_1 + (1 - t) X_0.
"""
import torch

from .paths import get_path


def _expand_time(t, x):
    """Reshape t [B] (or a scalar) so that it broadcasts against x [B, ...]."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def interpolate(x0, x1, t):
    """The linear interpolation of Eq. (1):  X_t = t X_1 + (1 - t) X_0."""
    t = _expand_time(t, x0)
    return t * x1 + (1 - t) * x0


def velocity_target(x0, x1):
    """The regression target of Eq. (1): the straight-line direction  X_1 - X_0."""
    return x1 - x0


def sample_time(n, kind="uniform", generator=None, device=None, mean=0.0, std=1.0):
    """Draw t for the integral over [0, 1] in Eq. (1).

    Draws on the CPU (so a CPU generator fixes the result on any device), then moves to `device`.
    uniform       t ~ U[0, 1]  (Algorithm 1 of the paper).
    logit_normal  t = sigmoid(m + s * N(0, 1))  (Esser et al. 2024); puts more weight on mid-times.
    """
    if kind == "uniform":
        return torch.rand(n, generator=generator).to(device)
    if kind == "logit_normal":
        return torch.sigmoid(mean + std * torch.randn(n, generator=generator)).to(device)
    raise ValueError(f"unknown time sampler {kind!r}: use 'uniform' or 'logit_normal'")


def call_velocity(v, x, t, cond=None):
    """Evaluate a velocity model v(x, t) or v(x, t, cond) with t given per sample ([B])."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return v(x, t) if cond is None else v(x, t, cond)


def rf_loss(v, x0, x1, cond=None, t=None, time_sampler="uniform", generator=None, loss_fn=None,
            path="linear"):
    """Monte-Carlo estimate of the rectified-flow loss, Eq. (1):

        E_t E[ || (X_1 - X_0) - v(X_t, t) ||^2 ],   X_t = t X_1 + (1 - t) X_0.

    (x0, x1) are samples of a coupling: independent draws for 1-rectified flow, the pairs
    (Z_0, Z_1) of a previous flow for reflow. The squared error is averaged over all
    coordinates (a constant rescaling of Eq. (1)). `loss_fn(pred, target)` replaces it.

    `path` ('linear', 'vp', 'cosine' or a `rectflow.paths.Path`) selects the paper's nonlinear
    extension X_t = alpha_t X_1 + beta_t X_0 with target alpha'_t X_1 + beta'_t X_0; the default
    'linear' (alpha_t = t, beta_t = 1 - t) is Eq. (1) above, operation for operation.
    """
    p = get_path(path)
    if t is None:
        t = sample_time(x0.shape[0], time_sampler, generator=generator, device=x0.device)
    t = p.clip(torch.as_tensor(t, dtype=x0.dtype, device=x0.device))
    tb = _expand_time(t, x0)
    xt = p.interpolate(x0, x1, tb)          # Eq. (1): t X_1 + (1 - t) X_0 on the linear path
    pred = call_velocity(v, xt, t, cond)
    target = p.target(x0, x1, tb)           # Eq. (1): X_1 - X_0 on the linear path
    if loss_fn is not None:
        return loss_fn(pred, target)
    return (pred - target).pow(2).mean()
