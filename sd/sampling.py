"""Sampling from a text-conditioned UNet, shared by the pipeline, triplet generation and the mini run.

    rectified flow ("euler"):  X_0 = noise;  for i < N:  t_i = i / N,
                               v = UNet(X, (1 - t_i) * 1000, c)     (the timestep is noise at 1000)
                               X <- X + (1/N) v                      (Euler, X_{t+dt} = X_t + dt v)
    epsilon teachers ("ddim", "dpm++"): the solvers of sd/samplers.py on the same UNet.
With guidance w > 1 the context holds [negatives; prompts] and v = v_neg + w (v_text - v_neg) (CFG).
"""
import torch

from .euler import fused_step, guide
from .samplers import SAMPLERS

SAMPLER_NAMES = ("euler", *SAMPLERS)


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


def sample(unet, context, latents, steps, guidance=1.0, sampler="euler", compile=False, callback=None):
    """Integrate from the noise `latents` to the data end with `steps` model calls; returns the latents.
    callback(i, x) runs after every step."""
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {sampler!r}: choose {', '.join(SAMPLER_NAMES)}")
    cfg = guidance > 1.0
    if sampler != "euler":
        return SAMPLERS[sampler](guided_model(unet, context, guidance), latents, steps, callback=callback)
    step, dt = fused_step(compile), 1.0 / steps
    for i in range(steps):
        t = torch.full((latents.shape[0] * (2 if cfg else 1),), rf_timestep(i / steps), device=latents.device)
        v = unet(torch.cat([latents] * 2) if cfg else latents, t, context)
        latents = step(latents, v, float(guidance), dt, cfg)   # the fused CFG + Euler step
        if callback:
            callback(i, latents)
    return latents
