"""Sampling with ControlNets: the UNet that the Euler loop calls becomes

    v(x, t, text) = UNet(x, t, text, skips + sum_j r_j, mid + sum_j r_mid_j),
    (r_j, r_mid_j) = ControlNet_j(x, t, text, c_j, scale_j)

with the same latents, timestep (1 - t) * 1000 and text context as the UNet. Under CFG the batch is
[negatives; prompts] and each control image c_j is given to both halves (as InstaFlow's released
ControlNet pipeline does). Control images are RGB in [0, 1] at the output's pixel size.
"""
import numpy as np
import torch

from ..checkpoints.images import ImageError, resize


def control_tensor(image, height, width):
    """A control image as float [B, 3, height, width] in [0, 1]: from uint8 [H, W, 3], [H, W] (grey, e.g.
    an edge map) or [B, H, W, 3] (resized to height x width if it differs, bilinear with antialiasing),
    or from a float tensor [B, 3, height, width] already in [0, 1]."""
    if torch.is_tensor(image) and image.is_floating_point():
        if image.ndim != 4 or image.shape[1] != 3 or tuple(image.shape[-2:]) != (height, width):
            raise ImageError(f"control image tensor of shape {tuple(image.shape)}: expected [B, 3, {height}, {width}]")
        return image.float().contiguous()
    x = np.asarray(image.cpu() if torch.is_tensor(image) else image)
    if x.dtype != np.uint8 or x.ndim not in (2, 3, 4) or (x.ndim >= 3 and x.shape[-1] != 3):
        raise ImageError(f"control image: expected uint8 [H, W, 3], [H, W] or [B, H, W, 3], got {x.dtype} {x.shape}")
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=2)
    x = np.stack([resize(np.ascontiguousarray(im), height, width) for im in (x if x.ndim == 4 else x[None])])
    return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0).contiguous()   # one memory layout, one result


def controlled(unet, controls):
    """The UNet with ControlNet residuals: model(x, t, context) for sd.sampling.loop.sample.
    controls: [(controlnet, control image [1 or B, 3, H, W] in [0, 1], scale), ...]; an image of batch B
    is repeated for the two halves of a CFG batch of 2B."""
    def model(x, t, context):
        down, mid = None, None
        for net, cond, scale in controls:
            if cond.shape[0] not in (1, x.shape[0]):         # [B] images, [2B] = [neg; text] latents
                cond = cond.repeat(x.shape[0] // cond.shape[0], 1, 1, 1)
            d, m = net(x, t, context, cond, scale)
            down = d if down is None else [a + b for a, b in zip(down, d)]   # several ControlNets: summed
            mid = m if mid is None else mid + m
        return unet(x, t, context, down_residuals=down, mid_residual=mid)
    return model
