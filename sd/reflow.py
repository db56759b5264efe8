"""InstaFlow's training at SD scale: python -m sd.reflow {generate, train, distill, export}.

    generate  (text, noise, image) triplets from a teacher (sd/training/triplets.py): shards + manifest, resumable,
              split over `torchrun` ranks; the noise is regenerated from the seed, not stored
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

from .checkpoints.loaders import CheckpointError, load_lpips, load_text_encoder, load_unet, load_vae, locate, save_unet
from .checkpoints.safetensors_io import SafetensorsError
from .cli import DTYPES, HelpFormatter, fail, check_file, check_out, check_sizes, check_steps
from .models.tokenizer import TokenizerError, load_tokenizer
from .models.unet import UNet
from .sampling.loop import SAMPLER_NAMES, cfg_context, sample
from .sampling.pipeline import PipelineError, check_size, default_sampler, load_pipeline
from .training import objectives, triplets
from .training.trainer import TrainConfig, config_from, latest_checkpoint, ranks, read_checkpoint, select_weights, train


def cmd_generate(a):
    rank, world, device = ranks()
    if a.device:
        device = torch.device(a.device)
    check_out(a.out, folder=True)
    check_file(a.prompts, "--prompts")
    check_steps(a.steps)
    check_sizes(a.height, a.width)
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
    Path(a.out).mkdir(parents=True, exist_ok=True)
    prompts = triplets.PromptFile(a.prompts, Path(a.out) / triplets.PROMPT_INDEX if rank == 0 else None,
                                  progress=rank == 0)                     # a bar while a big file is indexed
    n = triplets.generate(a.out, prompts, pipe.tokenizer, sample_batch, shape, config, a.shard_size, a.batch_size,
                          a.seed, rank, world, latent_dtype=a.latent_dtype, store_noise=a.store_noise)
    print(f"rank {rank}: wrote {n} shard(s) to {a.out}")


def _check_data(data, unet, text_encoder, where):
    c = unet.config["in_channels"]
    if data["latents"].shape[1] != c:
        raise triplets.TripletError(f"{where}: latents have {data['latents'].shape[1]} channels, the UNet takes {c}")
    if data["ids"].shape[1] > text_encoder.config["max_position_embeddings"]:
        raise triplets.TripletError(f"{where}: prompts of {data['ids'].shape[1]} tokens, the text encoder takes "
                                    f"{text_encoder.config['max_position_embeddings']}")


def lpips_files(a):
    """--loss naming lpips needs --lpips-vgg and --lpips-lin (checked before anything loads); else None."""
    loss = getattr(a, "loss", "l2") or "l2"
    uses = ":" not in loss and "lpips" in loss
    objectives.resolve_loss(loss, lpips=(lambda p, t: 0) if uses else None)        # the name, checked now
    if not uses:
        return None
    if not (a.lpips_vgg and a.lpips_lin):
        raise ValueError(f"--loss {loss} needs --lpips-vgg FILE (torchvision's VGG16 weights, vgg16-397923af.pth) and "
                         f"--lpips-lin FILE (the lpips package's weights/v0.1/vgg.pth)")
    return check_file(a.lpips_vgg, "--lpips-vgg"), check_file(a.lpips_lin, "--lpips-lin")


def cmd_train(a):
    check_out(a.out, folder=True)
    cfg = config_from(a)
    cfg.validate()
    lp_files = lpips_files(a)
    init = locate(a.init)
    unet, text = load_unet(init), load_text_encoder(init)
    data, _ = triplets.open_triplets(a.data)         # read on demand from the mapped shards
    _check_data(data, unet, text, a.data)
    tok = load_tokenizer(init if init.is_dir() else None, max_length=data["ids"].shape[1])   # for the empty prompt
    lp = None
    if lp_files:                     # LPIPS of the decoded images: the frozen VAE of --init and LPIPS-VGG, on the device
        device = ranks()[2]
        lp = objectives.lpips_distance(load_lpips(*lp_files, device=device),
                                       load_vae(init, device=device).requires_grad_(False))
    result = train(unet, text, data, cfg, a.out, tok([""]), lpips=lp)
    if ranks()[0] == 0:
        print(f"{cfg.objective}: {cfg.iters} steps, last loss {result['losses'][-1] if result['losses'] else float('nan'):.5f}, "
              f"checkpoint {result['checkpoint']}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def cmd_export(a):
    """The checkpoint's UNet (EMA by default) + the init folder's other components -> a model folder."""
    out = check_out(a.out, folder=True)
    ckpt = Path(a.checkpoint) if a.checkpoint else latest_checkpoint(a.run)
    if ckpt is None or not ckpt.exists():
        raise CheckpointError(f"{a.checkpoint or a.run}: no checkpoint (a training --out folder, or a step-*.safetensors)")
    init = locate(a.init)
    missing = [part for part in ("vae", "text_encoder", "tokenizer") if not (init / part).is_dir()]
    if not init.is_dir() or missing:
        raise CheckpointError(f"--init {init}: not a diffusers model folder (no {'/, '.join(missing or ['folder'])}/) "
                              f"to copy the VAE, text encoder and tokenizer from (the mini's pixel-space models, "
                              f"without a VAE, cannot be exported)")
    tensors, meta = read_checkpoint(ckpt)
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


# help for the trainer's fields (sd/training/trainer.py TrainConfig), shown by `train --help` / `distill --help`
FIELD_HELP = {
    "iters": "optimizer steps",
    "batch_size": "global batch per optimizer step (all processes, all micro-batches)",
    "grad_accum": "micro-batches per process and step",
    "warmup": "steps of linear warmup, then a constant learning rate",
    "weight_decay": "AdamW's weight decay",
    "grad_clip": "clip the gradient norm to this (0: no clipping)",
    "ema": "decay of the exponential moving average of the weights, which export uses (0: no EMA)",
    "precision": "autocast precision (fp16 with a loss scaler, CUDA only)",
    "grad_checkpointing": "recompute the UNet's activations in the backward pass: less memory, more compute",
    "zero_output": "zero the UNet's last convolution at step 0, so the flow starts from v = 0 (docs/training.md says "
                   "why, for a 2-RF initialised from an epsilon teacher)",
    "cfg_dropout": "probability of training on the empty prompt (what classifier-free guidance needs)",
    "time_sampler": "distribution of t for reflow: uniform (Algorithm 1) or logit_normal (Esser et al. 2024)",
    "loss": "distillation loss: l2, lpips (of the decoded images; InstaFlow's last stage), a sum such as "
            "l2+0.5*lpips, or package.module:function taking (prediction, target)",
    "seed": "seed of every random number of the run (batches, t, dropout): a resumed run repeats it exactly",
    "save_every": "steps between checkpoints",
    "keep": "checkpoints kept (the newest)",
    "prefetch": "batches read ahead from the triplet shards by a background thread (0: none); changes no number",
}
FIELD_CHOICES = {"precision": ("fp32", "bf16", "fp16"), "time_sampler": ("uniform", "logit_normal")}


def parser():
    ap = argparse.ArgumentParser(prog="python -m sd.reflow", description=__doc__, formatter_class=HelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="triplets from a teacher", formatter_class=HelpFormatter)
    g.add_argument("--teacher", required=True, help="model folder or single SD 1.x file")
    g.add_argument("--prompts", required=True, help="text file, one prompt per line (one sample per line)")
    g.add_argument("--out", required=True, help="triplet folder: manifest.json + shards (an existing one resumes)")
    g.add_argument("--steps", type=int, default=25, help="the teacher's sampling steps")
    g.add_argument("--guidance", type=float, default=7.5, help="the teacher's classifier-free guidance scale")
    g.add_argument("--negative-prompt", default="", help="used with --guidance > 1")
    g.add_argument("--sampler", choices=SAMPLER_NAMES, help="default: from the folder's scheduler (dpm++ for SD)")
    g.add_argument("--shard-size", type=int, default=256, help="samples per shard file")
    g.add_argument("--batch-size", type=int, default=8, help="samples per teacher call")
    g.add_argument("--height", type=int, default=512, help="pixels, a multiple of 8")
    g.add_argument("--width", type=int, default=512, help="pixels, a multiple of 8")
    g.add_argument("--seed", type=int, default=0, help="sample j starts from the noise of seed + j")
    g.add_argument("--dtype", choices=DTYPES, default="fp32", help="the teacher's dtype (fp16 on a GPU)")
    g.add_argument("--latent-dtype", choices=list(triplets.LATENT_DTYPES), default="fp32",
                   help="dtype of the stored latents (fp16 / bf16 halve the disk; training reads them as float32)")
    g.add_argument("--store-noise", action="store_true",
                   help="also store X_0 (by default the trainer regenerates it from the seed: 2x less disk)")
    g.add_argument("--device", help="default: cuda:LOCAL_RANK when there is a GPU, else cpu")
    g.set_defaults(fn=cmd_generate)

    defaults = TrainConfig()
    for name, objective, lr in (("train", "reflow", 1e-5), ("distill", "distill", 1e-5)):
        t = sub.add_parser(name, help="reflow -> 2-RF" if name == "train" else "one-step distillation",
                           formatter_class=HelpFormatter)
        t.add_argument("--init", required=True, help="model folder (or single file) whose UNet starts the training")
        t.add_argument("--data", required=True, help="triplet folder made by `generate`")
        t.add_argument("--out", required=True, help="run folder: checkpoints/ (an existing run resumes)")
        t.set_defaults(fn=cmd_train, objective=objective, lr=lr)
        for f in fields(TrainConfig):
            if f.name in ("objective", "lr", "intervals"):      # intervals: consistency only (sd.mini)
                continue
            flag = "--" + f.name.replace("_", "-")
            if f.type is bool:
                t.add_argument(flag, action="store_true", help=FIELD_HELP[f.name])
            elif not (name == "train" and f.name == "loss"):
                t.add_argument(flag, type=f.type, default=getattr(defaults, f.name), help=FIELD_HELP[f.name],
                               choices=FIELD_CHOICES.get(f.name))
        t.add_argument("--lr", type=float, default=lr, help="AdamW's learning rate")
        if name == "distill":
            t.add_argument("--lpips-vgg", help="with --loss naming lpips: torchvision's VGG16 weights (vgg16-397923af.pth, "
                                               "read with weights_only=True)")
            t.add_argument("--lpips-lin", help="with --loss naming lpips: the lpips package's weights/v0.1/vgg.pth")

    e = sub.add_parser("export", help="a diffusers-format model folder from a checkpoint", formatter_class=HelpFormatter)
    e.add_argument("--run", help="a training --out folder (its newest checkpoint)")
    e.add_argument("--checkpoint", help="or one checkpoint file")
    e.add_argument("--init", required=True, help="the model folder the run started from (VAE, text encoder, tokenizer)")
    e.add_argument("--out", required=True, help="the model folder to write (sd.generate --model reads it)")
    e.add_argument("--weights", choices=("ema", "model"), default="ema", help="the EMA weights or the last step's")
    e.add_argument("--dtype", choices=DTYPES, default="fp32", help="dtype of the written UNet")
    e.set_defaults(fn=cmd_export)
    return ap


def main(argv=None):
    a = parser().parse_args(argv)
    try:
        a.fn(a)
    except (CheckpointError, SafetensorsError, TokenizerError, PipelineError, triplets.TripletError, ValueError,
            FileNotFoundError) as err:
        sys.exit(fail(err))


if __name__ == "__main__":
    main()
