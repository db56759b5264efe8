"""Every bad argument of every SD command is refused before a model loads: each case below pairs one bad value
with a model path that does not exist, so a check moved after the load would end in the model's error instead of
the one asserted. Run in-process (each command's main), asserting exit 2, one line under 300 characters naming
the argument, and nothing written."""
import importlib

import pytest


def cases(tmp, tiny):
    """(command, argv, what the one line must say). `tmp/no_model` and `tmp/none` do not exist; tiny: real
    small inputs."""
    none, model = tmp / "none", tmp / "no_model"
    gen = ["--model", model, "--prompt", "x", "--out", tmp / "o.png"]
    inv = ["--model", model, "--image", tiny / "image.png", "--prompt", "x", "--out", tmp / "n.safetensors"]
    ref = ["--model", model, "--image", tiny / "image.png", "--prompt", "x", "--out", tmp / "r.png"]
    ev = ["--model", model, "--captions", tiny / "captions.txt", "--out", tmp / "ev",
          "--inception", tiny / "pt_inception.pth", "--ref-images", tiny / "refs"]
    demo = ["--model", model]
    train = ["train", "--init", model, "--data", tmp, "--out", tmp / "run"]
    return [
        ("sd.generate", [*gen, "--height", "0"], "--height must be a positive multiple of 8"),
        ("sd.generate", [*gen, "--width", "100"], "--width must be a positive multiple of 8"),
        ("sd.generate", [*gen, "--steps", "0"], "--steps must be a positive integer"),
        ("sd.generate", [*gen, "--batch", "0"], "--batch must be a positive integer"),
        ("sd.generate", [*gen, "--init-image", tiny / "image.png", "--strength", "1.5"], "--strength must lie in (0, 1]"),
        ("sd.generate", [*gen, "--lora", none], "--lora"),
        ("sd.generate", [*gen, "--init-image", none], "none"),
        ("sd.generate", [*gen, "--noise", none], "none"),
        ("sd.generate", [*gen, "--init-image", tiny / "image.png", "--noise", tiny / "image.png"], "not both"),
        ("sd.generate", [*gen, "--controlnet", none, "--control-image", tiny / "image.png"], "--controlnet"),
        ("sd.generate", [*gen, "--controlnet", tiny / "image.png"], "--control-image"),
        ("sd.generate", [*gen, "--canny", "100"], "--canny"),
        ("sd.generate", [*gen, "--refiner", none], "none"),
        ("sd.generate", [*gen, "--refiner", tiny / "refiner", "--refine-strength", "0"],
         "--refine-strength must lie in (0, 1]"),
        ("sd.generate", [*gen, "--refiner", tiny / "refiner", "--refine-steps", "0"],
         "--refine-steps must be a positive integer"),
        ("sd.generate", [*gen, "--refiner", tiny / "refiner", "--refine-size", "12"],
         "--refine-size must be a positive multiple"),
        ("sd.generate", [*gen, "--tiny-vae", none], "none"),
        ("sd.generate", [*gen, "--negative-prompt", "a", "--negative-prompt", "b"], "negative prompt"),
        ("sd.generate", [*gen, "--refiner", tiny / "model"], "not an SDXL refiner folder"),
        ("sd.generate", [*gen[:-2], "--out", tmp / "o.txt"], "ending in .png or .jpg or .jpeg"),
        ("sd.generate", ["--model", tiny / "controlnet", *gen[2:]], "a ControlNet folder"),
        ("sd.generate", ["--model", tiny / "taesd", *gen[2:]], "a TAESD folder"),
        ("sd.generate", ["--model", tiny / "refiner", *gen[2:]], "an SDXL Refiner folder"),
        ("sd.generate", ["--model", tiny / "model" / "unet", *gen[2:]], "a UNet folder"),
        ("sd.generate", ["--model", tiny / "clip", *gen[2:]], "a CLIP model folder"),
        ("sd.invert", [*inv[:-2], "--out", tmp / "noise.png"], "ending in .safetensors"),
        ("sd.evaluate", [*ev[:6], "--inception", tiny / "lora.safetensors", *ev[8:]], "a safetensors file"),
        ("sd.evaluate", [*ev[:-2], "--ref-stats", tiny / "captions.txt"], "not a statistics file"),
        ("sd.demo", ["--model", tiny / "controlnet"], "a ControlNet folder"),
        ("sd.demo", [*demo, "--refiner", tiny / "model"], "not an SDXL refiner folder"),
        ("sd.invert", [*inv, "--steps", "0"], "--steps must be a positive integer"),
        ("sd.invert", [*inv, "--height", "12"], "--height must be a positive multiple of 8"),
        ("sd.invert", [*inv[:2], "--image", none, *inv[4:]], "none"),
        ("sd.refine", [*ref, "--strength", "0"], "--strength must lie in (0, 1]"),
        ("sd.refine", [*ref, "--steps", "0"], "--steps must be a positive integer"),
        ("sd.refine", [*ref, "--steps", "2", "--strength", "0.2"], "runs no step"),
        ("sd.refine", [*ref, "--size", "12"], "--size must be a positive multiple of 8"),
        ("sd.refine", [*ref[:2], "--image", none, *ref[4:]], "none"),
        ("sd.evaluate", [*ev, "--n", "0"], "--n must be a positive integer"),
        ("sd.evaluate", [*ev, "--batch", "0"], "--batch must be a positive integer"),
        ("sd.evaluate", [*ev, "--steps", "0"], "--steps must be a positive integer"),
        ("sd.evaluate", [*ev, "--height", "12"], "--height must be a positive multiple of 8"),
        ("sd.evaluate", [*ev[:2], "--captions", none, *ev[4:]], "none"),
        ("sd.demo", [*demo, "--queue", "0"], "--queue must be a positive integer"),
        ("sd.demo", [*demo, "--max-side", "0"], "--max-side must be a positive integer"),
        ("sd.demo", [*demo, "--port", "70000"], "--port 70000"),
        ("sd.demo", [*demo, "--size", "12"], "--size must be a positive multiple of 8"),
        ("sd.demo", [*demo, "--steps", "0"], "--steps must be a positive integer"),
        ("sd.demo", [*demo, "--lora", none], "--lora"),
        ("sd.demo", [*demo, "--refiner", tiny / "refiner", "--refine-steps", "0"],
         "--refine-steps must be a positive integer"),
        ("sd.reflow", ["generate", "--teacher", model, "--prompts", tiny / "captions.txt", "--out", tmp / "t",
                       "--steps", "0"], "--steps must be a positive integer"),
        ("sd.reflow", ["generate", "--teacher", model, "--prompts", none, "--out", tmp / "t"], "none"),
        ("sd.reflow", ["generate", "--teacher", model, "--prompts", tiny / "captions.txt", "--out", tmp / "t",
                       "--height", "12"], "--height must be a positive multiple of 8"),
        ("sd.reflow", [*train, "--iters", "0"], "iters must be a positive integer"),
        ("sd.reflow", [*train, "--batch-size", "0"], "batch_size must be a positive integer"),
        ("sd.reflow", ["distill", *train[1:], "--loss", "nonsense"], "loss"),
    ]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """python -m sd.tiny's files (folders of every kind, an image, captions), for the wrong kinds of input."""
    from sd.tiny import write_extras, write_model
    root = tmp_path_factory.mktemp("inputs")
    write_model(root)
    write_extras(root)
    return root


def test_every_bad_argument_is_refused_before_any_model_loads(tmp_path, tiny, capsys):
    problems = []
    for module, argv, needle in cases(tmp_path, tiny):
        main = importlib.import_module(module).main
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:                                   # argparse, or a command that exits itself
            code = e.code
        lines = capsys.readouterr().err.strip().splitlines()
        if not (code == 2 and len(lines) == 1 and len(lines[0]) < 300 and needle in lines[0]
                and "no_model" not in lines[0]):                 # the model was never looked at
            problems.append(f"{module} {' '.join(map(str, argv[-2:]))}: exit {code}, {lines[-3:]}")
    written = sorted(p.name for p in tmp_path.iterdir())
    assert problems == [] and written == [], "\n".join(problems) + f"\nwritten: {written}"
