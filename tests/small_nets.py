"""Small float64 networks and batches for the objectives' formula tests (few-step families, distribution
matching)."""
import torch


class Net(torch.nn.Module):
    """A small smooth network v(x, t) or v(x, t, c), float64."""

    def __init__(self, extra=0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(torch.nn.Linear(3 + extra, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()

    def forward(self, x, t, c=None):
        cols = [x, t[:, None]] + ([] if c is None else [c[:, None]])
        return self.net(torch.cat(cols, 1))


def batch(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64) + 2
