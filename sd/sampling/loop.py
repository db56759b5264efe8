"""Sampling from a text-conditioned UNet, shared by the pipeline, triplet generation and the mini run.

    rectified flow ("euler"):  X_0 = noise;  for i < N:  t_i = i / N,
                               v = UNet(X, (1 - t_i) * 1000, c)     (the timestep is noise at 1000)
                               X <- X + (1/N) v                      (Euler, X_{t+dt} = X_t + dt v)
    epsilon teachers ("ddim", "dpm++"): the solvers of sd/sampling/samplers.py on the same UNet.
    consistency students ("consistency", e.g. the mini's LCM): multistep consistency sampling
                               (rectflow/consistency.py) of f(X, t) = X + (1 - t) UNet(X, (1 - t) 1000, c);
                               its re-noising draws from a CPU generator seeded with 0.
With guidance w > 1 the context holds [negatives; prompts] and v = v_neg + w (v_text - v_neg) (CFG).

The rectified flow may also run over a part of the time span, or backwards: from t0 to t1 in N steps
of dt = (t1 - t0) / N, t_i = t0 + (t1 - t0) i / N. Image-to-image starts at t0 = 1 - strength;
inversion runs from t0 = 1 (the image's latents) to t1 = 0 (noise): X_{t - |dt|} = X_t - |dt| v(X_t, t).
"""
import torch

from rectflow.consistency import consistency_sample

from .euler import fused_step, guide
from .samplers import SAMPLERS

SAMPLER_NAMES = ("euler", *SAMPLERS, "consistency")


def rf_timestep(t):
    """The UNet timestep of rectified-flow time t: (1 - t) * 1000 (InstaFlow's convention)."""
    return (1.0 - t) * 1000.0


def cfg_context(text_encoder, ids, negative_ids, guidance):
    """The UNet context of prompts `ids` [B, L]: [negatives; prompts] when guidance > 1 (CFG, negatives
    first as the reference pipeline), else the prompts' alone. negative_ids: [1, L] or [B, L]."""
    context = text_encoder(ids)
    if guidance <= 1.0:
        return context
    return torch.cat([text_encoder(negative_ids.to(ids.device).expand(len(ids), -1)), context])


def guided_model(unet, context, guidance):
    """model(x, timestep) -> the guided prediction; `context` is [2B, ...] = [neg; text] when guidance > 1.
    timestep: a number, or one per sample ([B])."""
    cfg = guidance > 1.0

    def model(x, timestep):
        t = torch.as_tensor(timestep, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        return guide(unet(torch.cat([x] * 2) if cfg else x, torch.cat([t] * 2) if cfg else t, context),
                     float(guidance), cfg)
    return model


def sample(unet, context, latents, steps, guidance=1.0, sampler="euler", compile=False, callback=None,
           t0=0.0, t1=1.0):
    """Integrate from the `latents` at time t0 (noise: 0) to t1 (data: 1) with `steps` model calls;
    returns the latents. callback(i, x) runs after every step. Spans other than [0, 1] (image-to-image,
    inversion) are for the rectified flow's Euler steps only."""
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {sampler!r}: choose {', '.join(SAMPLER_NAMES)}")
    cfg = guidance > 1.0
    if sampler != "euler":
        if (t0, t1) != (0.0, 1.0):
            raise ValueError(f"sampler {sampler!r} runs from noise to data only; image-to-image and inversion "
                             f"take the rectified flow's 'euler'")
        guided = guided_model(unet, context, guidance)
        if sampler == "consistency":
            return consistency_sample(lambda x, t: guided(x, rf_timestep(t)), latents, steps,
                                      generator=torch.Generator().manual_seed(0), callback=callback)
        return SAMPLERS[sampler](guided, latents, steps, callback=callback)
    step, dt = fused_step(compile), (t1 - t0) / steps   # dt < 0 backwards
    for i in range(steps):
        t_i = t0 + (t1 - t0) * i / steps                    # = i / N on [0, 1]
        t = torch.full((latents.shape[0] * (2 if cfg else 1),), rf_timestep(t_i), device=latents.device)
        v = unet(torch.cat([latents] * 2) if cfg else latents, t, context)
        latents = step(latents, v, float(guidance), dt, cfg)   # the fused CFG + Euler step
        if callback:
            callback(i, latents)
    return latents
