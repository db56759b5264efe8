"""The SDXL Refiner from scratch against diffusers / transformers: the UNet with SDXL's structure and its
"text_time" conditioning, text_encoder_2 and tokenizer_2, the Euler-discrete schedule, and whole refines
of a tiny random refiner folder saved by diffusers' StableDiffusionXLImg2ImgPipeline."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from sd.checkpoints.loaders import CheckpointError, load_text_encoder
from sd.models.clip import TextEncoderWithProjection
from sd.models.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from sd.models.unet import UNet
from sd.sampling.pipeline import PipelineError
from sd.sampling.refiner import load_refiner
from sd.sampling.samplers import euler_discrete_schedule, img2img_start
from tests.conftest import ROOT
from tests.prompts import prompts
from tests.sd_oracles import randomize
from tests.tiny_sd import BASE_UNET, PROJ, REFINER_SCHEDULER, REFINER_UNET, ref_text_2

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def ours_from(ref, cls=UNet):
    m = cls(dict(ref.config))
    m.load_state_dict(ref.state_dict())
    return m.eval()


@pytest.mark.parametrize("cfg,n_ids", [(REFINER_UNET, 5), (BASE_UNET, 6)], ids=["refiner", "base"])
def test_unet_with_sdxl_structure_matches_diffusers(cfg, n_ids):
    ref = randomize(diffusers.UNet2DConditionModel(**cfg))
    ours = ours_from(ref)
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, cfg["cross_attention_dim"], generator=g)
    text_embeds = torch.randn(2, PROJ, generator=g)
    ids = torch.tensor([[512.0, 512, 0, 0, 6.0, 512][:n_ids], [1024.0, 768, 8, 16, 2.5, 768][:n_ids]])
    t = torch.tensor([981.0, 3.0])
    with torch.no_grad():
        want = ref(x, t, c, added_cond_kwargs=dict(text_embeds=text_embeds, time_ids=ids)).sample
        assert rel(ours(x, t, c, added=(text_embeds, ids)), want) <= 1e-4
        # the time ids matter: the aesthetic score (or size) changes the output
        other = ids.clone()
        other[:, -1] += 3
        assert rel(ours(x, t, c, added=(text_embeds, other)), want) > 1e-3
    assert [len(a.transformer_blocks) for b in ours.down_blocks for a in getattr(b, "attentions", [])] == \
        [d for d, kind in zip([cfg["transformer_layers_per_block"]] * 4 if isinstance(cfg["transformer_layers_per_block"], int)
                              else cfg["transformer_layers_per_block"], cfg["down_block_types"])
         if kind.startswith("CrossAttn") for _ in range(cfg["layers_per_block"])]


def test_unet_asks_for_what_it_lacks_and_refuses_other_added_embeddings():
    ours = UNet(REFINER_UNET).eval()
    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 7, 32)
    with pytest.raises(ValueError, match="needs added=\\(text_embeds, time_ids\\)"):
        ours(x, torch.tensor([1.0]), c)
    with pytest.raises(ValueError, match="addition_embed_type='text' \\(supported: None, or SDXL's 'text_time'\\)"):
        UNet({**REFINER_UNET, "addition_embed_type": "text"})
    with pytest.raises(ValueError, match="transformer_layers_per_block=\\[1, 2\\]"):
        UNet({**REFINER_UNET, "transformer_layers_per_block": [1, 2]})


def test_text_encoder_2_matches_transformers(tmp_path):
    ref = ref_text_2()
    ref.save_pretrained(tmp_path / "model" / "text_encoder_2")
    ours = load_text_encoder(tmp_path / "model", component="text_encoder_2")
    assert isinstance(ours, TextEncoderWithProjection)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 512, (3, 77), generator=g)
    ids[:, 0], ids[0, 9], ids[1, 30], ids[2, 76] = 512, 513, 513, 513     # BOS, EOS at different places
    ids[0, 10:], ids[1, 31:] = 0, 0                                       # "!" padding after EOS (id 0)
    with torch.no_grad():
        want = ref(ids, output_hidden_states=True)
        ctx, pooled = ours.context_and_pooled(ids)
        assert rel(ctx, want.hidden_states[-2]) <= 1e-5
        assert rel(pooled, want.text_embeds) <= 1e-5
        assert rel(ours.final_layer_norm(ctx), want.hidden_states[-2]) > 1e-2    # seeded bug: LN on the penultimate
    with pytest.raises(CheckpointError, match="with text_encoder/config.json"):
        load_text_encoder(tmp_path / "model", component="text_encoder")  # no text_encoder/ there


@pytest.fixture(scope="module")
def openai_vocab_tokenizer():
    try:
        return load_tokenizer()
    except TokenizerError as e:
        pytest.skip(str(e))


def test_tokenizer_2_pads_with_its_own_pad_token(tmp_path, openai_vocab_tokenizer):
    """SDXL's tokenizer_2 folder: CLIP's vocabulary, pad token "!" (id 0) named in special_tokens_map.json."""
    tok = openai_vocab_tokenizer
    folder = tmp_path / "refiner" / "tokenizer_2"
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(tok.vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in sorted(tok.ranks, key=tok.ranks.get)))
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": "!", "bos_token": "<|startoftext|>",
                                                                "eos_token": "<|endoftext|>"}))
    ref = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!")
    ours = load_tokenizer(tmp_path / "refiner", subfolder="tokenizer_2")
    ps = prompts(60)
    want = ref(ps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    got = ours(ps)
    assert torch.equal(got, want)
    assert (got == 0).any() and ours.pad == 0
    sd15 = Tokenizer(tok.vocab, [tuple(m) for m in sorted(tok.ranks, key=tok.ranks.get)])   # pads with end-of-text
    assert not torch.equal(sd15(ps), want)


@pytest.mark.parametrize("steps,strength", [(50, 0.3), (10, 0.5), (4, 1.0), (25, 0.7)])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_euler_discrete_schedule_matches_diffusers(steps, strength, spacing):
    ref = diffusers.EulerDiscreteScheduler(**{**REFINER_SCHEDULER, "timestep_spacing": spacing})
    ref.set_timesteps(steps)
    timesteps, sigmas = euler_discrete_schedule(steps, spacing=spacing)
    assert torch.equal(timesteps, ref.timesteps) and torch.equal(sigmas, ref.sigmas)
    start = img2img_start(steps, strength)
    assert len(timesteps[start:]) == int(steps * strength)
    if spacing == "leading":                                          # seeded bug: the offset forgotten
        assert not torch.equal(euler_discrete_schedule(steps, spacing=spacing, offset=0)[0], ref.timesteps)


# ---- whole refines against diffusers' StableDiffusionXLImg2ImgPipeline ---------------------------------------

def image(seed=4, size=32):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("kw", [dict(strength=0.3, num_inference_steps=50, guidance_scale=5.0, seed=0),
                                dict(strength=0.5, num_inference_steps=10, guidance_scale=1.0, seed=7),
                                dict(strength=1.0, num_inference_steps=4, guidance_scale=3.0, seed=1,
                                     negative_prompt="blurry", aesthetic_score=7.0, negative_aesthetic_score=1.0)],
                         ids=["0.3-of-50-cfg5", "0.5-of-10-nocfg", "1.0-of-4-negative"])
def test_refine_matches_diffusers_img2img(refiner, kw):
    folder, pipe = refiner
    ours = load_refiner(folder)
    img, prompt = image(), "a red circle, sharp"
    seed = kw["seed"]
    from PIL import Image
    with torch.no_grad():
        ref_latents = pipe(prompt=prompt, image=Image.fromarray(img), output_type="latent",
                           generator=torch.Generator("cpu").manual_seed(seed), **{k: v for k, v in kw.items() if k != "seed"}).images
        ref_image = np.asarray(pipe(prompt=prompt, image=Image.fromarray(img), output_type="pil",
                                    generator=torch.Generator("cpu").manual_seed(seed),
                                    **{k: v for k, v in kw.items() if k != "seed"}).images[0])
    out = ours.refine(img, prompt, negative_prompt=kw.get("negative_prompt"), strength=kw["strength"],
                      steps=kw["num_inference_steps"], guidance=kw["guidance_scale"], seed=seed,
                      aesthetic_score=kw.get("aesthetic_score", 6.0),
                      negative_aesthetic_score=kw.get("negative_aesthetic_score", 2.5), return_latents=True, progress=False)
    assert rel(out.latents, ref_latents) <= 1e-4
    assert np.abs(out.images[0].astype(int) - ref_image.astype(int)).max() <= 1
    assert len(out.seconds["steps"]) == int(kw["num_inference_steps"] * kw["strength"])


def test_refine_seeded_bugs_change_the_result(refiner, monkeypatch):
    """The equalities above fail when the aesthetic scores are swapped or the schedule's offset is lost."""
    folder, pipe = refiner
    ours = load_refiner(folder)
    img = image()
    base = ours.refine(img, "a cat", steps=10, strength=0.5, return_latents=True, progress=False).latents
    swapped = ours.refine(img, "a cat", steps=10, strength=0.5, aesthetic_score=2.5, negative_aesthetic_score=6.0,
                          return_latents=True, progress=False).latents
    assert rel(swapped, base) > 1e-3
    ours.scheduler["steps_offset"] = 0
    assert rel(ours.refine(img, "a cat", steps=10, strength=0.5, return_latents=True, progress=False).latents, base) > 1e-4


def test_refine_refuses_bad_input(refiner, model):
    folder, _ = refiner
    ours = load_refiner(folder)
    img = image()
    for bad, msg in ((dict(strength=0.0), "strength must lie in \\(0, 1\\]"), (dict(strength=1.5), "strength must lie"),
                     (dict(strength=0.3, steps=3), "runs no step"), (dict(steps=0), "steps must be a positive integer")):
        with pytest.raises(PipelineError, match=msg):
            ours.refine(img, "x", **bad)
    with pytest.raises(PipelineError, match="multiples of 2"):
        ours.refine(image(size=31), "x")
    with pytest.raises(CheckpointError, match="not an SDXL refiner folder"):
        load_refiner(model[0])


def refine_cli(*args):
    return subprocess.run([sys.executable, "-m", "sd.refine", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_refine_cli_equals_the_api_and_exits_2_on_bad_input(refiner, model, tmp_path):
    from sd.checkpoints.images import read_image
    from sd.cli import save_png
    folder, _ = refiner
    src = tmp_path / "in.png"
    save_png(image(), src)
    r = refine_cli("--model", folder, "--image", src, "--prompt", "a cat", "--strength", 0.5, "--steps", 10,
                   "--seed", 3, "--size", 0, "--out", tmp_path / "out.png")
    assert r.returncode == 0, r.stderr
    want = load_refiner(folder).refine(image(), "a cat", strength=0.5, steps=10, seed=3, progress=False).images[0]
    assert np.array_equal(read_image(tmp_path / "out.png"), want)
    assert "text encoder" in r.stdout and "5 steps" in r.stdout and "VAE" in r.stdout
    for args, msg in (([*"--strength 0".split()], "--strength must lie in (0, 1]"),
                      ([*"--strength 0.3 --steps 3".split()], "runs no step"),
                      (["--model", model[0]], "not an SDXL refiner folder"),
                      (["--image", tmp_path / "missing.png"], "missing.png")):
        full = ["--model", folder, "--image", src, "--prompt", "x", "--size", 0, "--out", tmp_path / "bad.png"]
        for i in range(0, len(args), 2):
            j = full.index(args[i]) if args[i] in full else None
            full = full[:j] + [args[i], args[i + 1]] + full[j + 2:] if j is not None else full + [args[i], args[i + 1]]
        r = refine_cli(*full)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
        assert not (tmp_path / "bad.png").exists()


def test_generate_with_refiner_equals_pipe_then_refine(refiner, model, tmp_path):
    """sd.generate --refiner: the one-step image (OUT_one_step.png) and its refinement at --refine-size (OUT)."""
    from sd.checkpoints.images import read_image
    from sd.sampling.pipeline import load_pipeline
    folder, _ = refiner
    out = tmp_path / "img.png"
    args = ["--model", model[0], "--prompt", "a cat", "--height", 32, "--width", 32, "--seed", 5, "--refiner", folder,
            "--refine-size", 48, "--refine-steps", 8, "--refine-strength", 0.5, "--out", out, "--device", "cpu"]
    r = subprocess.run([sys.executable, "-m", "sd.generate", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "refine: text encoder" in r.stdout and "4 steps" in r.stdout
    pipe = load_pipeline(model[0])
    one_step = pipe("a cat", height=32, width=32, seed=5, progress=False).images[0]
    pipe.refiner = load_refiner(folder)
    want = pipe.refine(one_step, "a cat", size=48, steps=8, strength=0.5, seed=5, progress=False).images[0]
    assert np.array_equal(read_image(tmp_path / "img_one_step.png"), one_step)
    got = read_image(out)
    assert got.shape == (48, 48, 3) and np.array_equal(got, want)
    bad = subprocess.run([sys.executable, "-m", "sd.generate", *map(str, args[:-4]), "--refine-steps", "1",
                          "--out", tmp_path / "bad.png"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--refine-strength 0.5 of --refine-steps 1 runs no step" in bad.stderr, bad.stderr
    assert not (tmp_path / "bad.png").exists() and not (tmp_path / "bad_one_step.png").exists()


def test_refiner_loads_fp16_variant_files_and_a_model_id_in_the_hub_cache(refiner, tmp_path, monkeypatch):
    """The refiner's real folder ships *.fp16.safetensors (variant="fp16"); an id resolves in HF_HOME's cache."""
    import shutil
    folder, pipe = refiner
    pipe.save_pretrained(tmp_path / "variant", variant="fp16")
    assert (tmp_path / "variant" / "unet" / "diffusion_pytorch_model.fp16.safetensors").exists()
    assert not (tmp_path / "variant" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    want = load_refiner(folder).refine(image(), "a cat", steps=10, strength=0.5, progress=False).images
    got = load_refiner(tmp_path / "variant", variant="fp16").refine(image(), "a cat", steps=10, strength=0.5,
                                                                     progress=False).images
    assert np.array_equal(got, want)
    repo = tmp_path / "home" / "hub" / "models--stabilityai--tiny-refiner"
    shutil.copytree(folder, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    by_id = load_refiner("stabilityai/tiny-refiner").refine(image(), "a cat", steps=10, strength=0.5, progress=False)
    assert np.array_equal(by_id.images, want)
    with pytest.raises(CheckpointError, match="sd_xl_refiner_1.0.safetensors is not supported"):
        load_refiner(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_refiner_in_bf16_keeps_the_vae_in_fp32_and_stays_close(refiner):
    """dtype=bf16 (a CPU with bf16 instructions): UNet and text encoder in bf16, SDXL's VAE in fp32 (force_upcast);
    the latents within bf16's rounding of the fp32 refine (measured 1.7e-2 relative, 2 grey levels)."""
    folder, _ = refiner
    want = load_refiner(folder).refine(image(), "a cat", progress=False, return_latents=True)
    half = load_refiner(folder, dtype=torch.bfloat16)
    assert next(half.vae.parameters()).dtype == torch.float32 and half.dtype == torch.bfloat16
    assert next(half.text_encoder.parameters()).dtype == torch.bfloat16
    got = half.refine(image(), "a cat", progress=False, return_latents=True)
    assert rel(got.latents.float(), want.latents) <= 5e-2
    assert np.abs(got.images.astype(int) - want.images).max() <= 8


def test_refiner_refuses_a_base_folder_and_a_scheduler_it_does_not_implement(refiner, tmp_path):
    import shutil
    folder, _ = refiner
    copy = tmp_path / "r"
    shutil.copytree(folder, copy)
    f = copy / "scheduler" / "scheduler_config.json"
    f.write_text(json.dumps({**json.loads(f.read_text()), "use_karras_sigmas": True}))
    with pytest.raises(CheckpointError, match="use_karras_sigmas=True \\(supported: False\\)"):
        load_refiner(copy)
    index = copy / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "text_encoder": ["transformers", "CLIPTextModel"]}))
    with pytest.raises(CheckpointError, match="an SDXL base folder"):
        load_refiner(copy)
