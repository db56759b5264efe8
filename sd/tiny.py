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
    DIR/taesd/           a tiny VAE (TAESD)  --tiny-vae DIR/taesd
    DIR/refiner/         an SDXL Refiner     python -m sd.refine --model DIR/refiner, sd.generate --refiner DIR/refiner
    DIR/pt_inception.pth FID's Inception     python -m sd.evaluate --inception DIR/pt_inception.pth (pytorch-fid's layout)
    DIR/clip/            a CLIP model        python -m sd.evaluate --clip DIR/clip (transformers' CLIPModel layout)
    DIR/captions.txt, DIR/refs/  captions and reference images for sd.evaluate

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
from .evaluation.inception import FIDInception
from .models.clip import CLIPModel, TextEncoder, TextEncoderWithProjection
from .models.tiny_vae import TinyVAE
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
# the SDXL Refiner's structure at tiny widths: no attention at the outer levels, per-level heads, linear projections,
# two transformer layers per block, the "text_time" added conditioning (pooled text + 5 time ids of 8 sinusoids)
REFINER_UNET = dict(in_channels=4, out_channels=4, block_out_channels=[16, 32, 64, 64], layers_per_block=1,
                    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                    attention_head_dim=[2, 4, 8, 8], transformer_layers_per_block=2, use_linear_projection=True,
                    cross_attention_dim=32, addition_embed_type="text_time", addition_time_embed_dim=8,
                    projection_class_embeddings_input_dim=16 + 5 * 8, norm_num_groups=8, sample_size=128)
REFINER_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                     "beta_schedule": "scaled_linear", "interpolation_type": "linear", "num_train_timesteps": 1000,
                     "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading",
                     "use_karras_sigmas": False}
TAESD_TINY = dict(encoder_block_out_channels=[8, 8, 8, 8], decoder_block_out_channels=[8, 8, 8, 8],
                  num_encoder_blocks=[1, 1, 1, 1], num_decoder_blocks=[1, 1, 1, 1])
CLIP_TINY = dict(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  max_position_embeddings=77, hidden_act="quick_gelu"),
                 vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                    image_size=32, patch_size=8, hidden_act="quick_gelu"), projection_dim=24)
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
    write_vocabulary(model / "tokenizer")
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


def write_vocabulary(folder, pad=EOS):
    """The byte-level vocabulary (vocab.json, an empty merges.txt) and the tokenizer's config, padding with `pad`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(byte_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": pad,
                                                             "model_max_length": 77}))


def write_refiner(folder):
    """An SDXL Refiner folder as stabilityai's (model_index.json, unet/, vae/ with SDXL's scaling factor and
    force_upcast, text_encoder_2/ with its projection, tokenizer_2/ padding with "!", scheduler/)."""
    vocab = byte_vocab()
    save_component(UNet(REFINER_UNET), folder / "unet", "unet")
    save_component(VAE({**VAE_CONFIG, "scaling_factor": 0.13025, "force_upcast": True}), folder / "vae", "vae")
    text = TextEncoderWithProjection({**TEXT, "vocab_size": len(vocab), "hidden_act": "gelu", "projection_dim": 16,
                                      "eos_token_id": 2})
    save_component(text, folder / "text_encoder_2", "text_encoder_2")
    write_vocabulary(folder / "tokenizer_2", pad="!")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(REFINER_SCHEDULER, indent=2))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None], "tokenizer": [None, None],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "requires_aesthetics_score": True,
        "force_zeros_for_empty_prompt": False}, indent=2))
    return folder


def write_clip(folder):
    """A CLIP model folder in transformers' CLIPModel layout (config.json, model.safetensors, the vocabulary)."""
    vocab = byte_vocab()
    text = {**CLIP_TINY["text_config"], "vocab_size": len(vocab), "bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS]}
    model = CLIPModel(text, CLIP_TINY["vision_config"], CLIP_TINY["projection_dim"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip",
                                                    "text_config": text, "vision_config": CLIP_TINY["vision_config"],
                                                    "projection_dim": CLIP_TINY["projection_dim"]}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    write_vocabulary(folder)
    return folder


def write_inception(path, seed=0):
    """FID's Inception-v3 in pytorch-fid's layout (a state dict, BatchNorm statistics and num_batches_tracked too),
    random weights scaled (He's initialisation) so that features stay alive through the 94 layers."""
    g = torch.Generator().manual_seed(seed)
    sd = FIDInception().state_dict()
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        elif k.endswith(("running_mean", "bias")):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
        elif v.is_floating_point() and v.ndim > 1:
            v.copy_(torch.randn(v.shape, generator=g) * (2 / v[0].numel()) ** 0.5)
        elif v.is_floating_point():
            v.copy_(1 + 0.1 * torch.randn(v.shape, generator=g))
    torch.save(sd, path)
    return path


def write_extras(root, seed=0):
    """What the evaluation, the refiner and the previews take: a TAESD, an SDXL Refiner, FID's Inception file, a
    CLIP model, captions and reference images."""
    root = Path(root)
    torch.manual_seed(seed + 1)
    save_component(TinyVAE(TAESD_TINY), root / "taesd", "tiny_vae")
    write_refiner(root / "refiner")
    write_clip(root / "clip")
    write_inception(root / "pt_inception.pth", seed)
    (root / "captions.txt").write_text("a red circle\na blue square\na green circle\na yellow square\n")
    rng = np.random.default_rng(seed)
    (root / "refs").mkdir(exist_ok=True)
    for k in range(4):
        save_png(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), root / "refs" / f"{k}.png")


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
    write_extras(args.out, args.seed)
    o = args.out
    print(f"wrote a tiny random SD 1.x model to {model}, a ControlNet, a LoRA, two images, a TAESD, an SDXL Refiner, "
          f"FID's Inception, a CLIP model, captions and reference images to {o}; try:\n"
          f"  python -m sd.generate --model {model} --prompt \"a red circle\" --height 64 --width 64 --out {o}/cat.png\n"
          f"  python -m sd.generate --model {model} --prompt \"a red circle\" --init-image {o}/image.png --strength 0.6 "
          f"--out {o}/edit.png\n"
          f"  python -m sd.invert --model {model} --image {o}/image.png --prompt \"a red circle\" --steps 4 --out {o}/noise.safetensors\n"
          f"  python -m sd.generate --model {model} --prompt \"a blue circle\" --lora {o}/lora.safetensors:0.8 "
          f"--controlnet {o}/controlnet --control-image {o}/control.png --height 64 --width 64 --out {o}/controlled.png\n"
          f"  python -m sd.generate --model {model} --prompt \"a red circle\" --tiny-vae {o}/taesd --height 64 --width 64 "
          f"--out {o}/preview.png\n"
          f"  python -m sd.refine --model {o}/refiner --image {o}/image.png --prompt \"a red circle\" --steps 4 --strength 0.5 "
          f"--out {o}/refined.png\n"
          f"  python -m sd.generate --model {model} --prompt \"a red circle\" --height 64 --width 64 --refiner {o}/refiner "
          f"--refine-steps 4 --refine-strength 0.5 --refine-size 64 --out {o}/refined_cat.png\n"
          f"  python -m sd.evaluate --model {model} --captions {o}/captions.txt --n 4 --height 64 --width 64 "
          f"--inception {o}/pt_inception.pth --clip {o}/clip --ref-images {o}/refs --out {o}/evaluation\n"
          f"  python -m sd.demo --model {model} --size 64      (then open the address it prints; Ctrl-C stops it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
