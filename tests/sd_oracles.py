"""The reference models of the SD parity tests: tiny configurations, diffusers / transformers modules with
random weights, inputs, and the diffusers -> CompVis (single-file LDM) name maps, written out independently of
sd/checkpoints/loaders.py."""
import re

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

UNET_CFG = dict(block_out_channels=[32, 64], layers_per_block=2, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=4, cross_attention_dim=32,
                norm_num_groups=8, sample_size=16)
UNET3_CFG = dict(block_out_channels=[32, 32, 64], layers_per_block=1,
                 down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                 up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=2,
                 cross_attention_dim=24, norm_num_groups=8, sample_size=16)
UNET4_CFG = dict(block_out_channels=[16, 16, 32, 32], layers_per_block=2, attention_head_dim=2, cross_attention_dim=24,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, norm_num_groups=8)   # SD 1.5's layout
VAE_CFG = dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, latent_channels=4,
               down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def ref_unet(cfg=UNET_CFG):
    return randomize(diffusers.UNet2DConditionModel(**cfg))


def ref_vae():
    return randomize(diffusers.AutoencoderKL(**VAE_CFG), 1)


def ref_text():
    cfg = transformers.CLIPTextConfig(vocab_size=1000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                                      bos_token_id=998, eos_token_id=999, pad_token_id=999)
    return randomize(transformers.CLIPTextModel(cfg), 2)


def unet_inputs(cfg=UNET_CFG, b=2):
    g = torch.Generator().manual_seed(5)
    return (torch.randn(b, 4, 16, 16, generator=g), torch.tensor([999.0, 3.5])[:b],
            torch.randn(b, 7, cfg["cross_attention_dim"], generator=g))


def max_diff(a, b):
    return (a - b).abs().max().item()


def load_unet_from(ref):
    """Our UNet with the weights of a diffusers one (same names, same config)."""
    from sd.models.unet import UNet
    ours = UNet(dict(ref.config))
    ours.load_state_dict(ref.state_dict())
    return ours.eval()


_RES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
        "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def to_ldm_unet(sd, cfg):
    """diffusers names -> CompVis names, written out independently of sd/checkpoints/loaders.py; diffusers'
    own converter checks that these are the real LDM names (test below)."""
    n = cfg["layers_per_block"]
    cross = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    inp = lambda level, j: 1 + int(level) * (n + 1) + int(j)  # noqa: E731 - input_blocks index
    outp = lambda level, j: int(level) * (n + 1) + int(j)  # noqa: E731 - output_blocks index
    res = lambda r: _RES[r.split(".")[0]] + r[len(r.split(".")[0]):]  # noqa: E731
    top = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
           "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
    rules = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda m: f"input_blocks.{inp(m[1], m[2])}.0.{res(m[3])}"),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", lambda m: f"input_blocks.{inp(m[1], m[2])}.1.{m[3]}"),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", lambda m: f"input_blocks.{inp(m[1], n)}.0.op.{m[2]}"),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", lambda m: f"output_blocks.{outp(m[1], m[2])}.0.{res(m[3])}"),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", lambda m: f"output_blocks.{outp(m[1], m[2])}.1.{m[3]}"),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)",
         lambda m: f"output_blocks.{outp(m[1], n)}.{2 if cross[int(m[1])] else 1}.conv.{m[2]}"),
        (r"mid_block\.resnets\.(\d)\.(.*)", lambda m: f"middle_block.{2 * int(m[1])}.{res(m[2])}"),
        (r"mid_block\.attentions\.0\.(.*)", lambda m: f"middle_block.1.{m[1]}"),
        (r"(.*)\.(weight|bias)", lambda m: f"{top[m[1]]}.{m[2]}"),
    ]
    return {"model.diffusion_model." + next(fn(m) for pat, fn in rules if (m := re.fullmatch(pat, k))): v
            for k, v in sd.items()}


def to_ldm_vae(sd, levels):
    out, attn = {}, {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for k, v in sd.items():
        k = k.replace("conv_shortcut", "nin_shortcut")
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", k)
        k = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", k)
        if m := re.match(r"(.*)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", k):
            k = f"{m[1]}.mid.attn_1.{attn[m[2]]}.{m[3]}"
            v = v[:, :, None, None] if v.ndim == 2 else v
        k = k.replace("conv_norm_out", "norm_out")
        out["first_stage_model." + k] = v
    return out
