"""What the SD training tests share: tiny networks and data for the trainer, the `python -m sd.reflow` command
run in a subprocess, and the arguments of a tiny triplet run (the `reflow_folder` / `reflow_data` fixtures of
tests/conftest.py use them)."""
import os
import subprocess
import sys

import torch

from sd.models.clip import TextEncoder
from sd.models.unet import UNet
from tests.conftest import ROOT

PROMPTS = ["a red circle at the top left", "a blue square", "a cat", "a green circle at the bottom right", "yellow",
           "two dogs", "a tree on a hill", "the sea"]
GEN = ["--steps", "2", "--guidance", "2.0", "--sampler", "euler", "--height", "16", "--width", "16",
       "--shard-size", "2", "--batch-size", "2", "--seed", "5"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


TRAIN = ["--iters", "3", "--batch-size", "4", "--lr", "1e-3", "--save-every", "3", "--cfg-dropout", "0.25"]


def cli(*args, env=ENV):
    return subprocess.run([sys.executable, "-m", "sd.reflow", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT)


def tiny_models(seed=0):
    """A tiny UNet (random init from `seed`) and a frozen tiny text encoder (always the same)."""
    torch.manual_seed(0)
    text = TextEncoder(dict(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=6))
    torch.manual_seed(seed)
    unet = UNet(dict(in_channels=4, out_channels=4, block_out_channels=[16, 32], layers_per_block=1,
                     down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                     up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=2, cross_attention_dim=16,
                     norm_num_groups=8))
    return unet, text


def tiny_data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"noise": torch.randn(n, 4, 8, 8, generator=g), "latents": torch.randn(n, 4, 8, 8, generator=g) * 0.5 + 1,
            "ids": torch.randint(0, 19, (n, 6), generator=g)}


def max_state_diff(a, b):
    """The largest difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)
