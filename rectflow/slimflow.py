"""SlimFlow (Zhu, Liu & Liu, ECCV 2024): a smaller one-step student trained with rectified flow.

A network smaller than the teacher cannot start from the teacher's weights, and trained from scratch on the teacher's
reflow pairs it starts on a hard problem. SlimFlow's two steps:

Annealing reflow: train the small flow from scratch by Eq. (1) on the teacher's pairs (Z_0, Z_1), Z_1 = ODE(Z_0), with
the noise side mixed with fresh noise,
    X_0' = sqrt(1 - beta^2) Z_0 + beta xi,   xi ~ N(0, I),   X_1 = Z_1,
and beta annealed linearly from 1 (X_0' independent of X_1: 1-rectified flow, an easy start) to 0 (reflow) over the
first steps (300k of about 800k in SlimFlow's CIFAR-10 code; 3/8 of them here). For a Gaussian source X_0' ~ N(0, I)
at every beta; for another source the mix changes the source's law, so it is for Gaussian sources only.

Flow-guided distillation: the one-step student v_s (started from the annealed flow) regresses the teacher's pairs and
is also pulled toward the small 2-RF teacher's one-step completion from a point on the student's own straight path:
    || Z_0 + v_s(Z_0, 0) - Z_1 ||^2  +  || z + v_s(z, 0) - sg[x_t + (1 - t) v_T(x_t, t)] ||^2,
    x_t = z + t v_s(z, 0),  z ~ N(0, I),  t ~ U(0.2, 0.8),
weighted 1 : 1 (SlimFlow uses LPIPS on images; the squared distance here). SlimFlow's horizontal flip of image pairs
has no meaning in 2D and is left out.
"""
import itertools

import torch

from .couplings import pairs_coupling
from .flow import append_dims, data_end, mse, rf_loss
from .train import fit_coupling

ANNEALED_SHARE = 3 / 8        # the share of the steps over which beta goes from 1 to 0 (SlimFlow: 300k of ~800k)


def annealing_beta(i, warmup):
    """beta at step i: 1 - min(1, i / warmup), from 1 at the start to 0 from step `warmup` on."""
    return 1.0 - min(1.0, i / warmup)


def annealed_noise(z0, beta, generator=None):
    """X_0' = sqrt(1 - beta^2) Z_0 + beta xi, xi ~ N(0, I) fresh: a standard normal again if Z_0 is one."""
    xi = torch.randn(z0.shape, generator=generator).to(z0)
    return (1 - beta ** 2) ** 0.5 * z0 + beta * xi


def train_annealed_reflow(model, z0, z1, iters, batch_size=1024, seed=0, desc="annealing reflow", **fit_kwargs):
    """Eq. (1) on the pairs (Z_0, Z_1) with the noise side annealed (the module docstring). Returns the losses."""
    warmup, step = max(1, round(ANNEALED_SHARE * iters)), itertools.count()   # fit_coupling: one loss call a step

    def loss(m, x0, x1, cond, gen):
        return rf_loss(m, annealed_noise(x0, annealing_beta(next(step), warmup), gen), x1, generator=gen)
    return fit_coupling(model, pairs_coupling(z0, z1), loss, iters, batch_size, seed, desc=desc, **fit_kwargs)


def flow_guided_loss(student, teacher, z0, z1, z, generator=None, loss_fn=mse):
    """SlimFlow's distillation loss (the module docstring) on pairs (z0, z1) and fresh noise z."""
    regression = loss_fn(data_end(student, z0, 0.0), z1)                  # Z_0 + v_s(Z_0, 0) against Z_1
    jump = data_end(student, z, 0.0)                                        # z + v_s(z, 0): the student's sample
    t = (0.2 + 0.6 * torch.rand(len(z), generator=generator)).to(z)        # t ~ U(0.2, 0.8)
    with torch.no_grad():
        xt = z + append_dims(t, z) * (jump - z)                            # x_t = z + t v_s(z, 0)
        completion = data_end(teacher, xt, t)                              # x_t + (1 - t) v_T(x_t, t)
    return regression + loss_fn(jump, completion)


def train_flow_guided(student, teacher, z0, z1, iters, batch_size=1024, seed=0, desc="flow-guided distillation",
                      **fit_kwargs):
    """Flow-guided distillation of `teacher` (the annealed flow) into `student`, on the pairs (z0, z1)."""
    def loss(m, x0, x1, cond, gen):
        z = torch.randn(x0.shape, generator=gen).to(x0)                    # the student's own fresh noise
        return flow_guided_loss(m, teacher, x0, x1, z, gen)
    return fit_coupling(student, pairs_coupling(z0, z1), loss, iters, batch_size, seed, desc=desc, **fit_kwargs)
