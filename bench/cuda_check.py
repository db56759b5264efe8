"""The whole CUDA path checked and measured in one process, one Markdown report.

    python bench/cuda_check.py --out report.md [--model PATH]   on a GPU (sections 2 and 6 compile for minutes: docs/gpu.md)
    python bench/cuda_check.py --smoke --out report.md          on a CPU, tiny configs (CI runs it)

Sections, in this order (the report is rewritten after each, so a run cut short keeps what it did):
  1. the fused CFG + Euler step, compiled vs eager, in fp32, fp16 and bf16
  2. the pipeline compiled (and with CUDA graphs, mode "reduce-overhead") vs eager, at 512x512 with
     SD 1.5's configuration (random weights unless --model), over calls that change the prompt, seed,
     guidance, steps and batch (re-recording, dynamic shapes), and whether an earlier call's returned
     latents survive later replays
  3. our UNet, VAE and text encoder vs diffusers / transformers on the device in fp16 (when installed)
  4. the toy experiment (fast config) on the device vs on the CPU
  5. trainer steps in fp16 (GradScaler) and bf16, and an exact resume on the device
  6. one-step 512x512 latency in fp16 (text encoder, Euler steps, VAE, total; median of >= 20 after
     warm-up) eager / compiled / compiled + CUDA graphs beside InstaFlow's loop on diffusers modules;
     1, 2, 4 steps at batch 1 and 1 step at batch 8; peak GPU memory
  7. sd.reflow training throughput (images/s) at 512x512, fp16 and bf16, with and without gradient
     checkpointing, and its peak memory; from a triplet folder read on demand, without and with prefetch
  8. evaluation (sd.evaluate's pieces): 64 captions end to end, images per second for generation, for
     FID's Inception and for CLIP score (ViT-L/14 shapes, random weights), and what 5k / 30k images cost
  9. the tests marked `cuda` (pytest -m cuda)
 10. the SDXL Refiner (random full-size weights, 2.3 B UNet parameters) refining one image as InstaFlow's demo
     does (0.3 of 50 steps, guidance 5) at 512x512 and 1024x1024, eager and with the UNet compiled
A check that fails is marked FAIL (with the error) and the script exits with status 1 at the end.
--smoke runs the same code with tiny configs, 64x64 images, few repeats and the CPU's dtypes.
"""
import argparse
import contextlib
import copy
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.models import random_sd  # noqa: E402
from sd.sampling.euler import cfg_euler_step, compile_step  # noqa: E402
from sd.sampling.pipeline import load_pipeline  # noqa: E402
from sd.training.trainer import TrainConfig, train  # noqa: E402

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


class Report:
    """Markdown sections with PASS / FAIL checks and tables, written to `path` after every section."""

    def __init__(self, path):
        self.path, self.lines, self.failed = Path(path), [], []

    def section(self, title):
        self.lines += ["", f"## {title}", ""]
        print(f"\n== {title}", flush=True)

    def line(self, text=""):
        self.lines.append(text)
        print(text, flush=True)

    def check(self, name, ok, detail):
        self.line(f"- {'PASS' if ok else 'FAIL'}: {name}: {detail}")
        if not ok:
            self.failed.append(name)

    def table(self, header, rows=()):
        """A Markdown table; more rows may follow with row() as they are measured."""
        self.line("| " + " | ".join(header) + " |")
        self.line("|" + "|".join(" --- " for _ in header) + "|")
        for r in rows:
            self.row(r)

    def row(self, r):
        self.line("| " + " | ".join(str(x) for x in r) + " |")

    def save(self):
        self.path.write_text("\n".join(self.lines) + "\n")


class Stop(Exception):
    """Ends a timed training run before its final checkpoint."""


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev):
    """Seconds of one call: CUDA events on a GPU, perf_counter on a CPU."""
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize(dev)
        return start.elapsed_time(end) / 1e3, out
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def peak_memory(dev):
    return f"{torch.cuda.max_memory_allocated(dev) / 2**30:.2f}" if dev.type == "cuda" else "-"


def reset_peak(dev):
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def rel_err(a, b):
    """max |a - b| / max |b|, in float32."""
    a, b = a.float(), b.float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


# ---- 1. the fused step -------------------------------------------------------------------------------

def check_fused_step(rep, ctx):
    dev = ctx.dev
    for name, dtype in (("fp32", torch.float32), *HALF.items()):
        g = torch.Generator().manual_seed(0)
        lat = torch.randn(1, 4, 64, 64, generator=g).to(dev, dtype)
        v = torch.randn(2, 4, 64, 64, generator=g).to(dev, dtype)
        eager = cfg_euler_step(lat, v, 7.5, 0.25, True)
        fused = compile_step()(lat, v, 7.5, 0.25, True)
        ulp = torch.finfo(dtype).eps * eager.float().abs().max().item()     # half: fused math may round once less
        err = (fused.float() - eager.float()).abs().max().item()
        rep.check(f"fused step, {name}", fused.dtype == dtype and err <= 2 * ulp,
                  f"max |compiled - eager| = {err:.2e} (bound 2 ulp = {2 * ulp:.2e})")


# ---- 2. the compiled pipeline over changing calls -----------------------------------------------------

CALLS = [  # prompt, seed, guidance, steps, batch
    ("a hyper-realistic photo of a cute cat", 0, 1.0, 1, 1),
    ("a red car in the rain", 1, 1.5, 4, 1),
    ("a hyper-realistic photo of a cute cat", 2, 1.0, 2, 2),
    ("a bowl of fruit, oil painting", 3, 3.0, 1, 2),
    ("a hyper-realistic photo of a cute cat", 0, 1.0, 1, 1),
]


def check_compiled_pipeline(rep, ctx):
    pipe, size = ctx.pipe, ctx.size
    kw = dict(height=size, width=size, progress=False, return_latents=True)
    # the smoke run compiles one shape (a CPU compiles each for a minute or more) and calls it twice
    calls = [CALLS[0], CALLS[-1]] if ctx.smoke else CALLS
    with torch.no_grad():
        eager = [pipe(p, seed=s, guidance=g, steps=n, batch=b, **kw) for p, s, g, n, b in calls]
        for mode in ctx.modes:
            outs, kept = [], []
            for p, s, g, n, b in calls:
                o = pipe(p, seed=s, guidance=g, steps=n, batch=b, compile=mode, **kw)
                outs.append(o)
                kept.append(o.latents.clone())
            for k, (o, e, first) in enumerate(zip(outs, eager, kept)):
                lat = rel_err(o.latents, e.latents)
                px = int(np.abs(o.images.astype(int) - e.images.astype(int)).max())
                survived = torch.equal(o.latents, first)        # not overwritten by a later CUDA-graph replay
                p, s, g, n, b = calls[k]
                ok = survived and lat <= ctx.lat_tol and px <= ctx.px_tol and torch.isfinite(o.latents).all().item()
                rep.check(f"{mode}, call {k + 1} (seed {s}, guidance {g}, {n} step(s), batch {b})", ok,
                          f"latents rel. err {lat:.1e} (bound {ctx.lat_tol:.0e}), max pixel diff {px} (bound {ctx.px_tol}), "
                          f"returned latents {'intact' if survived else 'OVERWRITTEN'} after later calls")


# ---- 3. parity with the reference libraries on the device -------------------------------------------

def check_parity(rep, ctx):
    if ctx.ref is None:
        rep.line("- skipped: diffusers or transformers is not installed (see the README for the wheels to carry)")
        return
    pipe, ref, dev, dtype = ctx.pipe, ctx.ref, ctx.dev, ctx.dtype
    g = torch.Generator().manual_seed(3)
    lat = ctx.size // pipe.vae_factor
    x = torch.randn(2, 4, lat, lat, generator=g).to(dev, dtype)
    t = torch.tensor([999.0, 300.0], device=dev)
    c = torch.randn(2, 77, pipe.unet.config["cross_attention_dim"], generator=g).to(dev, dtype)
    ids = pipe.tokenizer(["a cat", "a hyper-realistic photo of a cute cat"]).to(dev)
    with torch.no_grad():
        pairs = [("UNet", pipe.unet(x, t, c), ref.unet(x, t, c).sample),
                 ("VAE decode", pipe.vae.decode(x[:1]), ref.vae.decode(x[:1]).sample),
                 ("text encoder", pipe.text_encoder(ids), ref.text(ids).last_hidden_state)]
    for name, ours, theirs in pairs:
        err = rel_err(ours, theirs)
        rep.check(f"{name} vs reference, {ctx.dtype_name}", err <= ctx.parity_tol,
                  f"max |ours - ref| / max |ref| = {err:.1e} (bound {ctx.parity_tol:.0e})")


# ---- 4. the toy experiment on the device vs the CPU --------------------------------------------------

def check_toy(rep, ctx):
    from toy.experiment import Config, run
    res = {d: run(Config.fast(device=d, progress=False)).metrics for d in dict.fromkeys([ctx.dev.type, "cpu"])}
    dev_m, cpu_m = res[ctx.dev.type], res["cpu"]
    rows = []
    for stage, m in dev_m["stages"].items():
        for n, w in m["w2"].items():
            rows.append((stage, n, f"{w:.3f}", f"{cpu_m['stages'][stage]['w2'][n]:.3f}"))
    rep.table(["stage", "Euler steps", f"W2 on {ctx.dev.type}", "W2 on cpu"], rows)
    worst = max(abs(float(a) - float(b)) / max(float(b), 1e-9) for _, _, a, b in rows)
    rep.check("toy fast run, device vs cpu", worst <= 0.15,
              f"largest relative W2 difference {worst:.3f} (bound 0.15: the two devices round differently "
              f"over 150 training steps)")


# ---- 5. trainer steps and exact resume on the device -------------------------------------------------

def tiny_training_setup(ctx, n=8):
    from sd.mini import models
    g = torch.Generator().manual_seed(0)
    data = {"noise": torch.randn(n, 3, 16, 16, generator=g), "latents": torch.randn(n, 3, 16, 16, generator=g),
            "ids": torch.randint(0, 20, (n, 16), generator=g)}
    tok = models.tokenizer()
    torch.manual_seed(0)
    return models.unet(), models.text_encoder(tok), data, tok([""])


def check_training(rep, ctx):
    precisions = ["fp16", "bf16"] if ctx.dev.type == "cuda" else ["bf16"]
    if ctx.dev.type != "cuda":
        rep.line("- skipped: fp16 with the GradScaler needs CUDA (the trainer refuses it on a CPU)")
    with tempfile.TemporaryDirectory() as d:
        for prec in precisions:
            unet, text, data, empty = tiny_training_setup(ctx)
            res = train(unet, text, data, TrainConfig(objective="reflow", iters=3, batch_size=4, lr=1e-3,
                                                      precision=prec, save_every=3), Path(d) / prec, empty,
                        progress=False)
            ok = all(np.isfinite(res["losses"]))
            rep.check(f"trainer, {prec} autocast", ok, f"losses {', '.join(f'{x:.4f}' for x in res['losses'])}")
        with deterministic():
            cfg = dict(objective="reflow", batch_size=4, lr=1e-3, save_every=2, ema=0.9, cfg_dropout=0.3)
            a_unet, text, data, empty = tiny_training_setup(ctx)
            a = train(a_unet, text, data, TrainConfig(iters=4, **cfg), Path(d) / "a", empty, progress=False)
            b_unet, text, data, empty = tiny_training_setup(ctx)
            train(b_unet, text, data, TrainConfig(iters=2, **cfg), Path(d) / "b", empty, progress=False)
            c_unet, text, data, empty = tiny_training_setup(ctx)       # a fresh process would start like this
            b = train(c_unet, text, data, TrainConfig(iters=4, **cfg), Path(d) / "b", empty, progress=False)
            diff = max((p - q).abs().max().item() for p, q in zip(a_unet.state_dict().values(),
                                                                   c_unet.state_dict().values()))
            loss_diff = max(abs(x - y) for x, y in zip(b["losses"], a["losses"][2:]))
            # bit-equal on a CPU; on CUDA the nearest-upsampling backward adds with atomics in any order
            # (PyTorch has no deterministic kernel for it), so allow float noise there and say which
            exact = diff == 0 and loss_diff == 0
            rep.check("resume (2 + 2 steps vs 4)", exact or (ctx.dev.type == "cuda" and diff <= 1e-5 and loss_diff <= 1e-5),
                      f"{'bit-equal' if exact else 'not bit-equal'}: max weight difference {diff:.1e}, "
                      f"max loss difference {loss_diff:.1e} (bound: 0 on a CPU, 1e-5 on CUDA)")


@contextlib.contextmanager
def deterministic():
    """cuDNN's deterministic kernels: bit-equal runs need them (its default picks kernels by speed)."""
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


# ---- 6. latency --------------------------------------------------------------------------------------

def measure_latency(rep, ctx):
    """Rows are written as they are measured (a lease's time limit may cut the section short): the
    one-step batch-1 row in every mode first, the reference beside each configuration."""
    from tests.reference import instaflow_reference
    pipe, ref, dev, size, reps = ctx.pipe, ctx.ref, ctx.dev, ctx.size, ctx.repeats
    prompt = "a hyper-realistic photo of a cute cat"
    rep.line(f"Medians of {reps} calls after 3 warm-up calls, {size}x{size}, {ctx.dtype_name}, guidance 1; total "
             f"from {'CUDA events' if dev.type == 'cuda' else 'perf_counter'} around the call, parts from the "
             f"pipeline's own synchronised clock.\n")
    rep.table(["steps", "batch", "ours / reference", "text encoder (ms)", "Euler steps (ms)", "VAE (ms)",
               "total (ms)", "peak GPU memory (GiB)"])
    # the smoke run keeps one batch size: each new shape is compiled again, slowly on a CPU
    rows = ((1, 1), (2, 1)) if ctx.smoke else ((1, 1), (1, ctx.big_batch), (2, 1), (4, 1))
    for steps, batch in rows:
        prompts = [prompt] * batch
        modes = [("eager", False), ("reference", None), *[(f"compiled ({m})", m) for m in ctx.modes]]
        for label, mode in modes:          # the reference right after eager: compiling takes the longest
            if mode is None:
                if ref is None:
                    continue
                call = lambda: instaflow_reference(ref.unet, ref.vae, ref.text, ref.tokenizer, prompts,  # noqa: E731
                                                   [""] * batch, steps, 1.0, 0, size)
            else:
                call = lambda: pipe(prompts, steps=steps, height=size, width=size, compile=mode, progress=False)  # noqa: E731
            with torch.no_grad():
                for _ in range(3):                                   # warm-up (compiles, records graphs)
                    call()
                reset_peak(dev)
                totals, parts = [], []
                for _ in range(reps):
                    s, out = timed(call, dev)
                    totals.append(s)
                    if mode is not None:
                        parts.append((out.seconds["text_encoder"], sum(out.seconds["steps"]), out.seconds["vae"]))
            med = ([f"{statistics.median(p[i] for p in parts) * 1e3:.1f}" for i in range(3)] if parts
                   else ["-"] * 3)
            rep.row((steps, batch, "InstaFlow's loop, diffusers modules" if mode is None else label, *med,
                     f"{statistics.median(totals) * 1e3:.1f}", peak_memory(dev)))
            rep.save()


# ---- 7. training throughput --------------------------------------------------------------------------

def measure_training(rep, ctx):
    """Reflow steps from data in memory, and from a triplet folder read on demand without and with the prefetch
    thread (sd/training/triplets.py: what `sd.reflow train` does)."""
    from sd.training import triplets
    dev, rows = ctx.dev, []
    lat = ctx.size // ctx.pipe.vae_factor
    precisions = ["fp16", "bf16"] if dev.type == "cuda" else ["bf16"]
    n_steps, warm = ctx.train_steps, 2
    n = ctx.train_batch * (n_steps + warm + 1)
    g = torch.Generator().manual_seed(0)
    memory = {"noise": torch.randn(n, 4, lat, lat, generator=g), "latents": torch.randn(n, 4, lat, lat, generator=g),
              "ids": torch.randint(0, 49407, (n, 77), generator=g)}
    runs = [(prec, ckpt, "memory", 0) for prec in precisions for ckpt in (False, True)]
    runs += [(precisions[-1], False, "shards", prefetch) for prefetch in (0, 2)]
    with tempfile.TemporaryDirectory() as folder:
        triplets.generate(folder, [f"p{j}" for j in range(n)], lambda ps: torch.randint(0, 49407, (len(ps), 77)),
                          lambda x0, ids: torch.randn_like(x0), (4, lat, lat), {"teacher": "bench"}, shard_size=16,
                          progress=False)
        for prec, ckpt, source, prefetch in runs:
            unet = copy.deepcopy(ctx.pipe.unet).float()
            text = copy.deepcopy(ctx.pipe.text_encoder).float()
            data = memory if source == "memory" else triplets.open_triplets(folder)[0]
            stamps = []

            def on_step(step, loss):
                sync(dev)
                stamps.append(time.perf_counter())
                if step == n_steps + warm:
                    raise Stop
            reset_peak(dev)
            with tempfile.TemporaryDirectory() as d, contextlib.suppress(Stop):
                train(unet, text, data, TrainConfig(objective="reflow", iters=n_steps + warm + 1,
                                                    batch_size=ctx.train_batch, precision=prec,
                                                    grad_checkpointing=ckpt, save_every=10**9, ema=0.999,
                                                    prefetch=prefetch),
                      d, torch.zeros(1, 77, dtype=torch.long), progress=False, on_step=on_step)
            per_step = (stamps[-1] - stamps[warm - 1]) / n_steps
            where = "in memory" if source == "memory" else f"shards, prefetch {prefetch}"
            rows.append((prec, "yes" if ckpt else "no", ctx.train_batch, where, f"{per_step * 1e3:.0f}",
                         f"{ctx.train_batch / per_step:.2f}", peak_memory(dev)))
            del unet, text
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    rep.table(["precision", "gradient checkpointing", "batch", "data", "ms / step", "images / s",
               "peak GPU memory (GiB)"], rows)
    rep.line(f"\nReflow steps on {ctx.size}x{ctx.size} images ({lat}x{lat} latents), AdamW + EMA, the text encoder "
             f"frozen; mean of {n_steps} steps after {warm} warm-up steps.")


# ---- 8. evaluation ------------------------------------------------------------------------------------

def measure_evaluation(rep, ctx):
    """sd.evaluate's generation loop and metric pass on ctx.pipe, timed stage by stage."""
    from types import SimpleNamespace

    from sd.checkpoints.images import read_image
    from sd.evaluate import generate
    from sd.evaluation import clip_score, frechet_distance, load_inception, statistics
    from sd.evaluation.clip_score import preprocess_config
    from sd.evaluation.measure import measure
    from sd.models.clip import CLIPModel
    from sd.tiny import write_inception
    dev, size = ctx.dev, ctx.size
    n = 8 if ctx.smoke else 64
    things = ["cat", "dog", "red car", "bowl of fruit", "train at a station", "man on a surfboard", "city street",
              "living room"]
    captions = [f"a photo of a {things[k % 8]}, number {k}" for k in range(n)]
    if ctx.smoke:    # tiny towers; else ViT-L/14's shapes (InstaFlow measured with ViT-g/14, about 3x its cost)
        clip = CLIPModel(dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4), dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                                           num_attention_heads=4, image_size=32, patch_size=8), 24)
    else:
        clip = CLIPModel(dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12),
                         dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              patch_size=14), 768)
    clip = clip.to(dev).eval()
    clip.tokenizer, clip.preprocess = ctx.pipe.tokenizer, preprocess_config(ROOT / "no such folder", clip.image_size)
    args = SimpleNamespace(sampler="euler", batch=ctx.big_batch, height=size, width=size, seed=0, steps=1,
                           guidance=1.0, negative_prompt="", compile=False)
    with tempfile.TemporaryDirectory() as d:
        inception = load_inception(write_inception(Path(d) / "pt_inception.pth"), dev)
        seconds, timed_images, made = generate(ctx.pipe, args, captions, range(n), Path(d))
        files = sorted(Path(d).glob("0*.png"))
        rep.check("images written", made == n == len(files), f"{len(files)} of {n}")
        sync(dev)
        t0 = time.perf_counter()
        feats, _ = measure(files, inception, batch=32, device=dev, desc="Inception")
        sync(dev)
        t_inception = time.perf_counter() - t0
        images = np.stack([read_image(f) for f in files])
    t_clip, cos = timed(lambda: clip_score(clip, clip.tokenizer, images, captions, batch=32), dev)
    mu, sigma = statistics(feats)
    fd_self = frechet_distance(mu, sigma, mu, sigma)
    half = frechet_distance(*statistics(feats[: n // 2]), *statistics(feats[n // 2:]))
    rep.check("metrics finite, FD(X, X) = 0", bool(torch.isfinite(cos).all()) and abs(fd_self) < 1e-3 * float(sigma.trace()) and half > 0,
              f"FD(X, X) = {fd_self:.1e} (tr S = {float(sigma.trace()):.3g}; square roots of rank-deficient S amplify rounding), FD(first half, second half) = {half:.3g}, mean cosine {float(cos.mean()):.3f}")
    per = {f"generation (1 Euler step, batch {args.batch}, eager, {ctx.dtype_name})": seconds / max(timed_images, 1),
           "FID Inception (PNG reading included)": t_inception / n, "CLIP score": t_clip / n}
    rows = [(name, f"{1 / s:.1f}", f"{5000 * s / 60:.1f}", f"{30000 * s / 60:.1f}") for name, s in per.items()]
    rep.table(["stage", "images / s", "5k images (min)", "30k images (min)"], rows)
    rep.line(f"\n{n} captions at {size}x{size} through sd.evaluate's generate() and measure(); generation timed after "
             f"its first (warm-up) batch. Random weights: the metrics' values mean nothing here, their cost does.")


# ---- 9. the tests marked cuda ------------------------------------------------------------------------

def run_cuda_tests(rep, ctx):
    """The cuda-marked tests, which live in tests/test_cuda.py (collecting all of tests/ would import the
    notebook and browser tests' packages, which a GPU machine may lack)."""
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfE", "-m", "cuda", "-p", "no:cacheprovider",
                        "tests/test_cuda.py"], capture_output=True, text=True, cwd=ROOT)
    lines = r.stdout.strip().splitlines() or r.stderr.strip().splitlines()[-5:]
    tail = lines[-1] if lines else "no output"
    ok = r.returncode in (0, 5) and "failed" not in tail and "error" not in tail
    rep.check("pytest -m cuda", ok, tail)
    if not ok:
        rep.line("```\n" + "\n".join(l for l in lines if l.startswith(("FAILED", "ERROR", "E "))) [-3000:] + "\n```")


# ---- 10. the SDXL Refiner ----------------------------------------------------------------------------

def measure_refiner(rep, ctx):
    """Refine latency by part (medians of 3 after warm-up), rows written as measured."""
    from bench.models import random_refiner
    refiner = random_refiner("tiny" if ctx.smoke else "full", ctx.dev, ctx.dtype)
    steps, reps = (10, 1) if ctx.smoke else (50, 3)
    sizes = (64, 128) if ctx.smoke else (512, 1024)
    kept = int(steps * 0.3)
    rep.line(f"{'Tiny' if ctx.smoke else 'Full-size'} random refiner, {ctx.dtype_name} (VAE fp32), strength 0.3 of "
             f"{steps} steps = {kept} UNet calls with CFG (batch 2), guidance 5; medians of {reps}.\n")
    rep.table(["size", "UNet", "text encoder (ms)", "VAE encode (ms)", f"{kept} steps (ms)", "VAE decode (ms)",
               "total (ms)", "peak GPU memory (GiB)"])
    modes = [("eager", False)] + ([] if ctx.smoke else [("compiled", "default")])
    for size in sizes:
        image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        for label, mode in modes:
            call = lambda: refiner.refine(image, "a photo of a cat", strength=0.3, steps=steps, guidance=5.0,  # noqa: E731
                                          progress=False, compile=mode)
            with torch.no_grad():
                for _ in range(2 if mode else 1):                 # warm-up (compiles)
                    call()
                reset_peak(ctx.dev)
                runs = [timed(call, ctx.dev) for _ in range(reps)]
            parts = [[r[1].seconds[k] if k != "steps" else sum(r[1].seconds[k]) for r in runs]
                     for k in ("text_encoder", "vae_encode", "steps", "vae")]
            rep.row((size, label, *[f"{statistics.median(p) * 1e3:.1f}" for p in parts],
                     f"{statistics.median(r[0] for r in runs) * 1e3:.1f}", peak_memory(ctx.dev)))
            rep.save()


# ---- the run -----------------------------------------------------------------------------------------

class Context:
    def __init__(self, args):
        self.smoke = smoke = args.smoke
        self.dev = torch.device("cpu" if smoke else args.device)
        self.dtype_name = "bf16" if smoke else "fp16"
        self.dtype = HALF[self.dtype_name]
        self.size = 64 if smoke else 512
        self.repeats = 2 if smoke else args.repeats
        self.big_batch = 2 if smoke else 8
        self.train_batch, self.train_steps = (2, 2) if smoke else (args.train_batch, 10)
        self.modes = ["default"] if self.dev.type != "cuda" else ["default", "reduce-overhead"]
        # half precision: compiled kernels round once where eager rounds per op, and it grows through the
        # networks; bounds about 3x the smoke run's drift (docs/gpu.md), fp16 (3 more mantissa bits) 1/8 of bf16's
        self.lat_tol = 5e-2 if self.dtype_name == "bf16" else 1e-2
        self.px_tol = 16 if self.dtype_name == "bf16" else 3
        self.parity_tol = 2e-2 if self.dtype_name == "bf16" else 5e-3
        if args.model:
            self.pipe, self.ref = load_pipeline(args.model, dtype=self.dtype, device=self.dev), None
        else:
            size = "tiny" if smoke else "full"
            try:
                self.pipe, self.ref = random_sd(size, self.dev, self.dtype)
            except Exception as e:     # noqa: BLE001 - a broken oracle must not cost the other sections
                print(f"FAIL: the reference modules: {type(e).__name__}: {e}; going on without them", flush=True)
                self.pipe, self.ref = random_sd(size, self.dev, self.dtype, reference=False)


SECTIONS = [("1. Fused CFG + Euler step, compiled vs eager", check_fused_step),
            ("2. Compiled pipeline vs eager over changing calls", check_compiled_pipeline),
            ("3. Our networks vs diffusers / transformers on the device", check_parity),
            ("4. Toy experiment, device vs CPU", check_toy),
            ("5. Trainer: fp16 / bf16 steps, exact resume", check_training),
            ("6. One-step text-to-image latency", measure_latency),
            ("7. Training throughput", measure_training),
            ("8. Evaluation: FID and CLIP score, 64 captions end to end", measure_evaluation),
            ("9. Tests marked cuda", run_cuda_tests),
            ("10. SDXL Refiner: refine latency at 512 and 1024", measure_refiner)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="cuda_report.md")
    p.add_argument("--model", help="a model folder, file or cached id to use instead of random full-size weights")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny configs, seconds: checks that the script runs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--train-batch", type=int, default=4)
    p.add_argument("--only", nargs="*", type=int, help="run only these section numbers")
    p.add_argument("--budget", type=float, default=480,
                   help="seconds; sections that would start later are skipped (and say so), so that a lease's "
                        "10-minute command limit still returns a report")
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        p.error("CUDA is not available: run on a GPU machine, or use --smoke on a CPU")
    rep, t_start = Report(args.out), time.time()
    dev_name = "CPU (smoke run)" if args.smoke else torch.cuda.get_device_name(torch.device(args.device))
    rep.line(f"# CUDA check: {dev_name}")
    rep.line("")
    versions = {"torch": torch.__version__, "CUDA": torch.version.cuda, "python": platform.python_version()}
    for lib in ("diffusers", "transformers"):
        try:
            versions[lib] = __import__(lib).__version__
        except ImportError:
            versions[lib] = "not installed"
    rep.line(", ".join(f"{k} {v}" for k, v in versions.items()))
    t0 = time.time()
    ctx = Context(args)
    rep.line(f"models: {'--model ' + args.model if args.model else 'random weights, ' + ('tiny' if args.smoke else 'SD 1.5') + ' configuration'} "
             f"({time.time() - t0:.0f} s to build)")
    for k, (title, fn) in enumerate(SECTIONS, 1):
        if args.only and k not in args.only:
            continue
        rep.section(title)
        if time.time() - t_start > args.budget:
            rep.line(f"- skipped: the time budget of {args.budget:.0f} s is spent (--budget; --only {k} runs it alone)")
            rep.save()
            continue
        t0 = time.time()
        try:
            fn(rep, ctx)
        except Exception as e:        # noqa: BLE001 - one broken section must not hide the others
            rep.check(title, False, f"{type(e).__name__}: {e}")
            rep.line("```\n" + traceback.format_exc()[-3000:] + "```")
        rep.line(f"\n({time.time() - t0:.0f} s)")
        rep.save()
    rep.section("Summary")
    rep.line(f"{len(rep.failed)} check(s) failed{': ' + ', '.join(rep.failed) if rep.failed else ''}; "
             f"{time.time() - t_start:.0f} s in all.")
    rep.save()
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
