"""A newcomer's first hour: fast runs never clobber full ones, every command checks its arguments and
output before it loads a model, a user's error is one short line with exit code 2, every option's help
shows its default, and `python -m sd.tiny` gives every SD command something to run on."""
import argparse
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.conftest import ROOT


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, capture_output=True, text=True)


def one_line_error(r, *needles):
    """exit 2, one line on stderr, under 300 characters, naming what it should."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: ") and len(lines[0]) < 300, lines[0]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """python -m sd.tiny's folder (model, ControlNet, LoRA, images, TAESD, refiner, Inception, CLIP, captions) and
    what it printed (the commands to try)."""
    root = tmp_path_factory.mktemp("tiny")
    r = run("sd.tiny", "--out", root)
    assert r.returncode == 0, r.stderr
    return root, r.stdout


@pytest.fixture(scope="module")
def tiny(tiny_run):
    return tiny_run[0]


# ---- fast never clobbers full ------------------------------------------------------------------

def test_fast_runs_default_to_their_own_folders():
    from sd.mini.__main__ import build_parser as mini_parser
    from toy.__main__ import parse_args
    assert parse_args(["--fast"]).out.as_posix() == "runs/toy-fast"
    assert parse_args([]).out.as_posix() == "runs/toy"
    assert parse_args(["--fast"], mode="compare").out.as_posix() == "runs/toy-compare-fast"
    assert "runs/mini-fast" in mini_parser().format_help()


def test_a_fast_toy_run_refuses_a_full_runs_folder_before_training(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"fast": False}))
    t0 = time.perf_counter()
    r = run("toy", "--fast", "--out", tmp_path)
    one_line_error(r, "holds a full run", "--out")
    assert time.perf_counter() - t0 < 30 and (tmp_path / "metrics.json").read_text() == '{"fast": false}'
    # a fast run's folder may be run again, fast (it is the same smoke run)
    (tmp_path / "metrics.json").write_text(json.dumps({"fast": True}))
    from toy.__main__ import check_not_full
    check_not_full(tmp_path / "metrics.json", fast=True)


def test_mini_folders_keep_their_configuration(tmp_path, mini_fast):
    """A fast run's folder is refused by a full run (CLI: one line, exit 2, before any training) and by the
    notebooks' load_models(OUT, cfg)."""
    from sd.mini.run import MiniConfig, MiniRunError, load_models
    folder = shutil.copytree(mini_fast / "run", tmp_path / "run")     # the session's `sd.mini --fast` (conftest)
    assert (mini_fast / "stdout.txt").read_text().startswith("FAST MODE")
    assert json.loads((folder / "metrics.json").read_text())["mode"] == "fast"
    before = sorted(p.name for p in folder.rglob("*"))
    t0 = time.perf_counter()
    one_line_error(run("sd.mini", "--out", folder), "holds a fast run, not this full one", "runs/mini-fast")
    assert time.perf_counter() - t0 < 20 and sorted(p.name for p in folder.rglob("*")) == before
    with pytest.raises(MiniRunError, match="holds a fast run"):
        load_models(folder, MiniConfig())
    load_models(folder, MiniConfig.fast())
    # a record without a key added since (its stage may have run otherwise: LCM's loss was once l2) is refused too
    record = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in record.items() if k != "lcm_loss"}))
    with pytest.raises(MiniRunError, match="lcm_loss=.not recorded., not sd.training.objectives:lcm_huber"):
        load_models(folder, MiniConfig.fast())


# ---- checks before heavy work ------------------------------------------------------------------

def test_every_command_checks_its_output_before_loading_anything(tmp_path, tiny):
    """The model path does not exist: an error about --out proves the output was checked first."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad = blocker / "x.png"
    cases = [
        ("sd.generate", "--model", tmp_path / "no_model", "--prompt", "x", "--out", bad),
        ("sd.invert", "--model", tmp_path / "no_model", "--image", tiny / "image.png", "--prompt", "x", "--out", bad),
        ("sd.reflow", "generate", "--teacher", tmp_path / "no_model", "--prompts", tiny / "image.png", "--out", bad),
        ("sd.reflow", "train", "--init", tmp_path / "no_model", "--data", tmp_path, "--out", bad),
        ("sd.reflow", "export", "--run", tmp_path, "--init", tiny / "model", "--out", bad),
        ("sd.evaluate", "--model", tmp_path / "no_model", "--captions", tmp_path / "none.txt", "--out", bad,
         "--inception", tmp_path / "none.pth", "--ref-stats", tmp_path / "none.npz"),
        ("sd.evaluate", "stats", "--images", tmp_path, "--inception", tmp_path / "none.pth", "--out", blocker / "r.npz"),
        ("sd.mini", "--out", bad),
        ("sd.tiny", "--out", bad),
        ("toy", "--out", bad),
        ("toy", "compare", "--out", bad),
    ]
    for args in cases:
        one_line_error(run(*args), "--out", "a_file is a file, not a folder")


def test_generate_checks_sizes_steps_and_strength_before_loading(tmp_path):
    base = ("sd.generate", "--model", tmp_path / "no_model", "--prompt", "x")
    one_line_error(run(*base, "--height", "0"), "--height must be a positive multiple of 8, got 0")
    one_line_error(run(*base, "--width", "100"), "--width must be a positive multiple of 8, got 100")
    one_line_error(run(*base, "--steps", "0"), "--steps must be a positive integer, got 0")
    one_line_error(run(*base, "--strength", "1.5"), "--strength must lie in (0, 1]")
    one_line_error(run(*base, "--lora", tmp_path / "missing.safetensors"), "--lora", "no such file")


def test_height_zero_is_refused_with_an_init_image_too(tiny):
    one_line_error(run("sd.generate", "--model", tiny / "model", "--prompt", "x", "--init-image", tiny / "image.png",
                       "--height", "0", "--out", tiny / "never.png"), "--height must be a positive multiple of 8")
    assert not (tiny / "never.png").exists()


def test_wrong_kinds_of_file_get_one_short_line(tmp_path, tiny):
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not weights\n" * 100)
    lora, model = tiny / "lora.safetensors", tiny / "model"
    out = tmp_path / "o.png"
    cases = [
        (("sd.generate", "--model", model, "--prompt", "x", "--lora", text, "--out", out), "not a safetensors file"),
        (("sd.generate", "--model", model, "--prompt", "x", "--noise", lora, "--out", out), "not a noise file"),
        (("sd.generate", "--model", model, "--prompt", "x", "--noise", text, "--out", out), "not a safetensors file"),
        (("sd.generate", "--model", text, "--prompt", "x", "--out", out), "notes.txt"),
        (("sd.generate", "--model", model, "--prompt", "x", "--controlnet", lora, "--control-image", tiny / "control.png",
          "--out", out), "not a ControlNet"),
        (("sd.generate", "--model", model, "--prompt", "x", "--init-image", text, "--out", out), "cannot read the image"),
        (("sd.reflow", "export", "--run", tmp_path, "--init", tmp_path, "--out", tmp_path / "e"), "no checkpoint"),
    ]
    for args, needle in cases:
        line = one_line_error(run(*args), needle)
        if lora in args:
            assert "(a LoRA file?)" in line, line
    assert not out.exists()


def test_export_refuses_a_folder_that_is_not_a_model_before_writing(tmp_path):
    """The mini's run folder is pixel-space (no VAE): export says so instead of writing half a model."""
    from sd.mini import models
    from sd.training.trainer import TrainConfig, train
    torch.manual_seed(0)
    unet, tok = models.unet(), models.tokenizer()
    data = {"latents": torch.randn(4, 3, 16, 16), "noise": torch.randn(4, 3, 16, 16), "ids": tok(["a red circle"] * 4)}
    train(unet, models.text_encoder(tok), data, TrainConfig(iters=1, batch_size=2, save_every=1, ema=0.0),
          tmp_path / "run", tok([""]), progress=False)
    r = run("sd.reflow", "export", "--run", tmp_path / "run", "--init", tmp_path, "--out", tmp_path / "exported")
    one_line_error(r, "not a diffusers model folder", "vae")
    assert not (tmp_path / "exported").exists()


# ---- help that helps -----------------------------------------------------------------------------

def parsers():
    from sd.evaluate import build_parser as evaluate
    from sd.evaluate import stats_parser
    from sd.generate import build_parser as generate
    from sd.invert import build_parser as invert
    from sd.mini.__main__ import build_parser as mini
    from sd.reflow import parser as reflow
    from sd.tiny import build_parser as tiny_parser
    from toy.__main__ import build_parser as toy
    out = {"sd.generate": generate(), "sd.evaluate": evaluate(), "sd.evaluate stats": stats_parser(), "sd.invert": invert(), "sd.mini": mini(), "sd.tiny": tiny_parser(),
           "toy": toy(), "toy compare": toy("compare"), "toy solvers": toy("solvers"),
           "toy slim": toy("slim")}
    sub = next(a for a in reflow()._actions if isinstance(a, argparse._SubParsersAction))
    out.update({f"sd.reflow {name}": p for name, p in sub.choices.items()})
    return out


def test_every_option_has_help_and_shows_its_default():
    missing = []
    for name, p in parsers().items():
        text = p.format_help()
        for a in p._actions:
            if not a.option_strings or a.help == argparse.SUPPRESS or "-h" in a.option_strings:
                continue
            if not a.help:
                missing.append(f"{name} {a.option_strings[0]}: no help")
            elif a.default not in (None, False, []) and "default" not in p._get_formatter()._expand_help(a):
                missing.append(f"{name} {a.option_strings[0]}: default {a.default!r} not shown")
        assert "(default: " in text, name
    assert missing == []


def test_reflow_train_lists_the_valid_precisions_and_time_samplers():
    text = parsers()["sd.reflow train"].format_help()
    assert "{fp32,bf16,fp16}" in text and "{uniform,logit_normal}" in text


# ---- something to try SD on --------------------------------------------------------------------

def test_sd_tiny_then_every_command_it_prints(tiny_run, tmp_path, capsys):
    """Each command sd.tiny prints runs as printed (in-process, through each command's main): generate, img2img,
    invert, LoRA + ControlNet, TAESD, sd.refine, generate --refiner, sd.evaluate end to end; then --noise and
    --merge-delta. (sd.demo's line is tried by tests/test_demo.py on the same kind of folder.)"""
    import importlib
    import shlex
    tiny, printed = tiny_run
    model = tiny / "model"
    commands = [shlex.split(line.split("  (then")[0])[2:] for line in printed.splitlines()
                if line.startswith("  python -m sd.") and "sd.demo" not in line]
    assert {c[0] for c in commands} == {"sd.generate", "sd.invert", "sd.refine", "sd.evaluate"} and len(commands) == 8
    commands += [["sd.generate", "--model", model, "--prompt", "a blue circle", "--noise", tiny / "noise.safetensors",
                  "--steps", "4", "--out", tmp_path / "c.png"],
                 ["sd.generate", "--model", model, "--prompt", "x", "--merge-delta", model, f"{model}:0.5", "--height",
                  "64", "--width", "64", "--out", tmp_path / "e.png"]]
    for module, *argv in commands:
        code = importlib.import_module(module).main([str(a) for a in argv])
        assert code == 0, (module, argv, capsys.readouterr().err[-2000:])
    from sd.checkpoints.images import read_image
    a, d = read_image(tiny / "cat.png"), read_image(tiny / "controlled.png")
    assert a.shape == d.shape == (64, 64, 3) and not np.array_equal(a, d)        # the LoRA and ControlNet act
    assert read_image(tiny / "refined_cat.png").shape == (64, 64, 3) and (tiny / "refined_cat_one_step.png").is_file()
    metrics = json.loads((tiny / "evaluation" / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["fid"] > 0 and -1 <= metrics["clip_score"] <= 1


def test_sd_tiny_is_what_diffusers_reads(tiny):
    """The folder is the real layout: diffusers loads the model and the ControlNet, and their UNet and
    ControlNet outputs equal ours."""
    diffusers = pytest.importorskip("diffusers")
    from sd.checkpoints.loaders import load_unet
    from sd.controlnet import load_controlnet
    ref = diffusers.StableDiffusionPipeline.from_pretrained(tiny / "model", safety_checker=None)
    ref_net = diffusers.ControlNetModel.from_pretrained(tiny / "controlnet")
    unet, net = load_unet(tiny / "model"), load_controlnet(tiny / "controlnet")
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    cond, t = torch.rand(1, 3, 64, 64, generator=g), torch.tensor([500.0])
    with torch.no_grad():
        assert torch.allclose(unet(x, t, c), ref.unet(x, t, c).sample, atol=1e-5)
        down, mid = net(x, t, c, cond)
        ref_down, ref_mid = ref_net(x, t, c, cond, return_dict=False)
        assert torch.allclose(mid, ref_mid, atol=1e-5) and mid.abs().max() > 0
    ids = ref.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    from sd.models.tokenizer import load_tokenizer
    assert torch.equal(load_tokenizer(tiny / "model")(["a red circle"]), ids)


def test_sd_tinys_other_stand_ins_are_what_the_reference_libraries_read(tiny):
    """The TAESD, the SDXL Refiner and the CLIP model load in diffusers / transformers, and compute what ours do."""
    diffusers, transformers = pytest.importorskip("diffusers"), pytest.importorskip("transformers")
    from sd.checkpoints.loaders import load_text_encoder, load_tiny_vae, load_unet
    from sd.evaluation import load_clip
    from sd.models.tokenizer import load_tokenizer
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        ref_taesd = diffusers.AutoencoderTiny.from_pretrained(tiny / "taesd")
        assert torch.allclose(load_tiny_vae(tiny / "taesd").decode(z), ref_taesd.decode(z).sample, atol=1e-5)
        refiner = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny / "refiner")
        ids = refiner.tokenizer_2(["a red circle!"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        assert torch.equal(load_tokenizer(tiny / "refiner", subfolder="tokenizer_2")(["a red circle!"]), ids)
        text = load_text_encoder(tiny / "refiner", component="text_encoder_2")
        ref_out = refiner.text_encoder_2(ids, output_hidden_states=True)
        context, pooled = text.context_and_pooled(ids)
        assert torch.allclose(context, ref_out.hidden_states[-2], atol=1e-5)
        assert torch.allclose(pooled, ref_out.text_embeds, atol=1e-5)
        unet = load_unet(tiny / "refiner")
        c, add = torch.randn(1, 77, 32, generator=g), {"text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 6]])}
        t = torch.tensor([500.0])
        assert torch.allclose(unet(z, t, c, added=(pooled, add["time_ids"])),
                              refiner.unet(z, t, c, added_cond_kwargs=add).sample, atol=1e-4)
        ref_clip, ours = transformers.CLIPModel.from_pretrained(tiny / "clip"), load_clip(tiny / "clip")
        pix = torch.rand(2, 3, 32, 32, generator=g)
        assert torch.allclose(ours.encode_image(pix), ref_clip.get_image_features(pixel_values=pix).pooler_output,
                              atol=1e-5)

