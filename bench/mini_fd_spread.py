"""How much the mini's FD moves with the sample: the FD of each model of a finished `python -m sd.mini` run
(default runs/mini) for three sets of 256 noises against three sets of 256 held-out renders, and how often
the student is below each other model (the 2-RF's one step, the teacher's 20 steps, the rivals LCM and DMD2)
on the same (noise, render) pair.

    python bench/mini_fd_spread.py [RUN_FOLDER]          about 2.5 min on 2 CPU cores
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sd.mini import features, models, shapes  # noqa: E402
from sd.mini.run import MiniConfig, context_fn, dmd2_generator, load_models, stage_features  # noqa: E402
from sd.sampling.loop import sample  # noqa: E402
from sd.sampling.pipeline import noises  # noqa: E402
from sd.training.trainer import latest_checkpoint, weights  # noqa: E402

NOISES, RENDERS = (90_000, 190_000, 290_000), (12, 13, 14)      # the run's own sets come first


def main(out="runs/mini"):
    cfg = MiniConfig()
    tok, text, teacher, rf2, student = load_models(out, cfg)
    net = stage_features(Path(out) / "features", cfg, False)
    lcm, dmd2 = models.unet(), dmd2_generator(Path(out) / "dmd2")      # the rivals (stages 5 and 5b)
    lcm.load_state_dict(weights(latest_checkpoint(Path(out) / "lcm")))
    caps = [shapes.CAPTIONS[i % len(shapes.CAPTIONS)] for i in range(cfg.eval_samples)]
    ids = tok(caps)
    refs = [shapes.render(caps, cfg.size, torch.Generator().manual_seed(cfg.seed + k)) for k in RENDERS]
    runs = {"teacher, 20 steps": (teacher, cfg.teacher_steps, cfg.guidance, "dpm++"),
            "teacher, 4 steps": (teacher, 4, cfg.guidance, "dpm++"),
            "2-RF, 1 step": (rf2, 1, 1.0, "euler"), "2-RF, 4 steps": (rf2, 4, 1.0, "euler"),
            "distilled 2-RF, 1 step": (student, 1, 1.0, "euler"),
            "LCM, 1 step": (lcm, 1, 1.0, "consistency"), "LCM, 4 steps": (lcm, 4, 1.0, "consistency"),
            "DMD2, 1 step": (dmd2, 1, 1.0, "euler")}
    fd = {}
    with torch.no_grad():
        for name, (net_, steps, g, solver) in runs.items():
            fd[name] = []
            for base in NOISES:
                x0 = noises((3, cfg.size, cfg.size), range(base, base + cfg.eval_samples))
                imgs = sample(net_, context_fn(text, tok, g)(ids), x0, steps, g, solver)
                fd[name] += [features.frechet(net, imgs, r) for r in refs]
    print(f"{'model':<24}" + "".join(f"{f'n{a}/r{b}':>9}" for a in range(3) for b in range(3)) + f"{'min':>8}{'max':>8}")
    for name, vals in fd.items():
        print(f"{name:<24}" + "".join(f"{v:9.1f}" for v in vals) + f"{min(vals):8.1f}{max(vals):8.1f}")
    s = fd["distilled 2-RF, 1 step"]
    for other in ("2-RF, 1 step", "teacher, 20 steps", "LCM, 1 step", "LCM, 4 steps", "DMD2, 1 step"):
        below = sum(a < b for a, b in zip(s, fd[other]))
        gaps = [b - a for a, b in zip(s, fd[other])]
        print(f"student below {other}: {below} of 9 pairs (differences {min(gaps):.1f} to {max(gaps):.1f})")


if __name__ == "__main__":
    main(*sys.argv[1:])
