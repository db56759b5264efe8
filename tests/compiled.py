"""The compiled fused Euler step against the eager one, shared by the CPU test (tests/test_pipeline.py) and the
CUDA one (tests/test_cuda.py)."""
import torch

from sd.sampling.euler import cfg_euler_step, compile_step


def check_compiled_step(device, sizes=(8,)):
    """The compiled step against the eager one over many step sizes, guidances, batch sizes, image
    sizes and dtypes: within 2 ulps of the largest value (the fused kernel rounds once less), same dtype."""
    step, g = compile_step(), torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for b in (1, 2, 3):
            for w, dt in ((1.0, 1.0), (1.5, 0.25), (3.0, 0.5), (7.5, 1 / 3), (2.0, 0.125)):
                for side in sizes:
                    cfg = w > 1
                    lat = torch.randn(b, 4, side, side, generator=g).to(device, dtype)
                    v = torch.randn(b * (2 if cfg else 1), 4, side, side, generator=g).to(device, dtype)
                    out, ref = step(lat, v, w, dt, cfg), cfg_euler_step(lat, v, w, dt, cfg)
                    ulp = torch.finfo(dtype).eps * ref.float().abs().max().item()
                    assert out.dtype == dtype and (out.float() - ref.float()).abs().max().item() <= 2 * ulp
