"""The velocity network for 2D flows: an MLP on the concatenation [x, t] (and, for MeanFlow's end time r or a
shortcut model's step size d, one extra input: [x, t, c])."""
import torch
from torch import nn


class VelocityMLP(nn.Module):
    """v(x, t): R^d x [0, 1] -> R^d, a plain MLP with SiLU activations."""

    def __init__(self, dim=2, hidden=128, depth=4, extra=0):
        super().__init__()
        self.extra = extra
        layers, width = [], dim + 1 + extra
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x, t, c=None):
        cols = [x, t.reshape(-1, 1).to(x.dtype)]
        if self.extra:
            cols.append(c.reshape(-1, 1).to(x.dtype))
        return self.net(torch.cat(cols, dim=1))
