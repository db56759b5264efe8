"""The fused rectified-flow Euler step of InstaFlow's sampler, with classifier-free guidance:

    v = v_neg + w (v_text - v_neg)          (CFG; the batch holds negatives first, as the reference)
    latents <- latents + dt * v             (Euler, X_{t+dt} = X_t + dt v(X_t, t))

written as one plain function so that `torch.compile(fullgraph=True)` fuses it into one kernel.
"""
import torch


def guide(pred, guidance: float, cfg: bool):
    """Classifier-free guidance on a [2B, ...] = [negative; text] prediction: neg + w (text - neg)."""
    if not cfg:
        return pred
    neg, text = pred.chunk(2)
    return neg + guidance * (text - neg)


def cfg_euler_step(latents, v_pred, guidance: float, dt: float, cfg: bool):
    """One Euler step from the UNet's output; with cfg, v_pred is [2B, ...] = [v_neg; v_text]."""
    return (latents + dt * guide(v_pred, guidance, cfg)).to(latents.dtype)


_compiled = {}


def fused_step(compile=False):
    """The step function: eager, or compiled once (fullgraph) when `compile` and torch.compile work."""
    if not compile:
        return cfg_euler_step
    if "step" not in _compiled:
        _compiled["step"] = torch.compile(cfg_euler_step, fullgraph=True, dynamic=False)
    return _compiled["step"]
