"""What storing the triplets' latents in half precision (`sd.reflow generate --latent-dtype`) does to the
mini's 2-RF. From a finished default run of `python -m sd.mini` (runs/mini): its teacher's triplets are
written again with latents in fp16 and in bf16 (the same samples, rounded as `generate --latent-dtype` stores
them), the 2-RF stage is retrained on each exactly as the mini trains it (same init, seed, steps), and the
2-RF is evaluated as the mini does (held-out seeds, the judge's fidelity, FD in the mini's feature net), beside
the run's own fp32 2-RF (its metrics.json).

    python bench/mini_latent_dtype.py [--run runs/mini] [--dtypes fp16 bf16]     (about 4 minutes a dtype, 2 cores)
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from sd.mini import features, models, shapes  # noqa: E402
from sd.mini.run import MiniConfig, context_fn, load_models, stage_train  # noqa: E402
from sd.sampling.loop import sample  # noqa: E402
from sd.sampling.pipeline import noises  # noqa: E402
from sd.training import triplets  # noqa: E402
from sd.training.trainer import TrainConfig  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--run", type=Path, default=Path("runs/mini"))
    p.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=["fp16", "bf16"])
    args = p.parse_args()
    cfg = MiniConfig()
    tok, text, teacher, _, _ = load_models(args.run, cfg)
    recorded = json.loads((args.run / "metrics.json").read_text())
    data, manifest = triplets.load(args.run / "triplets-teacher")
    feature_net = features.ShapeNet(cfg.size)
    from sd.checkpoints.safetensors_io import load_file
    feature_net.load_state_dict(load_file(args.run / "features" / "shapenet.safetensors"))
    feature_net.eval()
    eval_caps = [shapes.CAPTIONS[i % len(shapes.CAPTIONS)] for i in range(cfg.eval_samples)]
    ids, shape = tok(eval_caps), tuple(manifest["latent_shape"])
    x0 = noises(shape, range(90_000, 90_000 + cfg.eval_samples))
    renders = shapes.render(eval_caps, cfg.size, torch.Generator().manual_seed(cfg.seed + 12))
    rows = [("fp32 (the run's metrics.json)", *(recorded[f"2-RF, {n} step{'s' * (n > 1)}"][k] for n in (1, 4)
                                                for k in ("fidelity", "fd")), 0.0)]
    for dt in args.dtypes:
        rounded = {**data, "latents": data["latents"].to(triplets.LATENT_DTYPES[dt]).float()}   # what the shards hold
        err = (rounded["latents"] - data["latents"]).abs().max().item()
        rf2 = models.unet()
        rf2.load_state_dict(teacher.state_dict())
        torch.manual_seed(cfg.seed)
        with tempfile.TemporaryDirectory() as out:
            stage_train(rf2, text, rounded, Path(out), TrainConfig(
                objective="reflow", iters=cfg.reflow_iters, lr=cfg.reflow_lr, cfg_dropout=0.0, zero_output=True,
                batch_size=cfg.batch_size, seed=cfg.seed, save_every=100, ema=0.995), tok, True)
        row = [f"{dt} latents"]
        with torch.no_grad():
            for n in (1, 4):
                imgs = sample(rf2, context_fn(text, tok, 1.0)(ids), x0.clone(), n, 1.0, "euler")
                judged = shapes.judge(imgs, eval_caps)
                row += [sum(r["both"] for r in judged) / len(judged), features.frechet(feature_net, imgs, renders)]
        rows.append((*row, err))
        print(rows[-1], flush=True)
    print(f"\nthe mini's 2-RF ({cfg.reflow_iters} steps) trained on the teacher's {len(data['latents'])} triplets with "
          f"latents stored as:\n")
    print("| latents | fidelity, 1 step | FD, 1 step | fidelity, 4 steps | FD, 4 steps | max rounding of a latent |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, f1, d1, f4, d4, err in rows:
        print(f"| {name} | {f1:.3f} | {d1:.1f} | {f4:.3f} | {d4:.1f} | {err:.1e} |")


if __name__ == "__main__":
    main()
