"""CLIP score (Hessel et al. 2021; InstaFlow's Table 1): how well images match their captions, as the
cosine of their CLIP embeddings,

    clip_score(image, caption) = <E_I(image), E_T(caption)> / (|E_I(image)| |E_T(caption)|),

averaged over the images. InstaFlow reports this raw mean (0.304 for InstaFlow-0.9B in one step with
ViT-g/14); torchmetrics reports 100 x max(cos, 0), returned beside it.

    model = load_clip("clip-vit-large-patch14")        # a transformers CLIPModel folder
    scores = clip_score(model, model.tokenizer, images, captions)   # one cosine per image

Preprocessing as transformers' CLIPImageProcessor, written in torch: the shortest side resized to S
(the vision config's image_size) with an antialiased bicubic filter on 8-bit images (torch's uint8
kernel: PIL's a = -0.5 and PIL's rounding between the two passes), a centre crop to S x S, x / 255, then
(x - mean) / std with CLIP's mean and std. A preprocessor_config.json in the folder overrides size,
crop size, mean, std and the filter. PIL computes in 8-bit fixed point, so a few pixels differ from
ours by one level (docs/evaluation.md).
"""
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints.loaders import CheckpointError, _build, _component_files, read_weights
from ..models.clip import CLIPModel
from ..models.tokenizer import load_tokenizer

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
RESAMPLE = {2: "bilinear", 3: "bicubic"}               # PIL's Resampling numbers, as the config writes them


def _side(value, key):
    """A size of preprocessor_config.json: an int, or a dict with `key` (or height / width)."""
    if isinstance(value, int):
        return value
    return value.get(key, value.get("height"))


def preprocess_config(folder, image_size):
    """CLIPImageProcessor's settings: its defaults at S = image_size, overridden by preprocessor_config.json."""
    cfg = dict(size=image_size, crop=image_size, mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")
    f = Path(folder) / "preprocessor_config.json"
    if f.is_file():
        raw = json.loads(f.read_text())
        if "size" in raw:
            cfg["size"] = _side(raw["size"], "shortest_edge")
        if "crop_size" in raw:
            cfg["crop"] = _side(raw["crop_size"], "height")
        cfg["mean"], cfg["std"] = tuple(raw.get("image_mean", cfg["mean"])), tuple(raw.get("image_std", cfg["std"]))
        if raw.get("resample", 3) not in RESAMPLE:
            raise CheckpointError(f"{f}: resample {raw['resample']} is not supported (2 bilinear, 3 bicubic)")
        cfg["resample"] = RESAMPLE[raw.get("resample", 3)]
    if cfg["crop"] != image_size:
        raise CheckpointError(f"{f}: crop size {cfg['crop']} but the vision tower takes {image_size} x {image_size}")
    return cfg


def load_clip(path, dtype=torch.float32, device="cpu"):
    """A transformers CLIPModel folder (config.json with text_config / vision_config, model.safetensors;
    the LAION OpenCLIP conversions use the same layout) -> CLIPModel, with `.tokenizer` (from the folder's
    vocab.json + merges.txt or tokenizer.json, captions truncated to the text tower's positions) and
    `.preprocess` (the image settings)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: not a CLIP model folder (no config.json; expected transformers' CLIPModel "
                              f"layout, e.g. `huggingface-cli download openai/clip-vit-large-patch14`)")
    config = json.loads((folder / "config.json").read_text())
    if not isinstance(config.get("text_config"), dict) or not isinstance(config.get("vision_config"), dict):
        raise CheckpointError(f"{folder / 'config.json'}: no text_config and vision_config: not a CLIPModel config "
                              f"(model_type {config.get('model_type')!r})")
    files = None
    for stem in ("model", "pytorch_model"):
        try:
            files = _component_files(folder, stem, None)
            break
        except CheckpointError:
            continue
    if files is None:
        raise CheckpointError(f"{folder}: no model.safetensors (or pytorch_model.bin)")
    sd = {}
    for f in files:
        sd.update(read_weights(f))
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}   # a buffer, not a weight
    args = dict(text_config=config["text_config"], vision_config=config["vision_config"],
                projection_dim=config.get("projection_dim", 512))
    model = _build(lambda c: CLIPModel(**c), args, sd, folder, dtype, device)
    model.tokenizer = load_tokenizer(folder, max_length=model.text_model.config["max_position_embeddings"])
    model.preprocess = preprocess_config(folder, model.image_size)
    return model


def as_pixels(images):
    """uint8 [N, H, W, 3] (numpy or torch) or float [N, 3, H, W] in [0, 1] -> uint8 [N, 3, H, W] on the CPU
    (floats are rounded to 8 bits, as saving them to PNG would)."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).cpu()
    if x.dtype == torch.uint8 and x.ndim == 4 and x.shape[-1] == 3:
        return x.permute(0, 3, 1, 2).contiguous()
    if x.is_floating_point() and x.ndim == 4 and x.shape[1] == 3:
        return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    raise ValueError(f"images must be uint8 [N, H, W, 3] or float [N, 3, H, W] in [0, 1], got {x.dtype} {tuple(x.shape)}")


def preprocess(images, cfg):
    """CLIPImageProcessor in torch: shortest side -> size (bicubic, antialiased, on uint8 images: torch's
    uint8 kernel rounds and clamps between its horizontal and vertical passes as PIL does; on floats the
    overshoot of bicubic would survive to the end and some pixels of noisy images differ by 20 levels),
    centre crop, x / 255, (x - mean) / std. Returns float32 [N, 3, crop, crop]."""
    x = as_pixels(images)
    h, w = x.shape[-2:]
    s = cfg["size"]
    new = (int(s * h / w), s) if w <= h else (s, int(s * w / h))        # transformers' shortest-edge rule
    if new != (h, w):
        x = F.interpolate(x, size=new, mode=cfg["resample"], antialias=True, align_corners=False)   # uint8 in, out
    c = cfg["crop"]
    top, left = (new[0] - c) // 2, (new[1] - c) // 2
    x = x[..., top:top + c, left:left + c].float() / 255
    mean, std = (torch.tensor(v, dtype=x.dtype).view(1, 3, 1, 1) for v in (cfg["mean"], cfg["std"]))
    return (x - mean) / std


@torch.no_grad()
def clip_score(model, tokenizer, images, prompts, batch=64):
    """Per-image cosine of the image and caption embeddings (float64 [N]); mean it for CLIP score, or take
    100 x max(cos, 0) for torchmetrics' scale."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} captions: give one caption per image")
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    out = []
    for i in range(0, len(prompts), batch):
        pix = preprocess(images[i:i + batch], model.preprocess).to(dev, dtype)
        a = model.encode_image(pix).double()
        b = model.encode_text(tokenizer(list(prompts[i:i + batch])).to(dev)).double()
        out.append(F.cosine_similarity(a, b, dim=-1).cpu())
    return torch.cat(out)
