"""Load a ControlNet: a diffusers folder (config.json + diffusion_pytorch_model[.fp16].safetensors, or a
.bin read with weights_only=True), or one file in the original ControlNet v1.x layout (lllyasviel's
control_*.pth / .safetensors: `control_model.` + the UNet encoder's LDM names, `input_hint_block.*`,
`zero_convs.*`, `middle_block_out.*`; some files carry no `control_model.` prefix).

    load_controlnet(path, dtype=None, device="cpu", variant=None, config=None) -> ControlNet
"""
import json
import re

from ..checkpoints.loaders import (CheckpointError, holds, _load, _resolve, _single_file, _unet_config_from_ldm, ldm_unet_to_diffusers,
                       read_weights)
from .model import SD15_CONTROLNET, ControlNet


def ldm_controlnet_to_diffusers(sd, layers_per_block):
    """ControlNet v1.x keys (without `control_model.`) -> ours (diffusers'). The hint block is a Sequential
    of convs with SiLUs between: conv 0 is E's conv_in, the last E's conv_out, the ones between its blocks."""
    hint = sorted({int(m[1]) for k in sd if (m := re.match(r"input_hint_block\.(\d+)\.", k))})
    out, encoder = {}, {}
    for k, v in sd.items():
        if m := re.match(r"input_hint_block\.(\d+)\.(weight|bias)$", k):
            i = int(m[1])
            name = "conv_in" if i == hint[0] else "conv_out" if i == hint[-1] else f"blocks.{hint.index(i) - 1}"
            out[f"controlnet_cond_embedding.{name}.{m[2]}"] = v
        elif m := re.match(r"zero_convs\.(\d+)\.0\.(weight|bias)$", k):
            out[f"controlnet_down_blocks.{m[1]}.{m[2]}"] = v
        elif m := re.match(r"middle_block_out\.0\.(weight|bias)$", k):
            out[f"controlnet_mid_block.{m[1]}"] = v
        else:
            encoder[k] = v
    try:
        return {**out, **ldm_unet_to_diffusers(encoder, layers_per_block, prefix="")}
    except CheckpointError as e:
        raise CheckpointError(f"{e} (reading a ControlNet v1.x file)") from None


def _controlnet_single(path):
    """(config, state dict in our names) of a ControlNet v1.x file; the widths, depth and context width
    are read off the weights, the number of heads is SD 1.x's unless `config` says otherwise."""
    sd = read_weights(path)
    if any(k.startswith("control_model.") for k in sd):      # also a whole SD + ControlNet v1.0 checkpoint
        sd = {k[len("control_model."):]: v for k, v in _single_file(path, "control_model.").items()}
    if "input_hint_block.0.weight" not in sd or "time_embed.0.weight" not in sd:
        raise CheckpointError(f"{path}: not a ControlNet: no input_hint_block.0 / time_embed.0 weights, with or "
                              f"without the control_model. prefix (it holds {holds(sd)})")
    cfg = _unet_config_from_ldm(sd, SD15_CONTROLNET, pre="")
    hint = sorted({int(m[1]) for k in sd if (m := re.match(r"input_hint_block\.(\d+)\.weight", k))})
    widths = [sd["input_hint_block.0.weight"].shape[0]] + [sd[f"input_hint_block.{i}.weight"].shape[0]
                                                           for i in hint[2:-1:2]]   # each stride-2 conv's output
    cfg.update(conditioning_channels=sd["input_hint_block.0.weight"].shape[1],
               conditioning_embedding_out_channels=widths)
    return cfg, ldm_controlnet_to_diffusers(sd, cfg["layers_per_block"])


def load_controlnet(path, dtype=None, device="cpu", variant=None, config=None):
    """A ControlNet from a diffusers folder (or a model folder with controlnet/) or a v1.x single file.
    `config` overrides fields (for single files: attention_head_dim, norm_num_groups, global_pool_conditions,
    which the weights do not show)."""
    kind, where = _resolve(path, "controlnet")
    if kind == "folder":
        name = json.loads((where / "config.json").read_text()).get("_class_name", "ControlNetModel")
        if name != "ControlNetModel":
            raise CheckpointError(f"{where}: config.json describes a {name}, not a ControlNet (ControlNetModel)")
    return _load(path, "controlnet", ControlNet, dtype, device, variant, config, _controlnet_single)
