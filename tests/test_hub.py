"""Model ids ("owner/name") found in a local Hugging Face cache built here in the real layout
(refs/main -> snapshots/<commit>/ whose files link into blobs/), with no hub library and no network;
`--sampler auto` and `sd.reflow generate` without --sampler, which read the folder's scheduler."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sd.checkpoints.loaders import CheckpointError, load_unet
from sd.sampling.pipeline import load_pipeline
from sd.reflow import main as reflow_main
from tests.conftest import ROOT

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """HF_HOME/hub/models--XCLiu--tiny_instaflow with the tiny SD folder as revision main (commit
    COMMIT), and a second revision under the tag "v2" (another commit, same files)."""
    from tests.tiny_sd import tiny_sd_folder
    root = tmp_path_factory.mktemp("hf")
    folder = tiny_sd_folder(root / "src")
    repo = root / "home" / "hub" / "models--XCLiu--tiny_instaflow"
    for commit in (COMMIT, "f" * 40):
        for f in folder.rglob("*"):
            if f.is_file():
                data = f.read_bytes()
                blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
                blob.parent.mkdir(parents=True, exist_ok=True)
                blob.write_bytes(data)
                link = repo / "snapshots" / commit / f.relative_to(folder)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "refs" / "v2").write_text("f" * 40)
    return root / "home", folder


def test_a_model_id_loads_the_snapshot_of_main(cache, monkeypatch):
    home, folder = cache
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    pipe = load_pipeline("XCLiu/tiny_instaflow")
    assert pipe.path == home / "hub" / "models--XCLiu--tiny_instaflow" / "snapshots" / COMMIT
    ref = load_pipeline(folder)
    kw = dict(steps=2, guidance=2.0, seed=3, height=16, width=16, progress=False)
    assert np.array_equal(pipe("a red circle", **kw).images, ref("a red circle", **kw).images)
    unet = load_unet("XCLiu/tiny_instaflow@v2")
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), ref.unet.state_dict().values()))
    assert load_pipeline(f"XCLiu/tiny_instaflow@{COMMIT}").path.name == COMMIT        # a commit hash


def test_hf_hub_cache_wins_and_a_missing_id_says_where_it_looked(cache, monkeypatch, tmp_path):
    home, _ = cache
    monkeypatch.setenv("HF_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    assert load_pipeline("XCLiu/tiny_instaflow").path.parent.name == "snapshots"
    with pytest.raises(CheckpointError) as e:
        load_pipeline("XCLiu/instaflow_0_9B_from_sd_1_5")
    msg = str(e.value)
    assert str(home / "hub" / "models--XCLiu--instaflow_0_9B_from_sd_1_5" / "refs" / "main") in msg
    assert "huggingface-cli download XCLiu/instaflow_0_9B_from_sd_1_5" in msg
    with pytest.raises(CheckpointError, match="revision nope"):
        load_pipeline("XCLiu/tiny_instaflow@nope")
    with pytest.raises(CheckpointError, match="no such file or folder$"):
        load_pipeline(tmp_path / "a" / "b" / "c")                                 # not an id: a plain message


def test_cli_with_an_id_and_sampler_auto(cache, tmp_path):
    """The tiny folder carries diffusers' DDIMScheduler config: --sampler auto picks ddim."""
    home, _ = cache
    env = {**os.environ, "HF_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-m", "sd.generate", "--model", "XCLiu/tiny_instaflow", "--prompt", "a cat",
                        "--steps", "2", "--height", "16", "--width", "16", "--sampler", "auto", "--out",
                        str(tmp_path / "a.png")], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("ddim: text encoder") and (tmp_path / "a.png").exists()
    r = subprocess.run([sys.executable, "-m", "sd.generate", "--model", "XCLiu/not_downloaded", "--prompt", "a cat"],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 2 and "huggingface-cli download XCLiu/not_downloaded" in r.stderr


def test_reflow_generate_without_sampler_uses_the_folders_scheduler(cache, tmp_path, monkeypatch):
    home, _ = cache
    monkeypatch.setenv("HF_HOME", str(home))
    (tmp_path / "p.txt").write_text("a cat\na dog\n")
    reflow_main(["generate", "--teacher", "XCLiu/tiny_instaflow", "--prompts", str(tmp_path / "p.txt"), "--out",
                 str(tmp_path / "t"), "--steps", "2", "--height", "16", "--width", "16", "--shard-size", "2"])
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["sampler"] == "ddim"
