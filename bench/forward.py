"""Forward time of the full-size SD 1.5 UNet (32x32 latents), VAE decode (32x32 latents -> 256x256
image) and ControlNet (32x32 latents + a 256x256 control image; then the UNet taking its residuals),
and of the SDXL Refiner's UNet (2.3 B parameters, 32x32 latents, with its added conditioning), ours
against diffusers with the same random weights and inputs (the ControlNet's zero convs random too, so
that its residuals matter), in the same run, in each dtype asked for.

    python bench/forward.py [--repeats 5] [--dtypes fp32 bf16] [--device cpu] [--parts sd15 refiner]
                                                                      (needs requirements-dev.txt)
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.models import random_sd, random_weights  # noqa: E402
from bench.timing import machine, median_time  # noqa: E402
from sd.controlnet import ControlNet  # noqa: E402
from sd.controlnet.model import SD15_CONTROLNET  # noqa: E402
from sd.generate import DTYPES  # noqa: E402


def random_controlnet(dev, seed=2):
    """SD 1.5's ControlNet (cross-attention 768) with random weights, and diffusers' with the same ones."""
    import diffusers
    ours = ControlNet({**SD15_CONTROLNET, "cross_attention_dim": 768}).to(dev).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_((torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5).to(dev))
    ref = diffusers.ControlNetModel(**{k: v for k, v in ours.config.items() if k != "sample_size"}).to(dev).eval()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def random_refiner_unet(dev, dtype, seed=3):
    """The SDXL Refiner's UNet (full size) with random weights made in `dtype`, and diffusers' module holding
    the very same tensors (assigned, not copied: one copy of the 2.3 B parameters in memory)."""
    import diffusers
    from sd.models.unet import SDXL_REFINER_UNET, UNet
    with torch.device("meta"):
        ours, ref = UNet(SDXL_REFINER_UNET), diffusers.UNet2DConditionModel(**SDXL_REFINER_UNET)
    ours, weights = random_weights(ours, dev, dtype, seed)
    ref.load_state_dict(weights, assign=True)
    return ours, ref.eval()


def refiner_rows(args, dev):
    """The SDXL Refiner's UNet at 32x32 latents with CFG's batch of 2 (context 1280 wide, pooled text and 5 time ids)."""
    g = torch.Generator().manual_seed(4)
    x, ctx = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 77, 1280, generator=g)
    pooled, ids = torch.randn(2, 1280, generator=g), torch.tensor([[1024.0, 1024, 0, 0, 2.5], [1024.0, 1024, 0, 0, 6.0]])
    t = torch.tensor([500.0], device=dev)

    @torch.inference_mode()
    def row(dt):                                    # one dtype's models live only while its row is measured
        ours, ref = random_refiner_unet(dev, DTYPES[dt])
        a = [v.to(dev, DTYPES[dt]) for v in (x, ctx, pooled, ids)]

        def theirs():
            return ref(a[0], t, a[1], added_cond_kwargs={"text_embeds": a[2], "time_ids": a[3]}).sample

        def mine():
            return ours(a[0], t, a[1], added=(a[2], a[3]))
        diff = (mine().float() - theirs().float()).abs().max().item()
        r, o = median_time(theirs, args.repeats, dev), median_time(mine, args.repeats, dev)
        print(f"| SDXL Refiner UNet, 2x4x32x32 | {dt} | {o:.3f} | {r:.3f} | {o / r:.2f} | {diff:.1e} |", flush=True)
    for dt in args.dtypes:
        row(dt)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--parts", nargs="+", default=["sd15", "refiner"], choices=["sd15", "refiner"])
    args = p.parse_args()
    dev = torch.device(args.device)
    print(f"\n{machine(dev)}, median of {args.repeats} runs\n")
    print("| | dtype | ours (s) | diffusers (s) | ratio ours / diffusers | max abs diff |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    if "sd15" in args.parts:
        sd15_rows(args, dev)                        # its models are freed on return: room for the refiner's
    if "refiner" in args.parts:
        refiner_rows(args, dev)


def sd15_rows(args, dev):
    pipe, ref = random_sd("full", dev, torch.float32)
    cn, ref_cn = random_controlnet(dev)
    g = torch.Generator().manual_seed(1)
    x32, ctx32 = torch.randn(1, 4, 32, 32, generator=g).to(dev), torch.randn(1, 77, 768, generator=g).to(dev)
    cond32 = torch.rand(1, 3, 256, 256, generator=g).to(dev)
    t = torch.tensor([500.0], device=dev)
    with torch.inference_mode():
        for dt in args.dtypes:
            dtype = DTYPES[dt]
            for m in (pipe.unet, pipe.vae, ref.unet, ref.vae, cn, ref_cn):
                m.to(dtype)
            x, ctx, cond = x32.to(dtype), ctx32.to(dtype), cond32.to(dtype)

            def controlled(unet, net, theirs):
                down, mid = net(x, t, ctx, cond) if not theirs else \
                    net(x, t, encoder_hidden_states=ctx, controlnet_cond=cond, return_dict=False)
                return unet(x, t, ctx, down_residuals=down, mid_residual=mid) if not theirs else \
                    unet(x, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
            for label, ours, theirs in (("UNet forward, 1x4x32x32", lambda: pipe.unet(x, t, ctx),
                                         lambda: ref.unet(x, t, ctx).sample),
                                        ("VAE decode, 1x4x32x32 -> 256x256", lambda: pipe.vae.decode(x),
                                         lambda: ref.vae.decode(x).sample),
                                        ("ControlNet, 1x4x32x32 + 256x256 control (mid residual)",
                                         lambda: cn(x, t, ctx, cond)[1],
                                         lambda: ref_cn(x, t, ctx, cond, return_dict=False)[1]),
                                        ("UNet + ControlNet residuals", lambda: controlled(pipe.unet, cn, False),
                                         lambda: controlled(ref.unet, ref_cn, True))):
                diff = (ours().float() - theirs().float()).abs().max().item()
                r, o = median_time(theirs, args.repeats, dev), median_time(ours, args.repeats, dev)
                print(f"| {label} | {dt} | {o:.3f} | {r:.3f} | {o / r:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
