"""InstaFlow's training at SD scale: python -m sd.reflow {generate, train, distill, export}.

    generate  (text, noise, image) triplets from a teacher (sd/training/triplets.py): shards + manifest, resumable,
              split over `torchrun` ranks
    train     text-conditioned reflow from a model folder's UNet on a triplet folder -> the 2-RF
    distill   a one-step student from a model folder's UNet (the exported 2-RF) on pairs made by the 2-RF
    export    a checkpoint's UNet + the untouched VAE, text encoder and tokenizer -> a diffusers folder

Multi-GPU / multi-node:  torchrun --nproc_per_node 8 -m sd.reflow train ...  (DistributedDataParallel;
--batch-size is the global batch). Every error exits with status 2 and one line naming the problem.
"""
import argparse
import json
import shutil
import sys
from dataclasses import fields
from pathlib import Path

import torch

from .checkpoints.loaders import CheckpointError, load_text_encoder, load_unet, locate, save_unet
from .checkpoints.safetensors_io import SafetensorsError
from .generate import DTYPES
from .models.tokenizer import TokenizerError, load_tokenizer
from .models.unet import UNet
from .sampling.loop import SAMPLER_NAMES, cfg_context, sample
from .sampling.pipeline import PipelineError, check_size, default_sampler, load_pipeline
from .training import triplets
from .training.trainer import TrainConfig, config_from, latest_checkpoint, ranks, read_checkpoint, select_weights, train


def cmd_generate(a):
    rank, world, device = ranks()
    if a.device:
        device = torch.device(a.device)
    pipe = load_pipeline(a.teacher, dtype=DTYPES[a.dtype], device=device)
    sampler = a.sampler or default_sampler(pipe.path)
    for name in ("height", "width"):
        check_size(f"--{name}", getattr(a, name), pipe.vae_factor)
    shape = pipe.latent_shape(1, a.height, a.width)[1:]
    negative = pipe.tokenizer([a.negative_prompt]).to(device)

    def sample_batch(x0, ids):
        ctx = cfg_context(pipe.text_encoder, ids.to(device), negative, a.guidance)
        return sample(pipe.unet, ctx.to(pipe.dtype), x0.to(device, pipe.dtype), a.steps, a.guidance, sampler)

    config = {"teacher": str(a.teacher), "sampler": sampler, "steps": a.steps, "guidance": a.guidance,
              "negative_prompt": a.negative_prompt, "height": a.height, "width": a.width, "dtype": a.dtype}
    n = triplets.generate(a.out, triplets.read_prompts(a.prompts), pipe.tokenizer, sample_batch, shape, config,
                          a.shard_size, a.batch_size, a.seed, rank, world)
    print(f"rank {rank}: wrote {n} shard(s) to {a.out}")


def _check_data(data, unet, text_encoder, where):
    c = unet.config["in_channels"]
    if data["latents"].shape[1] != c:
        raise triplets.TripletError(f"{where}: latents have {data['latents'].shape[1]} channels, the UNet takes {c}")
    if data["ids"].shape[1] > text_encoder.config["max_position_embeddings"]:
        raise triplets.TripletError(f"{where}: prompts of {data['ids'].shape[1]} tokens, the text encoder takes "
                                    f"{text_encoder.config['max_position_embeddings']}")


def cmd_train(a):
    init = locate(a.init)
    unet, text = load_unet(init), load_text_encoder(init)
    data, _ = triplets.load(a.data)
    _check_data(data, unet, text, a.data)
    tok = load_tokenizer(init if init.is_dir() else None, max_length=data["ids"].shape[1])   # for the empty prompt
    cfg = config_from(a)
    result = train(unet, text, data, cfg, a.out, tok([""]))
    if ranks()[0] == 0:
        print(f"{cfg.objective}: {cfg.iters} steps, last loss {result['losses'][-1] if result['losses'] else float('nan'):.5f}, "
              f"checkpoint {result['checkpoint']}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def cmd_export(a):
    """The checkpoint's UNet (EMA by default) + the init folder's other components -> a model folder."""
    ckpt = Path(a.checkpoint) if a.checkpoint else latest_checkpoint(a.run)
    if ckpt is None or not ckpt.exists():
        raise CheckpointError(f"{a.checkpoint or a.run}: no checkpoint (a training --out folder, or a step-*.safetensors)")
    tensors, meta = read_checkpoint(ckpt)
    init, out = locate(a.init), Path(a.out)
    if not init.is_dir():
        raise CheckpointError(f"{init}: export needs a model folder (vae/, text_encoder/, tokenizer/) to copy from")
    unet = UNet(meta["unet_config"])                     # the architecture is recorded in the checkpoint
    unet.load_state_dict(select_weights(tensors, a.weights))
    out.mkdir(parents=True, exist_ok=True)
    save_unet(unet, out, DTYPES[a.dtype])
    for part in ("vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor"):
        if (init / part).is_dir():
            shutil.copytree(init / part, out / part, dirs_exist_ok=True)
    if (init / "model_index.json").exists():
        shutil.copy(init / "model_index.json", out / "model_index.json")
    (out / "rectflow.json").write_text(json.dumps({
        "sampler": "euler", "objective": meta["config"].get("objective"), "step": int(meta["step"]),
        "weights": a.weights, "checkpoint": str(ckpt), "init": str(init),
        "note": "a rectified flow: sample with Euler steps, the UNet timestep (1 - t) * 1000"}, indent=2))
    print(f"exported {ckpt} ({a.weights} weights) to {out}")


def parser():
    ap = argparse.ArgumentParser(prog="python -m sd.reflow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="triplets from a teacher")
    g.add_argument("--teacher", required=True, help="model folder or single SD 1.x file")
    g.add_argument("--prompts", required=True, help="text file, one prompt per line (one sample per line)")
    g.add_argument("--out", required=True)
    g.add_argument("--steps", type=int, default=25)
    g.add_argument("--guidance", type=float, default=7.5)
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--sampler", choices=SAMPLER_NAMES, help="default: from the folder's scheduler (dpm++ for SD)")
    g.add_argument("--shard-size", type=int, default=256)
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--height", type=int, default=512)
    g.add_argument("--width", type=int, default=512)
    g.add_argument("--seed", type=int, default=0, help="sample j starts from the noise of seed + j")
    g.add_argument("--dtype", choices=DTYPES, default="fp32")
    g.add_argument("--device", help="default: cuda:LOCAL_RANK when there is a GPU, else cpu")
    g.set_defaults(fn=cmd_generate)

    defaults = TrainConfig()
    for name, objective, lr in (("train", "reflow", 1e-5), ("distill", "distill", 1e-5)):
        t = sub.add_parser(name, help="reflow -> 2-RF" if name == "train" else "one-step distillation")
        t.add_argument("--init", required=True, help="model folder (or single file) whose UNet starts the training")
        t.add_argument("--data", required=True, help="triplet folder made by `generate`")
        t.add_argument("--out", required=True, help="run folder: checkpoints/ (an existing run resumes)")
        t.set_defaults(fn=cmd_train, objective=objective, lr=lr)
        for f in fields(TrainConfig):
            if f.name in ("objective", "lr"):
                continue
            flag = "--" + f.name.replace("_", "-")
            if f.type is bool:
                t.add_argument(flag, action="store_true")
            elif not (name == "train" and f.name == "loss"):
                t.add_argument(flag, type=f.type, default=getattr(defaults, f.name))
        t.add_argument("--lr", type=float, default=lr)

    e = sub.add_parser("export", help="a diffusers-format model folder from a checkpoint")
    e.add_argument("--run", help="a training --out folder (its newest checkpoint)")
    e.add_argument("--checkpoint", help="or one checkpoint file")
    e.add_argument("--init", required=True, help="the model folder the run started from (VAE, text encoder, tokenizer)")
    e.add_argument("--out", required=True)
    e.add_argument("--weights", choices=("ema", "model"), default="ema")
    e.add_argument("--dtype", choices=DTYPES, default="fp32")
    e.set_defaults(fn=cmd_export)
    return ap


def main(argv=None):
    a = parser().parse_args(argv)
    try:
        a.fn(a)
    except (CheckpointError, SafetensorsError, TokenizerError, PipelineError, triplets.TripletError, ValueError,
            FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
