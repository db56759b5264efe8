"""Mini InstaFlow, end to end on a laptop: InstaFlow's three steps on tiny SD networks and shapes.

Nine stages, one function each (`stage_*`), in this order and with these numbers in the docs:

    1. teacher     UNet + text encoder trained the Stable Diffusion way (epsilon prediction, SD schedule, CFG
                   dropout) on captioned shapes (sd/mini/shapes.py); the text encoder is then frozen (SD's is
                   frozen CLIP)
    2. triplets    (caption, X_0, X_1 = the teacher's DPM-Solver++ with CFG from X_0)    sd/training/triplets.py
    3. 2-RF        reflow on the triplets, from the teacher's UNet (its last conv         objective "reflow"
                   zeroed: TrainConfig.zero_output)
    4. student     new pairs from the 2-RF (Euler, many steps), then one-step distillation  objective "distill"
    5. LCM         the rival: latent consistency distillation of the same guided teacher   objective "consistency"
                   (one DDIM step per grid interval, an EMA target) on the training images, for as many
                   gradient steps as stages 3 and 4 together; multistep consistency sampling
    5b. DMD2       the second rival: distribution matching (rectflow/distribution_matching.py) of the same guided
                   teacher, generator and fake score started as the teacher, for as many gradient steps (both
                   networks together) as stages 3 and 4; one step
    6. features    a small CNN trained once on renders: the features of the mini's FID and CLIP score
                   (sd/mini/features.py)
    7. evaluate    on held-out noises: prompt fidelity (the rule-based judge), the distance to the teacher's
                   many-step image, FD to held-out renders, the caption score, straightness; grid.png
    8. edit        inversion and editing with the straight flows (sd/mini/edit.py), edit.png
    9. controlnet  a ControlNet trained on the frozen teacher to follow the shapes' masks, then used unchanged
                   on the 2-RF and the student (sd/mini/control.py), control.png

Every stage goes through the same code as the SD-scale CLI (`python -m sd.reflow`), writes into `out`, and
resumes: running the same command again skips what is finished.
"""
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure

from rectflow.distribution_matching import RECIPES, train_distribution_matching
from rectflow.flow import mse
from rectflow.metrics import straightness
from toy.cli import FAST_NOTE

from ..checkpoints.loaders import load_lpips, read_weights
from ..models.lpips import LPIPS
from ..checkpoints.safetensors_io import save_file
from ..sampling.euler import rf_timestep
from ..sampling.loop import cfg_context, guided_model, sample
from ..sampling.pipeline import noises
from ..sampling.samplers import EpsFlow, eps_velocity
from ..training import triplets
from ..training.objectives import draw, eps_teacher, flow, loss, lpips_distance
from ..training.trainer import TrainConfig, latest_checkpoint, train, weights
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
    lcm_lr: float = 5e-4           # LCM's, for reflow_iters + distill_iters steps (docs/training.md: its choice)
    lcm_intervals: int = 20        # LCM's grid of teacher ODE steps (LCM: 50 DDIM steps of skip 20 on SD)
    lcm_ema: float = 0.95          # the target network's EMA decay (LCM's)
    lcm_loss: str = "sd.training.objectives:lcm_huber"    # LCM's distance (its training script's Huber loss)
    dmd_lr: float = 5e-4           # DMD2's: the better of 1e-4 and 5e-4 in a 40-step probe (docs/training.md)
    batch_size: int = 64
    eval_samples: int = 256
    straightness_steps: int = 16
    inversion_samples: int = 256   # held-out renders inverted and edited (sd/mini/edit.py)
    inversion_steps: tuple = (1, 2, 4, 16)
    controlnet_iters: int = 1500
    feature_images: int = 16384    # renders the FD's feature net is trained on (sd/mini/features.py)
    feature_iters: int = 2000
    seed: int = 0

    @classmethod
    def fast(cls, **kw):
        """A smoke run of every stage with tiny numbers: the results mean nothing."""
        base = dict(train_images=256, teacher_iters=12, pairs=32, teacher_steps=4, reflow_iters=6, rf_steps=2,
                    distill_iters=6, batch_size=16, eval_samples=16, straightness_steps=4, inversion_samples=16,
                    inversion_steps=(1, 4), controlnet_iters=4, feature_images=512, feature_iters=10)
        return cls(**{**base, **kw})

    @property
    def mode(self):
        """"fast" (the smoke run), "full" (the default run) or "custom", for messages, tables and figures."""
        same = dict(seed=self.seed, distill_loss=self.distill_loss)
        return "fast" if self == MiniConfig.fast(**same) else "full" if self == MiniConfig(**same) else "custom"


class MiniRunError(ValueError):
    """A run folder made with another configuration (a fast run where a full one is asked for, ...)."""


def check_run(out, cfg):
    """A run folder records its configuration (config.json) when a run starts in it; resuming it, or
    reading its models, with another configuration is refused before anything is trained or loaded."""
    out, want = Path(out), json.loads(json.dumps(asdict(cfg)))
    record = out / "config.json"
    if not record.exists():
        if latest_checkpoint(out / "teacher") is not None:
            raise MiniRunError(f"{out} holds checkpoints but no config.json (the record a run starts with): use "
                               f"another --out or delete it")
        return
    have = json.loads(record.read_text())
    kind = MiniConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in have.items()}).mode
    # a key the record lacks was added to MiniConfig after the run started: its stage may have run otherwise
    differ = [f"{k}={have.get(k, '(not recorded)')}, not {want[k]}" for k in want if have.get(k, None) != want[k]]
    if differ:
        which = f"not this {cfg.mode} one" if kind != cfg.mode else "made with another configuration"
        raise MiniRunError(f"{out} holds a {kind} run, {which} ({'; '.join(differ[:2])}"
                           f"{'; ...' if len(differ) > 2 else ''}): use another --out (--fast: runs/mini-fast) "
                           f"or delete it")


def context_fn(text_encoder, tok, guidance):
    """ids -> the UNet context; [empty; text] when guidance > 1 (CFG)."""
    empty = tok([""])
    return lambda ids: cfg_context(text_encoder, ids, empty, guidance)


def sampler_fn(unet, ctx, steps, guidance, sampler):
    return lambda x0, ids: sample(unet, ctx(ids), x0, steps, guidance, sampler)


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


def train_config(cfg, **kw):
    """The trainer's configuration of a stage: the mini's batch and seed, a checkpoint every 100 steps, EMA 0.995."""
    return TrainConfig(**{"batch_size": cfg.batch_size, "seed": cfg.seed, "save_every": 100, "ema": 0.995, **kw})


def stage_train(unet, text_encoder, data, out, cfg, tok, progress, teacher=None, lpips=None):
    """Train `unet` with the trainer (resuming in `out`), then continue from its EMA weights; returns the losses."""
    result = train(unet, text_encoder, data, cfg, out, tok([""]), progress=progress, teacher=teacher, lpips=lpips)
    if result["ema"] is not None:
        unet.load_state_dict(result["ema"])
    return result["losses"]


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


def stage_teacher(unet, text_encoder, tok, out, cfg, progress):
    """1. Epsilon prediction on the SD schedule with CFG dropout 10%, the text encoder trained with the UNet (one
    module, JointTeacher), then frozen. Returns the training images and captions (stage 5 trains on them too)."""
    images, caps = shapes.dataset(cfg.train_images, cfg.size, cfg.seed)
    stage_train(JointTeacher(unet, text_encoder), None, {"latents": images, "ids": tok(caps)}, out,
                train_config(cfg, objective="eps", iters=cfg.teacher_iters, lr=cfg.teacher_lr, warmup=100,
                             cfg_dropout=0.1), tok, progress)
    text_encoder.requires_grad_(False).eval()
    return images, caps


def stage_triplets(teacher, text_encoder, tok, out, cfg, progress):
    """2. Triplets (caption, X_0, X_1) from the teacher (DPM-Solver++ with CFG). Returns the prompts and the data."""
    prompts = [shapes.CAPTIONS[k] for k in torch.randint(len(shapes.CAPTIONS), (cfg.pairs,),
                                                         generator=torch.Generator().manual_seed(cfg.seed + 1))]
    with torch.no_grad():
        teach = sampler_fn(teacher, context_fn(text_encoder, tok, cfg.guidance), cfg.teacher_steps, cfg.guidance,
                           "dpm++")
        triplets.generate(out, prompts, tok, teach, image_shape(cfg),
                          {"teacher": "mini", "sampler": "dpm++", "steps": cfg.teacher_steps, "guidance": cfg.guidance},
                          shard_size=512, batch_size=cfg.batch_size, seed=10_000, progress=progress)
    return prompts, triplets.load(out)[0]


def stage_reflow(teacher, text_encoder, tok, data, out, cfg, progress):
    """3. The 2-rectified flow: reflow on the teacher's triplets, initialised from the teacher's UNet."""
    rf2 = models.unet()
    rf2.load_state_dict(teacher.state_dict())
    stage_train(rf2, text_encoder, data, out, train_config(cfg, objective="reflow", iters=cfg.reflow_iters,
                lr=cfg.reflow_lr, cfg_dropout=0.0, zero_output=True), tok, progress)
    return rf2


def stage_student(rf2, text_encoder, tok, prompts, out, cfg, progress, lpips_files=None):
    """4. Pairs from the 2-RF (Euler, rf_steps, the same prompts) in out/triplets-2rf, then the one-step student
    from its weights in out/student."""
    with torch.no_grad():
        flow = sampler_fn(rf2, context_fn(text_encoder, tok, 1.0), cfg.rf_steps, 1.0, "euler")
        triplets.generate(out / "triplets-2rf", prompts, tok, flow, image_shape(cfg),
                          {"teacher": "mini 2-RF", "sampler": "euler", "steps": cfg.rf_steps, "guidance": 1.0},
                          shard_size=512, batch_size=cfg.batch_size, seed=20_000, progress=progress)
    pairs, _ = triplets.load(out / "triplets-2rf")
    student = models.unet()
    student.load_state_dict(rf2.state_dict())
    stage_train(student, text_encoder, pairs, out / "student", train_config(cfg, objective="distill",
                iters=cfg.distill_iters, lr=cfg.distill_lr, cfg_dropout=0.0, loss=cfg.distill_loss), tok,
                progress, lpips=student_lpips(cfg, lpips_files))
    return student


def stage_lcm(teacher, text_encoder, tok, images, caps, out, cfg, progress):
    """5. LCM: consistency distillation of the same CFG-guided teacher on the training images, for as many gradient
    steps as stages 3 and 4 together, from the teacher's weights (last conv zeroed), EMA target network."""
    lcm = models.unet()
    lcm.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        teacher_v = eps_teacher(teacher, text_encoder(tok([""])), cfg.guidance)
    stage_train(lcm, text_encoder, {"latents": images, "ids": tok(caps)}, out,
                train_config(cfg, objective="consistency", iters=cfg.reflow_iters + cfg.distill_iters, lr=cfg.lcm_lr,
                             cfg_dropout=0.0, zero_output=True, intervals=cfg.lcm_intervals, ema=cfg.lcm_ema,
                             loss=cfg.lcm_loss),
                tok, progress, teacher=teacher_v)
    return lcm


def save_stage(net, f, metadata=None):
    """A finished stage's weights in the file f (its folder made), which the next run loads instead of training."""
    f.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, f, metadata=metadata)


def dmd2_generator(out):
    """Stage 5b's finished generator (EpsFlow) from out/generator.safetensors, or None before it is."""
    f = Path(out) / "generator.safetensors"
    if not f.exists():
        return None
    generator = EpsFlow(models.unet())
    generator.unet.load_state_dict(read_weights(f))
    return generator.eval()


def stage_dmd2(teacher, text_encoder, tok, out, cfg, progress):
    """5b. DMD2 (Yin et al. 2024) of the CFG-guided teacher: the generator and the fake score are epsilon UNets
    started as the teacher (EpsFlow: DMD2 keeps the teacher's parametrisation), the fake score trained on the
    generator's samples by the teacher's own loss (epsilon prediction, k uniform in [0, 1000), its own noise), the
    real score guided with the teacher's CFG scale of stages 2 and 5 (DMD2's SD 1.5 scripts: 1.75), the fake not;
    (reflow_iters + distill_iters) gradient steps split 1:5 between generator and fake (DMD2's ImageNet ratio; its
    SD scripts: 1:10). Where it departs from DMD2's SD code: t uniform in rectified-flow time on [0.02, 0.98]
    (theirs: k uniform in [20, 980], more weight on the noisy end), and the generator's sample is one Euler step
    in rectified-flow time, z + x0_hat - eps_hat at k = 999 (theirs: x0_hat). Resumes per stage: a finished
    generator is loaded, an interrupted one restarts."""
    finished = dmd2_generator(out)
    if finished is not None:
        return finished
    generator, fake = EpsFlow(models.unet()), EpsFlow(models.unet())
    generator.unet.load_state_dict(teacher.state_dict())
    fake.unet.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        real = eps_teacher(teacher, text_encoder(tok([""])), cfg.guidance)

    def noise(n, rng):
        return torch.randn((n, *image_shape(cfg)), generator=rng)

    def captions(n, rng):
        with torch.no_grad():
            picks = torch.randint(len(shapes.CAPTIONS), (n,), generator=rng)
            return text_encoder(tok([shapes.CAPTIONS[i] for i in picks]))

    def fake_eps_loss(x0, x_g, context, rng):        # the fake's own noise level and noise: x0 (the path's) unused
        return loss("eps", fake.unet, x0, x_g, context, draw("eps", len(x_g), x_g.shape[1:], rng))

    gen_steps = max(1, (cfg.reflow_iters + cfg.distill_iters) // (1 + RECIPES["dmd2"]["fake_updates"]))
    log = train_distribution_matching(generator, real, fake, noise, gen_steps, "dmd2", lr=cfg.dmd_lr,
                                      batch_size=cfg.batch_size, seed=cfg.seed + 5, sample_cond=captions,
                                      fake_objective=fake_eps_loss, as_velocity=flow, desc="DMD2", progress=progress)
    save_stage(generator.unet, Path(out) / "generator.safetensors",
               {k: json.dumps(log[k]) for k in ("generator_loss", "fake_loss", "generator_steps", "fake_steps")})
    return generator.eval()


def stage_features(out, cfg, progress):
    """6. The FD's feature net trained on renders (sd/mini/features.py), or loaded when a previous run made it."""
    f = Path(out) / "shapenet.safetensors"
    net = features.ShapeNet(cfg.size)
    if f.exists():
        net.load_state_dict(read_weights(f))
        return net.eval()
    net = features.train_feature_net(cfg.feature_images, cfg.feature_iters, cfg.batch_size * 2, cfg.size,
                                     cfg.seed + 11, progress)
    save_stage(net, f)
    return net


def stage_evaluate(nets, text_encoder, tok, feature_net, out, cfg):
    """7. Every model at 1, 2, 4 steps (the teacher also at its own) on held-out noises, every caption equally
    often: the judge's fidelity, the distance to the teacher's many-step image, FD to held-out renders and the
    caption score; straightness; grid.png. nets: {"teacher", "2-RF", "distilled 2-RF", "LCM", "DMD2"} -> UNet."""
    eval_caps = [shapes.CAPTIONS[i % len(shapes.CAPTIONS)] for i in range(cfg.eval_samples)]
    ids = tok(eval_caps)
    x0 = noises(image_shape(cfg), range(90_000, 90_000 + cfg.eval_samples))
    label = "{}, {} step{}".format
    runs = {label(who, n, "s" * (n > 1)): (nets[who], n, g, solver) for who, g, solver, steps in (
        ("teacher", cfg.guidance, "dpm++", [cfg.teacher_steps] + [n for n in (1, 2, 4) if n != cfg.teacher_steps]),
        ("2-RF", 1.0, "euler", (1, 2, 4)), ("distilled 2-RF", 1.0, "euler", (1,)),
        ("LCM", 1.0, "consistency", (1, 2, 4)), ("DMD2", 1.0, "euler", (1,))) for n in steps}
    in_grid = [label("teacher", cfg.teacher_steps, "s"), "teacher, 1 step", "2-RF, 1 step", "2-RF, 4 steps",
               "distilled 2-RF, 1 step", "LCM, 1 step", "LCM, 4 steps", "DMD2, 1 step"]
    metrics, shown, reference = {}, {}, None
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
                            "mse_to_teacher": mse(imgs, reference).item(),
                            "fd": features.frechet(feature_net, imgs, renders),
                            "caption_score": features.caption_score(feature_net, imgs, eval_caps)}
            if key in in_grid:
                shown[key] = imgs[:8]
        # "judge", not "fidelity": readers that list the models by their "fidelity" skip this row
        metrics["held-out renders"] = {"judge": shapes.fidelity(renders2, eval_caps),
                                       "fd": features.frechet(feature_net, renders2, renders),   # the floor
                                       "caption_score": features.caption_score(feature_net, renders2, eval_caps),
                                       "feature_net_accuracy": features.accuracy(feature_net, renders2, eval_caps)}
        # the student is trained at t = 0 only: its value is the one-step model's field read as a flow
        for name, g, kind in (("teacher", cfg.guidance, "eps"), ("2-RF", 1.0, "flow"), ("distilled 2-RF", 1.0, "flow")):
            v = velocity(nets[name], ids, text_encoder, tok, g, kind)
            metrics.setdefault("straightness", {})[name] = straightness(v, x0, cfg.straightness_steps)
    grid({"data": shapes.render(eval_caps[:8], cfg.size, torch.Generator().manual_seed(5)), **shown},
         eval_caps[:8], out / "grid.png", note(cfg))
    return metrics


def stage_edit(nets, text_encoder, tok, out, cfg):
    """8. Inversion and editing (sd/mini/edit.py) on held-out renders: invert-then-generate errors, recolouring
    edits by the teacher, the 2-RF and the student, and a control from fresh noise; edit.png."""
    field = field_fn(tok, text_encoder, {"teacher": (nets["teacher"], "eps"), "2-RF": (nets["2-RF"], "flow"),
                                         "student": (nets["distilled 2-RF"], "flow")})
    inv_caps = [shapes.CAPTIONS[i % len(shapes.CAPTIONS)] for i in range(cfg.inversion_samples)]
    x1 = shapes.render(inv_caps, cfg.size, torch.Generator().manual_seed(cfg.seed + 7))
    metrics = {"inversion": edit.reconstruction_table(field, x1, inv_caps, cfg.inversion_steps, cfg.guidance),
               "edit": {}}
    show = [i for i in (0, 5, 10, 15, 16, 21, 26, 31) if i < len(x1)]   # every colour, shape and quadrant
    edits = {"original": x1[show]}
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
        fresh = sample(nets["2-RF"], context_fn(text_encoder, tok, 1.0)(tok([edit.recolour(c) for c in inv_caps])), z, 4)
    metrics["edit"]["control: fresh noise, 2-RF 4 steps"] = {"model": "2-RF", "inversion_steps": 0, "guidance": 1.0,
                                                             **edit.edit_scores(x1, fresh, inv_caps)}
    edits["control: fresh noise"] = fresh[show]
    titles = [f"a {c.split()[1]}>{edit.recolour(c).split()[1]} {c.split(maxsplit=2)[2]}" for c in (inv_caps[i] for i in show)]
    grid(edits, titles, out / "edit.png", note(cfg))
    return metrics


def stage_controlnet(unet, text_encoder, tok, out, cfg, progress):
    """9. The mini ControlNet trained on the frozen teacher, or loaded when a previous run finished it."""
    f = Path(out) / "controlnet.safetensors"
    if f.exists():
        net = control.controlnet_for(unet)
        net.load_state_dict(read_weights(f))
        return net.eval()
    net, losses = control.train_controlnet(unet, text_encoder, tok, cfg.controlnet_iters, cfg.batch_size,
                                           seed=cfg.seed + 3, progress=progress)
    save_stage(net, f, {"losses": json.dumps([losses[0], losses[-1]])})
    return net


def evaluate_controlnet(nets, controlnet, text_encoder, tok, out, cfg):
    """Stage 9's evaluation: the ControlNet on the teacher, the 2-RF and the student (IoU with the masks); control.png."""
    runs = {"teacher, {} steps".format(cfg.teacher_steps): (nets["teacher"], cfg.teacher_steps, "dpm++", cfg.guidance),
            "2-RF, 4 steps": (nets["2-RF"], 4, "euler", 1.0), "2-RF, 1 step": (nets["2-RF"], 1, "euler", 1.0),
            "distilled 2-RF, 1 step": (nets["distilled 2-RF"], 1, "euler", 1.0)}
    with torch.no_grad():
        metrics, shown, masks, prompts = control.evaluate(runs, controlnet, text_encoder, tok, cfg.eval_samples,
                                                          cfg.size, cfg.seed + 9)
    rows = {"control mask": masks[:8] * 2 - 1, "student, no ControlNet": shown["distilled 2-RF, 1 step, without"][:8],
            **{k.replace("distilled 2-RF", "student"): v[:8] for k, v in shown.items() if k.endswith(", with")}}
    grid(rows, prompts[:8], out / "control.png", note(cfg))
    return metrics


def image_shape(cfg):
    """The shape of one image (the mini has no VAE: its latents are the 3 x size x size images)."""
    return (3, cfg.size, cfg.size)


def note(cfg):
    """The figures' note: FAST_NOTE on a fast run's, none on the others'."""
    return FAST_NOTE if cfg.mode == "fast" else None


def start_run(out, cfg):
    """Check the folder's configuration (check_run), then record this one when the folder has none."""
    check_run(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "config.json").exists():
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))


def run(cfg=MiniConfig(), out="runs/mini", progress=True, lpips_files=None):
    """Stages 1 to 9 (the module docstring); returns the metrics dict (also written to out/metrics.json).
    lpips_files: (torchvision's VGG16 weights, the lpips package's vgg.pth) for a distill_loss naming lpips."""
    out, t_start, seconds = Path(out), time.time(), {}
    start_run(out, cfg)

    def timed(name, stage, *args):
        t0 = time.time()
        result = stage(*args)
        seconds[name] = seconds.get(name, 0.0) + time.time() - t0
        return result

    torch.manual_seed(cfg.seed)
    tok = models.tokenizer()
    text_encoder, teacher = models.text_encoder(tok), models.unet()
    images, caps = timed("teacher", stage_teacher, teacher, text_encoder, tok, out / "teacher", cfg, progress)
    prompts, data = timed("triplets", stage_triplets, teacher, text_encoder, tok, out / "triplets-teacher", cfg,
                          progress)
    rf2 = timed("reflow", stage_reflow, teacher, text_encoder, tok, data, out / "2rf", cfg, progress)
    student = timed("distill", stage_student, rf2, text_encoder, tok, prompts, out, cfg, progress, lpips_files)
    lcm = timed("lcm", stage_lcm, teacher, text_encoder, tok, images, caps, out / "lcm", cfg, progress)
    dmd2 = timed("dmd2", stage_dmd2, teacher, text_encoder, tok, out / "dmd2", cfg, progress)
    feature_net = timed("features", stage_features, out / "features", cfg, progress)
    nets = {"teacher": teacher, "2-RF": rf2, "distilled 2-RF": student, "LCM": lcm, "DMD2": dmd2}
    metrics = {"config": asdict(cfg)}
    metrics.update(timed("evaluate", stage_evaluate, nets, text_encoder, tok, feature_net, out, cfg))
    metrics.update(timed("edit", stage_edit, nets, text_encoder, tok, out, cfg))
    controlnet = timed("controlnet", stage_controlnet, teacher, text_encoder, tok, out / "controlnet", cfg, progress)
    metrics["controlnet"] = timed("controlnet", evaluate_controlnet, nets, controlnet, text_encoder, tok, out, cfg)
    metrics["seconds"] = {**seconds, "total": time.time() - t_start}
    metrics["mode"] = cfg.mode                            # "fast": these numbers mean nothing
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def load_models(out="runs/mini", cfg=None):
    """(tokenizer, text encoder, teacher UNet, 2-RF UNet, student UNet) from a finished run's checkpoints
    (EMA weights), to look at them in a notebook. With `cfg`, the run must have been made with it
    (check_run: a notebook in full mode does not read a fast run's models)."""
    if cfg is not None:
        check_run(out, cfg)
    out, tok = Path(out), models.tokenizer()
    teacher = JointTeacher(models.unet(), models.text_encoder(tok))
    teacher.load_state_dict(weights(latest_checkpoint(out / "teacher")))
    nets = []
    for stage in ("2rf", "student"):
        nets.append(models.unet())
        nets[-1].load_state_dict(weights(latest_checkpoint(out / stage)))
    return tok, teacher.text_encoder.eval(), teacher.unet.eval(), *[n.eval() for n in nets]


class JointTeacher(torch.nn.Module):
    """Stage 1's model: UNet and text encoder as one trainable module, teacher(x, k, ids) = unet(x, k,
    text_encoder(ids)), so the trainer updates both (one EMA, one checkpoint); the trainer is given
    text_encoder=None, so the token ids reach it as they are."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self.config = {"unet": unet.config, "text_encoder": text_encoder.config}

    def forward(self, x, timesteps, ids):
        return self.unet(x, timesteps, self.text_encoder(ids))
