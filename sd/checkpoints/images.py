"""Images in and out of the pipeline: read PNG/JPEG (matplotlib, Pillow under it), resize, to and from
the VAE's [-1, 1] range, and the PSNR of a reconstruction."""
import math

import numpy as np
import torch
import torch.nn.functional as F


class ImageError(ValueError):
    """An image that cannot be read or does not fit (the message names the file or the size)."""


def read_image(path):
    """uint8 [H, W, 3] from a PNG or JPEG file (grey is repeated to RGB, alpha dropped)."""
    import matplotlib.image
    try:
        img = matplotlib.image.imread(path)
    except (OSError, ValueError, SyntaxError) as e:          # missing file, not an image, truncated data
        raise ImageError(f"{path}: cannot read the image ({e})") from None
    if img.dtype != np.uint8:                                # PNGs come as floats in [0, 1]
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ImageError(f"{path}: expected an RGB or grey image, got an array of shape {img.shape}")
    return np.ascontiguousarray(img[..., :3])


def resize(image, height, width, mode="bilinear"):
    """uint8 [H, W, 3] -> uint8 [height, width, 3], bilinear (or bicubic) with antialiasing."""
    if image.shape[:2] == (height, width):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(height, width), mode=mode, antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def fit(image, height=None, width=None, multiple=8):
    """The size an init image is used at: (height, width) if given, else its own size rounded down to
    a multiple of `multiple` (the VAE's factor). Returns (image resized, note or None)."""
    h, w = image.shape[:2]
    th = h // multiple * multiple if height is None else height
    tw = w // multiple * multiple if width is None else width
    if th < multiple or tw < multiple:
        raise ImageError(f"image of {h}x{w} pixels is smaller than {multiple}x{multiple}")
    note = None if (th, tw) == (h, w) else f"image resized from {h}x{w} to {th}x{tw} (height x width)"
    return resize(image, th, tw), note


def to_model_range(images):
    """uint8 [H, W, 3] or [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1] (the VAE's input)."""
    x = torch.as_tensor(np.asarray(images))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise ImageError(f"expected uint8 images [H, W, 3] or [B, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def psnr(a, b):
    """Peak signal-to-noise ratio of two uint8 images, 10 log10(255^2 / MSE) in dB (inf if equal)."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)
