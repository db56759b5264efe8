"""Fine-tune deltas (sd/edits/deltas.py): W_rf + alpha (W_ft - W_base) on tiny folders, checked before changing
anything, and the CLI's --merge-delta."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from sd.edits.deltas import merge_delta
from sd.checkpoints.loaders import CheckpointError, load_text_encoder, load_unet, load_vae
from sd.sampling.pipeline import load_pipeline
from tests.conftest import ROOT
from tests.sd_oracles import UNET3_CFG, randomize

diffusers = pytest.importorskip("diffusers")


def _variant(root, out, unet_seed=None, vae_seed=None, unet_cfg=None, text_seed=None):
    """A copy of the tiny model folder with its UNet (and VAE, text encoder) replaced by other random weights."""
    shutil.copytree(root, out)
    if text_seed is not None:
        import transformers
        text = transformers.CLIPTextModel.from_pretrained(root / "text_encoder")
        shutil.rmtree(out / "text_encoder")
        randomize(text, text_seed).save_pretrained(out / "text_encoder")
    if unet_seed is not None:
        unet = diffusers.UNet2DConditionModel.from_pretrained(root / "unet") if unet_cfg is None else \
            diffusers.UNet2DConditionModel(**unet_cfg)
        shutil.rmtree(out / "unet")
        randomize(unet, unet_seed).save_pretrained(out / "unet")
    if vae_seed is not None:
        shutil.rmtree(out / "vae")
        randomize(diffusers.AutoencoderKL.from_pretrained(root / "vae"), vae_seed).save_pretrained(out / "vae")
    return out


@pytest.fixture(scope="module")
def folders(model, tmp_path_factory):
    root, tmp = model[0], tmp_path_factory.mktemp("deltas")
    return (root, _variant(root, tmp / "base", unet_seed=11), _variant(root, tmp / "ft", unet_seed=12, vae_seed=13, text_seed=14))


@pytest.mark.parametrize("alpha,dtype", [(1.0, torch.float32), (0.5, torch.float32), (0.7, torch.bfloat16)])
def test_merge_equals_the_formula_and_takes_the_finetunes_vae_and_text_encoder(folders, alpha, dtype):
    root, base, ft = folders
    pipe = load_pipeline(root, dtype=dtype)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    merge_delta(pipe, base, ft, alpha)
    wb, wf = load_unet(base).state_dict(), load_unet(ft).state_dict()
    for k, w in pipe.unet.state_dict().items():
        expected = (before[k].float() + alpha * (wf[k].float() - wb[k].float())).to(dtype)
        assert torch.equal(w, expected), k
    ft_vae = load_vae(ft, dtype=dtype).state_dict()
    assert all(torch.equal(v, ft_vae[k]) for k, v in pipe.vae.state_dict().items())
    ft_text, root_text = load_text_encoder(ft, dtype=dtype).state_dict(), load_text_encoder(root, dtype=dtype).state_dict()
    assert not all(torch.equal(v, root_text[k]) for k, v in ft_text.items())     # the fixture's differ
    assert all(torch.equal(v, ft_text[k]) for k, v in pipe.text_encoder.state_dict().items())


def test_a_delta_that_does_not_fit_changes_nothing(folders, tmp_path):
    root, base, _ = folders
    other = _variant(root, tmp_path / "other", unet_seed=3, unet_cfg=UNET3_CFG, vae_seed=4)
    pipe = load_pipeline(root)
    unet_before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    vae_before = pipe.vae
    with pytest.raises(CheckpointError) as err:
        merge_delta(pipe, base, other)
    assert "does not fit the pipeline's UNet, nothing was changed" in str(err.value)
    assert str(other) in str(err.value) and "wrong shape" in str(err.value)
    assert all(torch.equal(v, unet_before[k]) for k, v in pipe.unet.state_dict().items()) and pipe.vae is vae_before
    with pytest.raises(CheckpointError, match="no such file or folder"):
        merge_delta(pipe, base, tmp_path / "missing")


def test_cli_merge_delta(folders, tmp_path):
    root, base, ft = folders
    r = subprocess.run([sys.executable, "-m", "sd.generate", "--model", str(root), "--prompt", "a red circle",
                        "--merge-delta", str(base), f"{ft}:0.5", "--height", "32", "--width", "32", "--device", "cpu",
                        "--out", str(tmp_path / "m.png")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "merged 0.5 x (fine-tuned - base)" in r.stdout
    pipe = merge_delta(load_pipeline(root), base, ft, 0.5)
    want = pipe("a red circle", height=32, width=32, progress=False).images[0]
    import matplotlib.image
    got = (matplotlib.image.imread(tmp_path / "m.png")[..., :3] * 255).round().astype(np.uint8)
    assert np.array_equal(got, want)
    r = subprocess.run([sys.executable, "-m", "sd.generate", "--model", str(root), "--prompt", "x", "--merge-delta",
                        str(base), str(tmp_path / "nope"), "--device", "cpu"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "nope" in r.stderr, r.stderr
