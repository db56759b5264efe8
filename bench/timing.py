"""The median wall time of a call, after one warm-up, synchronising CUDA around it."""
import statistics
import time

import torch


def median_time(fn, repeats, device):
    fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)
