"""Every sampler of a text-conditioned UNet behind one call, `sample`, shared by the pipeline, triplet
generation and the mini run. The samplers, in one table:

    name         model                        what runs                                      file
    euler        rectified flow (InstaFlow,   Euler in rectified-flow time, CFG fused in the  sampling/euler.py
                 2-RF, students)              step; any span t0 -> t1 (img2img, inversion)
    ddim         epsilon teacher (SD 1.5)     DDIM (eta 0) = Euler in rectified-flow time     sampling/samplers.py
    dpm++        epsilon teacher (SD 1.5)     DPM-Solver++(2M)                                sampling/samplers.py
    consistency  consistency student (LCM)    multistep consistency sampling of               rectflow/consistency.py
                                              f(X, t) = X + (1 - t) UNet(X, (1 - t) 1000, c);
                                              its re-noising draws from a CPU generator seeded 0

With guidance w > 1 the context holds [negatives; prompts] and v = v_neg + w (v_text - v_neg) (CFG).
"""
import torch

from rectflow.consistency import consistency_sample

from .euler import cfg_euler_step, guide, rf_timestep, sample_euler
from .samplers import sample_ddim, sample_dpmpp_2m

SAMPLER_NAMES = ("euler", "ddim", "dpm++", "consistency")
TEACHER_SOLVERS = {"ddim": sample_ddim, "dpm++": sample_dpmpp_2m}      # solver(eps_model, latents, steps, callback)


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


def sample(unet, context, latents, steps, guidance=1.0, sampler="euler", step=cfg_euler_step, callback=None,
           t0=0.0, t1=1.0):
    """Integrate from the `latents` at time t0 (noise: 0) to t1 (data: 1) with `steps` model calls;
    returns the latents. callback(i, x) runs after every step. `step` (euler only): cfg_euler_step or
    its compiled form. Spans other than [0, 1] (image-to-image, inversion) are for euler only."""
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {sampler!r}: choose {', '.join(SAMPLER_NAMES)}")
    if sampler == "euler":
        return sample_euler(unet, context, latents, steps, guidance, t0, t1, step, callback)
    if (t0, t1) != (0.0, 1.0):
        raise ValueError(f"sampler {sampler!r} runs from noise to data only; image-to-image and inversion "
                         f"take the rectified flow's 'euler'")
    guided = guided_model(unet, context, guidance)
    if sampler == "consistency":
        return consistency_sample(lambda x, t: guided(x, rf_timestep(t)), latents, steps,
                                  generator=torch.Generator().manual_seed(0), callback=callback)
    return TEACHER_SOLVERS[sampler](guided, latents, steps, callback=callback)
