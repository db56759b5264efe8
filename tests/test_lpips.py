"""LPIPS-VGG from scratch (sd/models/lpips.py, sd/checkpoints/loaders.py's load_lpips) against the lpips package.
The package imports torchvision for VGG16's definition only (PyPI's torchvision breaks beside this torch): the
test gives it a stub `torchvision.models.vgg16` built here from plain torch layers, removed afterwards."""
import sys
import types

import pytest
import torch
from torch import nn

from sd.checkpoints.loaders import CheckpointError, load_lpips

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def stub_vgg16(pretrained=False, **kw):
    """torchvision's vgg16().features layout: conv 3x3 + ReLU(inplace), max-pools, 31 modules."""
    assert not pretrained, "the test never downloads weights"
    layers, c = [], 3
    for v in VGG16:
        layers += [nn.MaxPool2d(2, 2)] if v == "M" else [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
        c = c if v == "M" else v
    model = nn.Module()
    model.features = nn.Sequential(*layers)
    return model


@pytest.fixture
def lpips_package(monkeypatch):
    tv, models = types.ModuleType("torchvision"), types.ModuleType("torchvision.models")
    models.vgg16, tv.models = stub_vgg16, models
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    package = pytest.importorskip("lpips")
    yield package
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        del sys.modules[name]                       # nothing keeps the stubbed import


@pytest.fixture
def files(lpips_package, tmp_path):
    """The package's LPIPS (its real v0.1 linear weights, a random VGG16), and the same weights in the user's
    files: torchvision's state-dict layout (features.N.*) and the package's weights/v0.1/vgg.pth."""
    from pathlib import Path
    torch.manual_seed(0)
    ref = lpips_package.LPIPS(net="vgg", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    vgg = {f"features.{k.split('.', 1)[1]}": v for k, v in ref.net.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)            # the rest of a real vgg16 file: ignored
    torch.save(vgg, tmp_path / "vgg16.pth")
    return ref, tmp_path / "vgg16.pth", Path(lpips_package.__file__).parent / "weights" / "v0.1" / "vgg.pth"


def test_lpips_matches_the_package(files, monkeypatch):
    ref, vgg, lin = files
    ours = load_lpips(vgg, lin)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(3, 3, 64, 64, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        want = ref(x, y).flatten()
        got = ours(x, y)
    assert got.shape == (3,) and ((got - want).abs().max() / want.abs().max()).item() <= 1e-5
    assert torch.all(ours(x, x) == 0) and torch.all(want > 0)
    assert not any(p.requires_grad for p in ours.parameters())
    # the gradient flows to the images (the distillation loss needs it)
    x.requires_grad_(True)
    ours(x, y).sum().backward()
    assert x.grad.abs().sum() > 0
    # a seeded bug: without the input's shift and scale it differs
    import sd.models.lpips
    monkeypatch.setattr(sd.models.lpips, "SHIFT", torch.zeros(3))
    monkeypatch.setattr(sd.models.lpips, "SCALE", torch.ones(3))
    with torch.no_grad():
        assert ((ours(x, y) - want).abs().max() / want.abs().max()).item() > 1e-2


def test_lpips_files_are_checked_by_name(files, tmp_path):
    ref, vgg, lin = files
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "lins.pth")
    with pytest.raises(CheckpointError, match="missing lin1.model.1.weight, lin2.model.1.weight"):
        load_lpips(vgg, tmp_path / "lins.pth")
    part = torch.load(vgg, weights_only=True)
    del part["features.28.weight"]
    torch.save(part, tmp_path / "cut.pth")
    with pytest.raises(CheckpointError, match="missing \\(1\\): features.28.weight"):
        load_lpips(tmp_path / "cut.pth", lin)
    torch.save({"x": torch.zeros(1)}, tmp_path / "pickled.pth", _use_new_zipfile_serialization=False)
    import pickle
    (tmp_path / "evil.pth").write_bytes(pickle.dumps(print))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_lpips(tmp_path / "evil.pth", lin)


# ---- LPIPS as the distillation loss -------------------------------------------------------------------------

def random_lpips_files(tmp_path):
    """LPIPS files in the real layouts with random weights (no package needed): torchvision's features.N.* and
    the lpips package's lin{l}.model.1.weight (non-negative, as LPIPS's learned weights are)."""
    from sd.models.lpips import CHANNELS, LPIPS
    torch.manual_seed(0)
    net = LPIPS()
    torch.save({f"features.{k.split('.', 1)[1]}": v for k, v in net.state_dict().items() if k.startswith("features.")},
               tmp_path / "vgg16.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS)}, tmp_path / "lin.pth")
    return tmp_path / "vgg16.pth", tmp_path / "lin.pth"


def test_the_distillation_loss_is_lpips_of_the_decoded_latents(tmp_path):
    from sd.models.vae import VAE
    from sd.training import objectives
    vgg, lin = random_lpips_files(tmp_path)
    lp = load_lpips(vgg, lin)
    torch.manual_seed(1)
    vae = VAE(dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8)).eval().requires_grad_(False)
    d = objectives.lpips_distance(lp, vae)
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(2, 4, 16, 16, generator=g, requires_grad=True), torch.randn(2, 4, 16, 16, generator=g)
    want = lp(vae.decode(pred / vae.scaling_factor), vae.decode(target / vae.scaling_factor)).mean()
    got = d(pred, target)
    assert torch.allclose(got, want, rtol=1e-6)
    (grad_ckpt,) = torch.autograd.grad(got, pred)
    (grad_plain,) = torch.autograd.grad(want, pred)
    assert torch.allclose(grad_ckpt, grad_plain, rtol=1e-5, atol=1e-8)       # checkpointing changes no number
    both = objectives.resolve_loss("l2+0.5*lpips", d)(pred, target)
    assert torch.allclose(both, objectives.mse(pred, target) + 0.5 * want, rtol=1e-6)
    assert torch.allclose(objectives.resolve_loss("lpips", d)(pred, target), want, rtol=1e-6)
    for bad, message in (("l1", "unknown loss 'l1'"), ("l2+x*lpips", "unknown loss"),
                         ("lpips", "needs LPIPS's weights")):
        with pytest.raises(ValueError, match=message):
            objectives.resolve_loss(bad)


def test_sd_reflow_distill_with_lpips(reflow_folder, reflow_data, tmp_path):
    """`sd.reflow distill --loss l2+0.5*lpips` on the tiny folder: runs, saves, and asks for the files by name."""
    import subprocess
    from tests.sd_training import ENV, TRAIN
    from tests.conftest import ROOT
    vgg, lin = random_lpips_files(tmp_path)
    base = [sys.executable, "-m", "sd.reflow", "distill", "--init", str(reflow_folder), "--data", str(reflow_data / "t"), *TRAIN]
    r = subprocess.run([*base, "--out", str(tmp_path / "run"), "--loss", "l2+0.5*lpips", "--lpips-vgg", str(vgg),
                        "--lpips-lin", str(lin)], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "step-0000003.safetensors").exists()
    r = subprocess.run([*base, "--out", str(tmp_path / "no"), "--loss", "lpips"], capture_output=True, text=True,
                       env=ENV, cwd=ROOT)
    assert r.returncode == 2 and "--loss lpips needs --lpips-vgg FILE" in r.stderr
    assert not (tmp_path / "no").exists()


def test_the_mini_fast_run_distils_with_lpips(tmp_path, capsys):
    """`python -m sd.mini --fast --distill-loss l2+0.5*lpips`: the student's stage trains on LPIPS of the 16x16
    images (random LPIPS weights without files, said so); the run is still the fast one, recorded as such."""
    import json
    from sd.mini.__main__ import main
    from sd.training.trainer import latest_checkpoint, read_checkpoint
    vgg, lin = random_lpips_files(tmp_path)
    assert main(["--fast", "--out", str(tmp_path / "bad"), "--distill-loss", "lpips", "--lpips-vgg", str(vgg)]) == 2
    assert "give both --lpips-vgg and --lpips-lin" in capsys.readouterr().err
    assert main(["--fast", "--out", str(tmp_path / "bad"), "--distill-loss", "l1"]) == 2
    assert "unknown loss 'l1'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["--fast", "--out", str(tmp_path / "m"), "--distill-loss", "l2+0.5*lpips", "--lpips-vgg", str(vgg),
                 "--lpips-lin", str(lin)]) == 0
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["mode"] == "fast" and m["config"]["distill_loss"] == "l2+0.5*lpips"
    assert read_checkpoint(latest_checkpoint(tmp_path / "m" / "student"))[1]["config"]["loss"] == "l2+0.5*lpips"
    assert "distilled 2-RF, 1 step" in m
