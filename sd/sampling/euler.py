"""InstaFlow's sampler: Euler steps of a rectified flow in SD's latent space, with classifier-free guidance.

    X = X_0 (noise, t = 0);   for i in 0 .. N-1:   t_i = t0 + (t1 - t0) i / N
        v = UNet(X, (1 - t_i) * 1000, c)        the UNet's timestep counts noise: 1000 at t = 0
        v = v_neg + w (v_text - v_neg)          CFG, when w > 1 (the batch holds [negatives; prompts])
        X = X + dt v                             Euler, X_{t+dt} = X_t + dt v, dt = (t1 - t0) / N

On [0, 1] (text to image) t_i = i / N. Image-to-image starts at t0 = 1 - strength; inversion runs
from t0 = 1 (the image's latents) to t1 = 0 (noise), dt < 0. The last two lines are one function,
`cfg_euler_step`, which `torch.compile` fuses into one kernel (the pipeline's compile= option).
"""
import torch


def rf_timestep(t):
    """The UNet timestep of rectified-flow time t: (1 - t) * 1000 (InstaFlow's convention)."""
    return (1.0 - t) * 1000.0


def guide(pred, guidance: float, cfg: bool):
    """Classifier-free guidance on a [2B, ...] = [negative; text] prediction: neg + w (text - neg)."""
    if not cfg:
        return pred
    neg, text = pred.chunk(2)
    return neg + guidance * (text - neg)


def cfg_euler_step(latents, v, guidance: float, dt: float, cfg: bool):
    """One step from the UNet's output v ([2B, ...] = [v_neg; v_text] with cfg): CFG, then Euler, in the
    latents' dtype."""
    return (latents + dt * guide(v, guidance, cfg)).to(latents.dtype)


def compile_step(**compile_kwargs):
    """cfg_euler_step compiled (fullgraph), one entry point with CFG and one without, so that the two do not share
    one budget of Dynamo's 8 recompiles (dtypes and batch size 1 each cost one). dynamic=True makes the step size,
    the guidance and the shapes symbols: many step counts, scales and sizes share a few kernels, not one each."""
    kw = dict(fullgraph=True, dynamic=True, **compile_kwargs)
    guided = torch.compile(lambda latents, v, guidance, dt: cfg_euler_step(latents, v, guidance, dt, True), **kw)
    plain = torch.compile(lambda latents, v, dt: cfg_euler_step(latents, v, 1.0, dt, False), **kw)
    return lambda latents, v, guidance, dt, cfg: guided(latents, v, guidance, dt) if cfg else plain(latents, v, dt)


def sample_euler(unet, context, latents, steps, guidance=1.0, t0=0.0, t1=1.0, step=cfg_euler_step, callback=None):
    """N Euler steps of the flow unet(x, timestep, context) from `latents` at t0 to t1 (the module docstring);
    `step` is cfg_euler_step or its compiled form. callback(i, latents) runs after every step."""
    cfg, dt = guidance > 1.0, (t1 - t0) / steps
    for i in range(steps):
        t_i = t0 + (t1 - t0) * i / steps
        x = torch.cat([latents] * 2) if cfg else latents                     # [negatives; prompts] with CFG
        v = unet(x, torch.full((x.shape[0],), rf_timestep(t_i), device=x.device), context)
        latents = step(latents, v, float(guidance), dt, cfg)                 # CFG, then X <- X + dt v
        if callback:
            callback(i, latents)
    return latents
