"""Image-to-image and inversion in rectified-flow time (sd.sampling.pipeline, sd.generate, sd.invert) on the tiny
random SD-layout model of tests/test_pipeline.py, against loops written on diffusers modules."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from sd.checkpoints.images import psnr, read_image, to_model_range
from sd.sampling.pipeline import PipelineError, load_pipeline
from sd.checkpoints.safetensors_io import load_file, save_file
from tests.conftest import ROOT
from tests.reference import instaflow_inversion as inversion_reference
from tests.reference import instaflow_reference as reference

pytest.importorskip("diffusers")
PROMPTS, NEGATIVES = ["a red circle", "a blue square"], ["", "blurry"]


def _image(h=32, w=48, phase=0.0):
    """A smooth colour image (two gradients and a disc), uint8 [h, w, 3]."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    disc = ((x - 0.4) ** 2 + (y - 0.3) ** 2 < 0.04).astype(float)
    rgb = np.stack([x, y, disc * 0.8 + 0.1 * np.sin(7 * x + phase)], -1)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("steps,guidance,strength", [(1, 1.0, 0.6), (2, 3.0, 0.5), (3, 1.0, 0.9)])
def test_img2img_equals_the_reference_loop(model, steps, guidance, strength):
    root, unet, vae, text, tok = model
    pipe, img = load_pipeline(root), _image()
    with torch.no_grad():
        ref_lat, ref_img = reference(unet, vae, text, tok, PROMPTS, NEGATIVES, steps, guidance, 5, (32, 48),
                                     init=to_model_range(img), strength=strength)
        out = pipe(PROMPTS, NEGATIVES, steps=steps, guidance=guidance, seed=5, init_image=img, strength=strength,
                   return_latents=True, progress=False)
    assert (out.latents - ref_lat).abs().max().item() <= 1e-4
    assert out.images.shape == (2, 32, 48, 3)
    assert np.abs(out.images.astype(int) - ref_img.astype(int)).max() <= 1
    assert len(out.seconds["steps"]) == steps                       # `steps` is the number of UNet calls


def test_strength_1_is_text_to_image_and_a_small_strength_returns_the_vae_round_trip(model):
    pipe, img = load_pipeline(model[0]), _image()
    t2i = pipe(PROMPTS, steps=2, guidance=2.0, seed=3, height=32, width=48, return_latents=True, progress=False)
    i2i = pipe(PROMPTS, steps=2, guidance=2.0, seed=3, init_image=img, strength=1.0, return_latents=True,
               progress=False)
    assert torch.equal(t2i.latents, i2i.latents) and np.array_equal(t2i.images, i2i.images)
    # strength s, one step from t0 = 1 - s:  X = x1 + s (X_0 - x1 + v),  so |X - x1| <= s (|X_0| + |x1| + |v|)
    s = 1e-4
    with torch.no_grad():
        x1 = pipe.encode_image(img)
        out = pipe("a cat", init_image=img, strength=s, return_latents=True, progress=False)
        v = pipe.unet(x1, torch.tensor([s * 1000.0]), pipe.encode_prompts(["a cat"]))
        x0 = torch.randn(x1.shape, generator=torch.Generator("cpu").manual_seed(0))
        bound = s * (x0.abs().max() + x1.abs().max() + v.abs().max()).item()
        round_trip = pipe.vae.decode(x1 / pipe.vae.scaling_factor)
    assert (out.latents - x1).abs().max().item() <= bound
    ref = ((round_trip / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(out.images.astype(int) - ref.astype(int)).max() <= 1


@pytest.mark.parametrize("steps,guidance", [(1, 1.0), (3, 2.5)])
def test_inversion_equals_backward_euler_on_diffusers_modules(model, steps, guidance):
    pipe, img = load_pipeline(model[0]), _image()
    with torch.no_grad():
        ours = pipe.invert("a red circle", img, steps=steps, guidance=guidance)
        ref = inversion_reference(*model[1:], "a red circle", to_model_range(img), steps, guidance)
    assert ours.shape == (1, 4, 16, 24) and (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kw,message", [
    (dict(strength=0.0), "strength must lie in (0, 1], got 0.0"),
    (dict(strength=1.5), "strength must lie in (0, 1], got 1.5"),
    (dict(init_image=np.zeros((30, 32, 3), np.uint8)), "height must be a positive multiple of 8, got 30"),
    (dict(init_image=np.zeros((32, 32, 3), np.float32)), "expected uint8 images"),
    (dict(height=64), "init_image is 32x48 pixels but height x width asks for 64x48"),
    (dict(sampler="ddim"), "image-to-image runs the rectified flow ('euler'), not 'ddim'"),
])
def test_bad_img2img_arguments(model, kw, message):
    pipe = load_pipeline(model[0])
    with pytest.raises(PipelineError) as err:
        pipe("a cat", progress=False, **{"init_image": _image(), **kw})
    assert message in str(err.value)


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_cli_img2img_invert_and_regenerate(model, tmp_path):
    import matplotlib.image
    root = str(model[0])
    matplotlib.image.imsave(tmp_path / "in.png", _image(36, 50))     # not a multiple of 8: rounded down
    r = _run("sd.generate", "--model", root, "--prompt", "a red circle", "--init-image", str(tmp_path / "in.png"),
             "--strength", "0.7", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "i2i.png"))
    assert r.returncode == 0, r.stderr
    assert "image resized from 36x50 to 32x48" in r.stdout
    assert read_image(tmp_path / "i2i.png").shape == (32, 48, 3)

    r = _run("sd.invert", "--model", root, "--image", str(tmp_path / "in.png"), "--prompt", "a red circle",
             "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "noise.safetensors"),
             "--reconstruction", str(tmp_path / "rec.png"))
    assert r.returncode == 0, r.stderr
    noise = load_file(tmp_path / "noise.safetensors")["noise"]
    assert noise.shape == (1, 4, 16, 24)
    printed = float(r.stdout.split("reconstruction PSNR ")[1].split(" dB")[0])
    small = read_image(tmp_path / "in.png")
    from sd.checkpoints.images import fit
    assert printed == pytest.approx(psnr(read_image(tmp_path / "rec.png"), fit(small)[0]), abs=0.01)
    # regenerate from the noise: the same image as the reconstruction the inversion wrote
    r = _run("sd.generate", "--model", root, "--prompt", "a red circle", "--noise", str(tmp_path / "noise.safetensors"),
             "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "again.png"))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(read_image(tmp_path / "again.png"), read_image(tmp_path / "rec.png"))


def test_cli_bad_images_and_noise_exit_2(model, tmp_path):
    root = str(model[0])
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    r = _run("sd.generate", "--model", root, "--prompt", "x", "--init-image", str(tmp_path / "bad.png"), "--device", "cpu")
    assert r.returncode == 2 and "bad.png: cannot read the image" in r.stderr, r.stderr
    r = _run("sd.invert", "--model", root, "--prompt", "x", "--image", str(tmp_path / "missing.png"), "--device", "cpu")
    assert r.returncode == 2 and "missing.png: cannot read the image" in r.stderr, r.stderr
    save_file({"noise": torch.zeros(1, 3, 8, 8)}, tmp_path / "n3.safetensors")
    r = _run("sd.generate", "--model", root, "--prompt", "x", "--noise", str(tmp_path / "n3.safetensors"), "--device", "cpu")
    assert r.returncode == 2 and "latents must have shape (1, 4, 8, 8), got (1, 3, 8, 8)" in r.stderr, r.stderr
    save_file({"other": torch.zeros(1, 4, 8, 8)}, tmp_path / "other.safetensors")
    r = _run("sd.generate", "--model", root, "--prompt", "x", "--noise", str(tmp_path / "other.safetensors"), "--device", "cpu")
    assert r.returncode == 2 and "not a noise file" in r.stderr, r.stderr
    r = _run("sd.generate", "--model", root, "--prompt", "x", "--init-image", str(tmp_path / "bad.png"), "--strength", "2",
             "--device", "cpu")
    assert r.returncode == 2
