"""The velocity network for 2D flows: an MLP on the concatenation [x, t]."""
import torch
from torch import nn


class VelocityMLP(nn.Module):
    """v(x, t): R^d x [0, 1] -> R^d, a plain MLP with SiLU activations."""

    def __init__(self, dim=2, hidden=128, depth=4):
        super().__init__()
        layers, width = [], dim + 1
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x, t):
        return self.net(torch.cat([x, t.reshape(-1, 1).to(x.dtype)], dim=1))
