"""The InstaFlow sampler: equal to a reference loop on diffusers modules, compiled step equal to
eager, interpolation, the CLI and its errors (tiny random models saved by diffusers/transformers)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sd.sampling.euler import cfg_euler_step, compile_step
from sd.sampling.pipeline import PipelineError, load_pipeline, noise, slerp
from tests.conftest import ROOT
from tests.compiled import check_compiled_step
from tests.reference import instaflow_reference as reference

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("steps,guidance", [(1, 1.0), (3, 1.0), (2, 4.0)])
def test_pipeline_equals_the_reference_loop(model, steps, guidance):
    root, unet, vae, text, tok = model
    pipe = load_pipeline(root)
    prompts, negatives = ["a red circle at the top left", "a blue square"], ["blurry", ""]
    with torch.no_grad():
        ref_lat, ref_img = reference(unet, vae, text, tok, prompts, negatives, steps, guidance, 7, 64)
        out = pipe(prompts, negatives, steps=steps, guidance=guidance, seed=7, height=64, width=64,
                   return_latents=True, progress=False)
    assert (out.latents - ref_lat).abs().max().item() <= 1e-4
    assert out.images.shape == (2, 64, 64, 3) and out.images.dtype == np.uint8
    assert np.abs(out.images.astype(int) - ref_img.astype(int)).max() <= 1
    assert len(out.seconds["steps"]) == steps


def test_pipeline_from_a_single_file(model, tmp_path):
    """A single LDM checkpoint (tokenizer: OpenAI's vocabulary) samples like the same weights in a folder."""
    from sd.checkpoints.safetensors_io import save_file
    from sd.models.tokenizer import TokenizerError, openai_bpe_path
    from tests.sd_oracles import to_ldm_unet, to_ldm_vae
    try:
        openai_bpe_path()
    except TokenizerError as e:
        pytest.skip(str(e))
    root, unet, vae, _, _ = model
    cfg = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu")
    torch.manual_seed(4)
    text = transformers.CLIPTextModel(cfg).eval()
    ckpt = {**to_ldm_unet(unet.state_dict(), dict(unet.config)), **to_ldm_vae(vae.state_dict(), 2),
            **{"cond_stage_model.transformer.text_model." + k: v for k, v in text.state_dict().items()}}
    save_file({k: v.contiguous() for k, v in ckpt.items()}, tmp_path / "tiny.safetensors")
    pipe = load_pipeline(tmp_path / "tiny.safetensors", config={"unet": {"attention_head_dim": 4, "norm_num_groups": 8},
                                                               "vae": {"norm_num_groups": 8},
                                                               "text_encoder": {"num_attention_heads": 4}})
    assert len(pipe.tokenizer.vocab) == 49408
    out = pipe("a red circle", steps=2, guidance=2.0, seed=1, height=32, width=32, return_latents=True, progress=False)
    from transformers import CLIPTokenizer
    vocab_dir = tmp_path / "tok"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.json").write_text(json.dumps(pipe.tokenizer.vocab))
    merges = sorted(pipe.tokenizer.ranks, key=pipe.tokenizer.ranks.get)
    (vocab_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer(str(vocab_dir / "vocab.json"), str(vocab_dir / "merges.txt"))
    with torch.no_grad():
        ref_lat, _ = reference(unet, vae, text, tok, ["a red circle"], [""], 2, 2.0, 1, 32)
    assert (out.latents - ref_lat).abs().max().item() <= 1e-4


def test_compiled_step_equals_eager():
    g = torch.Generator().manual_seed(0)
    lat, v = torch.randn(2, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    step = compile_step()
    for cfg in (True, False):
        vv = v if cfg else v[:2]
        torch.testing.assert_close(step(lat, vv, 5.0, 0.25, cfg), cfg_euler_step(lat, vv, 5.0, 0.25, cfg),
                                   atol=1e-6, rtol=0)


def test_compiled_step_survives_many_step_sizes_guidances_batches_and_dtypes():
    """A session that samples with many step counts, scales, batch sizes and dtypes: the step size and
    the guidance must not be baked into one kernel per value (with dynamic=False this crashed with
    Dynamo's "recompile limit exceeded" on the 9th distinct value, fullgraph=True)."""
    check_compiled_step("cpu")


def test_compiled_pipeline_equals_eager(model):
    """compile=True compiles the step, the UNet and the VAE decoder (about a minute on 2 CPU cores)."""
    pipe = load_pipeline(model[0])
    a = pipe("a cat", steps=2, guidance=3.0, height=32, width=32, return_latents=True, progress=False)
    b = pipe("a cat", steps=2, guidance=3.0, height=32, width=32, return_latents=True, progress=False, compile=True)
    assert pipe.compiled(pipe.unet, False) is pipe.unet                     # eager: the module itself
    assert pipe.compiled(pipe.unet, True) is pipe.compiled(pipe.unet, "default")   # True is mode "default", cached
    assert (a.latents - b.latents).abs().max().item() <= 1e-4      # fused kernels round differently
    assert np.abs(a.images.astype(int) - b.images.astype(int)).max() <= 1


def test_seed_convention_and_interpolation(model):
    pipe = load_pipeline(model[0])
    assert torch.equal(noise((1, 4, 8, 8), 5), torch.randn(1, 4, 8, 8, generator=torch.Generator("cpu").manual_seed(5)))
    frames = pipe.interpolate("a cat", 1, 2, frames=3, height=32, width=32, progress=False)
    first = pipe("a cat", seed=1, height=32, width=32, progress=False).images[0]
    last = pipe("a cat", seed=2, height=32, width=32, progress=False).images[0]
    assert frames.shape == (3, 32, 32, 3)
    assert np.abs(frames[0].astype(int) - first).max() <= 1 and np.abs(frames[-1].astype(int) - last).max() <= 1
    a, b = noise((1, 4, 16, 16), 1), noise((1, 4, 16, 16), 2)
    mid = slerp(a, b, 0.5)
    assert abs(mid.norm() / a.norm() - 1) < 0.05       # slerp keeps Gaussian-typical norms; lerp would not


@pytest.mark.parametrize("kw,message", [
    (dict(height=100), "height must be a positive multiple of 8, got 100"),
    (dict(width=0), "width must be a positive multiple of 8"),
    (dict(steps=0), "steps must be a positive integer, got 0"),
    (dict(negative_prompt=["a", "b"]), "1 prompt(s) but 2 negative prompt(s)"),
])
def test_bad_arguments(model, kw, message):
    pipe = load_pipeline(model[0])
    with pytest.raises(PipelineError) as err:
        pipe("a cat", progress=False, **{"height": 32, "width": 32, **kw})
    assert message in str(err.value)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sd.generate", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_writes_a_grid_and_prints_timings(model, tmp_path):
    out = tmp_path / "grid.png"
    r = _cli("--model", str(model[0]), "--prompt", "a red circle", "--prompt", "a blue square", "--batch", "2",
             "--height", "32", "--width", "48", "--steps", "2", "--guidance", "2", "--out", str(out), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "text encoder" in r.stdout and "step 2" in r.stdout and "VAE" in r.stdout
    import matplotlib.image
    assert matplotlib.image.imread(out).shape[:2] == (64, 96)      # 4 images in a 2 x 2 grid


@pytest.mark.parametrize("args,message", [
    (["--height", "100"], "multiple of 8"),
    (["--steps", "0"], "steps must be a positive integer"),
    (["--negative-prompt", "x", "--negative-prompt", "y"], "negative prompt(s)"),
])
def test_cli_bad_input_exits_2(model, tmp_path, args, message):
    r = _cli("--model", str(model[0]), "--prompt", "a cat", "--out", str(tmp_path / "x.png"), "--device", "cpu", *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_cli_missing_or_wrong_model_exits_2(tmp_path):
    r = _cli("--model", str(tmp_path / "nope"), "--prompt", "a cat", "--device", "cpu")
    assert r.returncode == 2 and "no such file or folder" in r.stderr
    (tmp_path / "empty").mkdir()
    r = _cli("--model", str(tmp_path / "empty"), "--prompt", "a cat", "--device", "cpu")
    assert r.returncode == 2 and "neither a model folder" in r.stderr
