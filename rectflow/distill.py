"""Distillation of a k-rectified flow into a one-step (or k-step) model (Algorithm 1, "Distill").

Given pairs (Z_0, Z_1) of a trained flow, a student v is trained so that Euler with k steps
lands on Z_1. For k = 1 this is the paper's one-step distillation

    min_v  E[ loss( Z_0 + v(Z_0, 0),  Z_1 ) ],

and for k > 1 the student is trained only at the grid times t in {0, 1/k, ..., (k-1)/k}, each
step predicting the endpoint  Z_1_hat = X_t + (1 - t) v(X_t, t)  with X_t = t Z_1 + (1 - t) Z_0.
"""
import torch

from .checks import positive_int
from .flow import data_end, interpolate, mse
from .train import fit_coupling


def distill_loss(student, z0, z1, k=1, cond=None, generator=None, loss_fn=mse):
    """loss(Z_1_hat, Z_1) at a random grid time t = j / k (j uniform in 0..k-1).

    `loss_fn(pred, target)` is pluggable (e.g. a perceptual loss on decoded images); it compares
    the predicted endpoint with the teacher's Z_1.
    """
    positive_int(k, "k (student steps)")
    j = torch.randint(0, k, (z0.shape[0],), generator=generator).to(z0.device)
    t = j.to(z0.dtype) / k
    xt = interpolate(z0, z1, t)
    z1_hat = data_end(student, xt, t, cond)      # X_t + (1 - t) v(X_t, t)
    return loss_fn(z1_hat, z1)


def train_student(student, coupling, iters, k=1, batch_size=1024, loss_fn=mse, seed=0,
                  desc="distill", **fit_kwargs):
    """Distill the pairs of `coupling` (a `pairs_coupling` of the teacher) into a k-step student."""
    def loss(model, z0, z1, cond, gen):
        return distill_loss(model, z0, z1, k, cond, gen, loss_fn)
    return fit_coupling(student, coupling, loss, iters, batch_size, seed, desc=desc, **fit_kwargs)
