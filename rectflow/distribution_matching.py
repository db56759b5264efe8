"""Distribution matching: DMD2 (Yin, Gharbi, Park, Zhang, Shechtman, Durand & Freeman 2024, "Improved
Distribution Matching Distillation for Fast Image Synthesis", arXiv 2405.14867) and SiD (Zhou, Zheng,
Wang, Yin & Huang 2024, "Score identity Distillation", arXiv 2404.04057), in this project's time:
noise X_0 at t = 0, data X_1 at t = 1, X_t = t X_1 + (1 - t) X_0.

A one-step generator G(z) = z + g(z, 0) (one Euler step of a velocity network g, initialised from the
teacher) is trained so that the law of its outputs matches the teacher's, not so that each output hits
the teacher's image for the same z (that is distillation on pairs, `rectflow.distill`). The teacher
knows its own law only through its velocity v_real; the generator's law is learnt on the fly by a
second, "fake" velocity v_fake, trained by Eq. (1) on the generator's (detached) outputs. At a point
X_t of both laws' paths, the two flows' data-end estimates

    x_real = X_t + (1 - t) v_real(X_t, t),   x_fake = X_t + (1 - t) v_fake(X_t, t)      (E[X_1 | X_t])

differ exactly where the laws differ, and the generator is moved along x_real - x_fake.

With a Gaussian source X_0 ~ N(0, I), the score of X_t's law follows from its velocity,

    grad log p_t(x) = (t v(x, t) - x) / (1 - t),                                           (`score`)

so x_fake - x_real = (1 - t)^2 / t (s_fake - s_real): DMD's gradient of KL(p_fake,t || p_real,t). The
data-end form needs no Gaussian source, and both vanish when the generator's law is the teacher's.

- DMD2's generator loss (DMD's distribution-matching gradient with its normalisation, as the official
  code computes it; no GAN term):
      g = (x_fake - x_real) / mean_d |x_g - x_real|,   L = 1/2 || x_g - sg(x_g - g) ||^2 (mean),
  computed without gradients through X_t; t uniform on [0.02, 0.98] (their 20..980 of 1000).
  Two time scales: `fake_updates` = 5 fake-velocity steps per generator step (AdamW(0.9, 0.999),
  weight decay 0.01, gradients clipped at 10). DMD's regression on teacher pairs is an option (DMD1 used
  LPIPS; the toy uses the squared error; the default weight 0.25 is not checked against DMD1's paper).
- SiD's generator loss (the score-identity loss with alpha, as the official code computes it):
      L = sum_d (x_real - x_fake) . ((x_real - x_g) - alpha (x_real - x_fake)) / sg(mean_d |x_g - x_real|),
  averaged over the batch, alpha = 1.2, with gradients through X_t into both velocities' inputs (not
  into their weights); one fake step per generator step, Adam(0, 0.999). The official code also
  multiplies by 100, a constant Adam cancels; its t range maps to about [0.04, 1], here the same as DMD2's.
"""
import contextlib
import functools

import torch
from tqdm.auto import tqdm

from .checks import positive_int
from .flow import append_dims, batch_time, call_velocity, data_end, interpolate, mse, rf_loss

# each method's own recipe (the official code's settings); the learning rate is the caller's: it depends on the problem
RECIPES = {
    "dmd2": dict(fake_updates=5, betas=(0.9, 0.999), weight_decay=0.01, grad_clip=10.0),
    "sid": dict(fake_updates=1, betas=(0.0, 0.999), weight_decay=0.0, grad_clip=None),
}
T_RANGE = (0.02, 0.98)


def score(v, x, t, cond=None):
    """grad log p_t(x) = (t v(x, t) - x) / (1 - t) for X_t = t X_1 + (1 - t) X_0 with X_0 ~ N(0, I)
    (Tweedie: E[X_0 | X_t = x] = -(1 - t) grad log p_t(x), and E[X_0 | x] = x - t E[X_1 - X_0 | x])."""
    t = batch_time(t, x)
    return (append_dims(t, x) * call_velocity(v, x, t, cond) - x) / append_dims(1 - t, x)


def one_step(generator, z, cond=None):
    """The generator's sample: one Euler step from t = 0, G(z) = z + g(z, 0)."""
    return data_end(generator, z, 0.0, cond)


def dmd_loss(x_g, real, fake, x0, t, cond=None):
    """DMD2's generator loss at X_t = t x_g + (1 - t) x0: its gradient in x_g is (x_fake - x_real) / (w n),
    w = mean_d |x_g - x_real| per sample, n the number of entries of x_g."""
    with torch.no_grad():
        xt = interpolate(x0, x_g, t)
        x_real, x_fake = data_end(real, xt, t, cond), data_end(fake, xt, t, cond)
        w = (x_g - x_real).abs().flatten(1).mean(1)
        g = torch.nan_to_num((x_fake - x_real) / append_dims(w, x_g))
    return 0.5 * mse(x_g, (x_g - g).detach())


def sid_loss(x_g, real, fake, x0, t, cond=None, alpha=1.2):
    """SiD's generator loss at X_t = t x_g + (1 - t) x0, gradients flowing through X_t."""
    xt = interpolate(x0, x_g, t)
    x_real, x_fake = data_end(real, xt, t, cond), data_end(fake, xt, t, cond)
    with torch.no_grad():
        w = (x_g - x_real).abs().flatten(1).mean(1).clamp(min=1e-5)
    gap = x_real - x_fake
    return ((gap * ((x_real - x_g) - alpha * gap)).flatten(1).sum(1) / w).mean()


def fake_loss(fake, generator, z, x0, cond=None, rng=None, objective=None):
    """Eq. (1) for the fake velocity on the generator's outputs (detached): it learns the generator's law.
    objective(x0, x_g, cond, rng) replaces Eq. (1) by another denoising loss of the fake network (DMD2 trains its
    fake score with the teacher's own: epsilon prediction on the mini)."""
    with torch.no_grad():
        x_g = one_step(generator, z, cond)
    if objective is not None:
        return objective(x0, x_g, cond, rng)
    return rf_loss(fake, x0, x_g, cond, generator=rng)


def train_distribution_matching(generator, teacher, fake, sample0, iters, method="dmd2", lr=1e-4, batch_size=1024,
                                alpha=1.2, pairs=None, regression_weight=0.25, t_range=T_RANGE, seed=0,
                                sample_cond=None, fake_objective=None, as_velocity=None, desc=None, progress=True,
                                **recipe):
    """`iters` generator steps of `method` ("dmd2" or "sid"), each after recipe["fake_updates"] steps of the fake
    velocity. generator: the velocity network sampled by `one_step`; teacher: the frozen velocity v_real (a network
    or a function); fake: a velocity network (the papers start it, and the generator, from the teacher's weights);
    sample0(n, rng) draws the source X_0. pairs = (z, x1): the teacher's pairs for DMD's regression loss,
    weighted by `regression_weight` (unconditional models only). `recipe` overrides RECIPES[method].
    A conditional model (text to image): sample_cond(n, rng) draws the batch's condition, which every network
    sees; fake_objective: `fake_loss`'s objective; as_velocity(net) -> v(x, t, cond) for networks called
    otherwise (a UNet takes the timestep (1 - t) 1000). Returns the losses and the counts."""
    if method not in RECIPES:
        raise ValueError(f"unknown distribution-matching method {method!r}: {', '.join(RECIPES)}")
    positive_int(iters, "iters")
    if pairs is not None and sample_cond is not None:
        raise ValueError("DMD's regression on pairs is for unconditional models: pass pairs or sample_cond, not both")
    r = {**RECIPES[method], **recipe}
    generator_loss = dmd_loss if method == "dmd2" else functools.partial(sid_loss, alpha=alpha)
    v_gen, v_fake = (generator, fake) if as_velocity is None else (as_velocity(generator), as_velocity(fake))
    rng = torch.Generator().manual_seed(seed)
    dev = next(generator.parameters()).device
    opts = {net: torch.optim.AdamW(net.parameters(), lr=lr, betas=r["betas"], weight_decay=r["weight_decay"])
            for net in (generator, fake)}

    def step(net, loss):
        opts[net].zero_grad(set_to_none=True)
        loss.backward()
        if r["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(net.parameters(), r["grad_clip"])
        opts[net].step()
        return loss.item()

    def draw():
        """z for G, X_0 for the path, and the condition (None for an unconditional model)."""
        z, x0 = sample0(batch_size, rng).to(dev), sample0(batch_size, rng).to(dev)
        return z, x0, None if sample_cond is None else sample_cond(batch_size, rng)

    log = {"generator_loss": [], "fake_loss": []}
    generator.train()
    fake.train()
    for _ in tqdm(range(iters), desc=desc or method, disable=not progress, leave=False):
        for _ in range(r["fake_updates"]):                      # two time scales: the fake law keeps up with G's
            loss = fake_loss(v_fake, v_gen, *draw(), rng=rng, objective=fake_objective)
            log["fake_loss"].append(step(fake, loss))
        z, x0, cond = draw()
        t = t_range[0] + (t_range[1] - t_range[0]) * torch.rand(batch_size, generator=rng).to(dev)
        with frozen(teacher, fake):                             # SiD's gradient flows through their inputs only
            loss = generator_loss(one_step(v_gen, z, cond), teacher, v_fake, x0, t, cond)
            if pairs is not None:                               # DMD's regression on the teacher's pairs
                idx = torch.randint(len(pairs[0]), (batch_size,), generator=rng)
                x1_hat = one_step(v_gen, pairs[0][idx].to(dev))
                loss = loss + regression_weight * mse(x1_hat, pairs[1][idx].to(dev))
            log["generator_loss"].append(step(generator, loss))
    generator.eval()
    fake.eval()
    return {**log, "generator_steps": iters, "fake_steps": iters * r["fake_updates"],
            "teacher_evals": iters * batch_size}


@contextlib.contextmanager
def frozen(*nets):
    """Inside the block the nets' weights take no gradient (their inputs still do); their flags are restored after."""
    params = [p for net in nets for p in getattr(net, "parameters", lambda: [])()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
