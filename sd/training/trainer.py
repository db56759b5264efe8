"""One training loop for the teacher, reflow and distillation (sd/training/objectives.py), from one CPU to many GPUs.

    for step in 0..iters-1:
        the global batch (B samples) = positions step*B .. step*B + B - 1 of a seeded permutation per epoch
        the objective's random numbers for those B samples, from a generator seeded by (seed, step)
        CFG dropout: the text of a sample is replaced by the empty prompt with probability p
        rank r of W takes its B/W samples, in `grad_accum` micro-batches; DDP averages the gradients
        AdamW step (lr: linear warmup then constant), gradient clipping, EMA of the weights
        every `save_every` steps and at the end: an atomic checkpoint

Everything random is a function of (seed, step), so a run resumed from a checkpoint continues
exactly as if never stopped, and W processes compute the same steps as one process with the same
global batch (up to float summation order). Multi-GPU / multi-node: start with `torchrun`, which
sets RANK / WORLD_SIZE / LOCAL_RANK; PyTorch's DistributedDataParallel does the communication.

Checkpoints are our safetensors files (no pickle): model.*, ema.*, adam.* tensors and the step,
config and loss scaler in the metadata, at out/checkpoints/step-0000100.safetensors.
"""
import functools
import json
import os
import queue
import threading
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from rectflow.checks import positive_int
from rectflow.train import ema_update

from ..checkpoints.safetensors_io import SafeOpen, SafetensorsError, save_file
from . import objectives


@dataclass
class TrainConfig:
    objective: str = "reflow"         # eps | reflow | distill | consistency
    iters: int = 1000
    batch_size: int = 32              # global batch per optimizer step (all processes, all micro-batches)
    grad_accum: int = 1               # micro-batches per process and step
    lr: float = 1e-5
    warmup: int = 0                   # steps of linear warmup, then constant
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.999                # EMA decay (0: no EMA)
    precision: str = "fp32"           # fp32 | bf16 | fp16 (autocast; fp16 with a loss scaler)
    grad_checkpointing: bool = False
    zero_output: bool = False         # reset the UNet's last conv to 0 at step 0: start from v = 0 (see below)
    cfg_dropout: float = 0.1          # probability of training on the empty prompt
    time_sampler: str = "uniform"     # reflow: uniform | logit_normal
    loss: str = "l2"                  # distill: l2 or "package.module:function"
    intervals: int = 20               # consistency: the grid t_n = n / intervals of the teacher's ODE steps
    seed: int = 0
    save_every: int = 500
    keep: int = 2                     # checkpoints kept
    prefetch: int = 2                 # batches read ahead by a background thread (0: read in the loop)

    # fields that change what the steps compute: a resumed run must keep them
    FIXED = ("objective", "batch_size", "lr", "warmup", "weight_decay", "grad_clip", "ema", "cfg_dropout",
             "time_sampler", "loss", "intervals", "seed")

    def validate(self, world=1):
        for name in ("iters", "batch_size", "grad_accum", "save_every", "keep", "intervals"):
            positive_int(getattr(self, name), name)
        if isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int) or self.prefetch < 0:
            raise ValueError(f"prefetch must be an integer >= 0, got {self.prefetch!r}")
        if self.objective not in objectives.OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}: choose {', '.join(objectives.OBJECTIVES)}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"unknown precision {self.precision!r}: choose fp32, bf16 or fp16")
        if self.batch_size % (world * self.grad_accum):
            raise ValueError(f"batch_size {self.batch_size} must be divisible by processes x grad_accum = "
                             f"{world} x {self.grad_accum}")
        if not 0 <= self.cfg_dropout < 1 or not 0 <= self.ema < 1:
            raise ValueError(f"cfg_dropout and ema must lie in [0, 1), got {self.cfg_dropout} and {self.ema}")
        return self


def ranks():
    """(rank, world, device) from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank, local = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return rank, world, device


def distributed():
    """ranks(), and the process group started when W > 1 (NCCL on GPUs, gloo on CPUs)."""
    rank, world, device = ranks()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


@functools.lru_cache(maxsize=2)
def epoch_permutation(n, seed, epoch):
    """The seeded order of the n samples in one epoch (kept: every step of the epoch reads it)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_indices(step, batch_size, n, seed):
    """Indices of the global batch of `step`: consecutive positions of one seeded permutation per epoch."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size)
    out = torch.empty_like(pos)
    for epoch in pos.div(n, rounding_mode="floor").unique().tolist():
        perm = epoch_permutation(n, seed, epoch)
        sel = pos // n == epoch
        out[sel] = perm[pos[sel] % n]
    return out


def rank_batches(data, steps, cfg, rank, world):
    """(step, this rank's rows of the step's global batch) for each step: {"ids", "latents"[, "noise"]}, gathered
    from `data` (tensors in memory, or triplet Columns reading memory-mapped shards). Rank r of W reads only
    its B/W rows."""
    n, local = len(data["latents"]), cfg.batch_size // world
    keys = [k for k in ("ids", "latents", "noise") if k in data]
    for step in steps:
        rows = batch_indices(step, cfg.batch_size, n, cfg.seed)[rank * local:(rank + 1) * local]
        yield step, {k: data[k][rows] for k in keys}


class Prefetch:
    """Iterate `batches` in a background thread, at most `depth` items ahead, in order; an error in the thread is
    raised in the loop. Reading the next batches from disk then overlaps the current step."""

    def __init__(self, batches, depth):
        self.queue, self.stop = queue.Queue(maxsize=depth), threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(batches,), daemon=True)
        self.thread.start()

    def _fill(self, batches):
        try:
            for item in batches:
                while not self.stop.is_set():
                    try:
                        self.queue.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
        except Exception as e:        # noqa: BLE001 - handed to the consumer
            self.queue.put((None, e))
            return
        self.queue.put((StopIteration, None))

    def __iter__(self):
        while True:
            item, error = self.queue.get()
            if error is not None:
                raise error
            if item is StopIteration:
                return
            yield item

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)


def step_generator(seed, step):
    return torch.Generator().manual_seed(seed * 1_000_003 + 7919 * step + 1)


# ---- checkpoints -------------------------------------------------------------------------------

def checkpoint_path(out, step):
    return Path(out) / "checkpoints" / f"step-{step:07d}.safetensors"


def latest_checkpoint(out):
    """The newest readable checkpoint in out/checkpoints (a *.tmp left by a kill is ignored), or None."""
    for f in sorted((Path(out) / "checkpoints").glob("step-*.safetensors"), reverse=True):
        try:
            SafeOpen(f)
            return f
        except (SafetensorsError, OSError):
            continue
    return None


def save_checkpoint(out, step, unet, ema, opt, scaler, cfg, keep):
    tensors = {f"model.{k}": v for k, v in unet.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in (ema or {}).items()})
    names = {p: k for k, p in unet.named_parameters()}
    for p, st in opt.state.items():
        for k, v in st.items():
            tensors[f"adam.{names[p]}.{k}"] = torch.as_tensor(v).reshape(-1) if k == "step" else v
    meta = {"step": str(step), "config": json.dumps(asdict(cfg)), "unet_config": json.dumps(unet.config),
            "scaler": json.dumps(scaler.state_dict() if scaler.is_enabled() else {})}
    path = checkpoint_path(out, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, path, metadata=meta)   # atomic
    for old in sorted(path.parent.glob("step-*.safetensors"))[:-keep]:
        old.unlink()
    return path


def read_checkpoint(path):
    """(tensors, metadata) of a checkpoint; metadata["config"] etc. parsed from JSON."""
    f = SafeOpen(path)
    meta = f.metadata()
    for k in ("config", "unet_config", "scaler"):
        if k not in meta:
            raise ValueError(f"{path}: not a checkpoint of this trainer (no {k!r} in its metadata)")
        meta[k] = json.loads(meta[k])
    return {k: f.get_tensor(k) for k in f.keys()}, meta


def select_weights(tensors, which="ema"):
    """The UNet weights among a checkpoint's tensors: the EMA (if it has one) or the raw model."""
    prefix = "ema." if which == "ema" and any(k.startswith("ema.") for k in tensors) else "model."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def weights(path, which="ema"):
    """select_weights of the checkpoint file at `path`."""
    return select_weights(read_checkpoint(path)[0], which)


def resume(path, cfg, unet, ema, opt, scaler):
    """Load a checkpoint into (unet, ema, opt, scaler); returns its step."""
    tensors, meta = read_checkpoint(path)
    for k in TrainConfig.FIXED:
        if meta["config"].get(k) != getattr(cfg, k):
            raise ValueError(f"{path}: the run was started with {k}={meta['config'].get(k)!r}, now {getattr(cfg, k)!r}; "
                             f"keep it to resume, or write to another --out")
    unet.load_state_dict(select_weights(tensors, "model"))
    if ema is not None:
        for k in ema:
            ema[k].copy_(tensors[f"ema.{k}"])
    for name, p in unet.named_parameters():
        if f"adam.{name}.step" in tensors:
            opt.state[p] = {k: (tensors[f"adam.{name}.{k}"].reshape(()) if k == "step"
                                else tensors[f"adam.{name}.{k}"].to(p.device).clone())
                            for k in ("step", "exp_avg", "exp_avg_sq")}
    if meta["scaler"]:
        scaler.load_state_dict(meta["scaler"])
    return int(meta["step"])


# ---- the loop ----------------------------------------------------------------------------------

def lr_at(cfg, step):
    """Linear warmup over cfg.warmup steps, then constant."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr


def train(unet, text_encoder, data, cfg, out, empty_ids, progress=True, on_step=None, teacher=None, lpips=None):
    """Train `unet` in place on `data` = {"latents": X_1, "ids": prompt tokens[, "noise": X_0]} with
    the frozen `text_encoder` (None: the ids are the context, for a model that encodes them itself); resumes from out/checkpoints when there are any. `empty_ids` [1, L]:
    the empty prompt's tokens (CFG dropout). on_step(step, loss) runs after each step. teacher
    (objective consistency): teacher(x, t, context) -> the teacher's velocity in rectified-flow time;
    the EMA weights are the target network theta^- (so cfg.ema is its decay, LCM's 0.95). lpips: the
    objectives.lpips_distance a loss naming "lpips" uses.
    Returns {"losses": [...], "ema": {name: tensor} or None, "checkpoint": path}."""
    rank, world, device = distributed()
    cfg.validate(world)
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 on the CPU")
    if "noise" not in data and cfg.objective not in objectives.OWN_NOISE:
        raise ValueError(f"objective {cfg.objective} needs (noise, latents) pairs: train on a triplet folder")
    if cfg.objective == "consistency" and (teacher is None or not cfg.ema):
        raise ValueError("objective consistency needs a teacher and ema > 0 (the EMA weights are its target network)")
    unet.to(device).train()
    unet.gradient_checkpointing = cfg.grad_checkpointing
    if text_encoder is not None:
        text_encoder.to(device).eval().requires_grad_(False)
    model = DistributedDataParallel(unet, device_ids=[device] if device.type == "cuda" else None) if world > 1 else unet
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    ema = {k: p.detach().clone() for k, p in unet.named_parameters()} if cfg.ema else None
    loss_fn = objectives.resolve_loss(cfg.loss, lpips)
    start, last = 0, latest_checkpoint(out)
    if last is not None:
        start = resume(last, cfg, unet, ema, opt, scaler)
    elif cfg.zero_output:
        # an eps teacher outputs about +X_0 where the flow's target is X_1 - X_0: start from v = 0 (docs/training.md)
        with torch.no_grad():
            for name in ("conv_out.weight", "conv_out.bias"):
                unet.get_parameter(name).zero_()
                if ema is not None:
                    ema[name].zero_()
    # consistency's target network theta^-: the UNet run with the EMA weights (its buffers are its own)
    target = (lambda *a: torch.func.functional_call(unet, ema, a, strict=False)) if cfg.objective == "consistency" else None
    amp = dict(device_type=device.type, dtype=torch.bfloat16 if cfg.precision == "bf16" else torch.float16,
               enabled=cfg.precision != "fp32")
    local, micro = cfg.batch_size // world, cfg.batch_size // world // cfg.grad_accum
    shape = tuple(data["latents"].shape[1:])
    losses, path = [], last
    bar = tqdm(total=cfg.iters, desc=cfg.objective, disable=not progress or rank, initial=start)
    batches = rank_batches(data, range(start, cfg.iters), cfg, rank, world)
    feed = Prefetch(batches, cfg.prefetch) if cfg.prefetch else None
    try:
        for step, batch in (feed if feed else batches):
            gen = step_generator(cfg.seed, step)
            rand = objectives.draw(cfg.objective, cfg.batch_size, shape, gen, cfg.time_sampler, cfg.intervals)
            drop = torch.rand(cfg.batch_size, generator=gen) < cfg.cfg_dropout       # CFG dropout of the text
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step)
            total = torch.zeros((), device=device)
            for m in range(cfg.grad_accum):
                sl = slice(rank * local + m * micro, rank * local + (m + 1) * micro)        # in the global batch
                mine = slice(m * micro, (m + 1) * micro)                                     # in this rank's rows
                ids = torch.where(drop[sl, None], empty_ids, batch["ids"][mine]).to(device)
                x1 = batch["latents"][mine].to(device)
                x0 = batch["noise"][mine].to(device) if "noise" in batch else None
                with torch.no_grad():
                    context = ids if text_encoder is None else text_encoder(ids)
                sync = m == cfg.grad_accum - 1 or world == 1
                with (nullcontext() if sync else model.no_sync()), torch.autocast(**amp):   # DDP: all-reduce once
                    loss = objectives.loss(cfg.objective, model, x0, x1, context,
                                           {k: v[sl] for k, v in rand.items()}, loss_fn, teacher, target,
                                           cfg.intervals) / cfg.grad_accum
                    scaler.scale(loss).backward()
                total += loss.detach()
            scaler.unscale_(opt)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            if ema is not None:                                     # EMA, warmed up: decay <= (1 + s) / (10 + s)
                decay = min(cfg.ema, (1 + step) / (10 + step))
                ema_update((ema[k] for k, _ in unet.named_parameters()), unet.parameters(), decay)
            if world > 1:
                dist.all_reduce(total)
                total /= world
            losses.append(total.item())
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            done = step + 1
            if done % cfg.save_every == 0 or done == cfg.iters:
                if rank == 0:
                    save_checkpoint(out, done, unet, ema, opt, scaler, cfg, cfg.keep)
                if world > 1:
                    dist.barrier()
                path = checkpoint_path(out, done)
            if on_step:
                on_step(done, losses[-1])
    finally:                                                    # stop the reader thread, whatever happened
        if feed:
            feed.close()
        bar.close()
    unet.eval()
    unet.gradient_checkpointing = False
    return {"losses": losses, "ema": ema, "checkpoint": path}


def config_from(args):
    """A TrainConfig from an argparse namespace (fields with the same names)."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)})
