"""The SD VAE (diffusers' AutoencoderKL, same parameter names), from its config.json.

vae.encode(images in [-1, 1], [B, 3, H, W]) -> posterior mean [B, 4, H/8, W/8] (unscaled; a sample with generator=)
vae.decode(latents, unscaled)                -> images [B, 3, H, W] (about [-1, 1])
The pipeline divides by `scaling_factor` (0.18215 for SD 1.5) before decoding.
"""
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from .layers import Downsample, ResnetBlock, Upsample

SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
                layers_per_block=2, norm_num_groups=32, scaling_factor=0.18215, sample_size=512)


class VAEAttention(nn.Module):
    """Single-head self-attention over the pixels of the lowest resolution, with a skip."""

    def __init__(self, ch, groups):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.to_q, self.to_k, self.to_v = nn.Linear(ch, ch), nn.Linear(ch, ch), nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x):
        h, w = x.shape[-2:]
        y = rearrange(self.group_norm(x), "b c h w -> b 1 (h w) c")
        y = F.scaled_dot_product_attention(self.to_q(y), self.to_k(y), self.to_v(y))
        return x + rearrange(self.to_out[0](y), "b 1 (h w) c -> b c h w", h=h, w=w)


class Level(nn.Module):
    def __init__(self, resnets, downsample=None, upsample=None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if downsample is not None:
            self.downsamplers = nn.ModuleList([downsample])
        if upsample is not None:
            self.upsamplers = nn.ModuleList([upsample])

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        for s in getattr(self, "downsamplers", []):
            x = s(x)
        for s in getattr(self, "upsamplers", []):
            x = s(x)
        return x


class MidBlock(nn.Module):
    def __init__(self, ch, groups):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, None, groups, 1e-6), ResnetBlock(ch, ch, None, groups, 1e-6)])
        self.attentions = nn.ModuleList([VAEAttention(ch, groups)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        boc, g, n = c["block_out_channels"], c["norm_num_groups"], c["layers_per_block"]
        self.conv_in = nn.Conv2d(c["in_channels"], boc[0], 3, padding=1)
        self.down_blocks, ch = nn.ModuleList(), boc[0]
        for i, out in enumerate(boc):
            last = i == len(boc) - 1
            self.down_blocks.append(Level([ResnetBlock(ch if j == 0 else out, out, None, g, 1e-6) for j in range(n)],
                                          downsample=None if last else Downsample(out, asymmetric_pad=True)))
            ch = out
        self.mid_block = MidBlock(ch, g)
        self.conv_norm_out = nn.GroupNorm(g, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, 2 * c["latent_channels"], 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        rev, g, n = c["block_out_channels"][::-1], c["norm_num_groups"], c["layers_per_block"]
        self.conv_in = nn.Conv2d(c["latent_channels"], rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0], g)
        self.up_blocks, ch = nn.ModuleList(), rev[0]
        for i, out in enumerate(rev):
            last = i == len(rev) - 1
            self.up_blocks.append(Level([ResnetBlock(ch if j == 0 else out, out, None, g, 1e-6) for j in range(n + 1)],
                                        upsample=None if last else Upsample(out)))
            ch = out
        self.conv_norm_out = nn.GroupNorm(g, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, c["out_channels"], 3, padding=1)

    def forward(self, z, checkpoint=False):
        """checkpoint: keep no activation of the mid and up blocks for the backward pass, recompute them block
        by block (what a loss on the decoded image needs at 512x512: see docs/training.md)."""
        def run(block, x):
            return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) if checkpoint else block(x)
        x = run(self.mid_block, self.conv_in(z))
        for block in self.up_blocks:
            x = run(block, x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VAE(nn.Module):
    def __init__(self, config=None):
        super().__init__()
        c = {**SD15_VAE, **(config or {})}
        self.config = c
        self.scaling_factor = c["scaling_factor"]
        self.downsampling = 2 ** (len(c["block_out_channels"]) - 1)    # 8 for SD: 512 px <-> 64 latents
        self.encoder, self.decoder = Encoder(c), Decoder(c)
        lat = c["latent_channels"]
        self.quant_conv = nn.Conv2d(2 * lat, 2 * lat, 1)
        self.post_quant_conv = nn.Conv2d(lat, lat, 1)

    def posterior(self, images):
        """(mean, log-variance) of the posterior N(mean, exp(logvar)) over latents (unscaled); the
        log-variance clamped to [-30, 20] as diffusers' DiagonalGaussianDistribution does."""
        mean, logvar = self.quant_conv(self.encoder(images)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, images, generator=None):
        """The posterior mean (no sampling, no scaling); with a torch.Generator, a sample of it,
            z = mean + exp(logvar / 2) eps,  eps ~ N(0, I) drawn from `generator` (SDXL img2img's order)."""
        mean, logvar = self.posterior(images)
        if generator is None:
            return mean
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=generator.device).to(mean.device)
        return mean + torch.exp(0.5 * logvar) * eps

    def decode(self, latents, checkpoint=False):
        return self.decoder(self.post_quant_conv(latents), checkpoint)
