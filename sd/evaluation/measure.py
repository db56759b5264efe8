"""The metrics of a folder of images: Inception features for FID, and CLIP score against captions,
in one batched pass (images are read a batch at a time, so 30k images never sit in memory).

Images of any size are centre-cropped to a square (the side of their shorter edge), then resized to
299 x 299 by the Inception's own bilinear rule; SD's square outputs are not cropped. COCO's photographs
are not square: crop them the same way for reference statistics (`python -m sd.evaluate stats`).
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..checkpoints.images import read_image
from .clip_score import clip_score

SUFFIXES = (".png", ".jpg", ".jpeg")


def image_files(folder):
    """The image files of a folder, sorted by name (hidden and partial files skipped)."""
    folder = Path(folder)
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in SUFFIXES and not f.name.startswith("."))


def square(image):
    """uint8 [H, W, 3] -> its centred square crop."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return image[top:top + s, left:left + s]


def for_inception(images):
    """uint8 [H, W, 3] images (sizes may differ) -> float [N, 3, 299, 299] in [0, 1]."""
    out = []
    for im in images:
        x = torch.from_numpy(np.ascontiguousarray(square(im))).permute(2, 0, 1)[None].float() / 255
        out.append(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False))
    return torch.cat(out)


@torch.no_grad()
def measure(files, inception, clip=None, captions=None, batch=50, device="cpu", desc="metrics"):
    """Inception pool features [N, 2048] of the image files, and (with a CLIP model and one caption per file)
    their CLIP cosines [N] (else None)."""
    feats, cos = [], []
    for i in tqdm(range(0, len(files), batch), desc=desc, unit="batch"):
        images = [read_image(f) for f in files[i:i + batch]]
        feats.append(inception(for_inception(images).to(device)).double().cpu())
        if clip is not None:
            caps = captions[i:i + batch]
            if len({im.shape for im in images}) == 1:
                cos.append(clip_score(clip, clip.tokenizer, np.stack(images), caps))
            else:                                        # sizes differ: one image at a time
                cos.append(torch.cat([clip_score(clip, clip.tokenizer, im[None], [c]) for im, c in zip(images, caps)]))
    return torch.cat(feats), (torch.cat(cos) if clip is not None else None)
