"""The SD 1.x UNet (diffusers' UNet2DConditionModel, same parameter names), from its config.json;
built from SDXL's configs it is SDXL's UNet (base and refiner: several transformer layers per block,
levels without attention, the "text_time" added conditioning).

unet(latents [B, 4, h, w], timesteps [B] float, context [B, 77, 768]) -> [B, 4, h, w]
unet(latents, timesteps, context [B, 77, 1280], added=(text_embeds [B, 1280], time_ids [B, 5]))   (SDXL refiner)

    conv_in -> down blocks (resnets [+ cross-attention transformers], stride-2 conv) -> mid block
    (resnet, transformer, resnet) -> up blocks (concat the matching skip, resnets [+ transformers],
    nearest x2 + conv) -> GroupNorm, SiLU, conv_out.
Every resnet receives the timestep embedding; every transformer attends to the text context.
"""
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from .layers import Attention, Downsample, ResnetBlock, Upsample, timestep_embedding

SD15_UNET = dict(
    in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280], layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32, norm_eps=1e-5,
    use_linear_projection=False, sample_size=64,
)

# stabilityai/stable-diffusion-xl-refiner-1.0's unet/config.json (2.3 B parameters): no attention at the outer
# levels, 64-wide heads, 4 transformer layers per block, the pooled OpenCLIP-bigG embedding (1280) and 5 time ids
# of 256 sinusoids each into add_embedding (1280 + 5 x 256 = 2560)
SDXL_REFINER_UNET = dict(
    in_channels=4, out_channels=4, block_out_channels=[384, 768, 1536, 1536], layers_per_block=2,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    attention_head_dim=[6, 12, 24, 24], transformer_layers_per_block=4, cross_attention_dim=1280, norm_num_groups=32,
    norm_eps=1e-5, use_linear_projection=True, addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2560, sample_size=128,
)

# diffusers config fields whose other values change the architecture in ways this UNet does not build
# (class conditioning, Kandinsky's added embeddings, LCM's guidance embedding, ...): a config that sets
# one of them is refused with its name rather than loaded wrong.
FIXED_FIELDS = dict(
    center_input_sample=False, flip_sin_to_cos=True, freq_shift=0, mid_block_type="UNetMidBlock2DCrossAttn",
    only_cross_attention=False, downsample_padding=1, mid_block_scale_factor=1, act_fn="silu",
    reverse_transformer_layers_per_block=None, encoder_hid_dim=None,
    encoder_hid_dim_type=None, dual_cross_attention=False, class_embed_type=None,
    num_class_embeds=None, resnet_time_scale_shift="default", resnet_skip_time_act=False, resnet_out_scale_factor=1.0,
    time_embedding_type="positional", time_embedding_dim=None, time_embedding_act_fn=None, timestep_post_act=None,
    time_cond_proj_dim=None, conv_in_kernel=3, conv_out_kernel=3, attention_type="default",
    class_embeddings_concat=False, mid_block_only_cross_attention=None, cross_attention_norm=None)
BLOCK_TYPES = {"CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"}


def check_config(c):
    """Refuse configs this UNet cannot build, naming each field. Supported beyond SD 1.x: SD 2.x's
    linear projections (use_linear_projection) and per-level head counts (a list in attention_head_dim;
    upcast_attention is accepted and, as in diffusers' SDPA attention, changes nothing); SDXL's
    transformer_layers_per_block (an int or one per level) and addition_embed_type "text_time"."""
    def same(v, want):
        return v == want or (isinstance(v, (list, tuple)) and all(x == want for x in v))
    bad = [f"{k}={c[k]!r} (supported: {v!r})" for k, v in FIXED_FIELDS.items() if k in c and not same(c[k], v)]
    bad += [f"block type {t!r} (supported: {', '.join(sorted(BLOCK_TYPES))})"
            for t in [*c["down_block_types"], *c.get("up_block_types", [])] if t not in BLOCK_TYPES]
    if c.get("cross_attention_dim") is not None and isinstance(c["cross_attention_dim"], (list, tuple)):
        bad.append(f"cross_attention_dim={c['cross_attention_dim']!r} (one width for every level)")
    if c.get("addition_embed_type") not in (None, "text_time"):
        bad.append(f"addition_embed_type={c['addition_embed_type']!r} (supported: None, or SDXL's 'text_time')")
    depth = c.get("transformer_layers_per_block", 1)
    if isinstance(depth, (list, tuple)) and (len(depth) != len(c["block_out_channels"])
                                             or not all(isinstance(d, int) for d in depth)):
        bad.append(f"transformer_layers_per_block={depth!r} (an int, or one int per level)")
    if bad:
        raise ValueError("UNet config not supported by this SD 1.x/2.x UNet: " + "; ".join(bad))


def mlp(cin, cout):
    """diffusers' TimestepEmbedding: linear_1 -> SiLU -> linear_2 (the SiLU is applied in embed_time)."""
    m = nn.Module()
    m.linear_1, m.linear_2 = nn.Linear(cin, cout), nn.Linear(cout, cout)
    return m


class FeedForward(nn.Module):
    """GEGLU MLP: (h, gate) = W1 x;  W2 (h * gelu(gate)), inner width 4 dim."""

    def __init__(self, dim):
        super().__init__()
        inner = 4 * dim
        self.net = nn.ModuleList([nn.Module(), nn.Identity(), nn.Linear(inner, dim)])
        self.net[0].proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        h, gate = self.net[0].proj(x).chunk(2, dim=-1)
        return self.net[2](h * F.gelu(gate))


class TransformerBlock(nn.Module):
    """x += SelfAttn(LN x);  x += CrossAttn(LN x, context);  x += FF(LN x)."""

    def __init__(self, dim, heads, context_dim, eps):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim, eps), Attention(dim, heads)
        self.norm2, self.attn2 = nn.LayerNorm(dim, eps), Attention(dim, heads, context_dim)
        self.norm3, self.ff = nn.LayerNorm(dim, eps), FeedForward(dim)

    def forward(self, x, context):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, project in, flatten the image to a sequence, `depth` transformer blocks (1 in SD 1.x/2.x,
    up to 10 in SDXL), back, skip."""

    def __init__(self, ch, heads, context_dim, groups, eps, linear, depth=1):
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.proj_in = nn.Linear(ch, ch) if linear else nn.Conv2d(ch, ch, 1)
        self.transformer_blocks = nn.ModuleList([TransformerBlock(ch, heads, context_dim, eps) for _ in range(depth)])
        self.proj_out = nn.Linear(ch, ch) if linear else nn.Conv2d(ch, ch, 1)

    def forward(self, x, context):
        h, w = x.shape[-2:]
        y = self.norm(x)
        if not self.linear:
            y = self.proj_in(y)
        y = rearrange(y, "b c h w -> b (h w) c")
        if self.linear:
            y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y, context)
        if self.linear:
            y = self.proj_out(y)
        y = rearrange(y, "b (h w) c -> b c h w", h=h, w=w)
        if not self.linear:
            y = self.proj_out(y)
        return x + y


class Block(nn.Module):
    """One resolution level: resnets, optional transformers after each, optional resampler."""

    def __init__(self, resnets, attentions=None, downsample=None, upsample=None):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attentions:
            self.attentions = nn.ModuleList(attentions)
        if downsample is not None:
            self.downsamplers = nn.ModuleList([downsample])
        if upsample is not None:
            self.upsamplers = nn.ModuleList([upsample])


class Encoder(nn.Module):
    """The UNet's first half, which a ControlNet copies: conv_in, the timestep embedding, the down blocks
    and the mid block, built from a config and run by `embed_time` and `encode`."""

    def __init__(self, config, defaults=SD15_UNET):
        super().__init__()
        c = {**defaults, **(config or {})}
        check_config(c)
        self.config = c
        boc, n = list(c["block_out_channels"]), c["layers_per_block"]
        heads = c.get("num_attention_heads") or c["attention_head_dim"]   # in SD configs attention_head_dim holds the number of heads
        self.heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(boc)
        depth = c.get("transformer_layers_per_block", 1)            # SDXL: several transformer blocks per level
        self.depths = list(depth) if isinstance(depth, (list, tuple)) else [depth] * len(boc)
        temb = 4 * boc[0]
        self.conv_in = nn.Conv2d(c["in_channels"], boc[0], 3, padding=1)
        self.time_embedding = mlp(boc[0], temb)
        if c.get("addition_embed_type") == "text_time":             # SDXL's added conditioning (see embed_time)
            self.add_embedding = mlp(c["projection_class_embeddings_input_dim"], temb)
        self.down_blocks, ch = nn.ModuleList(), boc[0]
        for i, kind in enumerate(c["down_block_types"]):
            out, last = boc[i], i == len(boc) - 1
            cross = kind.startswith("CrossAttn")
            self.down_blocks.append(Block([self.resnet(ch if j == 0 else out, out) for j in range(n)],
                                          [self.transformer(out, self.heads[i], self.depths[i]) for _ in range(n)]
                                          if cross else None,
                                          downsample=None if last else Downsample(out)))
            ch = out
        self.mid_block = Block([self.resnet(ch, ch), self.resnet(ch, ch)],
                               [self.transformer(ch, self.heads[-1], self.depths[-1])])
        self.gradient_checkpointing = False

    def resnet(self, cin, cout):
        c = self.config
        return ResnetBlock(cin, cout, 4 * c["block_out_channels"][0], c["norm_num_groups"], c["norm_eps"])

    def transformer(self, ch, heads, depth):
        c = self.config
        return SpatialTransformer(ch, heads, c["cross_attention_dim"], c["norm_num_groups"], c["norm_eps"],
                                  c["use_linear_projection"], depth)

    def _run(self, layer, *args):
        """layer(*args); with gradient checkpointing on while training, its activations are not
        kept but recomputed in the backward pass (less memory, about one more forward)."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def embed_time(self, timesteps, x, added=None):
        """MLP(sinusoidal embedding of the timesteps), one row per sample of x. With SDXL's "text_time"
        conditioning, added = (pooled text embedding p [B, P], time ids [B, K]: original size, crop
        top-left and target size (base) or aesthetic score (refiner)) adds
            MLP_add([p, emb(id_1), ..., emb(id_K)]),  emb = the same sinusoids, addition_time_embed_dim wide."""
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        t = timestep_embedding(timesteps, self.config["block_out_channels"][0]).to(x.dtype)
        emb = self.time_embedding.linear_2(F.silu(self.time_embedding.linear_1(t)))
        if not hasattr(self, "add_embedding"):
            if added is not None:
                raise ValueError("added conditioning given to a UNet without addition_embed_type 'text_time'")
            return emb
        if added is None:
            raise ValueError("this UNet (addition_embed_type 'text_time', SDXL) needs added=(text_embeds, time_ids)")
        text_embeds, time_ids = added
        ids = timestep_embedding(time_ids.reshape(-1), self.config["addition_time_embed_dim"])
        a = torch.cat([text_embeds.float(), ids.reshape(len(text_embeds), -1)], dim=-1).to(x.dtype)
        return emb + self.add_embedding.linear_2(F.silu(self.add_embedding.linear_1(a)))

    def encode(self, h, temb, context):
        """From conv_in's output h through the down blocks and the mid block: (mid block output, skips),
        the skips in the order they are made (h itself, each resnet/transformer, each downsampler)."""
        skips = [h]
        for block in self.down_blocks:
            for j, resnet in enumerate(block.resnets):
                h = self._run(resnet, h, temb)
                if hasattr(block, "attentions"):
                    h = self._run(block.attentions[j], h, context)
                skips.append(h)
            if hasattr(block, "downsamplers"):
                h = block.downsamplers[0](h)
                skips.append(h)
        h = self._run(self.mid_block.resnets[0], h, temb)
        h = self._run(self.mid_block.attentions[0], h, context)
        return self._run(self.mid_block.resnets[1], h, temb), skips


class UNet(Encoder):
    """The Encoder, then the up blocks that take its skips back in reverse order, then the output conv."""

    def __init__(self, config=None):
        super().__init__(config)
        c, boc, n = self.config, list(self.config["block_out_channels"]), self.config["layers_per_block"]
        self.up_blocks, rev, rheads, ch = nn.ModuleList(), boc[::-1], self.heads[::-1], boc[-1]
        for i, kind in enumerate(c["up_block_types"]):
            prev, out, skip_in = ch, rev[i], rev[min(i + 1, len(boc) - 1)]
            cross, last = kind.startswith("CrossAttn"), i == len(boc) - 1
            resnets = [self.resnet((prev if j == 0 else out) + (skip_in if j == n else out), out) for j in range(n + 1)]
            attns = [self.transformer(out, rheads[i], self.depths[::-1][i]) for _ in range(n + 1)] if cross else None
            self.up_blocks.append(Block(resnets, attns, upsample=None if last else Upsample(out)))
            ch = out
        self.conv_norm_out = nn.GroupNorm(c["norm_num_groups"], boc[0], c["norm_eps"])
        self.conv_out = nn.Conv2d(boc[0], c["out_channels"], 3, padding=1)

    def forward(self, x, timesteps, context, down_residuals=None, mid_residual=None, added=None):
        """added: SDXL's (text_embeds, time_ids), see embed_time. down_residuals (one per skip connection, in the order they are made: conv_in's output, then each
        resnet/transformer and downsampler of the down blocks) and mid_residual are added to the skips and
        to the mid block's output, as a ControlNet's outputs are; None (the default) adds nothing."""
        temb = self.embed_time(timesteps, x, added)
        h, skips = self.encode(self.conv_in(x), temb, context)
        if down_residuals is not None:                  # ControlNet: skip_i + r_i
            if len(down_residuals) != len(skips):
                raise ValueError(f"{len(down_residuals)} down residuals for the UNet's {len(skips)} skip connections")
            skips = [s + r for s, r in zip(skips, down_residuals)]
        if mid_residual is not None:                    # ControlNet: mid + r_mid
            h = h + mid_residual
        for block in self.up_blocks:
            for j, resnet in enumerate(block.resnets):
                h = self._run(resnet, torch.cat([h, skips.pop()], dim=1), temb)
                if hasattr(block, "attentions"):
                    h = self._run(block.attentions[j], h, context)
            if hasattr(block, "upsamplers"):             # back to the size of the next skip (odd sides too)
                h = block.upsamplers[0](h, skips[-1].shape[-2:])
        return self.conv_out(F.silu(self.conv_norm_out(h)))
