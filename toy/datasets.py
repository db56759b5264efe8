"""2D source/target pairs (pi_0, pi_1), all generated in code.

Each dataset is a pair of samplers  sample(n, generator=None, qmc=False) -> FloatTensor [n, 2],
written as a transform of n uniform vectors in [0, 1)^d (Gaussians by the inverse CDF, mixture
labels as floor(u K)). Training draws the uniforms i.i.d.; evaluation sets use `qmc=True`, a
scrambled Sobol sequence (quasi-Monte Carlo): every region, mode and split of the space then holds
its share of points up to O(log n / n) instead of O(1 / sqrt n). This matters for the exact W2: with
i.i.d. draws, two 1024-point sets of the `paper` target are at W2 ~ 2, because a few percent of the
points sit in the wrong one of modes ~17 apart; with QMC sets of 1024 points they are at about 0.43 (docs/toy.md).

`paper` is the tutorial pair of "Flow Straight and Fast": two 3-component Gaussian mixtures
(variance 0.3, equal weights, D = 10), pi_1 being pi_0 mirrored, so that straight lines from pi_0
to pi_1 cross in the middle and 1-rectified flow has to bend them. The others send a standard
normal pi_0 to a classic 2D shape.
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch

D, VAR = 10.0, 0.3
S3 = math.sqrt(3) / 2
PAPER_MEANS0 = [(-D * S3, D / 2), (D * S3, D / 2), (0.0, -D * S3)]   # pi_0 of the paper's tutorial
PAPER_MEANS1 = [(-D * S3, -D / 2), (D * S3, -D / 2), (0.0, D * S3)]  # pi_1: pi_0 mirrored
EPS = 1e-7


def uniforms(n, d, generator=None, qmc=False):
    """[n, d] points in (0, 1): i.i.d. uniform, or a scrambled Sobol sequence seeded from `generator`."""
    if qmc:
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
        u = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed).draw(n, dtype=torch.float32)
    else:
        u = torch.rand(n, d, generator=generator)
    return u.clamp(EPS, 1 - EPS)


def normal(u):
    """Standard normal by the inverse CDF:  Phi^{-1}(u) = sqrt(2) erfinv(2u - 1)."""
    return math.sqrt(2) * torch.erfinv(2 * u - 1)


def label(u, k):
    """A uniform label in {0..k-1} from one uniform coordinate."""
    return (u * k).long().clamp(max=k - 1)


def gaussian_mixture(means, var):
    """Equal-weight mixture of isotropic Gaussians N(mean_k, var I)."""
    means = torch.tensor(means, dtype=torch.float32)

    def sample(n, generator=None, qmc=False):
        u = uniforms(n, 3, generator, qmc)
        return means[label(u[:, 0], len(means))] + math.sqrt(var) * normal(u[:, 1:])
    return sample


def standard_normal(n, generator=None, qmc=False):
    return normal(uniforms(n, 2, generator, qmc))


def moons(n, generator=None, qmc=False):
    """Two interleaving half circles (noise 0.05), centred and scaled by 2."""
    u = uniforms(n, 4, generator, qmc)
    a, upper = math.pi * u[:, 0], label(u[:, 1], 2) == 0
    x = torch.where(upper, torch.cos(a), 1 - torch.cos(a))
    y = torch.where(upper, torch.sin(a), 0.5 - torch.sin(a))
    return 2 * (torch.stack([x - 0.5, y - 0.25], 1) + 0.05 * normal(u[:, 2:]))


EIGHT_MEANS = [(4 * math.cos(k * math.pi / 4), 4 * math.sin(k * math.pi / 4)) for k in range(8)]


def eight_gaussians(n, generator=None, qmc=False):
    """Eight Gaussians (std 0.25) evenly spaced on a circle of radius 4."""
    u = uniforms(n, 3, generator, qmc)
    a = label(u[:, 0], 8).float() * math.pi / 4
    return 4 * torch.stack([torch.cos(a), torch.sin(a)], 1) + 0.25 * normal(u[:, 1:])


def checkerboard(n, generator=None, qmc=False):
    """Uniform on the black squares of a 4x4 board spanning [-4, 4]^2."""
    u = uniforms(n, 3, generator, qmc)
    x = 4 * u[:, 0] - 2
    y = u[:, 1] - 2 * label(u[:, 2], 2) + torch.floor(x) % 2
    return 2 * torch.stack([x, y], 1)


def swiss_roll(n, generator=None, qmc=False):
    """A 2D Swiss roll: radius growing with angle from 1.5 pi to 4.5 pi (noise 0.1), scaled by 1/2."""
    u = uniforms(n, 3, generator, qmc)
    a = 1.5 * math.pi * (1 + 2 * u[:, 0])
    return 0.5 * torch.stack([a * torch.cos(a), a * torch.sin(a)], 1) + 0.1 * normal(u[:, 1:])


@dataclass(frozen=True)
class Dataset:
    name: str
    sample0: Callable  # pi_0, the source ("noise")
    sample1: Callable  # pi_1, the target ("data")
    modes: tuple = ()  # pi_1's mixture centres, where it has them (mode dropping is measured against them)


DATASETS = {
    "paper": Dataset("paper", gaussian_mixture(PAPER_MEANS0, VAR), gaussian_mixture(PAPER_MEANS1, VAR),
                     tuple(PAPER_MEANS1)),
    "moons": Dataset("moons", standard_normal, moons),
    "8gaussians": Dataset("8gaussians", standard_normal, eight_gaussians, tuple(EIGHT_MEANS)),
    "checkerboard": Dataset("checkerboard", standard_normal, checkerboard),
    "swissroll": Dataset("swissroll", standard_normal, swiss_roll),
}


def get_dataset(name):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    return DATASETS[name]
