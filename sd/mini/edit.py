"""Inversion and editing on the mini InstaFlow: why straight flows make them cheap.

    reconstruction  held-out renders x_1 with their captions c: invert with N backward Euler steps of a
                    model's field, X_{t-1/N} = X_t - (1/N) v(X_t, t, c), then regenerate with N forward
                    steps; the error E|| x_1' - x_1 ||^2 is summed over the 768 values (as S is). The
                    teacher runs as a rectified flow (sd.sampling.samplers.eps_velocity). The one-step student
                    has no backward map of its own: the 2-RF it was distilled from inverts (N steps) and
                    the student regenerates in one step, as on the toy.
    edit            invert with the source caption ("a red circle at the top left"), regenerate from that
                    noise with the target caption ("a blue circle at the top left"): the judge's fidelity
                    to the target, and how far the shape moved (its foreground centroid, in pixels).

`field(model, captions, guidance)` is given by the caller (sd/mini/run.py): v(X, t) for a model name
("teacher", "2-RF", "student") conditioned on the captions.
"""
import torch

import rectflow as rf

from . import shapes

RECOLOUR = {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green"}


def recolour(caption):
    """The edit's target caption: the same shape at the same position in another colour."""
    colour, shape, position = shapes.parse(caption)
    return shapes.caption(RECOLOUR[colour], shape, position)


def centroid(images):
    """Foreground centroid (row, col) in pixels of images [n, 3, S, S] (max channel > 0.5 in [0, 1]);
    NaN where an image has no foreground."""
    fg = ((images.float().clamp(-1, 1) + 1) / 2).amax(1) > 0.5
    s = images.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
    area = fg.sum((1, 2)).float()
    return torch.stack([(fg * yy).sum((1, 2)) / area, (fg * xx).sum((1, 2)) / area], 1)


def methods(field, caps, guidance):
    """name -> (backward field, forward field, forward steps or None = as many as backward)."""
    teacher = field("teacher", caps, guidance)
    rf2 = field("2-RF", caps, 1.0)
    return {f"teacher (CFG {guidance:g})": (teacher, teacher, None),
            "teacher (CFG 1)": (field("teacher", caps, 1.0),) * 2 + (None,),
            "2-RF": (rf2, rf2, None),
            "distilled 2-RF (2-RF inverts, 1 step)": (rf2, field("student", caps, 1.0), 1)}


@torch.no_grad()
def reconstruction_table(field, x1, caps, steps=(1, 2, 4, 16), guidance=3.0):
    """{method: {N: E|| G(I(x_1)) - x_1 ||^2}} (rectflow.reconstruction_error)."""
    return {name: {str(n): rf.reconstruction_error(back, fwd, x1, n, m) for n in steps}
            for name, (back, fwd, m) in methods(field, caps, guidance).items()}


@torch.no_grad()
def edit(field, x1, caps, model, steps, guidance=1.0):
    """Images regenerated with the recoloured captions from the noise that `steps` backward Euler steps
    of `model` give for x_1 under its own captions. model "student": the 2-RF inverts, the student
    regenerates in one step."""
    back = "2-RF" if model == "student" else model
    z0 = rf.invert(field(back, caps, guidance), x1, steps)
    target = [recolour(c) for c in caps]
    return rf.euler(field(model, target, guidance), z0, 1 if model == "student" else steps)


def edit_scores(x1, edited, caps):
    """Fidelity of the edits to the target captions, and the mean centroid shift (pixels)."""
    target = [recolour(c) for c in caps]
    shift = (centroid(edited) - centroid(x1)).norm(dim=1)
    lost = float(x1.shape[-1])                          # an edit that lost its shape counts a whole side
    return {"fidelity": shapes.fidelity(edited, target), "centroid_shift_px": float(shift.nan_to_num(lost).mean())}
