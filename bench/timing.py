"""The benches' clock: the median wall time of a call (after one warm-up, CUDA synchronised), and the line that
names the machine a table was measured on."""
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


def machine(dev):
    """The device's name (a GPU's, or the CPU's thread count) and torch's version, for a table's heading."""
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return f"{name}, torch {torch.__version__}"
