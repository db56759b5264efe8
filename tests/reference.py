"""InstaFlow's released sampling loop written on diffusers / transformers modules: the oracle of
tests/test_pipeline.py and tests/test_img2img.py and the baseline of bench/pipeline.py; and the
same loop run backwards (inversion)."""
import torch


def embed_cfg(text, tok, prompts, negatives, guidance, dev, dtype):
    """The UNet context: [negatives; prompts] with CFG (guidance > 1), else the prompts'."""
    def embed(p):
        ids = tok(p, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        return text(ids.to(dev)).last_hidden_state.to(dtype)
    return torch.cat([embed(negatives), embed(prompts)]) if guidance > 1 else embed(prompts)


def instaflow_inversion(unet, vae, text, tok, prompt, init, steps, guidance):
    """Backward Euler from the image's latents: X_{t - 1/N} = X_t - (1/N) v(X_t, t), t = 1, ..., 1/N."""
    cfg = guidance > 1
    ctx = embed_cfg(text, tok, [prompt], [""], guidance, unet.device, unet.dtype)
    x = vae.encode(init).latent_dist.mean * vae.config.scaling_factor
    for i in range(steps):
        t = 1.0 - i / steps
        v = unet(torch.cat([x] * 2) if cfg else x, torch.full((2 if cfg else 1,), (1.0 - t) * 1000.0),
                 encoder_hidden_states=ctx).sample
        if cfg:
            v = v[:1] + guidance * (v[1:] - v[:1])
        x = x - v / steps
    return x


def instaflow_reference(unet, vae, text, tok, prompts, negatives, steps, guidance, seed, size, init=None, strength=1.0,
                        controls=()):
    """InstaFlow's released sampling loop, on diffusers/transformers modules. With `init` (float images
    [B, 3, H, W] in [-1, 1]) it is image-to-image: start at t0 = 1 - strength on the straight line
    between the seeded noise and the image's latents, then Euler steps of (1 - t0) / steps.
    controls: [(diffusers ControlNetModel, control image [1, 3, H, W] in [0, 1], scale)], as InstaFlow's
    ControlNet pipeline runs them: same input, timestep and context as the UNet, residuals summed."""
    dev, dtype = unet.device, unet.dtype
    cfg = guidance > 1
    emb = embed_cfg(text, tok, prompts, negatives, guidance, dev, dtype)
    f = 2 ** (len(vae.config.block_out_channels) - 1)        # 2 for this tiny VAE, 8 for SD's
    h, w = (size, size) if isinstance(size, int) else size
    latents = torch.randn((len(prompts), 4, h // f, w // f), generator=torch.Generator("cpu").manual_seed(seed))
    latents = latents.to(dev, dtype)
    t0 = 0.0
    if init is not None:
        x1 = vae.encode(init.to(dev, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
        t0 = 1.0 - strength
        latents = t0 * x1.to(dtype) + (1 - t0) * latents
    dt = (1.0 - t0) / steps
    for i in range(steps):
        t = (1.0 - (t0 + (1.0 - t0) * i / steps)) * 1000.0
        inp = torch.cat([latents] * 2) if cfg else latents
        down, mid = None, None
        for net, cond, scale in controls:
            d, m = net(inp, t, encoder_hidden_states=emb, controlnet_cond=cond.to(dev, dtype), conditioning_scale=scale,
                       return_dict=False)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        v = unet(inp, torch.ones(inp.shape[0], device=dev) * t, encoder_hidden_states=emb,
                 down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
        if cfg:
            v_neg, v_text = v.chunk(2)
            v = v_neg + guidance * (v_text - v_neg)
        latents = latents + dt * v
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return latents, ((image.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
