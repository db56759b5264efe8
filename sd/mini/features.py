"""The mini's Inception: a small CNN trained on renders to name a shape's colour, kind and quadrant. Its
penultimate features give the mini a distribution metric, the Frechet distance (FD) between generated
images and held-out renders of the same captions, as FID does with Inception's pool features (and FID
on MNIST with a trained LeNet); its classifier gives a CLIP-score analogue.

    FD = ||mu_g - mu_r||^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2))      sd.evaluation.frechet_distance
    caption score = mean over images of P(colour) P(shape) P(quadrant) of the caption's words

The judge (sd/mini/shapes.py) asks a yes/no question per image and saturates at 1.000; FD also sees
what the judge does not (the shape, its size and brightness, noise left in the background) and
compares whole distributions: one image per caption repeated would score 1.000 and a large FD.
"""
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..evaluation import frechet_distance, statistics
from .shapes import COLOURS, POSITIONS, SHAPES, dataset, parse

FEATURES = 64


class ShapeNet(nn.Module):
    """16x16 RGB -> conv 32 -> conv 64 /2 -> conv 64 /2 -> 64 features -> three linear heads."""

    def __init__(self, size=16):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(64 * (size // 4) ** 2, FEATURES), nn.ReLU())
        self.colour, self.shape, self.quadrant = (nn.Linear(FEATURES, k) for k in (len(COLOURS), len(SHAPES), len(POSITIONS)))

    def features(self, images):
        """The penultimate activations [N, 64] of images [N, 3, S, S] in [-1, 1] (clamped, as the judge does)."""
        return self.body(images.float().clamp(-1, 1))

    def forward(self, images):
        h = self.features(images)
        return self.colour(h), self.shape(h), self.quadrant(h)


def labels(captions):
    """[N, 3] class indices (colour, shape, quadrant) of captions."""
    return torch.tensor([(list(COLOURS).index(c), SHAPES.index(s), list(POSITIONS).index(p))
                         for c, s, p in map(parse, captions)])


def train_feature_net(n_images, iters, batch_size, size=16, seed=0, progress=True):
    """Cross-entropy on the three heads over renders of random captions (a fixed set of n_images)."""
    torch.manual_seed(seed)
    images, caps = dataset(n_images, size, seed)
    y = labels(caps)
    net = ShapeNet(size)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed + 1)
    for _ in tqdm(range(iters), desc="feature net", disable=not progress):
        k = torch.randint(len(images), (batch_size,), generator=g)
        loss = sum(F.cross_entropy(logits, y[k, j]) for j, logits in enumerate(net(images[k])))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(net, images, captions):
    """The fraction of images whose three labels the net names right (on renders: how good a judge it is)."""
    pred = torch.stack([logits.argmax(-1) for logits in net(images)], 1)
    return (pred == labels(captions)).all(1).float().mean().item()


@torch.no_grad()
def caption_score(net, images, captions):
    """Mean over images of P(colour) P(shape) P(quadrant) of each image's caption."""
    y = labels(captions)
    p = [logits.softmax(-1).gather(1, y[:, j:j + 1])[:, 0] for j, logits in enumerate(net(images))]
    return (p[0] * p[1] * p[2]).mean().item()


@torch.no_grad()
def frechet(net, images, reference):
    """FD between the features of two image sets."""
    return frechet_distance(*statistics(net.features(images)), *statistics(net.features(reference)))
