"""The rectified-flow objective (Liu, Gong & Liu 2022, "Flow Straight and Fast", arXiv 2209.03003).

Conventions used everywhere in this project:
  t in [0, 1],  X_0 ~ pi_0 (noise / source),  X_1 ~ pi_1 (data / target).

Eq. (1) of the paper, the whole method in one line:

    min_v  int_0^1 E[ || (X_1 - X_0) - v(X_t, t) ||^2 ] dt,   X_t = t X_1 + (1 - t) X_0.
"""
import torch


def batch_time(t, x):
    """t as a tensor of shape [B] on x's device and dtype: a number or a 0-d tensor is repeated per sample."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


def append_dims(t, x):
    """t ([B] or a number) as [B, 1, ..., 1], so that it broadcasts against x [B, ...] (k-diffusion's append_dims)."""
    return batch_time(t, x).reshape(-1, *([1] * (x.ndim - 1)))


def interpolate(x0, x1, t):
    """The linear interpolation of Eq. (1):  X_t = t X_1 + (1 - t) X_0."""
    t = append_dims(t, x0)
    return t * x1 + (1 - t) * x0


def velocity_target(x0, x1):
    """The regression target of Eq. (1): the straight-line direction  X_1 - X_0."""
    return x1 - x0


def mse(pred, target):
    """The squared error of Eq. (1), averaged over samples and coordinates (a constant rescaling of the sum)."""
    return (pred - target).pow(2).mean()


def pseudo_huber(pred, target, c=None, weight=None):
    """iCT's distance (Song & Dhariwal 2023):  sqrt(||pred - target||^2 + c^2) - c  per sample, averaged
    (weighted by `weight`, one per sample, if given); c = 0.00054 sqrt(d) for d coordinates, their choice.
    Quadratic below c, linear above: a large error pulls no harder than a small one, where the squared
    error pulls in proportion."""
    diff = (pred - target).flatten(1)
    c = 0.00054 * diff.shape[1] ** 0.5 if c is None else c
    per_sample = (diff.pow(2).sum(1) + c ** 2).sqrt() - c
    return (per_sample if weight is None else weight * per_sample).mean()


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
    t = batch_time(t, x)
    return v(x, t) if cond is None else v(x, t, cond)


def data_end(v, x, t, cond=None):
    """One Euler step from t to 1:  X_t + (1 - t) v(X_t, t).  For the minimiser of Eq. (1) this is
    E[X_1 | X_t = x] (v = E[X_1 - X_0 | X_t] and X_0 = (X_t - t X_1) / (1 - t)): the flow's estimate of the data
    end, which distillation, consistency models and distribution matching all regress or compare."""
    t = batch_time(t, x)
    return x + append_dims(1 - t, x) * call_velocity(v, x, t, cond)


def rf_loss(v, x0, x1, cond=None, t=None, time_sampler="uniform", generator=None, loss_fn=mse):
    """Monte-Carlo estimate of the rectified-flow loss, Eq. (1):

        E_t E[ || (X_1 - X_0) - v(X_t, t) ||^2 ],   X_t = t X_1 + (1 - t) X_0.

    (x0, x1) are samples of a coupling: independent draws for 1-rectified flow, the pairs
    (Z_0, Z_1) of a previous flow for reflow. `loss_fn(pred, target)` replaces the squared error
    (`mse`: averaged over coordinates). The paper's nonlinear paths: `rectflow.paths.path_loss`.
    """
    if t is None:
        t = sample_time(x0.shape[0], time_sampler, generator=generator, device=x0.device)
    t = batch_time(t, x0)
    xt = interpolate(x0, x1, t)             # X_t = t X_1 + (1 - t) X_0
    target = velocity_target(x0, x1)        # X_1 - X_0
    return loss_fn(call_velocity(v, xt, t, cond), target)
