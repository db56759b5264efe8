"""The mini InstaFlow's world: coloured shapes at positions, their captions, and a rule-based judge.

    caption  "a {colour} {shape} at the {top|bottom} {left|right}"      (4 x 2 x 4 = 32 captions)
    image    [3, S, S] in [-1, 1]: a near-black background and one shape of that colour, centred in
             that quadrant (jittered), of random size and brightness; drawn at 4x and box-filtered.
    judge    colour: enough foreground (max channel > 0.5), not too much, and >= 60% of it nearest to
             the named colour; position: the centroid of the named colour's pixels lies in the quadrant.
"""
import itertools

import torch
import torch.nn.functional as F

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 0.9, 0.0), "blue": (0.1, 0.3, 1.0), "yellow": (1.0, 0.9, 0.0)}
SHAPES = ("circle", "square")
POSITIONS = {"top left": (0, 0), "top right": (0, 1), "bottom left": (1, 0), "bottom right": (1, 1)}  # (row, col)


def caption(colour, shape, position):
    return f"a {colour} {shape} at the {position}"


CAPTIONS = [caption(*c) for c in itertools.product(COLOURS, SHAPES, POSITIONS)]


def parse(text):
    """(colour, shape, position) of a caption made by `caption`."""
    words = text.split()
    return words[1], words[2], " ".join(words[5:7])


def render(captions, size=16, generator=None, oversample=4):
    """Images [n, 3, size, size] in [-1, 1] for the captions, with seeded jitter."""
    n, hi = len(captions), size * oversample
    u = torch.rand(n, 5, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(hi) + 0.5, torch.arange(hi) + 0.5, indexing="ij")
    out = torch.zeros(n, 3, hi, hi)
    for i, text in enumerate(captions):
        colour, shape, position = parse(text)
        row, col = POSITIONS[position]
        q = hi / 2
        cy, cx = q * (row + 0.5) + (u[i, 0] - 0.5) * q * 0.5, q * (col + 0.5) + (u[i, 1] - 0.5) * q * 0.5
        r = q * (0.24 + 0.12 * u[i, 2])                                   # radius / half side
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if shape == "circle" else \
            (((yy - cy).abs() <= r * 0.9) & ((xx - cx).abs() <= r * 0.9))
        rgb = torch.tensor(COLOURS[colour]) * (0.8 + 0.2 * u[i, 3])
        out[i] = mask * rgb[:, None, None] + (~mask) * 0.08 * u[i, 4]
    return F.avg_pool2d(out, oversample) * 2 - 1


def dataset(n, size=16, seed=0):
    """n images with captions drawn uniformly from CAPTIONS."""
    gen = torch.Generator().manual_seed(seed)
    caps = [CAPTIONS[k] for k in torch.randint(len(CAPTIONS), (n,), generator=gen).tolist()]
    return render(caps, size, gen), caps


def judge(images, captions):
    """Per image: {"colour": bool, "position": bool, "both": bool} (images [n, 3, S, S] in about [-1, 1])."""
    rgb = (images.float().clamp(-1, 1) + 1) / 2
    palette = torch.tensor(list(COLOURS.values()))                        # [K, 3]
    names = list(COLOURS)
    s = rgb.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
    results = []
    for img, text in zip(rgb, captions):
        colour, _, position = parse(text)
        fg = img.amax(0) > 0.5                                            # foreground pixels
        nearest = (img.permute(1, 2, 0)[..., None, :] - palette).pow(2).sum(-1).argmin(-1)   # [S, S]
        named = fg & (nearest == names.index(colour))
        area = fg.sum().item()
        colour_ok = s * s * 0.02 <= area <= s * s * 0.25 and named.sum().item() >= 0.6 * area
        row, col = POSITIONS[position]
        if named.any():
            cy, cx = yy[named].mean().item(), xx[named].mean().item()
            position_ok = (cy >= s / 2) == bool(row) and (cx >= s / 2) == bool(col)
        else:
            position_ok = False
        results.append({"colour": colour_ok, "position": position_ok, "both": colour_ok and position_ok})
    return results


def fidelity(images, captions):
    """The fraction of images whose colour and position both match their caption."""
    r = judge(images, captions)
    return sum(x["both"] for x in r) / len(r)
