"""The tiny autoencoder TAESD (Ollin Boer Bohan, madebyollin/taesd), as diffusers' AutoencoderTiny with
the same parameter names, from its config.json: a fast preview decoder for SD's latents.

Plain convolutions and ReLUs, no normalisation or attention. A block is a residual of three 3x3 convs,

    block(x) = ReLU( conv(act(conv(act(conv(x))))) + skip(x) )        (skip: identity, or a 1x1 conv)

encoder:  images in [-1, 1] -> (x + 1) / 2 in [0, 1] -> conv, blocks, then per level a stride-2 conv and
          blocks -> conv to 4 channels: the latents, already in SD's *scaled* space (scaling_factor 1.0)
decoder:  latents -> 3 tanh(z / 3) (a soft clamp to [-3, 3]) -> conv, ReLU, per level blocks, a
          nearest x2 upsampling and a conv (the last level: a conv to RGB) -> 2 y - 1 in [-1, 1]

The pipeline divides latents by `scaling_factor` before decoding and multiplies after encoding, as for
the full VAE; TAESD's is 1.0, so it decodes SD's scaled latents as they are.
"""
from torch import nn

TAESD = dict(in_channels=3, out_channels=3, latent_channels=4, encoder_block_out_channels=[64, 64, 64, 64],
             decoder_block_out_channels=[64, 64, 64, 64], num_encoder_blocks=[1, 3, 3, 3],
             num_decoder_blocks=[3, 3, 3, 1], act_fn="relu", upsample_fn="nearest", upsampling_scaling_factor=2,
             scaling_factor=1.0)
SUPPORTED = {"act_fn": ("relu",), "upsample_fn": ("nearest",)}


class Block(nn.Module):
    """ReLU(three 3x3 convs + skip): diffusers' AutoencoderTinyBlock."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


class TinyEncoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        widths, layers = c["encoder_block_out_channels"], []
        for i, (n, ch) in enumerate(zip(c["num_encoder_blocks"], widths)):
            layers.append(nn.Conv2d(c["in_channels"], ch, 3, padding=1) if i == 0 else
                          nn.Conv2d(ch, ch, 3, padding=1, stride=2, bias=False))     # levels > 0 halve the size
            layers += [Block(ch, ch) for _ in range(n)]
        layers.append(nn.Conv2d(widths[-1], c["latent_channels"], 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images):
        return self.layers(images.add(1).div(2))              # [-1, 1] -> [0, 1], TAESD's convention


class TinyDecoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        widths, blocks = c["decoder_block_out_channels"], c["num_decoder_blocks"]
        layers = [nn.Conv2d(c["latent_channels"], widths[0], 3, padding=1), nn.ReLU()]
        for i, (n, ch) in enumerate(zip(blocks, widths)):
            last = i == len(blocks) - 1
            layers += [Block(ch, ch) for _ in range(n)]
            if not last:
                layers.append(nn.Upsample(scale_factor=c["upsampling_scaling_factor"], mode="nearest"))
            layers.append(nn.Conv2d(ch, c["out_channels"] if last else ch, 3, padding=1, bias=last))
        self.layers = nn.Sequential(*layers)

    def forward(self, z):
        return self.layers(z.div(3).tanh().mul(3)).mul(2).sub(1)   # soft clamp; [0, 1] -> [-1, 1]


class TinyVAE(nn.Module):
    """vae.encode(images in [-1, 1]) -> latents; vae.decode(latents) -> images in about [-1, 1]; the same
    interface as sd.models.vae.VAE (scaling_factor, downsampling), so the pipeline takes either."""

    def __init__(self, config=None):
        super().__init__()
        c = {**TAESD, **(config or {})}
        for key, allowed in SUPPORTED.items():
            if c[key] not in allowed:
                raise ValueError(f"AutoencoderTiny config {key}={c[key]!r} is not supported (only {', '.join(allowed)})")
        self.config, self.scaling_factor = c, c["scaling_factor"]
        self.downsampling = 2 ** (len(c["encoder_block_out_channels"]) - 1)    # 8: 512 px <-> 64 latents
        self.encoder, self.decoder = TinyEncoder(c), TinyDecoder(c)

    def encode(self, images):
        return self.encoder(images)

    def decode(self, latents):
        return self.decoder(latents)
