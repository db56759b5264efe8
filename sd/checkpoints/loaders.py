"""Load and save SD 1.x components: diffusers-format folders and single-file (LDM) checkpoints.

    load_unet(path), load_vae(path), load_text_encoder(path), each with dtype= and device=
    load_text_encoder(path, component="text_encoder_2"): SDXL's second text encoder (with its projection)
    load_lpips(vgg, lin): LPIPS-VGG from torchvision's VGG16 weights and the lpips package's linear layers
    load_tiny_vae(path): TAESD, a diffusers AutoencoderTiny folder (madebyollin/taesd for SD 1.x)
    save_unet(unet, folder): a diffusers `unet/` folder (config.json + safetensors)

`path` is a model folder (with unet/, vae/, text_encoder/), a component folder (with config.json),
a model id ("owner/name") downloaded into the local Hugging Face cache (sd/checkpoints/hub.py),
or one .safetensors/.ckpt file in the original LDM layout (model.diffusion_model.*,
first_stage_model.*, cond_stage_model.transformer.*). Models are built on the meta device and take
the checkpoint's tensors as they are (views of the memory-mapped file), so loading does not hold two
copies. Legacy pickle files (.bin, .ckpt) are read only with torch.load(weights_only=True).
"""
import json
import re
import zipfile
from pathlib import Path

import torch

from ..models.clip import SD15_TEXT, TextEncoder, TextEncoderWithProjection
from ..models.lpips import LPIPS
from ..models.tiny_vae import TinyVAE
from ..models.unet import SD15_UNET, UNet
from ..models.vae import SD15_VAE, VAE
from .hub import ModelNotFound, resolve_model
from .safetensors_io import load_file, save_file


class CheckpointError(ValueError):
    """A checkpoint or model folder cannot be loaded; the message says which file and keys."""


WEIGHT_NAMES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model",
                "text_encoder_2": "model", "controlnet": "diffusion_pytorch_model"}


def holds(keys):
    """What a file holds, for an error about the wrong kind of file: "126 tensors such as 'lora_unet_...'
    (a LoRA file?)", short whatever the file."""
    keys = list(keys)
    first = keys[0] if keys else ""
    first = first if len(first) <= 48 else first[:45] + "..."
    guess = next((kind for kind, marks in (("a LoRA file", ("lora",)), ("a noise file", ("noise",)),
                                           ("a ControlNet", ("controlnet_", "control_model.")),
                                           ("an SD single-file checkpoint", ("model.diffusion_model.",)))
                  if any(m in k for k in keys[:50] for m in marks)), None)
    return f"{len(keys)} tensor(s) such as {first!r}" + (f" ({guess}?)" if guess else "")


def read_weights(path, dtype=None):
    """A state dict from one file: safetensors (our reader; floating tensors cast to `dtype` as they are read,
    when given), or a pickle through weights_only=True."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path, dtype=dtype)
    if path.suffix in (".bin", ".ckpt", ".pt", ".pth"):
        try:           # memory-mapped when the file is a zip archive; others are read whole
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as e:   # noqa: BLE001 - a refused or broken pickle
            raise CheckpointError(f"{path}: cannot be read safely with torch.load(weights_only=True): {e}") from None
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise CheckpointError(f"{path}: expected a dict of tensors")
        return sd
    raise CheckpointError(f"{path}: unknown weights format {path.suffix!r} (use .safetensors, .bin or .ckpt)")


def _component_files(folder, stem, variant):
    """The weight files of a diffusers component folder, preferring safetensors and `variant`."""
    suffixes = [f".{variant}.safetensors", ".safetensors", f".{variant}.bin", ".bin"] if variant else \
               [".safetensors", ".fp16.safetensors", ".bin", ".fp16.bin"]
    for suffix in suffixes:
        f = folder / f"{stem}{suffix}"
        if f.exists():
            return [f]
        index = folder / f"{stem}{suffix}.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values()))]
    raise CheckpointError(f"{folder}: no weights file {stem}{suffixes[0]} (or {', '.join(suffixes[1:])})")


def locate(path):
    """A local file or folder, or a model id ("owner/name") found in the Hugging Face cache (sd/checkpoints/hub.py)."""
    try:
        return resolve_model(path)
    except ModelNotFound as e:
        raise CheckpointError(str(e)) from None


# folders that are not an SD model folder, by what their config says: what they are, and where they go
OTHER_KINDS = {"ControlNetModel": "a ControlNet folder (give it to --controlnet)",
               "AutoencoderTiny": "a TAESD folder (give it to --tiny-vae)",
               "AutoencoderKL": "a VAE folder (a model folder holds it in vae/)",
               "UNet2DConditionModel": "a UNet folder (a model folder holds it in unet/: give the folder above it)",
               "CLIPModel": "a CLIP model folder (give it to sd.evaluate --clip)",
               "CLIPTextModel": "a text encoder folder (a model folder holds it in text_encoder/)",
               "StableDiffusionXLImg2ImgPipeline": "an SDXL Refiner folder (give it to --refiner or python -m sd.refine)",
               "StableDiffusionXLPipeline": "an SDXL base folder (not supported: SD 1.x models and InstaFlow's)"}


def read_json(f):
    """A config file's JSON, or a CheckpointError naming the file."""
    try:
        return json.loads(Path(f).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{f}: cannot be read as JSON ({e})") from None


def check_model_folder(path):
    """A --model that is a folder of another kind (a ControlNet, a TAESD, a refiner, a model's unet/, ...) is
    refused in one line naming what it is, from its config alone (nothing loads). Returns the located path."""
    path = locate(path)
    config = next((f for f in (path / "model_index.json", path / "config.json") if f.is_file()), None)
    if config is not None:
        cfg = read_json(config)
        name = cfg.get("_class_name") or (cfg.get("architectures") or [None])[0]
        if name in OTHER_KINDS:
            raise CheckpointError(f"{path}: {OTHER_KINDS[name]}, not an SD model folder (model_index.json, unet/, "
                                  f"vae/, text_encoder/, tokenizer/)")
    return path


def _resolve(path, component):
    """-> ("folder", component folder) or ("file", checkpoint file), with clear errors."""
    path = locate(path)
    if path.is_file():
        return "file", path
    if (path / component / "config.json").exists():
        return "folder", path / component
    if (path / "config.json").exists():
        return "folder", path
    raise CheckpointError(f"{path}: neither a model folder with {component}/config.json nor a component folder "
                          f"with config.json")


def check_keys(model, sd, where):
    """Strict loading: list missing, unexpected and shape-mismatched keys, all at once."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        def part(name, items):
            return f"\n  {name} ({len(items)}): " + ", ".join(items[:12]) + (" ..." if len(items) > 12 else "") if items else ""
        raise CheckpointError(f"{where}: the checkpoint does not fit the model:"
                              + part("missing", missing) + part("unexpected", unexpected) + part("wrong shape", shapes))


def _build(cls, config, sd, where, dtype, device):
    try:
        with torch.device("meta"):
            model = cls(config)
    except ValueError as e:                      # a config the model cannot build, fields named
        raise CheckpointError(f"{where}: {e}") from None
    check_keys(model, sd, where)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()


# ---- single-file (LDM / CompVis) layout -> our (diffusers) names --------------------------------

_RESNET = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
           ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut"),
           ("nin_shortcut", "conv_shortcut")]


def _rename_resnet(rest):
    for old, new in _RESNET:
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def ldm_unet_to_diffusers(sd, layers_per_block, prefix="model.diffusion_model."):
    """model.diffusion_model.* keys (`prefix`) -> UNet keys (the CompVis block numbering made explicit)."""
    n, out = layers_per_block, {}
    for key, v in sd.items():
        k = key[len(prefix):]
        simple = {"time_embed.0.": "time_embedding.linear_1.", "time_embed.2.": "time_embedding.linear_2.",
                  "input_blocks.0.0.": "conv_in.", "out.0.": "conv_norm_out.", "out.2.": "conv_out."}
        for old, new in simple.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        else:
            m = re.match(r"(input_blocks|middle_block|output_blocks)\.(\d+)\.(?:(\d+)\.)?(.*)", k)
            if m is None:
                raise CheckpointError(f"unknown UNet key {key!r} in the single-file checkpoint")
            kind, i, j, rest = m.group(1), int(m.group(2)), m.group(3), m.group(4)
            if kind == "middle_block":           # middle_block.{0,1,2}.* (no sub-index)
                i, rest = int(i), (j + "." + rest if j is not None else rest)
                k = {0: f"mid_block.resnets.0.{_rename_resnet(rest)}", 1: f"mid_block.attentions.0.{rest}",
                     2: f"mid_block.resnets.1.{_rename_resnet(rest)}"}[i]
            elif kind == "input_blocks":
                level, layer, j = (i - 1) // (n + 1), (i - 1) % (n + 1), int(j)
                if layer == n:                    # input_blocks.{k}.0.op: the downsampler
                    k = f"down_blocks.{level}.downsamplers.0.conv.{rest[len('op.'):]}"
                elif j == 0:
                    k = f"down_blocks.{level}.resnets.{layer}.{_rename_resnet(rest)}"
                else:
                    k = f"down_blocks.{level}.attentions.{layer}.{rest}"
            else:
                level, layer, j = i // (n + 1), i % (n + 1), int(j)
                if j == 0:
                    k = f"up_blocks.{level}.resnets.{layer}.{_rename_resnet(rest)}"
                elif rest.startswith("conv."):     # output_blocks.{k}.{1 or 2}.conv: the upsampler
                    k = f"up_blocks.{level}.upsamplers.0.{rest}"
                else:
                    k = f"up_blocks.{level}.attentions.{layer}.{rest}"
        out[k] = v
    return out


def ldm_vae_to_diffusers(sd, levels):
    """first_stage_model.* keys -> VAE keys (the decoder's `up` levels are numbered in reverse)."""
    out = {}
    attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    for key, v in sd.items():
        k = key[len("first_stage_model."):]
        k = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", k)
        k = re.sub(r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.", k)
        m = re.match(r"^(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", k)
        if m:
            k = f"{m[1]}.mid_block.attentions.0.{attn[m[2]]}.{m[3]}"
            if m[2] != "norm" and v.ndim == 4:
                v = v[:, :, 0, 0]                    # 1x1 convs in LDM, linear layers here
        k = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", k)
        k = re.sub(r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", k)
        k = re.sub(r"^decoder\.up\.(\d+)\.block\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets.", k)
        k = re.sub(r"^decoder\.up\.(\d+)\.upsample\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.", k)
        parts = k.split(".resnets.")
        if len(parts) == 2:
            idx, rest = parts[1].split(".", 1)
            k = f"{parts[0]}.resnets.{idx}.{_rename_resnet(rest)}"
        out[k] = v
    return out


def _strip_text(sd, prefix=""):
    out = {}
    for k, v in sd.items():
        k = k[len(prefix):]
        k = k[len("text_model."):] if k.startswith("text_model.") else k
        if k != "embeddings.position_ids":      # a buffer some transformers files hold, not a weight
            out[k] = v
    return out


def _single_file(path, prefix):
    sd = read_weights(path)
    part = {k: v for k, v in sd.items() if k.startswith(prefix)}
    if not part:
        raise CheckpointError(f"{path}: no keys under {prefix!r}: not an SD 1.x single-file checkpoint "
                              f"(it holds {holds(sd)})")
    return part


def _unet_config_from_ldm(sd, base, pre="model.diffusion_model."):
    """Channel widths, depth, context width and projection type read off the tensors' shapes (also of a
    ControlNet's copy of the encoder, whose keys carry another `pre` and which has no up blocks)."""
    last = max(int(m[1]) for k in sd if (m := re.match(re.escape(pre) + r"input_blocks\.(\d+)\.", k)))
    downs = sorted({int(m[1]) for k in sd if (m := re.match(re.escape(pre) + r"input_blocks\.(\d+)\.0\.op\.", k))})
    n = downs[0] - 1 if downs else last     # input_blocks: conv_in, then n layers (+ a downsampler) per level
    num_levels = len(downs) + 1
    widths = [sd[f"{pre}input_blocks.{1 + lvl * (n + 1)}.0.out_layers.3.weight"].shape[0] for lvl in range(num_levels)]
    cross = [f"{pre}input_blocks.{1 + lvl * (n + 1)}.1.proj_in.weight" in sd for lvl in range(num_levels)]
    ctx = next((v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")), base["cross_attention_dim"])
    proj = next((v for k, v in sd.items() if k.endswith("proj_in.weight")), None)
    cfg = {**base, "block_out_channels": widths, "layers_per_block": n, "cross_attention_dim": ctx,
           "in_channels": sd[f"{pre}input_blocks.0.0.weight"].shape[1],
           "use_linear_projection": proj is not None and proj.ndim == 2,
           "down_block_types": ["CrossAttnDownBlock2D" if c else "DownBlock2D" for c in cross]}
    if f"{pre}out.2.weight" in sd:                      # a UNet's decoder half
        cfg.update(out_channels=sd[f"{pre}out.2.weight"].shape[0],
                   up_block_types=["CrossAttnUpBlock2D" if c else "UpBlock2D" for c in cross[::-1]])
    return cfg


# ---- public loaders ----------------------------------------------------------------------------

def _state_dict(path, component, variant, from_single, dtype=None):
    """(config, state dict in our names, where): tensors memory-mapped from safetensors (read and cast when
    `dtype` differs from the file's), nothing built."""
    kind, where = _resolve(path, component)
    if kind == "folder":
        cfg = json.loads((where / "config.json").read_text())
        sd = {}
        for f in _component_files(where, WEIGHT_NAMES[component], variant):
            sd.update(read_weights(f, dtype))
        if component.startswith("text_encoder"):
            sd = _strip_text(sd)
        return cfg, sd, where
    cfg, sd = from_single(where)
    return cfg, sd, where


def _load(path, component, cls, dtype, device, variant, config, from_single):
    """Config and weights from a component folder or a single file, then `config` on top."""
    cfg, sd, where = _state_dict(path, component, variant, from_single, dtype)
    return _build(cls, {**cfg, **(config or {})}, sd, where, dtype, device)


def _unet_single(f):
    part = _single_file(f, "model.diffusion_model.")
    cfg = _unet_config_from_ldm(part, SD15_UNET)
    return cfg, ldm_unet_to_diffusers(part, cfg["layers_per_block"])


def unet_state_dict(path, variant=None):
    """The UNet's weights of a folder or single file in our names, memory-mapped (safetensors), without
    building a model: (state dict, where). For reading two checkpoints tensor by tensor (sd/edits/deltas.py)."""
    _, sd, where = _state_dict(path, "unet", variant, _unet_single)
    return sd, where


def load_unet(path, dtype=None, device="cpu", variant=None, config=None):
    """The UNet from a diffusers folder or an LDM single file. `config` overrides config fields.
    For single files, widths, depth, context width and projection type are read off the weights;
    the number of heads and of GroupNorm groups are not visible there and default to SD 1.x's
    (attention_head_dim=8, norm_num_groups=32)."""
    return _load(path, "unet", UNet, dtype, device, variant, config, _unet_single)


def load_vae(path, dtype=None, device="cpu", variant=None, config=None):
    def single(f):
        part = _single_file(f, "first_stage_model.")
        levels = 1 + max(int(m[1]) for k in part if (m := re.match(r"first_stage_model\.encoder\.down\.(\d+)\.", k)))
        widths = [part[f"first_stage_model.encoder.down.{i}.block.0.conv2.weight"].shape[0] for i in range(levels)]
        n = 1 + max(int(m[1]) for k in part if (m := re.match(r"first_stage_model\.encoder\.down\.0\.block\.(\d+)\.", k)))
        cfg = {**SD15_VAE, "block_out_channels": widths, "layers_per_block": n,
               "latent_channels": part["first_stage_model.post_quant_conv.weight"].shape[0]}
        return cfg, ldm_vae_to_diffusers(part, levels)
    return _load(path, "vae", VAE, dtype, device, variant, config, single)


def load_tiny_vae(path, dtype=None, device="cpu", variant=None):
    """TAESD from a diffusers AutoencoderTiny folder (config.json + weights; also a model folder's vae/
    when that is one). The full VAE's folder, or a single file, is refused by name."""
    kind, where = _resolve(path, "vae")
    if kind == "file":
        raise CheckpointError(f"{where}: a tiny VAE loads from a diffusers AutoencoderTiny folder (config.json and "
                              f"diffusion_pytorch_model.safetensors, e.g. madebyollin/taesd), not a single file")
    cfg = json.loads((where / "config.json").read_text())
    if cfg.get("_class_name", "AutoencoderTiny") != "AutoencoderTiny":
        raise CheckpointError(f"{where / 'config.json'}: _class_name is {cfg['_class_name']!r}, not AutoencoderTiny "
                              f"(a tiny VAE is a folder like madebyollin/taesd)")
    sd = {}
    for f in _component_files(where, WEIGHT_NAMES["vae"], variant):
        sd.update(read_weights(f))
    return _build(TinyVAE, cfg, sd, where, dtype, device)


def load_text_encoder(path, dtype=None, device="cpu", variant=None, config=None, component="text_encoder"):
    """CLIP's text tower from a folder's `component` (text_encoder/, or SDXL's text_encoder_2/, which holds a
    CLIPTextModelWithProjection: its text_projection makes it a TextEncoderWithProjection) or a single file."""
    def single(f):
        prefix = "cond_stage_model.transformer."
        sd = _strip_text(_single_file(f, prefix), prefix)
        layers = 1 + max(int(m[1]) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
        vocab, width = sd["embeddings.token_embedding.weight"].shape
        cfg = {**SD15_TEXT, "vocab_size": vocab, "hidden_size": width, "num_hidden_layers": layers,
               "intermediate_size": sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
               "max_position_embeddings": sd["embeddings.position_embedding.weight"].shape[0]}
        return cfg, sd
    cfg, sd, where = _state_dict(path, component, variant, single, dtype)
    cls = TextEncoderWithProjection if "text_projection.weight" in sd else TextEncoder
    return _build(cls, {**cfg, **(config or {})}, sd, where, dtype, device)


def load_lpips(vgg, lin, dtype=None, device="cpu"):
    """LPIPS-VGG (sd/models/lpips.py) from the user's files, both read with torch.load(weights_only=True):
    torchvision's VGG16 state dict (vgg16-397923af.pth; its features.0-28 are used, the rest ignored) and the
    lpips package's weights/v0.1/vgg.pth (lin0..lin4.model.1.weight). Missing or mis-shaped keys are named."""
    net, lins = read_weights(vgg), read_weights(lin)
    sd = {k: v for k, v in net.items() if k.startswith("features.") and int(k.split(".")[1]) < 30}
    missing = [f"lin{i}.model.1.weight" for i in range(5) if f"lin{i}.model.1.weight" not in lins]
    if missing:
        raise CheckpointError(f"{lin}: not LPIPS's linear layers (vgg.pth of the lpips package, v0.1): missing "
                              f"{', '.join(missing)}; it holds {holds(lins)}")
    sd.update({f"lins.{i}.weight": lins[f"lin{i}.model.1.weight"] for i in range(5)})
    return _build(lambda _: LPIPS(), None, sd, f"{vgg} (VGG16 features)", dtype, device).requires_grad_(False)


CLASS_NAMES = {"unet": "UNet2DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
               "text_encoder_2": "CLIPTextModelWithProjection", "controlnet": "ControlNetModel",
               "tiny_vae": "AutoencoderTiny"}


def save_component(module, folder, component, dtype=None):
    """Write `folder`/{config.json, weights} in the layout diffusers (UNet, VAE, ControlNet) and
    transformers (text encoder: "text_model." names, model.safetensors) read; returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": CLASS_NAMES[component], **module.config}
    text = component in ("text_encoder", "text_encoder_2")
    if text:
        cfg = {"architectures": [CLASS_NAMES[component]], "model_type": "clip_text_model", **module.config}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    # transformers' text towers nest under text_model. (the projection of text_encoder_2 does not)
    name = {k: ("text_model." + k if text and not k.startswith("text_projection") else k) for k in module.state_dict()}
    sd = {name[k]: (v.to(dtype) if dtype else v).contiguous() for k, v in module.state_dict().items()}
    weights = WEIGHT_NAMES["vae" if component == "tiny_vae" else component]
    save_file(sd, out / f"{weights}.safetensors", metadata={"format": "pt"})
    return out


def save_unet(unet, folder, dtype=None):
    """Write `folder`/unet/{config.json, diffusion_pytorch_model.safetensors} for diffusers."""
    return save_component(unet, Path(folder) / "unet", "unet", dtype)
