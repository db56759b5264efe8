"""Teacher samplers: the SD schedule, DDIM and DPM-Solver++(2M) equal diffusers' schedulers, and
DDIM is Euler in rectified-flow time."""
import json

import pytest
import torch

from sd.sampling.pipeline import default_sampler, load_pipeline
from sd.sampling.samplers import eps_to_rf, sample_ddim, sd_alphas_cumprod

diffusers = pytest.importorskip("diffusers")
SD15 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            steps_offset=1, prediction_type="epsilon")


def schedulers():
    return {"ddim": diffusers.DDIMScheduler(**SD15, clip_sample=False, set_alpha_to_one=False),
            "dpm++": diffusers.DPMSolverMultistepScheduler(**SD15)}


def test_schedule_equals_diffusers():
    torch.testing.assert_close(sd_alphas_cumprod(), schedulers()["ddim"].alphas_cumprod, atol=0, rtol=0)


def test_ddim_is_euler_in_rectified_flow_time():
    """With a constant epsilon the latent moves on the straight line x = alpha x0 + sigma eps, and
    Euler in rectified-flow time lands on it exactly at every step."""
    ac = sd_alphas_cumprod().double()
    eps, x0 = torch.randn(1, 4, 4, 4, dtype=torch.float64), torch.randn(1, 4, 4, 4, dtype=torch.float64)
    start = 951                                   # the first DDIM timestep for 20 steps: 19 * 50 + 1
    x = ac[start].sqrt() * x0 + (1 - ac[start]).sqrt() * eps
    out = sample_ddim(lambda x, k: eps, x, 20, alphas_cumprod=ac)
    torch.testing.assert_close(out, ac[0].sqrt() * x0 + (1 - ac[0]).sqrt() * eps)
    X, t, v = eps_to_rf(x, eps, ac[start].sqrt(), (1 - ac[start]).sqrt())
    torch.testing.assert_close(v, x0 - eps)
    torch.testing.assert_close(X, t * x0 + (1 - t) * eps)


@pytest.mark.parametrize("sampler", ["ddim", "dpm++"])
@pytest.mark.parametrize("steps", [1, 4, 20])
def test_pipeline_samplers_equal_diffusers_schedulers(model, sampler, steps):  # noqa: F811
    root, unet, vae, text, tok = model
    pipe = load_pipeline(root)
    guidance = 3.0
    with torch.no_grad():
        out = pipe(["a red circle"], steps=steps, guidance=guidance, seed=3, height=32, width=32, sampler=sampler,
                   return_latents=True, progress=False)
        ids = lambda p: tok(p, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids  # noqa: E731
        emb = torch.cat([text(ids([""])).last_hidden_state, text(ids(["a red circle"])).last_hidden_state])
        sched = schedulers()[sampler]
        sched.set_timesteps(steps)
        latents = torch.randn((1, 4, 16, 16), generator=torch.Generator("cpu").manual_seed(3)) * sched.init_noise_sigma
        for t in sched.timesteps:
            e_neg, e_text = unet(torch.cat([latents] * 2), t, encoder_hidden_states=emb).sample.chunk(2)
            latents = sched.step(e_neg + guidance * (e_text - e_neg), t, latents).prev_sample
    assert (out.latents - latents).abs().max().item() <= 1e-4
    assert len(out.seconds["steps"]) == steps


def test_sampler_choice_from_the_scheduler_config(tmp_path):
    assert default_sampler(tmp_path) == "euler"
    (tmp_path / "scheduler").mkdir()
    for cls, expected in [("DDIMScheduler", "ddim"), ("PNDMScheduler", "dpm++"), ("FlowMatchEulerDiscreteScheduler", "euler")]:
        (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": cls}))
        assert default_sampler(tmp_path) == expected


def test_unknown_sampler(model):  # noqa: F811
    from sd.sampling.pipeline import PipelineError
    with pytest.raises(PipelineError, match="unknown sampler 'heun'"):
        load_pipeline(model[0])("a cat", sampler="heun", height=32, width=32, progress=False)
