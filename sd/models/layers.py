"""Building blocks shared by the UNet and the VAE (module names follow diffusers' checkpoints)."""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of (float) timesteps, cos first (SD's flip_sin_to_cos, shift 0):
    emb = [cos(t w_k), sin(t w_k)],  w_k = max_period^(-k / (dim/2)),  k = 0 .. dim/2 - 1."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv (+ projected time embedding) -> GroupNorm -> SiLU -> conv, plus skip."""

    def __init__(self, cin, cout, temb_dim=None, groups=32, eps=1e-5):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, cout) if temb_dim else None
        self.norm2 = nn.GroupNorm(groups, cout, eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb=None):
        h = self.conv1(F.silu(self.norm1(x)))
        if temb is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    """Multi-head attention softmax(Q K^T / sqrt(d)) V through F.scaled_dot_product_attention;
    keys and values come from `context` (cross-attention) or from x itself (self-attention)."""

    def __init__(self, dim, heads, context_dim=None, qkv_bias=False):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=qkv_bias)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = (rearrange(p, "b n (h d) -> b h n d", h=self.heads)
                   for p in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out[0](rearrange(out, "b h n d -> b n (h d)"))


class Downsample(nn.Module):
    """Stride-2 3x3 conv; the VAE pads (0, 1, 0, 1) by hand instead of 1 on each side."""

    def __init__(self, ch, asymmetric_pad=False):
        super().__init__()
        self.asymmetric_pad = asymmetric_pad
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0 if asymmetric_pad else 1)

    def forward(self, x):
        if self.asymmetric_pad:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 (or to `size`), then a 3x3 conv. The UNet passes the size of the skip
    connection it joins next, so a side that was odd before a stride-2 conv (17 -> 9) comes back at
    its own size (9 -> 17, not 18), as diffusers does; for even sides the two are the same."""

    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, size=None):
        up = F.interpolate(x, scale_factor=2.0, mode="nearest") if size is None else \
            F.interpolate(x, size=size, mode="nearest")
        return self.conv(up)
