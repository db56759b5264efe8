"""InstaFlow's text-to-image sampler: a rectified flow in SD 1.5's latent space, Euler steps.

    latents X_0 = seeded noise (torch.randn on a CPU generator, float32, then moved; same seed,
                  same image as the reference pipelines)
    for i in 0..N-1:   t_i = i / N;  the UNet sees the timestep (1 - t_i) * 1000 (noise at 1000)
                       v = v_neg + w (v_text - v_neg)   (when w > 1)
                       X <- X + (1/N) v
    image = VAE.decode(X / scaling_factor), mapped from [-1, 1] to uint8.

Image-to-image (SDEdit in rectified-flow time) starts the same loop at t0 = 1 - strength from
X_t0 = t0 X_1^img + (1 - t0) X_0; `invert` runs it backwards from an image's latents to noise.

With sampler="ddim" or "dpm++" the same pipeline samples an epsilon-prediction teacher (SD 1.5)
with the solvers of sd/sampling/samplers.py instead.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rectflow.checks import positive_int

from ..checkpoints.images import ImageError, resize, to_model_range
from ..checkpoints.loaders import check_model_folder, load_text_encoder, load_tiny_vae, load_unet, load_vae
from ..controlnet.control import control_tensor, controlled
from ..controlnet.model import misfits
from ..edits import deltas, lora
from ..models.tokenizer import load_tokenizer
from .euler import cfg_euler_step, compile_step
from .loop import SAMPLER_NAMES, cfg_context, sample
from .timer import Timer


class PipelineError(ValueError):
    """Bad arguments to the pipeline (sizes, steps, prompt counts)."""


def check_size(name, value, multiple):
    """An image side must be a positive multiple of `multiple` (the VAE's factor, 8 for SD)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
        raise PipelineError(f"{name} must be a positive multiple of {multiple}, got {value!r}")


def compile_kwargs(mode, device, dtype):
    """torch.compile's arguments for `mode`. On a CPU in bf16 / fp16, 256-bit vector kernels (cpp.simdlen; options
    replace mode "default"): inductor's 512-bit ones can return NaN there (docs/benchmarks.md)."""
    if device.type == "cpu" and dtype in (torch.float16, torch.bfloat16) and mode == "default":
        return {"options": {"cpp.simdlen": 256}}
    return {"mode": mode}


def noise(shape, seed):
    """The project's seed convention: float32 normal noise from a seeded CPU generator."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def noises(sample_shape, seeds):
    """One noise per seed, stacked: [len(seeds), *sample_shape] (sample j from seed j, whatever the batch)."""
    seeds = [int(j) for j in seeds]
    if not seeds:
        return torch.empty((0, *sample_shape))
    return torch.cat([noise((1, *sample_shape), j) for j in seeds])


def slerp(a, b, alpha):
    """Spherical interpolation between two noises (keeps their Gaussian norm):
    sin((1 - a) theta) / sin(theta) a + sin(a theta) / sin(theta) b,  cos(theta) = <a, b> / |a||b|."""
    af, bf = a.flatten().double(), b.flatten().double()
    theta = torch.arccos((af @ bf / (af.norm() * bf.norm())).clamp(-1, 1))
    if theta.abs() < 1e-6:
        return (1 - alpha) * a + alpha * b
    s = math.sin(theta)
    return (math.sin((1 - alpha) * theta) / s * a.double() + math.sin(alpha * theta) / s * b.double()).to(a.dtype)


def to_uint8(images):
    """[B, 3, H, W] in about [-1, 1] -> uint8 [B, H, W, 3]."""
    x = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class Output:
    images: np.ndarray                      # uint8 [B, H, W, 3]
    latents: torch.Tensor = None            # final latents, when asked for
    seconds: dict = field(default_factory=dict)


class OnUNet:
    """A pipeline runs where its UNet is, in the UNet's dtype, and keeps what it compiled in one cache.

    compile= means the same everywhere: False runs eager; True compiles with torch.compile's mode "default";
    a mode name ("default", "reduce-overhead": CUDA graphs on a GPU, "max-autotune") picks that mode."""

    def compiled(self, fn, compile):
        """`fn` (a network, or a method such as vae.decode) compiled once per mode (fullgraph), or `fn` itself when
        compile is False."""
        if not compile:
            return fn
        mode = compile if isinstance(compile, str) else "default"
        if (mode, fn) not in self._compiled:
            kw = compile_kwargs(mode, self.device, self.dtype)
            self._compiled[mode, fn] = torch.compile(fn, fullgraph=True, **kw)
        return self._compiled[mode, fn]

    def euler_step(self, compile):
        """cfg_euler_step, or its compile_step form, in the same cache: always in mode "default", whatever the
        networks' mode (element-wise: a CUDA graph of it would hand back graph-owned latents)."""
        if not compile:
            return cfg_euler_step
        key = ("default", cfg_euler_step)
        if key not in self._compiled:
            self._compiled[key] = compile_step(**compile_kwargs("default", self.device, self.dtype))
        return self._compiled[key]

    @property
    def device(self):
        return next(self.unet.parameters()).device

    @property
    def dtype(self):
        return next(self.unet.parameters()).dtype


class Pipeline(OnUNet):
    def __init__(self, unet, vae, text_encoder, tokenizer, path=None):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.path = path                                   # the folder or file it was loaded from, if any
        self.vae_factor = vae.downsampling                 # 8 for SD: 512 px <-> 64 latents (VAE or TinyVAE)
        self._compiled = {}
        self.loras, self.lora_originals = [], {}            # (file, scale) merged; weights before the first
        self.refiner = None                                 # an SDXL Refiner (sd/sampling/refiner.py) for refine()

    def load_lora(self, path, scale=1.0):
        """Merge a LoRA file into the UNet and text encoder (sd/edits/lora.py); several stack."""
        return lora.load_lora(self, path, scale)

    def unload_lora(self):
        """Restore the weights as they were before the first load_lora, bit-exactly."""
        return lora.unload_lora(self)

    def merge_delta(self, base, finetuned, alpha=1.0, variant=None):
        """InstaFlow's fine-tune recipe (sd/edits/deltas.py): UNet += alpha (finetuned - base), the fine-tune's
        VAE and text encoder."""
        if self.loras:
            raise PipelineError("unload the LoRAs before merging a fine-tune delta (unload_lora restores the "
                                "weights from before the LoRAs, which would drop the delta)")
        return deltas.merge_delta(self, base, finetuned, alpha, variant)

    def _controls(self, controlnet, control_image, control_scale, height, width, n):
        """[(ControlNet, control image [1 or n, 3, H, W] in [0, 1] on the device, scale), ...], all checked
        before anything runs. One ControlNet takes one image (or a batch [n, H, W, 3]); a list of
        ControlNets takes a list of images and a scale each (or one scale for all)."""
        if controlnet is None:
            if control_image is not None:
                raise PipelineError("control_image given without a controlnet")
            return []
        many = isinstance(controlnet, (list, tuple))
        nets, images = (list(controlnet), control_image) if many else ([controlnet], [control_image])
        if control_image is None or not isinstance(images, (list, tuple)) or len(images) != len(nets):
            got = "none" if control_image is None else (len(images) if isinstance(images, (list, tuple)) else "one")
            raise PipelineError(f"{len(nets)} ControlNet(s) but {got} control image(s): give one image per ControlNet "
                                f"(a list when controlnet is a list)")
        scales = list(control_scale) if isinstance(control_scale, (list, tuple)) else [control_scale] * len(nets)
        if len(scales) != len(nets) or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scales):
            raise PipelineError(f"control_scale must be a number or one number per ControlNet ({len(nets)}), "
                                f"got {control_scale!r}")
        out = []
        for i, (net, image, scale) in enumerate(zip(nets, images, scales)):
            problems = misfits(net, self.unet, self.vae_factor)
            if problems:
                raise PipelineError(f"ControlNet {i} does not fit the UNet: " + "; ".join(problems))
            p = next(net.parameters())
            if (p.device, p.dtype) != (self.device, self.dtype):
                raise PipelineError(f"ControlNet {i} is on {p.device} in {p.dtype} but the UNet on {self.device} in "
                                    f"{self.dtype}: load it with load_controlnet(..., dtype=, device=) to match")
            try:
                cond = control_tensor(image, height, width)
            except ImageError as e:
                raise PipelineError(f"control image {i}: {e}") from None
            if cond.shape[0] not in (1, n):
                raise PipelineError(f"control image {i}: {cond.shape[0]} images for {n} prompt(s) x batch: give one, "
                                    f"or one each")
            out.append((net, cond.to(self.device, self.dtype), float(scale)))
        return out

    def latent_shape(self, n, height, width):
        return (n, self.unet.config["in_channels"], height // self.vae_factor, width // self.vae_factor)

    def encode_prompts(self, prompts):
        ids = self.tokenizer(prompts).to(self.device)
        return self.text_encoder(ids).to(self.dtype)

    def encode_image(self, images):
        """X_1 of images: the VAE posterior mean times the scaling factor (uint8 [H, W, 3] or [B, H, W, 3],
        or floats [B, 3, H, W] in [-1, 1])."""
        x = images if torch.is_tensor(images) and images.is_floating_point() else to_model_range(images)
        vae_dtype = next(self.vae.parameters()).dtype
        return (self.vae.encode(x.to(self.device, vae_dtype)) * self.vae.scaling_factor).to(self.dtype).contiguous()

    def _prompts(self, prompt, negative_prompt, batch):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise PipelineError("no prompt given")
        negatives = [""] * len(prompts) if negative_prompt is None else (
            [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt))
        if len(negatives) != len(prompts):
            raise PipelineError(f"{len(prompts)} prompt(s) but {len(negatives)} negative prompt(s): give one per prompt")
        positive_int(batch, "batch", PipelineError)
        return [p for p in prompts for _ in range(batch)], [n for n in negatives for _ in range(batch)]

    def _context(self, prompts, negatives, guidance):
        """The UNet context: [negatives; prompts] with CFG (sampling.cfg_context), in the UNet's dtype."""
        ids = self.tokenizer(prompts).to(self.device)
        neg = self.tokenizer(negatives) if guidance > 1.0 else None
        return cfg_context(self.text_encoder, ids, neg, guidance).to(self.dtype)

    def _init_latents(self, init_image, n, height, width):
        """The init image as model input [1 or n, 3, H, W], and the size it fixes."""
        try:
            init = to_model_range(init_image)
        except ImageError as e:
            raise PipelineError(f"init_image: {e}") from None
        ih, iw = init.shape[-2:]
        want = (ih if height is None else height, iw if width is None else width)
        if want != (ih, iw):
            raise PipelineError(f"init_image is {ih}x{iw} pixels but height x width asks for {want[0]}x{want[1]}: "
                                f"resize the image first (sd.checkpoints.images.fit; the CLI does it)")
        if init.shape[0] not in (1, n):
            raise PipelineError(f"{init.shape[0]} init images for {n} prompt(s) x batch: give one, or one each")
        return init, ih, iw

    def _check_call(self, n, steps, sampler, height, width, init_image, strength):
        """Every value of a call checked before any work: (the init image as model input or None, height, width)."""
        init = None
        if init_image is not None:
            init, height, width = self._init_latents(init_image, n, height, width)
        height, width = 512 if height is None else height, 512 if width is None else width
        for name, val in (("height", height), ("width", width)):
            check_size(name, val, 8)
        if sampler not in SAMPLER_NAMES:
            raise PipelineError(f"unknown sampler {sampler!r}: choose {', '.join(SAMPLER_NAMES)}")
        positive_int(steps, "steps", PipelineError)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise PipelineError(f"strength must lie in (0, 1], got {strength!r}")
        if init_image is not None and sampler != "euler":
            raise PipelineError(f"image-to-image runs the rectified flow ('euler'), not {sampler!r}")
        return init, height, width

    def noise_latents(self, latents, n, height, width, seed):
        """X_0: the seed's noise, or the given latents (checked against the shape), on the UNet's device and dtype."""
        shape = self.latent_shape(n, height, width)
        if latents is None:
            latents = noise(shape, seed)
        elif tuple(latents.shape) != shape:
            raise PipelineError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(self.device).to(self.dtype)

    def img2img_start(self, init, x0, strength):
        """SDEdit in rectified-flow time: (t0 = 1 - strength, X_t0 = t0 X_1^img + (1 - t0) X_0), Eq. (1)."""
        t0 = 1.0 - strength
        x1 = self.encode_image(init).expand(x0.shape[0], -1, -1, -1)
        # contiguous: another memory layout could lead the convolutions to kernels that differ in the last bits
        return t0, (t0 * x1 + (1 - t0) * x0).contiguous()

    def decode(self, latents, compile=False):
        """Latents -> images [B, 3, H, W] in about [-1, 1] (VAE decode of latents / scaling_factor)."""
        vae_decode = self.compiled(self.vae.decode, compile)
        return vae_decode(latents.to(next(self.vae.parameters()).dtype) / self.vae.scaling_factor)

    @torch.no_grad()
    def __call__(self, prompt, negative_prompt=None, steps=1, guidance=1.0, seed=0, height=None, width=None,
                 batch=1, latents=None, return_latents=False, compile=False, progress=True, sampler="euler",
                 init_image=None, strength=1.0, controlnet=None, control_image=None, control_scale=1.0):
        """Text-to-image (height, width: 512 by default): X_0 the seed's noise, `steps` Euler steps of the
        flow (sampling/euler.py), the VAE. Returns an Output: uint8 images [B, H, W, 3], seconds per part.

        image-to-image: `init_image` (uint8 [H, W, 3], its size is the output's) and `strength` in (0, 1]: the
            flow starts at t0 = 1 - strength (img2img_start); strength 1 is text-to-image with the same seed.
        ControlNet: `controlnet` (one, or a list) and `control_image` (uint8 [H, W, 3] or [H, W], resized; a
            list for a list): each UNet call adds control_scale x their residuals (sd/controlnet/control.py).
        compile: False, True or a torch.compile mode (OnUNet) for the UNet, the VAE decoder and the fused step."""
        prompts, negatives = self._prompts(prompt, negative_prompt, batch)
        init, height, width = self._check_call(len(prompts), steps, sampler, height, width, init_image, strength)
        controls = self._controls(controlnet, control_image, control_scale, height, width, len(prompts))
        latents = self.noise_latents(latents, len(prompts), height, width, seed)
        timer = Timer(self.device, steps, sampler, progress)
        with timer("text_encoder"):
            context = self._context(prompts, negatives, guidance)
        t0 = 0.0
        if init is not None:
            t0, latents = self.img2img_start(init, latents, strength)
        unet = self.compiled(self.unet, compile)
        if controls:
            unet = controlled(unet, [(self.compiled(net, compile), cond, s) for net, cond, s in controls])
        timer.start_steps()
        latents = sample(unet, context, latents, steps, guidance, sampler, self.euler_step(compile),
                         callback=timer.step, t0=t0)
        with timer("vae"):
            images = self.decode(latents, compile)
        return Output(to_uint8(images), latents if return_latents else None, timer.close())

    @torch.no_grad()
    def invert(self, prompt, image, steps=1, guidance=1.0, negative_prompt=None, compile=False):
        """The noise X_0 that the flow maps to `image` (uint8 [H, W, 3], sides multiples of 8): its
        latents X_1 run backwards with `steps` Euler steps from t = 1 to 0 (CFG as in sampling),
            X_{t - 1/N} = X_t - (1/N) v(X_t, t, c).
        Regenerate with pipe(prompt, latents=X_0, steps=...); editing: invert with one prompt,
        regenerate with another. Exact for a straight flow, approximate for a curved one."""
        prompts, negatives = self._prompts(prompt, negative_prompt, 1)
        init, height, width = self._check_call(len(prompts), steps, "euler", None, None, image, 1.0)
        x1 = self.encode_image(init).expand(len(prompts), -1, -1, -1)
        return sample(self.compiled(self.unet, compile), self._context(prompts, negatives, guidance), x1, steps,
                      guidance, "euler", self.euler_step(compile), t0=1.0, t1=0.0)

    def refine(self, image, prompt, size=1024, **kw):
        """InstaFlow's demo's last step: the SDXL Refiner (set pipe.refiner = load_refiner(...)) on a generated
        image (uint8 [H, W, 3]), resized first to size x size (bicubic; None keeps it). Keywords go to
        Refiner.refine (strength=0.3, steps=50, guidance=5.0, seed, negative_prompt, ...)."""
        if self.refiner is None:
            raise PipelineError("no refiner: set pipe.refiner = sd.sampling.refiner.load_refiner(PATH) first")
        if size is not None:
            check_size("size", size, 8)
            image = resize(np.asarray(image), size, size, mode="bicubic")
        return self.refiner.refine(image, prompt, **kw)

    def interpolate(self, prompt, seed_a, seed_b, frames=8, **kw):
        """Images along the slerp between two seeds' noises, one call (InstaFlow: one step) per frame."""
        height, width = kw.pop("height", 512), kw.pop("width", 512)
        a, b = noise(self.latent_shape(1, height, width), seed_a), noise(self.latent_shape(1, height, width), seed_b)
        return np.concatenate([self(prompt, latents=slerp(a, b, k / max(frames - 1, 1)), height=height, width=width,
                                    **kw).images for k in range(frames)])


def default_sampler(path):
    """The sampler a folder asks for in rectflow.json (our exports), else
    "euler" unless the folder's scheduler/scheduler_config.json names an epsilon-prediction
    scheduler (DDIM -> "ddim", others -> "dpm++"). InstaFlow's and 2-RF's released folders are
    SD-shaped and may carry SD's scheduler config: pass the sampler explicitly for them."""
    marker = Path(path) / "rectflow.json"                  # written by `python -m sd.reflow export`
    if marker.exists():
        return json.loads(marker.read_text()).get("sampler", "euler")
    f = Path(path) / "scheduler" / "scheduler_config.json"
    if not f.exists():
        return "euler"
    cfg = json.loads(f.read_text())
    if cfg.get("prediction_type") == "v_prediction":
        raise PipelineError(f"{f}: a v-prediction model (SD 2.x 768-v?): not supported; the samplers here take "
                            f"epsilon-prediction teachers (ddim, dpm++) and rectified flows (euler)")
    if cfg.get("prediction_type", "epsilon") != "epsilon" or "FlowMatch" in cfg.get("_class_name", ""):
        return "euler"
    return "ddim" if cfg.get("_class_name") == "DDIMScheduler" else "dpm++"


def load_pipeline(path, dtype=None, device="cpu", variant=None, config=None, tiny_vae=None):
    """A Pipeline from a diffusers model folder, a model id in the local Hugging Face cache
    ("XCLiu/instaflow_0_9B_from_sd_1_5" after `huggingface-cli download`), or a single SD 1.x
    checkpoint file (whose tokenizer then comes from OpenAI's vocabulary file, see
    sd.models.tokenizer.load_tokenizer). `config` may hold
    overrides per component, {"unet": {...}, "vae": {...}, "text_encoder": {...}}. tiny_vae: a TAESD folder
    (sd/models/tiny_vae.py) that replaces the VAE, for decoding and encoding (fast previews)."""
    path = check_model_folder(path)                        # a path, or an "owner/name" id in the HF cache
    config = config or {}
    kw = dict(dtype=dtype, device=device, variant=variant)
    unet = load_unet(path, config=config.get("unet"), **kw)
    vae = load_tiny_vae(tiny_vae, **kw) if tiny_vae else load_vae(path, config=config.get("vae"), **kw)
    text = load_text_encoder(path, config=config.get("text_encoder"), **kw)
    tokenizer = load_tokenizer(path if path.is_dir() else None)
    return Pipeline(unet, vae, text, tokenizer, path)
