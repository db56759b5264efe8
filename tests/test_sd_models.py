"""Parity of our UNet, VAE and text encoder with diffusers / transformers (tiny configs, random
weights), loaded from folders those libraries saved and from single-file LDM checkpoints."""
import pytest
import torch

from sd import CheckpointError, load_text_encoder, load_unet, load_vae, save_unet
from sd.checkpoints.safetensors_io import load_file, save_file

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
from diffusers.loaders import single_file_utils as sfu  # noqa: E402

from tests.sd_oracles import (UNET3_CFG, UNET4_CFG, UNET_CFG, load_unet_from, max_diff, ref_text,  # noqa: E402
                               ref_unet, ref_vae, to_ldm_unet, to_ldm_vae, unet_inputs)

TOL = 1e-4


@pytest.mark.parametrize("cfg", [UNET_CFG, UNET3_CFG], ids=["2-level", "3-level"])
def test_unet_from_a_diffusers_folder(tmp_path, cfg):
    ref = ref_unet(cfg)
    ref.save_pretrained(tmp_path / "model" / "unet")
    ours = load_unet(tmp_path / "model")
    x, t, c = unet_inputs(cfg)
    with torch.no_grad():
        assert max_diff(ours(x, t, c), ref(x, t, c).sample) <= TOL


@pytest.mark.parametrize("cfg,hw", [(UNET3_CFG, (9, 13)), (UNET4_CFG, (65, 33))], ids=["3-level", "SD-1.5-layout"])
def test_unet_at_latent_sides_that_are_odd_at_every_level(cfg, hw):
    """Sides that are multiples of 8 pixels but not of 64 (SD 1.5 at 520x264 px = 65x33 latents:
    65 -> 33 -> 17 -> 9): each upsampler must return to its skip connection's size, as diffusers does."""
    ref = ref_unet(cfg)
    ours = load_unet_from(ref)
    g = torch.Generator().manual_seed(7)
    x, c = torch.randn(2, 4, *hw, generator=g), torch.randn(2, 5, cfg["cross_attention_dim"], generator=g)
    t = torch.tensor([999.0, 250.0])
    with torch.no_grad():
        out = ours(x, t, c)
        assert out.shape == x.shape and max_diff(out, ref(x, t, c).sample) <= TOL


def test_unet_fp16_variant_and_legacy_bin(tmp_path):
    ref = ref_unet()
    ref.half().save_pretrained(tmp_path / "fp16", variant="fp16")
    ours = load_unet(tmp_path / "fp16", dtype=torch.float32)
    assert ours.conv_in.weight.dtype == torch.float32
    ref.float().save_pretrained(tmp_path / "bin", safe_serialization=False)
    ours_bin = load_unet(tmp_path / "bin")
    x, t, c = unet_inputs()
    with torch.no_grad():
        r = ref(x, t, c).sample        # the weights were fp16-rounded by .half() above
        assert max_diff(ours(x, t, c), r) <= TOL and max_diff(ours_bin(x, t, c), r) <= TOL
    assert load_unet(tmp_path / "fp16").conv_in.weight.dtype == torch.float16   # dtype=None: as stored


def test_vae_and_text_encoder_from_folders(tmp_path):
    vae, text = ref_vae(), ref_text()
    vae.save_pretrained(tmp_path / "m" / "vae")
    text.save_pretrained(tmp_path / "m" / "text_encoder")
    ours_vae, ours_text = load_vae(tmp_path / "m"), load_text_encoder(tmp_path / "m")
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    ids = torch.randint(0, 1000, (3, 77), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert max_diff(ours_vae.encode(img), vae.encode(img).latent_dist.mean) <= TOL
        assert max_diff(ours_vae.decode(z), vae.decode(z).sample) <= TOL
        assert max_diff(ours_text(ids), text(ids).last_hidden_state) <= TOL
    assert ours_vae.scaling_factor == vae.config.scaling_factor


def test_text_encoder_keys_with_the_old_text_model_prefix(tmp_path):
    text = ref_text()
    text.save_pretrained(tmp_path / "te")
    f = tmp_path / "te" / "model.safetensors"
    sd = load_file(f)
    sd = {"text_model." + k: v.clone() for k, v in sd.items()}
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]      # as transformers 4.x saved it
    save_file(sd, f)
    ids = torch.randint(0, 1000, (2, 77), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert max_diff(load_text_encoder(tmp_path / "te")(ids), text(ids).last_hidden_state) <= TOL


def test_save_unet_is_loaded_by_diffusers(tmp_path):
    ref = ref_unet()
    ref.save_pretrained(tmp_path / "a" / "unet")
    ours = load_unet(tmp_path / "a")
    save_unet(ours, tmp_path / "b")
    back = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "b" / "unet").eval()
    x, t, c = unet_inputs()
    with torch.no_grad():
        assert max_diff(back(x, t, c).sample, ours(x, t, c)) == 0.0


# ---- single-file LDM checkpoints -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def single_file(tmp_path_factory):
    unet, vae, text = ref_unet(), ref_vae(), ref_text()
    ckpt = {**to_ldm_unet(unet.state_dict(), dict(unet.config)), **to_ldm_vae(vae.state_dict(), 2),
            **{"cond_stage_model.transformer.text_model." + k: v for k, v in text.state_dict().items()}}
    path = tmp_path_factory.mktemp("single") / "sd15-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ckpt.items()}, path)
    return path, ckpt, unet, vae, text


def test_our_ldm_names_are_the_real_ones(single_file):
    _, ckpt, unet, vae, _ = single_file
    conv = sfu.convert_ldm_unet_checkpoint(dict(ckpt), dict(unet.config))
    assert set(conv) == set(unet.state_dict())
    assert all(torch.equal(conv[k], v) for k, v in unet.state_dict().items())
    conv_vae = sfu.convert_ldm_vae_checkpoint(dict(ckpt), dict(vae.config))
    assert set(conv_vae) == set(vae.state_dict())
    assert all(torch.equal(conv_vae[k].reshape(v.shape), v) for k, v in vae.state_dict().items())
    conv_text = sfu.convert_ldm_clip_checkpoint(dict(ckpt))
    text = single_file[4]
    assert {k.removeprefix("text_model.") for k in conv_text} - {"embeddings.position_ids"} == set(text.state_dict())


def test_models_from_a_single_file(single_file):
    path, _, unet, vae, text = single_file
    # heads and GroupNorm groups are not visible in the weights: single files assume SD 1.x's
    # values (8 UNet heads, 12 text heads, 32 groups) unless told otherwise, as this tiny model must be
    ours_unet = load_unet(path, config={"attention_head_dim": 4, "norm_num_groups": 8})
    ours_vae = load_vae(path, config={"norm_num_groups": 8})
    ours_text = load_text_encoder(path, config={"num_attention_heads": 4})
    x, t, c = unet_inputs()
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    ids = torch.randint(0, 1000, (2, 77), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert max_diff(ours_unet(x, t, c), unet(x, t, c).sample) <= TOL
        assert max_diff(ours_vae.encode(img), vae.encode(img).latent_dist.mean) <= TOL
        assert max_diff(ours_vae.decode(x[:1]), vae.decode(x[:1]).sample) <= TOL
        assert max_diff(ours_text(ids), text(ids).last_hidden_state) <= TOL


# ---- errors ------------------------------------------------------------------------------------------------

def test_strict_key_checking_lists_every_problem(tmp_path):
    ref = ref_unet()
    ref.save_pretrained(tmp_path / "u")
    f = tmp_path / "u" / "diffusion_pytorch_model.safetensors"
    sd = {k: v.clone() for k, v in load_file(f).items()}
    del sd["conv_in.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["conv_out.weight"] = torch.zeros(4, 32, 1, 1)
    save_file(sd, f)
    with pytest.raises(CheckpointError) as err:
        load_unet(tmp_path / "u")
    msg = str(err.value)
    assert "missing (1): conv_in.bias" in msg and "unexpected (1): extra.weight" in msg
    assert "conv_out.weight: checkpoint (4, 32, 1, 1) vs model (4, 32, 3, 3)" in msg and str(tmp_path / "u") in msg


def test_bad_paths_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such file or folder"):
        load_unet(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a model folder"):
        load_vae(tmp_path / "empty")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weights file diffusion_pytorch_model.safetensors"):
        load_unet(tmp_path / "cfg")
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="no keys under 'model.diffusion_model.'"):
        load_unet(tmp_path / "other.safetensors")
    import pickle
    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": {"x": object()}}))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_unet(tmp_path / "evil.ckpt")


@pytest.mark.parametrize("cfg", [UNET_CFG, UNET3_CFG], ids=["2-level", "3-level"])
def test_unet_adds_controlnet_residuals_as_diffusers_does(cfg):
    """Residuals on every skip connection and on the mid block's output (what a ControlNet returns):
    the same output as diffusers' down_block_additional_residuals / mid_block_additional_residual."""
    ref = ref_unet(cfg)
    ours = load_unet_from(ref)
    x, t, c = unet_inputs(cfg)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        shapes = []                                   # the skips' shapes, from diffusers' own down pass
        h = ref.conv_in(x)
        shapes.append(h.shape)
        temb = ref.time_embedding(ref.time_proj(t).to(x.dtype))
        for block in ref.down_blocks:
            kw = {"encoder_hidden_states": c} if getattr(block, "has_cross_attention", False) else {}
            h, res = block(h, temb, **kw)
            shapes += [r.shape for r in res]
        down = [torch.randn(s, generator=g) for s in shapes]
        mid = torch.randn(h.shape, generator=g)
        want = ref(x, t, c, down_block_additional_residuals=tuple(down), mid_block_additional_residual=mid).sample
        assert max_diff(ours(x, t, c, down_residuals=down, mid_residual=mid), want) <= TOL
        assert max_diff(ours(x, t, c, down_residuals=down, mid_residual=mid), ours(x, t, c)) > 100 * TOL
        assert torch.equal(ours(x, t, c, down_residuals=[torch.zeros(s) for s in shapes]), ours(x, t, c))
        with pytest.raises(ValueError, match="down residuals"):
            ours(x, t, c, down_residuals=down[:-1])
