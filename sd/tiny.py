"""python -m sd.tiny --out DIR: something to try every SD command on, in seconds, without a 4 GB download.

Writes a small Stable Diffusion 1.x model with random weights in the diffusers layout that real
checkpoints use (model_index.json, unet/, vae/, text_encoder/, tokenizer/ with a byte-level
vocabulary, scheduler/, rectflow.json: sample it with Euler steps), and beside it what the other
commands take:

    DIR/model/           the model           python -m sd.generate --model DIR/model --prompt "a cat" --out cat.png
    DIR/controlnet/      a ControlNet for it --controlnet DIR/controlnet --control-image DIR/control.png
    DIR/lora.safetensors a kohya LoRA for it --lora DIR/lora.safetensors:0.8
    DIR/image.png        an image            --init-image DIR/image.png, or python -m sd.invert --image DIR/image.png
    DIR/control.png      a control image (a disc's edges)

Random weights make coloured noise, not pictures: the point is that every command, flag and file
format runs exactly as it does on InstaFlow's real weights (docs/sampling.md says how to get those).
The same seed writes the same files.
"""
import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .checkpoints.loaders import save_component
from .checkpoints.safetensors_io import save_file
from .cli import HelpFormatter, check_out, fail, save_png
from .controlnet import ControlNet
from .edits.lora import extract_lora
from .models.clip import TextEncoder
from .models.tokenizer import BOS, EOS, byte_vocab
from .models.unet import UNet
from .models.vae import VAE
from .sampling.pipeline import PipelineError

UNET = dict(in_channels=4, out_channels=4, block_out_channels=[32, 64], layers_per_block=1,
            down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=8,
            cross_attention_dim=32, norm_num_groups=8, sample_size=64)
VAE_CONFIG = dict(block_out_channels=[32, 32, 64, 64], layers_per_block=1, norm_num_groups=8, sample_size=512)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="quick_gelu")
SCHEDULER = {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
             "prediction_type": "epsilon"}


def write_model(root, seed=0):
    """The model folder (root/model) and the files that go with it; returns root/model."""
    torch.manual_seed(seed)
    vocab = byte_vocab()
    unet, vae = UNet(UNET), VAE(VAE_CONFIG)
    text = TextEncoder({**TEXT, "vocab_size": len(vocab)})
    model = Path(root) / "model"
    save_component(unet, model / "unet", "unet")
    save_component(vae, model / "vae", "vae")
    save_component(text, model / "text_encoder", "text_encoder")
    tok = model / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    (tok / "vocab.json").write_text(json.dumps(vocab))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
                                                           "model_max_length": 77}))
    (model / "scheduler").mkdir(exist_ok=True)
    (model / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    (model / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"]}, indent=2))
    (model / "rectflow.json").write_text(json.dumps({"sampler": "euler", "note": "random weights (python -m sd.tiny)"}))

    # a ControlNet for this UNet: its encoder copied, and (unlike a fresh one) nonzero zero convs, so it acts
    net = ControlNet.from_unet(unet)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith("controlnet_"):
                p.normal_(0, 0.02)
    save_component(net, Path(root) / "controlnet", "controlnet")

    # a rank-2 LoRA: the truncated SVD of a random change to the attention projections (kohya names)
    tuned = copy.deepcopy(unet)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if name.endswith(("to_q.weight", "to_k.weight", "to_v.weight")):
                p.add_(0.05 * torch.randn_like(p))
    save_file(extract_lora(unet, tuned, rank=2), Path(root) / "lora.safetensors")

    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 30, xx - 34)
    image = np.zeros((64, 64, 3), np.uint8)
    image[r < 18] = (200, 40, 40)
    image[r >= 18] = (40, 90, 200)
    save_png(image, Path(root) / "image.png")
    edges = np.repeat(((np.abs(r - 18) < 1.0) * 255).astype(np.uint8)[..., None], 3, axis=2)
    save_png(edges, Path(root) / "control.png")
    return model


def build_parser():
    p = argparse.ArgumentParser(prog="python -m sd.tiny", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/tiny"), help="folder to write into")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_out(args.out, folder=True)
    except PipelineError as e:
        return fail(e)
    model = write_model(args.out, args.seed)
    o = args.out
    print(f"wrote a tiny random SD 1.x model to {model}, a ControlNet, a LoRA and two images to {o}; try:\n"
          f"  python -m sd.generate --model {model} --prompt \"a red circle\" --height 64 --width 64 --out {o}/cat.png\n"
          f"  python -m sd.generate --model {model} --prompt \"a red circle\" --init-image {o}/image.png --strength 0.6 "
          f"--out {o}/edit.png\n"
          f"  python -m sd.invert --model {model} --image {o}/image.png --prompt \"a red circle\" --steps 4 --out {o}/noise.safetensors\n"
          f"  python -m sd.generate --model {model} --prompt \"a blue circle\" --lora {o}/lora.safetensors:0.8 "
          f"--controlnet {o}/controlnet --control-image {o}/control.png --height 64 --width 64 --out {o}/controlled.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
