"""One UNet step of the full-size SD 1.5 UNet (random weights) on the CPU in float32, bfloat16 and with int8 weights and
activations in its Linear layers (PyTorch's own dynamic quantisation, `torch.ao.quantization.quantize_dynamic`:
weights int8 per tensor, activations quantised on the fly per batch), at 32x32 and 64x64 latents (256² and 512²
images), in the same run. Prints the median time of each and the output's relative RMS difference from float32.

    python bench/int8_unet.py [--repeats 3] [--sizes 32 64]            about 3 minutes on 2 CPU cores

The convolutions stay in float32 (dynamic quantisation covers Linear layers only): the table says what share of
the weights that leaves out. On x86 PyTorch's dynamic Linear keeps activations in 7 bits (reduce_range). The
output difference is that of random weights: it says the kernels compute what they should, not what int8 does to a
trained model's images.
"""
import argparse
import copy
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.timing import machine, median_time  # noqa: E402
from sd.models.unet import SD15_UNET, UNet  # noqa: E402


def variants(unet):
    """name -> (module, input dtype): float32, bfloat16, int8 Linear layers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                       # torch.ao's deprecation notice
        int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(unet), {torch.nn.Linear}, dtype=torch.qint8)
    return {"float32": (unet, torch.float32), "bfloat16": (copy.deepcopy(unet).to(torch.bfloat16), torch.bfloat16),
            "int8 Linear (dynamic)": (int8, torch.float32)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    args = p.parse_args(argv)
    torch.manual_seed(0)
    unet = UNet(SD15_UNET).eval()
    linear = sum(m.weight.numel() for m in unet.modules() if isinstance(m, torch.nn.Linear))
    total = sum(p.numel() for p in unet.parameters())
    models, dev = variants(unet), torch.device("cpu")
    print(f"{machine(dev)}; Linear layers hold {linear / total:.0%} of the UNet's {total / 1e6:.0f} M parameters")
    print("\n| latents | weights | one UNet step (s) | ratio to float32 | relative RMS difference from float32 |")
    print("| --- | --- | ---: | ---: | ---: |")
    for size in args.sizes:
        g = torch.Generator().manual_seed(size)
        x, ctx = torch.randn(1, 4, size, size, generator=g), torch.randn(1, 77, 768, generator=g)
        t = torch.tensor([999.0])
        with torch.no_grad():
            ref = unet(x, t, ctx)
            base = None
            for name, (m, dtype) in models.items():
                def step(m=m, dtype=dtype):
                    return m(x.to(dtype), t, ctx.to(dtype))
                secs = median_time(step, args.repeats, dev)
                base = base or secs
                diff = ((step().float() - ref).pow(2).mean() / ref.pow(2).mean()).sqrt().item()
                print(f"| {size}x{size} | {name} | {secs:.2f} | {secs / base:.2f} | {diff:.4f} |", flush=True)


if __name__ == "__main__":
    main()
