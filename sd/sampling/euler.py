"""The fused rectified-flow Euler step of InstaFlow's sampler, with classifier-free guidance:

    v = v_neg + w (v_text - v_neg)          (CFG; the batch holds negatives first, as the reference)
    latents <- latents + dt * v             (Euler, X_{t+dt} = X_t + dt v(X_t, t))

written as plain functions so that `torch.compile(fullgraph=True)` fuses each into one kernel.
"""
import torch


def guide(pred, guidance: float, cfg: bool):
    """Classifier-free guidance on a [2B, ...] = [negative; text] prediction: neg + w (text - neg)."""
    if not cfg:
        return pred
    neg, text = pred.chunk(2)
    return neg + guidance * (text - neg)


def euler_update(latents, v, dt: float):
    """X_{t+dt} = X_t + dt v, in the latents' dtype."""
    return (latents + dt * v).to(latents.dtype)


def guided_euler_update(latents, v_pred, guidance: float, dt: float):
    """One Euler step with CFG: v_pred is [2B, ...] = [v_neg; v_text]."""
    return euler_update(latents, guide(v_pred, guidance, True), dt)


def cfg_euler_step(latents, v_pred, guidance: float, dt: float, cfg: bool):
    """One Euler step from the UNet's output; with cfg, v_pred is [2B, ...] = [v_neg; v_text]."""
    return guided_euler_update(latents, v_pred, guidance, dt) if cfg else euler_update(latents, v_pred, dt)


_compiled = {}


def fused_step(compile=False):
    """The step function cfg_euler_step: eager, or with each of its two updates compiled once
    (fullgraph). dynamic=True makes the step size, the guidance and the shapes symbols from the first
    compile, so a process that samples with many step counts, scales, batch sizes and image sizes
    compiles a few kernels (per dtype; sides of 1 are specialised), not one per value, which hit
    Dynamo's recompile limit of 8 with dynamic=False."""
    if not compile:
        return cfg_euler_step
    if not _compiled:
        plain = torch.compile(euler_update, fullgraph=True, dynamic=True)
        guided = torch.compile(guided_euler_update, fullgraph=True, dynamic=True)
        _compiled["step"] = lambda latents, v, guidance, dt, cfg: (guided(latents, v, guidance, dt) if cfg
                                                                   else plain(latents, v, dt))
    return _compiled["step"]
