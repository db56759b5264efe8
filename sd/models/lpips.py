"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"),
version 0.1 on VGG16, the distance InstaFlow distilled with last.

    d(x, y) = sum_l  mean_{h,w}  w_l . (f^_l(x) - f^_l(y))^2,     f^_l = f_l / ||f_l||_channels
where f_l are VGG16's activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 of the input
shifted and scaled per channel, and w_l >= 0 the learned weights of one 1x1 convolution per layer.

lpips(x [N, 3, H, W] in [-1, 1], y) -> [N]. Parameter names: torchvision's `vgg16().features.N` for the
network, `lins.l.weight` for the linear layers (the lpips package's file calls them `lin{l}.model.1.weight`;
sd/checkpoints/loaders.py's load_lpips renames them).
"""
import torch
from torch import nn

# VGG16's convolutional part: channels per conv, "M" a 2x2 max-pool; LPIPS reads 5 activations, so only the
# first 30 modules of torchvision's `features` (up to relu5_3) are built
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAPS = (3, 8, 15, 22, 29)                              # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
CHANNELS = (64, 128, 256, 512, 512)
# the input's per-channel shift and scale (x - shift) / scale, x in [-1, 1]: ImageNet's statistics in that range
SHIFT = torch.tensor([-0.030, -0.088, -0.188])
SCALE = torch.tensor([0.458, 0.448, 0.450])


def vgg16_features():
    layers, c = [], 3
    for v in VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS])

    def taps(self, x):
        """The 5 activations, each unit-normalised over its channels: f / (||f|| + 1e-10)."""
        out, h = [], (x - SHIFT.to(x)[:, None, None]) / SCALE.to(x)[:, None, None]
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x, y):
        d = 0
        for lin, a, b in zip(self.lins, self.taps(x), self.taps(y)):
            d = d + lin((a - b) ** 2).mean(dim=(2, 3))            # w_l . (f^_l(x) - f^_l(y))^2, averaged over h, w
        return d.flatten()
