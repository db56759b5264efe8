"""The SDXL Refiner: image-to-image with SDXL's refiner UNet, as InstaFlow's demo refines its one-step images.

    refiner = load_refiner("stabilityai/stable-diffusion-xl-refiner-1.0", dtype=torch.bfloat16)
    out = refiner.refine(image_uint8_HxWx3, "a prompt", strength=0.3, steps=50, guidance=5.0, seed=0)

It follows diffusers' StableDiffusionXLImg2ImgPipeline on the refiner's folder, step for step:
1. text: tokenizer_2 (pads with "!") -> text_encoder_2 -> context = penultimate hidden state [B, 77, 1280]
   and text_embeds = projected pooled state [B, 1280]; with guidance > 1 the negative prompt too (zeros
   when the folder says force_zeros_for_empty_prompt and no negative prompt is given);
2. time ids (the "text_time" conditioning): (original height, width, crop top, crop left, aesthetic score),
   6.0 for the prompt and 2.5 for the negative by default;
3. schedule: N Euler-discrete steps (sd/sampling/samplers.py); img2img keeps the last int(N strength);
4. latents: z = scaling_factor * (VAE posterior *sample* of the image), then x = z + sigma_start eps,
   the posterior noise first and eps second from one torch.Generator("cpu").manual_seed(seed), eps drawn in
   the UNet's dtype (the reference pipeline's order and dtypes, so a seed gives its image);
5. Euler steps of dx/ds = eps_hat with CFG  eps = eps_neg + w (eps_text - eps_neg);
6. decode z / scaling_factor (the VAE runs in float32 when its config says force_upcast).
"""
import torch

from rectflow.checks import positive_int

from ..checkpoints.images import ImageError, to_model_range
from ..checkpoints.loaders import CheckpointError, load_text_encoder, load_unet, load_vae, locate, read_json
from ..models.clip import TextEncoderWithProjection
from ..models.tokenizer import load_tokenizer
from .euler import guide
from .pipeline import OnUNet, Output, PipelineError, to_uint8
from .samplers import add_noise, euler_discrete_schedule, img2img_start, sample_euler_discrete, sd_alphas_cumprod
from .timer import Timer

# scheduler_config.json fields this sampler implements, and the values it supports
SCHEDULER = dict(_class_name="EulerDiscreteScheduler", beta_schedule="scaled_linear", prediction_type="epsilon",
                 interpolation_type="linear", use_karras_sigmas=False, timestep_type="discrete", final_sigmas_type="zero",
                 rescale_betas_zero_snr=False)


class Refiner(OnUNet):
    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler=None, requires_aesthetics_score=True,
                 force_zeros_for_empty_prompt=False, path=None):
        if unet.config.get("addition_embed_type") != "text_time" or not isinstance(text_encoder, TextEncoderWithProjection):
            raise PipelineError("not an SDXL refiner: its UNet needs addition_embed_type 'text_time' and its text encoder "
                                "a projection (text_encoder_2)")
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                          "timestep_spacing": "leading", "steps_offset": 1, **(scheduler or {})}
        self.requires_aesthetics_score = requires_aesthetics_score
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.path = path
        self._compiled = {}

    def schedule(self, steps):
        """(timesteps, sigmas) of `steps` Euler-discrete steps, as the folder's scheduler config sets them."""
        c = self.scheduler
        ac = sd_alphas_cumprod(c["num_train_timesteps"], c["beta_start"], c["beta_end"])
        return euler_discrete_schedule(steps, c["num_train_timesteps"], c["timestep_spacing"], c["steps_offset"], ac)

    def encode_prompts(self, prompts, negatives, guidance):
        """(context, text_embeds), [negatives; prompts] when guidance > 1."""
        ctx, pooled = self.text_encoder.context_and_pooled(self.tokenizer(prompts).to(self.device))
        if guidance <= 1:
            return ctx.to(self.dtype), pooled.to(self.dtype)
        if negatives is None and self.force_zeros_for_empty_prompt:
            nctx, npooled = torch.zeros_like(ctx), torch.zeros_like(pooled)
        else:
            negatives = [""] * len(prompts) if negatives is None else negatives
            nctx, npooled = self.text_encoder.context_and_pooled(self.tokenizer(negatives).to(self.device))
        return torch.cat([nctx, ctx]).to(self.dtype), torch.cat([npooled, pooled]).to(self.dtype)

    def time_ids(self, original_size, crop, aesthetic_score, n):
        """[n, 5]: original (height, width), crop (top, left), aesthetic score (the refiner's "text_time" ids);
        SDXL base folders (requires_aesthetics_score false) take the target size in its place."""
        last = (aesthetic_score,) if self.requires_aesthetics_score else tuple(original_size)
        ids = torch.tensor([[*original_size, *crop, *last]], dtype=self.dtype, device=self.device)
        want = self.unet.config["projection_class_embeddings_input_dim"]
        have = ids.shape[1] * self.unet.config["addition_time_embed_dim"] + self.text_encoder.config["projection_dim"]
        if have != want:
            raise PipelineError(f"the UNet's add_embedding takes {want} inputs but {ids.shape[1]} time ids and the text "
                                f"projection give {have}: requires_aesthetics_score does not match this UNet")
        return ids.expand(n, -1)

    @torch.no_grad()
    def refine(self, image, prompt, negative_prompt=None, strength=0.3, steps=50, guidance=5.0, seed=0,
               aesthetic_score=6.0, negative_aesthetic_score=2.5, original_size=None, crop=(0, 0), progress=True,
               return_latents=False, compile=False):
        """Refine `image` (uint8 [H, W, 3], sides multiples of 8) towards `prompt`: the last int(steps strength)
        of `steps` Euler-discrete steps from the image's latents noised to that level (see the module docstring).
        compile: torch.compile the UNet (True, or a mode name). Returns an Output (images uint8 [1, H, W, 3],
        seconds per part)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if len(prompts) != 1 or not isinstance(prompts[0], str):
            raise PipelineError(f"refine takes one prompt (a string), got {prompt!r}")
        negatives = None if negative_prompt is None else [negative_prompt]
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise PipelineError(f"negative_prompt must be a string, got {negative_prompt!r}")
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise PipelineError(f"strength must lie in (0, 1], got {strength!r}")
        positive_int(steps, "steps", PipelineError)
        start = img2img_start(steps, strength)
        if start >= steps:
            raise PipelineError(f"strength {strength} of {steps} steps runs no step (int(steps x strength) = 0): "
                                f"raise the strength or the steps")
        try:
            x = to_model_range(image)
        except ImageError as e:
            raise PipelineError(f"image: {e}") from None
        if x.shape[0] != 1:
            raise PipelineError(f"refine takes one image, got {x.shape[0]}")
        f = self.vae.downsampling
        height, width = x.shape[-2:]
        if height % f or width % f:
            raise PipelineError(f"the image is {height}x{width} pixels: its sides must be multiples of {f} (resize it)")
        original_size = (height, width) if original_size is None else tuple(original_size)
        dev, cfg = self.device, guidance > 1
        timesteps, sigmas = self.schedule(steps)
        timesteps, sigmas = timesteps[start:], sigmas[start:]
        timer = Timer(dev, len(timesteps), "refine", progress)
        with timer("text_encoder"):
            context, pooled = self.encode_prompts(prompts, negatives, guidance)
            ids = self.time_ids(original_size, crop, aesthetic_score, 1)
            if cfg:
                ids = torch.cat([self.time_ids(original_size, crop, negative_aesthetic_score, 1), ids])
        with timer("vae_encode"):
            g = torch.Generator("cpu").manual_seed(seed)
            vae_dtype = next(self.vae.parameters()).dtype
            z = self.vae.encode(x.to(dev, vae_dtype), generator=g).to(self.dtype) * self.vae.scaling_factor
            eps = torch.randn(z.shape, generator=g, dtype=self.dtype).to(dev)     # after the posterior sample
            latents = add_noise(z, eps, sigmas[0])                                # x = z + sigma_start eps
        unet = self.compiled(self.unet, compile)

        def eps_model(xin, k):
            xin = torch.cat([xin, xin]) if cfg else xin
            return guide(unet(xin, k.to(dev).expand(len(xin)), context, added=(pooled, ids)), guidance, cfg)

        timer.start_steps()
        latents = sample_euler_discrete(eps_model, latents, timesteps, sigmas.to(dev), callback=timer.step)
        with timer("vae"):
            images = self.vae.decode(latents.to(vae_dtype) / self.vae.scaling_factor)
        return Output(to_uint8(images), latents if return_latents else None, timer.close())


def check_scheduler(cfg, where):
    """Refuse a scheduler config this sampler does not implement, naming each field."""
    bad = [f"{k}={cfg[k]!r} (supported: {v!r})" for k, v in SCHEDULER.items() if k in cfg and cfg[k] != v]
    if bad:
        raise CheckpointError(f"{where}: scheduler not supported by the refiner's Euler-discrete sampler: " + "; ".join(bad))


def check_refiner_folder(path):
    """What can be checked of a refiner folder before its weights load (its JSON files): (path, model_index,
    scheduler config). A single file, an SD or SDXL base folder, an unsupported scheduler are refused by name."""
    path = locate(path)
    if path.is_file():
        raise CheckpointError(f"{path}: the refiner loads from its diffusers folder (model_index.json, unet/, vae/, "
                              f"text_encoder_2/, tokenizer_2/, scheduler/); the single-file sd_xl_refiner_1.0.safetensors "
                              f"is not supported")
    index = read_json(path / "model_index.json") if (path / "model_index.json").exists() else None
    if index is None or not index.get("text_encoder_2") or not (path / "text_encoder_2").is_dir():
        raise CheckpointError(f"{path}: not an SDXL refiner folder (needs model_index.json naming text_encoder_2, "
                              f"and unet/, vae/, text_encoder_2/, tokenizer_2/, scheduler/; e.g. "
                              f"`huggingface-cli download stabilityai/stable-diffusion-xl-refiner-1.0`)")
    if index.get("text_encoder") and index["text_encoder"][0] is not None:
        raise CheckpointError(f"{path}: an SDXL base folder (it has text_encoder/ too): only the refiner is supported")
    sched = read_json(path / "scheduler" / "scheduler_config.json") if (path / "scheduler").is_dir() else {}
    check_scheduler(sched, path / "scheduler" / "scheduler_config.json")
    return path, index, sched


def load_refiner(path, dtype=None, device="cpu", variant=None):
    """The SDXL Refiner from its diffusers folder (model_index.json, unet/, vae/, text_encoder_2/, tokenizer_2/,
    scheduler/; fp16 variant files with variant="fp16") or a model id in the local Hugging Face cache.
    Weights stay memory-mapped until cast (sd/checkpoints/loaders.py). The VAE is kept in float32 when its
    config says force_upcast (SDXL's VAE overflows in float16)."""
    path, index, sched = check_refiner_folder(path)
    kw = dict(device=device, variant=variant)
    unet = load_unet(path, dtype=dtype, **kw)
    if unet.config.get("addition_embed_type") != "text_time":
        raise CheckpointError(f"{path / 'unet'}: addition_embed_type is {unet.config.get('addition_embed_type')!r}, "
                              f"not 'text_time': not an SDXL UNet")
    vae = load_vae(path, **kw)
    upcast = vae.config.get("force_upcast", False)
    vae = vae.to(torch.float32 if upcast or dtype is None else dtype)
    text = load_text_encoder(path, dtype=dtype, component="text_encoder_2", **kw)
    if not isinstance(text, TextEncoderWithProjection):
        raise CheckpointError(f"{path / 'text_encoder_2'}: no text_projection: not a CLIPTextModelWithProjection")
    tokenizer = load_tokenizer(path, subfolder="tokenizer_2")
    keep = ("num_train_timesteps", "beta_start", "beta_end", "timestep_spacing", "steps_offset")
    return Refiner(unet, vae, text, tokenizer, {k: sched[k] for k in keep if k in sched},
                   index.get("requires_aesthetics_score", True), index.get("force_zeros_for_empty_prompt", False), path)
