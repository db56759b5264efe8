"""Stable Diffusion 1.x from scratch and InstaFlow on it, grouped by concern (each import points down):

    sd.models        UNet, VAE, CLIP text encoder, tokenizer                       (the ground floor)
    sd.checkpoints   safetensors I/O, diffusers folders / single files, hub-cache ids, images
    sd.edits         LoRA files, fine-tune deltas                 sd.controlnet   ControlNet, Canny
    sd.sampling      the pipeline, the sampling loop, teacher samplers, the fused Euler step
    sd.training      triplets, the objectives (eps, reflow, distill), the trainer
    commands         python -m sd.generate / sd.invert / sd.reflow / sd.mini       (the top floor)
"""
from .checkpoints.loaders import CheckpointError, load_text_encoder, load_unet, load_vae, save_unet
from .checkpoints.safetensors_io import SafetensorsError, load_file, safe_open, save_file
from .models.clip import TextEncoder
from .models.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from .models.unet import UNet
from .models.vae import VAE
from .sampling.pipeline import Pipeline, PipelineError, load_pipeline

__all__ = ["UNet", "VAE", "TextEncoder", "load_unet", "load_vae", "load_text_encoder", "save_unet",
           "CheckpointError", "SafetensorsError", "Tokenizer", "TokenizerError", "load_tokenizer", "load_file", "save_file",
           "safe_open", "Pipeline", "PipelineError", "load_pipeline"]
