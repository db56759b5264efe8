"""The three objectives InstaFlow trains a text-conditioned UNet with (x1 = data end, x0 = noise end).

eps      the teacher, trained the Stable Diffusion way (epsilon prediction on the SD schedule):
             x_k = sqrt(alpha_bar_k) x1 + sqrt(1 - alpha_bar_k) eps,   min E|| eps - UNet(x_k, k, c) ||^2
reflow   text-conditioned reflow on the teacher's triplets (X_0, X_1 = teacher(X_0, c), c), Eq. (1):
             X_t = t X_1 + (1 - t) X_0,   min E|| (X_1 - X_0) - UNet(X_t, (1 - t) 1000, c) ||^2
distill  one Euler step of size 1 from X_0 (timestep 1000) must land on X_1:
             min E[ D(X_0 + UNet(X_0, 1000, c), X_1) ],   D = squared L2 by default, or LPIPS of the decoded
             images (InstaFlow's last stage), or a weighted sum of both
consistency  latent consistency distillation (LCM; Luo et al. 2023, "Latent Consistency Models"), the
         few-step rival InstaFlow is compared with, in rectified-flow time (rectflow/consistency.py):
             f_theta(x, t) = x + (1 - t) UNet(x, (1 - t) 1000, c)          (so f(x, 1) = x)
             X_{t_n} = t_n X_1 + (1 - t_n) X_0,  t_n = n / N,  X_0 fresh noise, X_1 the data
             X_hat = X_{t_n} + (1 / N) v_teacher(X_{t_n}, t_n, c)   (one step of the teacher's guided ODE)
             min E[ D(f_theta(X_{t_n}, t_n), f_{theta^-}(X_hat, t_{n+1})) ],   theta^- the EMA weights

Each objective draws its random numbers for the whole global batch at once (`draw`), from a
generator seeded by (seed, step): any split of the batch over processes or accumulation steps then
sees the same numbers, and a resumed run the same as an uninterrupted one.
"""
import importlib

import torch

from rectflow.consistency import consistency_loss
from rectflow.flow import append_dims, rf_loss, sample_time, mse as l2

from ..sampling.euler import rf_timestep
from ..sampling.loop import guided_model
from ..sampling.samplers import eps_velocity, sd_alphas_cumprod

OBJECTIVES = ("eps", "reflow", "distill", "consistency")
OWN_NOISE = ("eps", "consistency")              # objectives that draw their noise: they train on images alone


def mse(pred, target):
    """Squared L2 averaged over coordinates, computed in float32 (outputs may be bf16/fp16 under autocast)."""
    return l2(pred.float(), target.float())


def lcm_huber(pred, target, c=0.001):
    """LCM's distance (Luo et al. 2023; their training script's huber_c): sqrt((pred - target)^2 + c^2) - c per
    coordinate, averaged, in float32. Quadratic within c of the target, linear beyond (iCT's pseudo-Huber,
    rectflow.flow.pseudo_huber, takes the norm of the whole sample instead)."""
    return ((pred.float() - target.float()).pow(2) + c ** 2).sqrt().sub(c).mean()


def lpips_distance(lpips, vae=None):
    """InstaFlow's last distillation loss: D(x1_hat, x1) = mean_i LPIPS(decode(x1_hat_i), decode(x1_i)) with the
    frozen VAE's decoder (latents / scaling_factor; its activations recomputed in the backward pass, block by
    block, so a batch fits) and LPIPS-VGG (sd/models/lpips.py). vae=None: pixel-space models (the mini)."""
    def decode(z, grad):
        if vae is None:
            return z.float()
        with torch.set_grad_enabled(grad):
            return vae.decode(z.float() / vae.scaling_factor, checkpoint=grad)

    def d(pred, target):
        with torch.autocast(pred.device.type, enabled=False):            # LPIPS and the decoder in float32
            return lpips(decode(pred, True), decode(target.detach(), False)).mean()
    return d


def resolve_loss(name, lpips=None):
    """D(pred, target) from its name: "l2" (squared L2), "lpips", a weighted sum such as "l2+0.5*lpips"
    (terms joined by "+", each "[weight*]l2" or "[weight*]lpips"; `lpips` is the lpips_distance to use), or
    "package.module:function" for your own D(pred, target) -> scalar."""
    if name in (None, "l2"):
        return mse
    if ":" in name:
        module, fn = name.split(":", 1)
        try:
            return getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"loss {name!r}: cannot import {fn} from {module} ({e})") from None
    terms = []
    for term in name.split("+"):
        weight, _, what = term.strip().rpartition("*")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            w = None
        if what not in ("l2", "lpips") or w is None:
            raise ValueError(f"unknown loss {name!r}: use 'l2', 'lpips', a sum such as 'l2+0.5*lpips', or "
                             f"'package.module:function'")
        if what == "lpips" and lpips is None:
            raise ValueError(f"loss {name!r} needs LPIPS's weights (sd.reflow distill --lpips-vgg FILE --lpips-lin FILE)")
        terms.append((w, mse if what == "l2" else lpips))
    return lambda pred, target: sum(w * fn(pred, target) for w, fn in terms)


def draw(objective, n, sample_shape, generator, time_sampler="uniform", intervals=20):
    """The objective's random numbers for a batch of n: {"t"} for reflow, {"k", "eps"} for eps, the grid
    indices and the noise {"n", "noise"} for consistency."""
    if objective == "consistency":
        return {"n": torch.randint(0, intervals, (n,), generator=generator),
                "noise": torch.randn((n, *sample_shape), generator=generator)}
    if objective == "reflow":
        return {"t": sample_time(n, time_sampler, generator=generator)}
    if objective == "eps":
        return {"k": torch.randint(0, 1000, (n,), generator=generator),
                "eps": torch.randn((n, *sample_shape), generator=generator)}
    if objective == "distill":
        return {}
    raise ValueError(f"unknown objective {objective!r}: choose {', '.join(OBJECTIVES)}")


def eps_teacher(unet, empty_context, guidance):
    """An epsilon UNet (SD's teacher) with CFG, as the consistency objective's teacher: v(x, t, c) in
    rectified-flow time (samplers.eps_velocity), c the batch's text context, [empty; c] when guidance > 1.
    One Euler step of it in rectified-flow time is one DDIM step (LCM's teacher solver)."""
    def v(x, t, context):
        ctx = torch.cat([empty_context.expand(len(context), -1, -1), context]) if guidance > 1 else context
        return eps_velocity(guided_model(unet, ctx, guidance))(x, t)
    return v


def flow(unet):
    """The UNet as a velocity v(x, t, c) in rectified-flow time (the timestep is (1 - t) * 1000)."""
    return lambda x, t, c: unet(x, rf_timestep(t), c)


def loss(objective, unet, x0, x1, context, rand, loss_fn=mse, teacher=None, target=None, intervals=20):
    """The objective's loss on one (micro-)batch; `rand` holds this batch's slice of `draw`.
    consistency only: teacher(x, t, context) -> the teacher's velocity; target: the UNet with the EMA weights."""
    if objective == "consistency":
        return consistency_loss(flow(unet), flow(target), rand["noise"].to(x1.device), x1, intervals,
                                teacher, context, n=rand["n"], loss_fn=loss_fn)
    if objective == "reflow":
        return rf_loss(flow(unet), x0, x1, context, t=rand["t"].to(x1.device), loss_fn=mse)   # Eq. (1)
    if objective == "distill":
        x1_hat = x0 + unet(x0, torch.full((x0.shape[0],), rf_timestep(0.0), device=x0.device), context)
        return loss_fn(x1_hat, x1)                                    # one Euler step, dt = 1
    if objective == "eps":
        k, eps = rand["k"].to(x1.device), rand["eps"].to(x1.device)
        a_bar = append_dims(sd_alphas_cumprod().to(x1.device)[k], x1)
        xk = a_bar.sqrt() * x1 + (1 - a_bar).sqrt() * eps             # x_k = alpha x1 + sigma eps
        return mse(unet(xk, k.float(), context), eps)                 # epsilon prediction
    raise ValueError(f"unknown objective {objective!r}: choose {', '.join(OBJECTIVES)}")
