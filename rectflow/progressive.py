"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
Models", arXiv 2202.00512), for a flow sampled with Euler steps: the baseline InstaFlow compares with.

A teacher sampled with N Euler steps of 1/N is distilled into a student with N/2 steps of 2/N: on the
student's grid t = 2k/N, the student's one step must land where two teacher steps land (their
Algorithm 2, with the flow's Euler step in place of DDIM's),

    x'  = X_t + (1/N) v_T(X_t, t),   x'' = x' + (1/N) v_T(x', t + 1/N),
    L   = E || v_S(X_t, t) - (x'' - X_t) / (2/N) ||^2,      X_t = t X_1 + (1 - t) X_0,

X_t drawn from the interpolation of independent noise and data. The student starts from the teacher's
weights and becomes the next round's teacher: N -> N/2 -> ... -> 1, log2(N) rounds.
"""
import copy

import torch

from .checks import positive_int
from .flow import interpolate, mse
from .train import fit_coupling


def two_teacher_steps(teacher, xt, t, n):
    """The student's regression target: the mean velocity of two teacher Euler steps of 1/n from (X_t, t)."""
    h = 1.0 / n
    with torch.no_grad():
        x1 = xt + h * teacher(xt, t)
        x2 = x1 + h * teacher(x1, t + h)
    return (x2 - xt) / (2 * h)


def progressive_loss(student, teacher, x0, x1, n, generator=None):
    """One batch of the round that halves n teacher steps (n even): t on the student's grid 2k/n."""
    k = torch.randint(0, n // 2, (x0.shape[0],), generator=generator).to(x0.device)
    t = (2 * k).to(x0.dtype) / n
    xt = interpolate(x0, x1, t)
    return mse(student(xt, t), two_teacher_steps(teacher, xt, t, n))


def train_progressive(model, coupling, iters_per_round, start_steps, batch_size=1024, seed=0, desc="progressive",
                      on_round=None, **fit_kwargs):
    """Halve the steps from `start_steps` (a power of two) to 1, `iters_per_round` steps each round;
    `model` ends as the one-step student. on_round(steps, model) is called after each round."""
    positive_int(start_steps, "start_steps")
    if start_steps & (start_steps - 1):
        raise ValueError(f"start_steps must be a power of two, got {start_steps}")
    n, losses = start_steps, []
    while n > 1:
        teacher = copy.deepcopy(model).requires_grad_(False).eval()

        def loss(m, x0, x1, cond, gen, n=n, teacher=teacher):
            return progressive_loss(m, teacher, x0, x1, n, gen)
        losses += fit_coupling(model, coupling, loss, iters_per_round, batch_size, seed + n,
                               desc=f"{desc} {n}->{n // 2}", **fit_kwargs)
        n //= 2
        if on_round is not None:
            on_round(n, model)
    return losses
