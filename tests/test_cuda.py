"""What only a GPU can check, marked `cuda` and skipped without one; bench/cuda_check.py runs them
(`pytest -m cuda`) beside its own checks and measurements."""
import numpy as np
import pytest
import torch

from sd.sampling.pipeline import load_pipeline
from sd.training.trainer import TrainConfig, latest_checkpoint, read_checkpoint, train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_fused_step_on_cuda_equals_eager():
    from tests.compiled import check_compiled_step
    check_compiled_step("cuda", sizes=(8, 64))


def test_pipeline_on_cuda_equals_the_cpu(tmp_path):
    pytest.importorskip("diffusers")                        # the tiny folder is saved by diffusers
    from tests.tiny_sd import tiny_sd_folder
    root = tiny_sd_folder(tmp_path)
    kw = dict(steps=2, guidance=2.0, seed=4, height=32, width=32, return_latents=True, progress=False)
    cpu = load_pipeline(root)("a red circle", **kw)
    gpu = load_pipeline(root, device="cuda")("a red circle", **kw)
    assert (gpu.latents.cpu() - cpu.latents).abs().max().item() <= 1e-3
    assert np.abs(gpu.images.astype(int) - cpu.images.astype(int)).max() <= 1


def test_fp16_training_keeps_and_resumes_its_loss_scale(tmp_path):
    from sd.mini import models
    g = torch.Generator().manual_seed(0)
    data = {"noise": torch.randn(8, 3, 16, 16, generator=g), "latents": torch.randn(8, 3, 16, 16, generator=g),
            "ids": torch.randint(0, 20, (8, 16), generator=g)}
    tok = models.tokenizer()
    empty = tok([""])
    cfg = TrainConfig(objective="reflow", iters=2, batch_size=4, lr=1e-3, precision="fp16", save_every=2)
    res = train(models.unet(), models.text_encoder(tok), data, cfg, tmp_path, empty, progress=False)
    assert all(np.isfinite(res["losses"]))
    scaler = read_checkpoint(latest_checkpoint(tmp_path))[1]["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler
    cfg.iters = 3
    res = train(models.unet(), models.text_encoder(tok), data, cfg, tmp_path, empty, progress=False)
    assert len(res["losses"]) == 1 and np.isfinite(res["losses"][0])
