"""Canny edge detection in plain torch (Canny 1986), for canny ControlNets' control images, written to
give OpenCV's cv2.Canny(image, low, high) (aperture 3, L1 gradient) result:

 0. optional Gaussian blur of standard deviation sigma (cv2.Canny itself does not blur);
 1. Sobel gradients gx, gy (3x3, borders replicated) of each channel; magnitude m = |gx| + |gy|; in a
    colour image each pixel takes the channel with the largest magnitude;
 2. non-maximum suppression: a pixel stays if m > low and it is a maximum along its gradient direction,
    quantised to horizontal, vertical or one of the two diagonals (|gy| < tan 22.5 |gx|: compare with the
    left and right neighbours; |gy| > tan 67.5 |gx|: above and below; else the diagonal the gradient
    points along), ties broken as OpenCV does (strictly greater than one side, at least the other);
 3. hysteresis: the survivors with m > high are edges, and so is every survivor connected to an edge
    through survivors (8-neighbourhood).
Returns uint8 [H, W] with edges at 255, like cv2.Canny.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

TAN22 = 13573          # OpenCV's tan(22.5 deg) in fixed point: round(tan(pi / 8) * 2^15)


def gaussian_blur(x, sigma):
    """Separable Gaussian blur of x [C, H, W] (float), kernel radius ceil(3 sigma), borders reflected."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).float()
    x = F.pad(x[:, None], (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))[:, 0]


def sobel(x):
    """gx, gy of x [C, H, W] (integers in float64), 3x3 Sobel with replicated borders."""
    p = F.pad(x[:, None], (1, 1, 1, 1), mode="replicate")
    d = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype)
    s = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype)
    gx = F.conv2d(p, (s[:, None] * d[None, :])[None, None])[:, 0]     # d/dx: [1 2 1]^T x [-1 0 1]
    gy = F.conv2d(p, (d[:, None] * s[None, :])[None, None])[:, 0]     # d/dy: [-1 0 1]^T x [1 2 1]
    return gx, gy


def shifted(m, dy, dx):
    """m[y + dy, x + dx], zero outside the image."""
    p = F.pad(m, (1, 1, 1, 1))
    h, w = m.shape
    return p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def canny(image, low=100, high=200, sigma=0.0):
    """Edges of a uint8 image [H, W, 3] or [H, W] (numpy or torch) -> uint8 [H, W] in {0, 255}."""
    x = torch.as_tensor(np.asarray(image))
    if x.dtype != torch.uint8 or x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] not in (1, 3)):
        raise ValueError(f"canny: expected a uint8 image [H, W, 3] or [H, W], got {x.dtype} {tuple(x.shape)}")
    if min(low, high) < 0:
        raise ValueError(f"canny: thresholds must be >= 0, got low={low}, high={high}")
    low, high = sorted((math.floor(low), math.floor(high)))          # OpenCV floors (and swaps) them
    x = (x[None] if x.ndim == 2 else x.permute(2, 0, 1)).double()
    if sigma > 0:
        x = gaussian_blur(x.float(), sigma).round().clamp(0, 255).double()
    gx, gy = sobel(x)
    mag = gx.abs() + gy.abs()                                          # 1. L1 magnitude, per channel
    best = mag.argmax(0, keepdim=True)                                 #    the strongest channel (first on ties)
    mag, gx, gy = (t.gather(0, best)[0] for t in (mag, gx, gy))
    ax, ay = gx.abs(), gy.abs() * 2 ** 15                              # 2. direction, in OpenCV's fixed point
    horizontal = ay < ax * TAN22
    vertical = ~horizontal & (ay > ax * TAN22 + ax * 2 ** 16)          #    tan 67.5 = tan 22.5 + 2
    s = torch.where(gx * gy < 0, -1, 1)                                #    which diagonal
    keep_h = (mag > shifted(mag, 0, -1)) & (mag >= shifted(mag, 0, 1))
    keep_v = (mag > shifted(mag, -1, 0)) & (mag >= shifted(mag, 1, 0))
    keep_d = torch.where(s > 0, (mag > shifted(mag, -1, -1)) & (mag > shifted(mag, 1, 1)),
                         (mag > shifted(mag, -1, 1)) & (mag > shifted(mag, 1, -1)))
    survivor = (mag > low) & torch.where(horizontal, keep_h, torch.where(vertical, keep_v, keep_d))
    edges = survivor & (mag > high)                                    # 3. hysteresis from the strong pixels
    weak = survivor.float()[None, None]
    grown = edges.float()[None, None]
    while True:
        nxt = F.max_pool2d(grown, 3, stride=1, padding=1) * weak
        if torch.equal(nxt, grown):
            break
        grown = nxt
    return (grown[0, 0] * 255).to(torch.uint8).numpy()
