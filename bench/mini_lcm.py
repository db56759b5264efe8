"""Where the mini's LCM falls short of InstaFlow's student: on a finished `python -m sd.mini` run (default
runs/mini), per model and step count, the judge's fidelity split into colour and position, how many
samples blow up into coloured noise, and how clean the background of the others is.

    python bench/mini_lcm.py [RUN_FOLDER]          about 30 s on 2 CPU cores

background: the median over images of each image's median |pixel - its median pixel| (0 for a render:
a flat background around a small shape); blown up: that value above 0.3 (the whole image noise).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sd.mini import models, shapes  # noqa: E402
from sd.mini.run import MiniConfig, context_fn, load_models  # noqa: E402
from sd.sampling.loop import sample  # noqa: E402
from sd.sampling.pipeline import noises  # noqa: E402
from sd.training.trainer import latest_checkpoint, weights  # noqa: E402


def background(x):
    """Per image: median |x - median(x)| over its values (channels and pixels)."""
    flat = x.flatten(1)
    return (flat - flat.median(1, keepdim=True).values).abs().median(1).values


def main(out="runs/mini"):
    cfg = MiniConfig()
    tok, text, _, rf2, student = load_models(out, cfg)
    lcm = models.unet()
    lcm.load_state_dict(weights(latest_checkpoint(Path(out) / "lcm")))
    caps = [shapes.CAPTIONS[i % len(shapes.CAPTIONS)] for i in range(cfg.eval_samples)]   # the run's evaluation set
    x0 = noises((3, cfg.size, cfg.size), range(90_000, 90_000 + cfg.eval_samples))
    ctx = context_fn(text, tok, 1.0)(tok(caps))
    print(f"{'model':24s} {'fidelity':>9s} {'colour':>7s} {'position':>9s} {'blown up':>9s} {'background':>11s}")
    renders = shapes.render(caps, cfg.size, torch.Generator().manual_seed(cfg.seed + 12))
    print(f"{'held-out renders':24s} {'':>9s} {'':>7s} {'':>9s} {0:9.3f} {background(renders).median():11.3f}")
    with torch.no_grad():
        for name, net, steps, sampler in (("distilled 2-RF, 1 step", student, 1, "euler"), ("2-RF, 1 step", rf2, 1, "euler"),
                                          ("2-RF, 4 steps", rf2, 4, "euler"), ("LCM, 1 step", lcm, 1, "consistency"),
                                          ("LCM, 2 steps", lcm, 2, "consistency"), ("LCM, 4 steps", lcm, 4, "consistency")):
            imgs = sample(net, ctx, x0.clone(), steps, 1.0, sampler)
            judged = shapes.judge(imgs, caps)
            mean = lambda k: sum(r[k] for r in judged) / len(judged)      # noqa: E731
            b = background(imgs)
            print(f"{name:24s} {mean('both'):9.3f} {mean('colour'):7.3f} {mean('position'):9.3f} "
                  f"{(b > 0.3).float().mean():9.3f} {b[b <= 0.3].median():11.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
