"""Mini InstaFlow, end to end on a laptop: InstaFlow's three steps on tiny SD networks and shapes.

    0. teacher   UNet + text encoder trained the Stable Diffusion way (epsilon prediction, SD schedule,
                 CFG dropout) on captioned shapes (sd/mini/shapes.py)
    1. triplets  (caption, X_0, X_1 = teacher's DPM-Solver++ with CFG from X_0)      sd/training/triplets.py
    2. 2-RF      reflow on the triplets, initialised from the teacher's UNet (its last   objective "reflow"
                 conv zeroed: see TrainConfig.zero_output)
    3. student   new pairs from the 2-RF (Euler, many steps), then one-step distillation  objective "distill"
    3b. LCM      the rival: latent consistency distillation of the same teacher (its       objective "consistency"
                 CFG-guided ODE, one DDIM step per grid interval, an EMA target) on the training images, for
                 as many gradient steps as 2-RF and student together; sampled by multistep consistency sampling
    4. evaluate  straightness; prompt fidelity (the rule-based judge); the mean squared distance to the
                 teacher's many-step image from the same noise; FD to held-out renders and a caption score
                 in the features of a small CNN trained once on renders (sd/mini/features.py, the mini's
                 FID and CLIP score); an image grid; inversion and editing
                 (sd/mini/edit.py: invert-then-generate errors, recolouring edits, edit.png)
    6. control   a ControlNet trained on the frozen teacher to follow the shapes' masks, then used
                 unchanged on the 2-RF and the student (sd/mini/control.py, control.png)

The text encoder is trained with the teacher and then frozen (SD's is frozen CLIP). Every stage goes
through the same code as the SD-scale CLI (`python -m sd.reflow`), writes into `out`, and resumes:
running the same command again skips what is finished.
"""
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from matplotlib.figure import Figure

from rectflow.metrics import straightness

from ..checkpoints.loaders import load_lpips, read_weights
from ..models.lpips import LPIPS
from ..checkpoints.safetensors_io import save_file
from ..sampling.loop import cfg_context, guided_model, rf_timestep, sample
from ..sampling.pipeline import noises
from ..sampling.samplers import eps_velocity
from ..training import triplets
from ..training.objectives import eps_teacher, lpips_distance
from ..training.trainer import TrainConfig, latest_checkpoint, read_checkpoint, train, weights
from . import control, edit, features, models, shapes


@dataclass
class MiniConfig:
    size: int = 16
    train_images: int = 8192
    teacher_iters: int = 1200
    teacher_lr: float = 5e-4
    pairs: int = 2048              # triplets from the teacher, and pairs from the 2-RF
    teacher_steps: int = 20        # DPM-Solver++ steps of the teacher
    guidance: float = 3.0          # the teacher's CFG scale (the 2-RF and the student sample without CFG)
    reflow_iters: int = 800
    reflow_lr: float = 5e-4
    rf_steps: int = 16             # Euler steps of the 2-RF when it makes the distillation pairs
    distill_iters: int = 600
    distill_lr: float = 1e-4
    distill_loss: str = "l2"       # or "lpips", "l2+0.5*lpips": LPIPS of the images (pixel space: no VAE here)
    lcm_lr: float = 5e-4           # LCM, for reflow_iters + distill_iters steps (the 2-RF's and student's budget);
                                   # a 150-step probe: at 1e-4 no 1-4 step sample was right yet, at 5e-4 most
    lcm_intervals: int = 20        # LCM's grid of teacher ODE steps (LCM: 50 DDIM steps of skip 20 on SD)
    lcm_ema: float = 0.95          # the target network's EMA decay (LCM's)
    batch_size: int = 64
    eval_samples: int = 256
    straightness_steps: int = 16
    inversion_samples: int = 256   # held-out renders inverted and edited (sd/mini/edit.py)
    inversion_steps: tuple = (1, 2, 4, 16)
    controlnet_iters: int = 1500
    feature_images: int = 16384    # renders the FD's feature net is trained on (sd/mini/features.py)
    feature_iters: int = 2000
    seed: int = 0

    def fast(self):
        """A smoke run of every stage with tiny numbers: the results mean nothing."""
        return replace(self, train_images=256, teacher_iters=12, pairs=32, teacher_steps=4, reflow_iters=6,
                       rf_steps=2, distill_iters=6, batch_size=16, eval_samples=16, straightness_steps=4,
                       inversion_samples=16, inversion_steps=(1, 4), controlnet_iters=4,
                       feature_images=512, feature_iters=10)

    @property
    def mode(self):
        """"fast" (the smoke run), "full" (the default run) or "custom", for messages, tables and figures."""
        base = replace(MiniConfig(), seed=self.seed, distill_loss=self.distill_loss)
        return "fast" if self == base.fast() else "full" if self == base else "custom"


class MiniRunError(ValueError):
    """A run folder made with another configuration (a fast run where a full one is asked for, ...)."""


def check_run(out, cfg):
    """A run folder records its configuration (config.json) when a run starts in it; resuming it, or
    reading its models, with another configuration is refused before anything is trained or loaded.
    A folder from before config.json existed is judged by its teacher checkpoint's batch size and steps."""
    out, want = Path(out), json.loads(json.dumps(asdict(cfg)))
    record, teacher = out / "config.json", latest_checkpoint(out / "teacher")
    if record.exists():
        have = json.loads(record.read_text())
        kind = MiniConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in have.items()}).mode
    elif teacher is not None:
        t = read_checkpoint(teacher)[1]["config"]
        have = {"batch_size": t["batch_size"], "teacher_iters": t["iters"]}
        kind = "fast" if t["batch_size"] == MiniConfig().fast().batch_size else "another"
    else:
        return
    differ = [f"{k}={have[k]}, not {want[k]}" for k in want if k in have and have[k] != want[k]]
    if differ:
        raise MiniRunError(f"{out} holds a {kind} run, not this {cfg.mode} one ({'; '.join(differ[:2])}"
                           f"{'; ...' if len(differ) > 2 else ''}): use another --out (--fast: runs/mini-fast) "
                           f"or delete it")


def context_fn(text_encoder, tok, guidance):
    """ids -> the UNet context; [empty; text] when guidance > 1 (CFG)."""
    empty = tok([""])
    return lambda ids: cfg_context(text_encoder, ids, empty, guidance)


def sampler_fn(unet, ctx, steps, guidance, sampler):
    return lambda x0, ids: sample(unet, ctx(ids), x0, steps, guidance, sampler)


def stage_train(unet, text_encoder, data, out, cfg, tok, progress, teacher=None, lpips=None):
    result = train(unet, text_encoder, data, cfg, out, tok([""]), progress=progress, teacher=teacher, lpips=lpips)
    if result["ema"] is not None:                        # continue from the EMA weights
        unet.load_state_dict(result["ema"])
    return result["losses"]


def velocity(unet, ctx_ids, text_encoder, tok, guidance, kind):
    """v(X, t) in rectified-flow time for straightness: the flow's UNet, or the eps teacher converted."""
    guided = guided_model(unet, context_fn(text_encoder, tok, guidance)(ctx_ids), guidance)
    if kind == "eps":
        return eps_velocity(guided)
    return lambda X, t: guided(X, rf_timestep(t))


def field_fn(tok, text_encoder, nets):
    """field(name, captions, guidance) -> v(X, t) of nets[name] = (unet, "eps" | "flow") on those
    captions, as sd/mini/edit.py takes it."""
    def field(name, captions, guidance):
        net, kind = nets[name]
        return velocity(net, tok(captions), text_encoder, tok, guidance, kind)
    return field


FAST_NOTE = "FAST MODE (a smoke run): these images and numbers mean nothing"


def grid(rows, captions, path, note=None):
    """A figure: one row per model (name -> images [n, 3, S, S]), one column per caption, `note` above
    (fast runs say so). (matplotlib's Figure directly, not pyplot: a notebook's backend stays as it is.)"""
    n = len(captions)
    fig = Figure(figsize=(1.1 * n, 1.25 * len(rows)))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (name, imgs) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(((imgs[c].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
            if r == 0:
                ax.set_title(captions[c][2:].replace(" at the ", "\n"), fontsize=6)
    if note:
        fig.suptitle(note, fontsize=8, color="red")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def student_lpips(cfg, files):
    """The distillation's LPIPS when cfg.distill_loss names it: from (vgg, lin) files, else LPIPS-VGG with random
    weights (a smoke test of the code path: say so), on the mini's 16x16 images directly (no VAE)."""
    if "lpips" not in cfg.distill_loss:
        return None
    if files:
        net = load_lpips(*files)
    else:
        print("LPIPS with random weights (no --lpips-vgg / --lpips-lin): the code path runs, the loss means little")
        torch.manual_seed(cfg.seed)
        net = LPIPS().eval().requires_grad_(False)
    return lpips_distance(net)


def run(cfg=MiniConfig(), out="runs/mini", progress=True, lpips_files=None):
    """All stages; returns the metrics dict (also written to out/metrics.json). lpips_files: (torchvision's VGG16
    weights, the lpips package's vgg.pth) for a distill_loss naming lpips."""
    out, t_start = Path(out), time.time()
    check_run(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    record = out / "config.json"                        # a resumed run keeps its record (check_run compared
    if not record.exists() or set(asdict(cfg)) - set(json.loads(record.read_text())):   # it), adding new fields
        record.write_text(json.dumps(asdict(cfg), indent=2))
    torch.manual_seed(cfg.seed)
    tok = models.tokenizer()
    text_encoder, unet = models.text_encoder(tok), models.unet()
    seconds = {}
    common = dict(batch_size=cfg.batch_size, seed=cfg.seed, save_every=100, ema=0.995)

    # 0. the teacher: epsilon prediction on the SD schedule, CFG dropout 10%; the text encoder trains with it
    t0 = time.time()
    images, caps = shapes.dataset(cfg.train_images, cfg.size, cfg.seed)
    teacher = _JointTeacher(unet, text_encoder)
    stage_train(teacher, _Identity(), {"latents": images, "ids": tok(caps)}, out / "teacher",
                TrainConfig(objective="eps", iters=cfg.teacher_iters, lr=cfg.teacher_lr, warmup=100,
                            cfg_dropout=0.1, **common), tok, progress)
    text_encoder.requires_grad_(False).eval()
    seconds["teacher"] = time.time() - t0

    # 1. triplets from the teacher
    t0 = time.time()
    shape = (3, cfg.size, cfg.size)
    prompts = [shapes.CAPTIONS[k] for k in torch.randint(len(shapes.CAPTIONS), (cfg.pairs,),
                                                         generator=torch.Generator().manual_seed(cfg.seed + 1))]
    with torch.no_grad():
        teach = sampler_fn(unet, context_fn(text_encoder, tok, cfg.guidance), cfg.teacher_steps, cfg.guidance, "dpm++")
        triplets.generate(out / "triplets-teacher", prompts, tok, teach, shape,
                          {"teacher": "mini", "sampler": "dpm++", "steps": cfg.teacher_steps, "guidance": cfg.guidance},
                          shard_size=512, batch_size=cfg.batch_size, seed=10_000, progress=progress)
    data, _ = triplets.load(out / "triplets-teacher")
    seconds["triplets"] = time.time() - t0

    # 2. 2-rectified flow, initialised from the teacher's UNet
    t0 = time.time()
    rf2 = models.unet()
    rf2.load_state_dict(unet.state_dict())
    stage_train(rf2, text_encoder, data, out / "2rf", TrainConfig(objective="reflow", iters=cfg.reflow_iters,
                lr=cfg.reflow_lr, cfg_dropout=0.0, zero_output=True, **common), tok, progress)
    seconds["reflow"] = time.time() - t0

    # 3. pairs from the 2-RF, then the one-step student
    t0 = time.time()
    with torch.no_grad():
        flow = sampler_fn(rf2, context_fn(text_encoder, tok, 1.0), cfg.rf_steps, 1.0, "euler")
        triplets.generate(out / "triplets-2rf", prompts, tok, flow, shape,
                          {"teacher": "mini 2-RF", "sampler": "euler", "steps": cfg.rf_steps, "guidance": 1.0},
                          shard_size=512, batch_size=cfg.batch_size, seed=20_000, progress=progress)
    pairs, _ = triplets.load(out / "triplets-2rf")
    student = models.unet()
    student.load_state_dict(rf2.state_dict())
    stage_train(student, text_encoder, pairs, out / "student", TrainConfig(objective="distill",
                iters=cfg.distill_iters, lr=cfg.distill_lr, cfg_dropout=0.0, loss=cfg.distill_loss, **common), tok,
                progress, lpips=student_lpips(cfg, lpips_files))
    seconds["distill"] = time.time() - t0

    # 3b. the rival, LCM: consistency distillation of the same guided teacher, on the same step budget
    t0 = time.time()
    lcm = models.unet()
    lcm.load_state_dict(unet.state_dict())
    with torch.no_grad():
        teacher_v = eps_teacher(unet, text_encoder(tok([""])), cfg.guidance)
    stage_train(lcm, text_encoder, {"latents": images, "ids": tok(caps)}, out / "lcm",
                TrainConfig(objective="consistency", iters=cfg.reflow_iters + cfg.distill_iters, lr=cfg.lcm_lr,
                            cfg_dropout=0.0, zero_output=True, intervals=cfg.lcm_intervals,
                            **{**common, "ema": cfg.lcm_ema}), tok, progress, teacher=teacher_v)
    seconds["lcm"] = time.time() - t0

    # 4. evaluation on held-out seeds: every caption equally often; the FD's feature net is trained first
    t0 = time.time()
    feature_net = stage_features(out / "features", cfg, progress)
    seconds["features"] = time.time() - t0
    t0 = time.time()
    eval_caps = [shapes.CAPTIONS[i % len(shapes.CAPTIONS)] for i in range(cfg.eval_samples)]
    ids = tok(eval_caps)
    x0 = noises(shape, range(90_000, 90_000 + cfg.eval_samples))
    label = "{}, {} step{}".format
    runs = {label(who, n, "s" * (n > 1)): (net, n, g, solver) for who, net, g, solver, steps in (
        ("teacher", unet, cfg.guidance, "dpm++", [cfg.teacher_steps] + [n for n in (1, 2, 4) if n != cfg.teacher_steps]),
        ("2-RF", rf2, 1.0, "euler", (1, 2, 4)), ("distilled 2-RF", student, 1.0, "euler", (1,)),
        ("LCM", lcm, 1.0, "consistency", (1, 2, 4))) for n in steps}
    in_grid = [label("teacher", cfg.teacher_steps, "s"), "teacher, 1 step", "2-RF, 1 step", "2-RF, 4 steps",
               "distilled 2-RF, 1 step", "LCM, 1 step", "LCM, 4 steps"]
    metrics, shown, reference = {"config": asdict(cfg)}, {}, None
    note = FAST_NOTE if cfg.mode == "fast" else None
    # held-out renders of the same captions: what FD measures against, and a second set for its floor
    renders, renders2 = (shapes.render(eval_caps, cfg.size, torch.Generator().manual_seed(cfg.seed + k)) for k in (12, 13))
    with torch.no_grad():
        for key, (net, steps, g, solver) in runs.items():
            imgs = sample(net, context_fn(text_encoder, tok, g)(ids), x0.clone(), steps, g, solver)
            reference = imgs if reference is None else reference     # the teacher's many-step images
            judged = shapes.judge(imgs, eval_caps)
            metrics[key] = {"steps": steps, "guidance": g, "sampler": solver,
                            "fidelity": sum(r["both"] for r in judged) / len(judged),
                            "colour": sum(r["colour"] for r in judged) / len(judged),
                            "position": sum(r["position"] for r in judged) / len(judged),
                            "mse_to_teacher": (imgs - reference).pow(2).mean().item(),
                            "fd": features.frechet(feature_net, imgs, renders),
                            "caption_score": features.caption_score(feature_net, imgs, eval_caps)}
            if key in in_grid:
                shown[key] = imgs[:8]
        # (the judge's score is "judge" here, not "fidelity": readers that list the models by "fidelity" skip it)
        metrics["held-out renders"] = {"judge": shapes.fidelity(renders2, eval_caps),
                                       "fd": features.frechet(feature_net, renders2, renders),   # the floor
                                       "caption_score": features.caption_score(feature_net, renders2, eval_caps),
                                       "feature_net_accuracy": features.accuracy(feature_net, renders2, eval_caps)}
        # the student is trained at t = 0 only: its value is the one-step model's field read as a flow
        for name, net, g, kind in (("teacher", unet, cfg.guidance, "eps"), ("2-RF", rf2, 1.0, "flow"),
                                   ("distilled 2-RF", student, 1.0, "flow")):
            v = velocity(net, ids, text_encoder, tok, g, kind)
            metrics.setdefault("straightness", {})[name] = straightness(v, x0, cfg.straightness_steps)
    grid({"data": shapes.render(eval_caps[:8], cfg.size, torch.Generator().manual_seed(5)), **shown},
         eval_caps[:8], out / "grid.png", note)

    # 5. inversion and editing with the straight flows (sd/mini/edit.py)
    field = field_fn(tok, text_encoder, {"teacher": (unet, "eps"), "2-RF": (rf2, "flow"), "student": (student, "flow")})
    inv_caps = [shapes.CAPTIONS[i % len(shapes.CAPTIONS)] for i in range(cfg.inversion_samples)]
    x1 = shapes.render(inv_caps, cfg.size, torch.Generator().manual_seed(cfg.seed + 7))
    metrics["inversion"] = edit.reconstruction_table(field, x1, inv_caps, cfg.inversion_steps, cfg.guidance)
    show = [i for i in (0, 5, 10, 15, 16, 21, 26, 31) if i < len(x1)]   # every colour, shape and quadrant
    edits, metrics["edit"] = {"original": x1[show]}, {}
    for model, n, g in (("teacher", 16, cfg.guidance), ("2-RF", 1, 1.0), ("2-RF", 4, 1.0), ("student", 1, 1.0),
                        ("student", 4, 1.0)):
        name = f"{model}, {n} step{'s' * (n > 1)} back"
        edited = edit.edit(field, x1, inv_caps, model, n, g)
        metrics["edit"][name] = {"model": model, "inversion_steps": n, "guidance": g,
                                 **edit.edit_scores(x1, edited, inv_caps)}
        edits[name] = edited[show]
    # the control: the new caption from fresh noise, where nothing ties the shape to the original's place
    z = torch.randn(x1.shape, generator=torch.Generator().manual_seed(cfg.seed + 8))
    with torch.no_grad():
        fresh = sample(rf2, context_fn(text_encoder, tok, 1.0)(tok([edit.recolour(c) for c in inv_caps])), z, 4)
    metrics["edit"]["control: fresh noise, 2-RF 4 steps"] = {"model": "2-RF", "inversion_steps": 0, "guidance": 1.0,
                                                             **edit.edit_scores(x1, fresh, inv_caps)}
    edits["control: fresh noise"] = fresh[show]
    titles = [f"a {c.split()[1]}>{edit.recolour(c).split()[1]} {c.split(maxsplit=2)[2]}" for c in (inv_caps[i] for i in show)]
    grid(edits, titles, out / "edit.png", note)
    seconds["evaluate"] = time.time() - t0

    # 6. a ControlNet on the teacher, used on every model (sd/mini/control.py)
    t0 = time.time()
    controlnet = stage_controlnet(unet, text_encoder, tok, out / "controlnet", cfg, progress)
    nets = {"teacher, {} steps".format(cfg.teacher_steps): (unet, cfg.teacher_steps, "dpm++", cfg.guidance),
            "2-RF, 4 steps": (rf2, 4, "euler", 1.0), "2-RF, 1 step": (rf2, 1, "euler", 1.0),
            "distilled 2-RF, 1 step": (student, 1, "euler", 1.0)}
    with torch.no_grad():
        metrics["controlnet"], shown, masks, prompts = control.evaluate(nets, controlnet, text_encoder, tok,
                                                                        cfg.eval_samples, cfg.size, cfg.seed + 9)
    rows = {"control mask": masks[:8] * 2 - 1, "student, no ControlNet": shown["distilled 2-RF, 1 step, without"][:8],
            **{k.replace("distilled 2-RF", "student"): v[:8] for k, v in shown.items() if k.endswith(", with")}}
    grid(rows, prompts[:8], out / "control.png", note)
    seconds["controlnet"] = time.time() - t0
    metrics["seconds"] = {**seconds, "total": time.time() - t_start}
    metrics["mode"] = cfg.mode                            # "fast": these numbers mean nothing
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def stage_features(out, cfg, progress):
    """Train the FD's feature net on renders (sd/mini/features.py), or load it when a previous run did."""
    f = Path(out) / "shapenet.safetensors"
    net = features.ShapeNet(cfg.size)
    if f.exists():
        net.load_state_dict(read_weights(f))
        return net.eval()
    net = features.train_feature_net(cfg.feature_images, cfg.feature_iters, cfg.batch_size * 2, cfg.size,
                                     cfg.seed + 11, progress)
    f.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, f)
    return net


def stage_controlnet(unet, text_encoder, tok, out, cfg, progress):
    """Train the mini ControlNet, or load it when a previous run finished it."""
    f = Path(out) / "controlnet.safetensors"
    if f.exists():
        net = control.controlnet_for(unet)
        net.load_state_dict(read_weights(f))
        return net.eval()
    net, losses = control.train_controlnet(unet, text_encoder, tok, cfg.controlnet_iters, cfg.batch_size,
                                           seed=cfg.seed + 3, progress=progress)
    f.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, f,
              metadata={"losses": json.dumps([losses[0], losses[-1]])})
    return net


def load_models(out="runs/mini", cfg=None):
    """(tokenizer, text encoder, teacher UNet, 2-RF UNet, student UNet) from a finished run's checkpoints
    (EMA weights), to look at them in a notebook. With `cfg`, the run must have been made with it
    (check_run: a notebook in full mode does not read a fast run's models)."""
    if cfg is not None:
        check_run(out, cfg)
    out, tok = Path(out), models.tokenizer()
    teacher = _JointTeacher(models.unet(), models.text_encoder(tok))
    teacher.load_state_dict(weights(latest_checkpoint(out / "teacher")))
    nets = []
    for stage in ("2rf", "student"):
        nets.append(models.unet())
        nets[-1].load_state_dict(weights(latest_checkpoint(out / stage)))
    return tok, teacher.text_encoder.eval(), teacher.unet.eval(), *[n.eval() for n in nets]


class _Identity(torch.nn.Module):
    """The teacher stage hands token ids straight to _JointTeacher, which owns the text encoder."""

    def forward(self, ids):
        return ids


class _JointTeacher(torch.nn.Module):
    """UNet and text encoder as one trainable module: teacher(x, k, ids) = unet(x, k, text_encoder(ids)),
    so the trainer updates both (and keeps one EMA, one checkpoint) in the teacher stage."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self.config = {"unet": unet.config, "text_encoder": text_encoder.config}

    def forward(self, x, timesteps, ids):
        return self.unet(x, timesteps, self.text_encoder(ids))
