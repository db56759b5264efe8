"""Seconds per part of a generation (text encoder, each step, VAE), for the pipelines' Output.seconds."""
import time
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm


class Timer:
    """`with timer("vae"): ...` records a part; `timer.step` is the samplers' callback (one time per step and a
    progress bar). On CUDA each time waits for the device, so it is the part's, not its launch's."""

    def __init__(self, device, steps, desc, progress=True):
        self.device, self.seconds = device, {"steps": []}
        self.bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
        self.last = None

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, part):
        start = time.perf_counter()
        yield
        self.sync()
        self.seconds[part] = time.perf_counter() - start

    def start_steps(self):
        self.last = time.perf_counter()

    def step(self, i, x):
        self.sync()
        now = time.perf_counter()
        self.seconds["steps"].append(now - self.last)
        self.last = now
        self.bar.update()

    def close(self):
        self.bar.close()
        return self.seconds
