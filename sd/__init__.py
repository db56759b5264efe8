"""Stable Diffusion 1.x from scratch: safetensors I/O, UNet, VAE, CLIP text encoder and tokenizer, loaders;
InstaFlow's sampler (pipeline, sampling, samplers) and training (triplets, objectives, trainer, the
`python -m sd.reflow` CLI, and the laptop-size `python -m sd.mini`)."""
from .clip import TextEncoder
from .loaders import CheckpointError, load_text_encoder, load_unet, load_vae, save_unet
from .safetensors_io import SafetensorsError, load_file, safe_open, save_file
from .tokenizer import Tokenizer, TokenizerError, load_tokenizer
from .unet import UNet
from .vae import VAE

__all__ = ["UNet", "VAE", "TextEncoder", "load_unet", "load_vae", "load_text_encoder", "save_unet",
           "CheckpointError", "SafetensorsError", "Tokenizer", "TokenizerError", "load_tokenizer", "load_file", "save_file", "safe_open"]
