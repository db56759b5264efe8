"""LoRA files (sd/edits/lora.py) against diffusers' load_lora_weights + fuse_lora (peft backend) on the tiny
model: kohya files (attention, feed-forward, proj_in/out, 3x3 resnet convs, time embedding projections,
text encoder), peft files with lora_alpha in their metadata, older diffusers files; stacking, bit-exact
unload, the errors, and the CLI's --lora."""
import copy
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from sd.edits.lora import LoraError, layers, split_scale
from sd.sampling.pipeline import load_pipeline
from sd.checkpoints.safetensors_io import save_file
from tests.conftest import ROOT
from tests.reference import instaflow_reference

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("peft")

UNET_MODULES = r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)|proj_in|proj_out|resnets\.\d+\.(conv1|conv2|time_emb_proj))$"
TEXT_MODULES = r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.fc[12])$"


def kohya_file(pipe, path, seed, rank=4, text=True, alphas=(2.0, 1.0)):
    """A kohya/LoCon file for the modules above: random down/up; alphas (linear layers', 3x3 convs') as
    kohya's network_alpha and conv_alpha, stored in float16 as kohya does, or none (alphas=None: alpha = rank)."""
    g, tensors = torch.Generator().manual_seed(seed), {}
    for (comp, name), m in sorted(layers(pipe).items()):
        if not re.search(UNET_MODULES if comp == "unet" else TEXT_MODULES, name) or (comp != "unet" and not text):
            continue
        w = m.weight
        key = ("lora_unet_" + name if comp == "unet" else "lora_te_text_model_" + name).replace(".", "_")
        kernel = w.shape[2:]                                   # (3, 3) for LoCon resnet convs, () for linears
        tensors[key + ".lora_down.weight"] = torch.randn(rank, w.shape[1], *kernel, generator=g) * 0.3
        tensors[key + ".lora_up.weight"] = torch.randn(w.shape[0], rank, *[1] * len(kernel), generator=g) * 0.3
        if alphas:
            tensors[key + ".alpha"] = torch.tensor(alphas[w.ndim == 4 and w.shape[-1] > 1], dtype=torch.float16)
    save_file(tensors, path)
    return path


def peft_file(model, path, seed, old=None):
    """A diffusers/peft file written by diffusers itself: adapters (r = 4, lora_alpha = 8, 2 on conv1 by
    alpha_pattern) added with peft to copies of the UNet and text encoder, random B (peft starts it at
    zero), save_lora_weights. With old="lora", lora_alpha = r and the keys in diffusers' older spelling
    (the UNet's ...to_q.lora.down.weight, the text encoder's ...q_proj.lora_linear_layer.down.weight, no
    alpha stored); old="processor" spells the attention layers as attention processors did
    (...attn1.processor.to_q_lora.down.weight, ...self_attn.to_q_lora.down.weight)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    _, unet, _, text, _ = model
    unet, text = copy.deepcopy(unet), copy.deepcopy(text)
    torch.manual_seed(seed)
    cfg = dict(r=4, lora_alpha=4, init_lora_weights=False) if old else \
        dict(r=4, lora_alpha=8, alpha_pattern={"conv1": 2}, init_lora_weights=False)
    unet.add_adapter(LoraConfig(**cfg, target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"]))
    text.add_adapter(LoraConfig(**cfg, target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]))
    u, t = get_peft_model_state_dict(unet), get_peft_model_state_dict(text)
    if old:
        def rename(sd, inner):
            sd = {k.replace(".lora_A.", f".{inner}.down.").replace(".lora_B.", f".{inner}.up."): v for k, v in sd.items()}
            if old == "processor":
                sd = {re.sub(r"(attn[12])\.(to_[qkv])\.lora\.", r"\1.processor.\2_lora.", k): v for k, v in sd.items()}
                sd = {re.sub(r"(attn[12])\.to_out\.0\.lora\.", r"\1.processor.to_out_lora.", k): v for k, v in sd.items()}
                sd = {re.sub(r"self_attn\.(q|k|v|out)_proj\.lora_linear_layer\.", r"self_attn.to_\1_lora.", k): v
                      for k, v in sd.items()}
            return sd
        tensors = {**{"unet." + k: v for k, v in rename(u, "lora").items()},
                   **{"text_encoder." + k: v for k, v in rename(t, "lora_linear_layer").items()}}
        save_file(tensors, path)
        return path
    diffusers.StableDiffusionPipeline.save_lora_weights(
        path.parent, unet_lora_layers=u, text_encoder_lora_layers=t, weight_name=path.name,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        text_encoder_lora_adapter_metadata=text.peft_config["default"].to_dict())
    return path


def diffusers_fused(model, files_scales):
    """The oracle: diffusers' pipeline on copies of the tiny modules, each LoRA loaded then fused."""
    _, unet, vae, text, tok = model
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=copy.deepcopy(text), tokenizer=tok,
                                             unet=copy.deepcopy(unet), scheduler=diffusers.DDIMScheduler(),
                                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for k, (f, s) in enumerate(files_scales):
        pipe.load_lora_weights(f.parent, weight_name=f.name, adapter_name=f"a{k}")
        pipe.fuse_lora(lora_scale=s, adapter_names=[f"a{k}"])
        pipe.unload_lora_weights()                              # keeps the fused weights, drops the adapters
    return pipe.unet, pipe.text_encoder


def assert_weights_match(pipe, unet, text, rel=1e-5):
    ref = {**{("unet", k): v for k, v in unet.state_dict().items()},
           **{("text_encoder", k.removeprefix("text_model.")): v for k, v in text.state_dict().items()}}
    ours = {**{("unet", k): v for k, v in pipe.unet.state_dict().items()},
            **{("text_encoder", k): v for k, v in pipe.text_encoder.state_dict().items()}}
    ours.pop(("text_encoder", "embeddings.position_ids"), None)
    ref.pop(("text_encoder", "embeddings.position_ids"), None)
    assert set(ours) == set(ref)
    for k, v in ours.items():
        err = (v - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-12)
        assert err <= rel, (k, float(err))


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loras")
    pipe = load_pipeline(model[0])
    return {"kohya": kohya_file(pipe, tmp / "kohya.safetensors", 1), "kohya2": kohya_file(pipe, tmp / "k2.safetensors", 2, rank=2, alphas=None),
            "peft": peft_file(model, tmp / "peft.safetensors", 3), "old": peft_file(model, tmp / "old.safetensors", 4, old="lora"),
            "processor": peft_file(model, tmp / "processor.safetensors", 5, old="processor")}


@pytest.mark.parametrize("kind,scale", [("kohya", 1.0), ("kohya2", 0.6), ("peft", 0.8), ("old", 1.0), ("processor", 1.0)])
def test_fused_weights_and_images_equal_diffusers(model, files, kind, scale):
    pipe = load_pipeline(model[0])
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora(files[kind], scale)
    touched = sum(not torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
    assert touched >= 20                                       # the LoRA did reach the UNet
    unet, text = diffusers_fused(model, [(files[kind], scale)])
    assert_weights_match(pipe, unet, text)
    root, _, vae, _, tok = model
    ref_lat, ref_img = instaflow_reference(unet, vae, text, tok, ["a red circle"], [""], 2, 1.5, 7, 32)
    out = pipe("a red circle", steps=2, guidance=1.5, seed=7, height=32, width=32, return_latents=True, progress=False)
    err = (out.latents - ref_lat).abs().max() / ref_lat.abs().max()
    assert err <= 1e-5, float(err)
    assert np.abs(out.images.astype(int) - ref_img.astype(int)).max() <= 1


def test_two_stacked_loras_equal_diffusers_fusing_both_and_unload_is_bit_exact(model, files):
    for dtype in (torch.float32, torch.float16):
        pipe = load_pipeline(model[0], dtype=dtype)
        orig = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in ("unet", "text_encoder")}
        pipe.load_lora(files["kohya"], 0.7).load_lora(files["kohya2"], -0.4)
        assert [s for _, s in pipe.loras] == [0.7, -0.4]
        if dtype == torch.float32:
            assert_weights_match(pipe, *diffusers_fused(model, [(files["kohya"], 0.7), (files["kohya2"], -0.4)]))
        pipe.unload_lora()
        for c in orig:
            assert all(torch.equal(v, orig[c][k]) for k, v in getattr(pipe, c).state_dict().items()), (dtype, c)
        assert pipe.loras == [] and pipe.lora_originals == {}


def test_stacking_is_the_sum_of_the_updates(model, files):
    a, b, both = (load_pipeline(model[0]) for _ in range(3))
    base = {k: v.clone() for k, v in a.unet.state_dict().items()}
    a.load_lora(files["kohya"], 0.5)
    b.load_lora(files["peft"], 1.5)
    both.load_lora(files["kohya"], 0.5).load_lora(files["peft"], 1.5)
    for k, w in both.unet.state_dict().items():
        expected = a.unet.state_dict()[k] + b.unet.state_dict()[k] - base[k]
        assert torch.allclose(w, expected, rtol=0, atol=1e-5 * base[k].abs().max()), k


def _bad_files(pipe, tmp, files):
    """(file, the words its error must contain) for every kind of bad LoRA file."""
    from sd.checkpoints.safetensors_io import load_file
    good = load_file(files["kohya"])
    some = next(k for k in good if "attn2_to_k.lora_down" in k)
    some_up = some.replace(".lora_down.", ".lora_up.")
    cases = []

    def write(name, tensors, words):
        save_file(tensors, tmp / name)
        cases.append((tmp / name, words))

    write("unknown.safetensors", {**good, "lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
                                  "lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4)},
          ["lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight", "names no module"])
    write("shape.safetensors", {**good, some_up: torch.zeros(7, 4)}, [some, "do not fit", "(7, 4)"])
    write("unpaired.safetensors", {k: v for k, v in good.items() if k != some_up},
          [some, "pair", "missing"])
    write("loha.safetensors", {"lora_unet_conv_in.hada_w1_a": torch.zeros(2, 2)}, ["hada_w1_a", "LoHa"])
    write("lokr.safetensors", {"lora_unet_conv_in.lokr_w1": torch.zeros(2, 2)}, ["lokr_w1", "LoKr"])
    write("tucker.safetensors", {**good, some.replace(".lora_down.", ".lora_mid."): torch.zeros(4, 4, 3, 3)},
          ["lora_mid", "Tucker"])
    write("dora.safetensors", {**good, some.replace(".lora_down.weight", ".dora_scale"): torch.zeros(1, 32)},
          ["dora_scale", "DoRA"])
    write("dora_peft.safetensors", {"unet.conv_in.lora_A.weight": torch.zeros(4, 4, 3, 3),
                                    "unet.conv_in.lora_B.weight": torch.zeros(32, 4, 1, 1),
                                    "unet.conv_in.lora_magnitude_vector": torch.zeros(32)}, ["lora_magnitude_vector", "DoRA"])
    write("bias.safetensors", {"unet.conv_in.lora_A.weight": torch.zeros(4, 4, 3, 3),
                               "unet.conv_in.lora_B.weight": torch.zeros(32, 4, 1, 1),
                               "unet.conv_in.lora_B.bias": torch.zeros(32)}, ["lora_B.bias", "biases"])
    for flag, name in (("use_dora", "DoRA"), ("use_rslora", "rsLoRA")):
        meta = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8, f"unet.{flag}": True})}
        save_file({"unet.conv_in.lora_A.weight": torch.zeros(4, 4, 3, 3),
                   "unet.conv_in.lora_B.weight": torch.zeros(32, 4, 1, 1)}, tmp / f"{flag}.safetensors", metadata=meta)
        cases.append((tmp / f"{flag}.safetensors", [f"uses {name}", "not supported"]))
    write("notlora.safetensors", dict(pipe.unet.state_dict()), ["not a LoRA file"])
    (tmp / "broken.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{}")
    cases.append((tmp / "broken.safetensors", ["not a readable LoRA file"]))
    cases.append((tmp / "missing.safetensors", ["no such LoRA file"]))
    return cases


def test_bad_files_give_their_error_and_change_nothing(model, files, tmp_path):
    pipe = load_pipeline(model[0]).load_lora(files["kohya2"], 0.3)
    state = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in ("unet", "text_encoder")}
    for path, words in _bad_files(pipe, tmp_path, files):
        with pytest.raises(LoraError) as err:
            pipe.load_lora(path)
        assert str(path) in str(err.value) and all(w in str(err.value) for w in words), (path.name, str(err.value))
        for c in state:
            assert all(torch.equal(v, state[c][k]) for k, v in getattr(pipe, c).state_dict().items()), path.name
        assert len(pipe.loras) == 1
    with pytest.raises(LoraError, match="scale must be a number"):
        pipe.load_lora(files["kohya"], "1")


def test_a_bin_file_and_the_lora_te1_prefix_read_as_kohya_files(model, files, tmp_path):
    """The README's promises: .bin LoRAs are read (through torch.load(weights_only=True)) and SDXL-style
    lora_te1_ names the (first) text encoder; both give the weights the .safetensors kohya file gives."""
    from sd.checkpoints.safetensors_io import load_file
    tensors = load_file(files["kohya"])
    assert any(k.startswith("lora_te_") for k in tensors)
    torch.save({k: v.clone() for k, v in tensors.items()}, tmp_path / "kohya.bin")
    save_file({k.replace("lora_te_", "lora_te1_", 1): v for k, v in tensors.items()}, tmp_path / "te1.safetensors")
    ref = load_pipeline(model[0]).load_lora(files["kohya"], 0.7)
    for f in (tmp_path / "kohya.bin", tmp_path / "te1.safetensors"):
        pipe = load_pipeline(model[0]).load_lora(f, 0.7)
        for c in ("unet", "text_encoder"):
            theirs = getattr(ref, c).state_dict()
            assert all(torch.equal(v, theirs[k]) for k, v in getattr(pipe, c).state_dict().items()), (f.name, c)


def test_split_scale():
    assert split_scale("a.safetensors") == ("a.safetensors", 1.0)
    assert split_scale("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert split_scale("C:/x/a.safetensors") == ("C:/x/a.safetensors", 1.0)


def test_cli_lora_is_the_api_and_a_bad_file_exits_2(model, files, tmp_path):
    args = [sys.executable, "-m", "sd.generate", "--model", str(model[0]), "--prompt", "a red circle",
            "--height", "32", "--width", "32", "--steps", "2", "--device", "cpu",
            "--lora", f"{files['kohya']}:0.5", "--lora", str(files["peft"])]
    r = subprocess.run(args + ["--out", str(tmp_path / "x.png")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "kohya.safetensors (scale 0.5)" in r.stdout
    import matplotlib.image
    got = (matplotlib.image.imread(tmp_path / "x.png")[..., :3] * 255).round().astype(np.uint8)
    pipe = load_pipeline(model[0]).load_lora(files["kohya"], 0.5).load_lora(files["peft"])
    assert np.array_equal(got, pipe("a red circle", steps=2, height=32, width=32, progress=False).images[0])
    (tmp_path / "bad.safetensors").write_text(json.dumps({}))
    r = subprocess.run(args[:-2] + ["--lora", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "y.png")],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "bad.safetensors" in r.stderr and not (tmp_path / "y.png").exists()


def test_a_delta_merge_waits_for_the_loras_to_be_unloaded(model, files):
    from sd.sampling.pipeline import PipelineError
    pipe = load_pipeline(model[0]).load_lora(files["kohya"])
    with pytest.raises(PipelineError, match="unload the LoRAs"):
        pipe.merge_delta(model[0], model[0])


def test_extract_lora_at_full_rank_reproduces_the_tuned_weights_and_truncation_error_falls_with_rank(model, tmp_path):
    from sd.edits.lora import extract_lora
    from tests.sd_oracles import randomize
    base = load_pipeline(model[0])
    tuned = copy.deepcopy(base.unet)
    with torch.no_grad():                                 # a low-rank-ish change plus a little of everything
        for (name, p), q in zip(tuned.named_parameters(), randomize(copy.deepcopy(tuned), 9).parameters()):
            p.add_(0.05 * q)
    errors = []
    for rank in (1, 8, 128):                           # 128: the largest full rank here (time_embedding.linear_2)
        save_file(extract_lora(base.unet, tuned, rank), tmp_path / f"r{rank}.safetensors")
        pipe = load_pipeline(model[0]).load_lora(tmp_path / f"r{rank}.safetensors")
        own, want = dict(pipe.unet.named_modules()), dict(tuned.named_modules())
        err = max(float((m.weight - want[n].weight).abs().max()) for n, m in own.items()
                  if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
        errors.append(err)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-5, errors
