"""TAESD (sd/models/tiny_vae.py) against diffusers' AutoencoderTiny on random weights: encode and decode,
TAESD's own configuration and a tiny one; its loader's errors; the pipeline and sd.generate decoding with it."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from sd.checkpoints.loaders import CheckpointError, load_tiny_vae
from sd.models.tiny_vae import TinyVAE
from sd.sampling.pipeline import load_pipeline
from tests.conftest import ROOT
from tests.sd_oracles import randomize

diffusers = pytest.importorskip("diffusers")

TINY = dict(encoder_block_out_channels=[8, 8, 8], decoder_block_out_channels=[8, 8, 8], num_encoder_blocks=[1, 2, 1],
            num_decoder_blocks=[1, 2, 1])   # equal widths: diffusers ties each level's input to its own width


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def reference(config, seed=0):
    return randomize(diffusers.AutoencoderTiny(**config), seed)


@pytest.mark.parametrize("config", [{}, TINY], ids=["taesd", "tiny"])
def test_encode_and_decode_equal_diffusers(config, tmp_path):
    ref = reference(config)
    ref.save_pretrained(tmp_path / "taesd")
    ours = load_tiny_vae(tmp_path / "taesd")
    g = torch.Generator().manual_seed(1)
    images, latents = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.randn(2, 4, 8, 8, generator=g) * 2
    with torch.no_grad():
        assert rel(ours.encode(images), ref.encode(images).latents) < 1e-4
        assert rel(ours.decode(latents), ref.decode(latents).sample) < 1e-4
    assert ours.scaling_factor == ref.config.scaling_factor == 1.0
    assert ours.downsampling == 2 ** (len(ours.config["encoder_block_out_channels"]) - 1)


def test_the_soft_clamp_and_the_output_range_are_applied():
    """The decoder clamps its input softly (3 tanh(z / 3)): latents 1e3 and 1e6 decode alike; without the
    clamp they would differ. Its output is 2 y - 1 of the last conv's y."""
    vae = randomize(TinyVAE(TINY), 2)
    z = torch.randn(1, 4, 4, 4).sign() * (1 + torch.rand(1, 4, 4, 4))        # |z| >= 1: 1e3 z saturates tanh
    with torch.no_grad():
        assert torch.allclose(vae.decode(z * 1e3), vae.decode(z * 1e6), atol=1e-4)
        y = vae.decoder.layers(z.div(3).tanh().mul(3))
        assert torch.equal(vae.decode(z), y * 2 - 1)


def test_loader_refuses_the_full_vae_and_single_files(tmp_path):
    from tests.sd_oracles import ref_vae
    ref_vae().save_pretrained(tmp_path / "kl")
    with pytest.raises(CheckpointError, match="_class_name is 'AutoencoderKL', not AutoencoderTiny"):
        load_tiny_vae(tmp_path / "kl")
    (tmp_path / "w.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="not a single file"):
        load_tiny_vae(tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="act_fn='silu' is not supported"):
        TinyVAE({"act_fn": "silu"})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tests.tiny_sd import tiny_sd_folder
    root = tmp_path_factory.mktemp("tiny-sd")
    model = tiny_sd_folder(root)
    ref = reference(dict(encoder_block_out_channels=[8, 8], decoder_block_out_channels=[8, 8],
                         num_encoder_blocks=[1, 1], num_decoder_blocks=[1, 1]), 5)   # 2 levels, as the tiny VAE
    ref.save_pretrained(root / "taesd")
    return model, root / "taesd", ref


def test_pipeline_and_cli_decode_with_the_tiny_vae(folders, tmp_path):
    """The same latents as with the full VAE (the VAE plays no part in sampling), decoded by TAESD as
    diffusers decodes them (latents / scaling_factor 1.0); sd.generate --tiny-vae writes that image."""
    model, taesd, ref = folders
    kw = dict(steps=2, seed=3, height=32, width=32, return_latents=True, progress=False)
    full = load_pipeline(model)("a red circle", **kw)
    tiny = load_pipeline(model, tiny_vae=taesd)("a red circle", **kw)
    assert torch.equal(full.latents, tiny.latents)
    with torch.no_grad():
        want = ref.decode(tiny.latents).sample
    want = ((want / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.abs(tiny.images.astype(int) - want.astype(int)).max() <= 1
    assert np.abs(tiny.images.astype(int) - full.images.astype(int)).max() > 10      # another decoder
    out = tmp_path / "x.png"
    r = subprocess.run([sys.executable, "-m", "sd.generate", "--model", str(model), "--tiny-vae", str(taesd),
                        "--prompt", "a red circle", "--steps", "2", "--seed", "3", "--height", "32", "--width", "32",
                        "--out", str(out), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import matplotlib.image
    png = (matplotlib.image.imread(out)[..., :3] * 255).round().astype(int)
    assert np.abs(png - tiny.images[0].astype(int)).max() == 0
    bad = subprocess.run([sys.executable, "-m", "sd.generate", "--model", str(model), "--tiny-vae",
                          str(tmp_path / "nowhere"), "--prompt", "x", "--out", str(tmp_path / "y.png")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "nowhere" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
