"""The networks of Stable Diffusion 1.x, from scratch: UNet (and its `Encoder`), VAE, CLIP text encoder, tokenizer.
The ground floor of sd/: its modules import torch, einops and each other (layers at the bottom), nothing else of sd/.
Parameter names are diffusers' and transformers', so their checkpoints load with a strict load_state_dict."""
