"""ControlNet for SD 1.x (Zhang et al. 2023; diffusers' ControlNetModel, same parameter names and config.json).

A trainable copy of the UNet's encoder (sd/models/unet.py `Encoder`: conv_in, time embedding, down blocks, mid
block) reads the noisy latents, the timestep and the text like the UNet does, plus a control image c
(edges, depth, pose ...; RGB in [0, 1] at the output's pixel size):

    h_0    = conv_in(x) + E(c)                  E: a small conv stack from pixels to the latent grid
    h_mid, (s_0 .. s_K) = encoder(h_0, t, text) the same blocks as the UNet, its own weights
    r_k    = scale * Z_k(s_k),  r_mid = scale * Z_mid(h_mid)      Z: 1x1 convs, zero at initialisation

The UNet adds r_k to its k-th skip connection and r_mid to its mid block's output
(UNet.forward(..., down_residuals=, mid_residual=)). The zero convs and E's last conv start at zero,
so a fresh ControlNet changes nothing and training moves away from the UNet's own behaviour smoothly.
"""
import torch.nn.functional as F
from torch import nn

from ..models.unet import SD15_UNET, Encoder

SD15_CONTROLNET = dict({k: v for k, v in SD15_UNET.items() if k not in ("out_channels", "up_block_types")},
                       conditioning_channels=3, conditioning_embedding_out_channels=[16, 32, 96, 256],
                       controlnet_conditioning_channel_order="rgb", global_pool_conditions=False)


class CondEmbedding(nn.Module):
    """E(c): conv 3x3 -> SiLU, then for each next width [conv 3x3 -> SiLU -> conv 3x3 stride 2 -> SiLU],
    then a zero-initialised conv 3x3 to the UNet's first width. Four widths halve the side three
    times: 512 pixels -> 64 latents, SD's VAE factor 8."""

    def __init__(self, in_channels, widths, out_channels):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:]):
            self.blocks.append(nn.Conv2d(a, a, 3, padding=1))
            self.blocks.append(nn.Conv2d(a, b, 3, padding=1, stride=2))
        self.conv_out = zero(nn.Conv2d(widths[-1], out_channels, 3, padding=1))

    def forward(self, c):
        h = F.silu(self.conv_in(c))
        for conv in self.blocks:
            h = F.silu(conv(h))
        return self.conv_out(h)


def zero(conv):
    """A conv whose weight and bias start at zero (ControlNet's "zero convolution")."""
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def check_control_config(c):
    order = c["controlnet_conditioning_channel_order"]
    if order not in ("rgb", "bgr"):
        raise ValueError(f"controlnet_conditioning_channel_order={order!r} (supported: 'rgb', 'bgr')")
    if not c["conditioning_embedding_out_channels"]:
        raise ValueError("conditioning_embedding_out_channels is empty (SD 1.x: [16, 32, 96, 256])")


class ControlNet(Encoder):
    def __init__(self, config=None):
        super().__init__(config, defaults=SD15_CONTROLNET)
        c = self.config
        check_control_config(c)
        boc, n = list(c["block_out_channels"]), c["layers_per_block"]
        self.controlnet_cond_embedding = CondEmbedding(c["conditioning_channels"],
                                                       list(c["conditioning_embedding_out_channels"]), boc[0])
        # one zero conv per skip connection, in the order the encoder makes them (Encoder.encode)
        skips = [boc[0]] + [w for i, w in enumerate(boc) for _ in range(n + (i < len(boc) - 1))]
        self.controlnet_down_blocks = nn.ModuleList([zero(nn.Conv2d(w, w, 1)) for w in skips])
        self.controlnet_mid_block = zero(nn.Conv2d(boc[-1], boc[-1], 1))

    @classmethod
    def from_unet(cls, unet, **config):
        """A new ControlNet for `unet`, as ControlNet training starts: the encoder's weights copied from the
        UNet, the control image embedding fresh, the zero convs at zero. `config`: e.g.
        conditioning_embedding_out_channels (one width per halving from pixels to latents)."""
        keep = ("in_channels", "block_out_channels", "layers_per_block", "down_block_types", "attention_head_dim",
                "num_attention_heads", "cross_attention_dim", "norm_num_groups", "norm_eps", "use_linear_projection", "sample_size")
        net = cls({**{k: unet.config[k] for k in keep if k in unet.config}, **config})
        encoder = {k: v for k, v in unet.state_dict().items() if not k.startswith(("up_blocks.", "conv_norm_out.", "conv_out."))}
        missing, unexpected = net.load_state_dict(encoder, strict=False)
        assert not unexpected and all(k.startswith("controlnet_") for k in missing), (missing, unexpected)
        return net.to(next(unet.parameters()))

    @property
    def factor(self):
        """Pixels per latent cell: E halves the control image's side once per width step."""
        return 2 ** (len(self.config["conditioning_embedding_out_channels"]) - 1)

    def forward(self, x, timesteps, context, cond, scale=1.0):
        """x [B, C, h, w] latents, timesteps [B] (the UNet's), context [B, L, D], cond [1 or B, 3, 8 h, 8 w]
        the control image in [0, 1] (8 = self.factor, which must be the VAE's). Returns (down residuals,
        one per UNet skip connection; mid residual)."""
        want = tuple(s * self.factor for s in x.shape[-2:])
        if cond.ndim != 4 or tuple(cond.shape[-2:]) != want or cond.shape[0] not in (1, x.shape[0]) \
                or cond.shape[1] != self.config["conditioning_channels"]:
            raise ValueError(f"control image of shape {tuple(cond.shape)} for latents {tuple(x.shape)}: expected "
                             f"[1 or {x.shape[0]}, {self.config['conditioning_channels']}, {want[0]}, {want[1]}]")
        if self.config["controlnet_conditioning_channel_order"] == "bgr":
            cond = cond.flip(1)
        temb = self.embed_time(timesteps, x)
        h, skips = self.encode(self.conv_in(x) + self.controlnet_cond_embedding(cond.to(x.dtype)), temb, context)
        down = [zc(s) * scale for zc, s in zip(self.controlnet_down_blocks, skips)]    # r_k = scale Z_k(s_k)
        mid = self.controlnet_mid_block(h) * scale                                       # r_mid = scale Z_mid(h_mid)
        if self.config["global_pool_conditions"]:       # (the v1.1 "shuffle" model) one value per channel
            down, mid = [r.mean((2, 3), keepdim=True) for r in down], mid.mean((2, 3), keepdim=True)
        return down, mid


def misfits(controlnet, unet, vae_factor):
    """Why `controlnet` cannot drive `unet` (an empty list when it can): its residuals must have the
    UNet's skip shapes, it reads the same latents and text context, and its control image embedding must
    shrink pixels as much as the VAE does."""
    a, b = controlnet.config, unet.config
    out = [f"{k} {a[k]!r} vs the UNet's {b[k]!r}" for k in
           ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim") if list_(a[k]) != list_(b[k])]
    if controlnet.factor != vae_factor:
        out.append(f"its control image embedding shrinks images {controlnet.factor}x but the VAE {vae_factor}x "
                   f"(conditioning_embedding_out_channels={a['conditioning_embedding_out_channels']!r})")
    return out


def list_(v):
    return list(v) if isinstance(v, (list, tuple)) else v
