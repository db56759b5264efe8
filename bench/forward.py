"""Forward time of the full-size SD 1.5 UNet (32x32 latents) and VAE decode (32x32 latents ->
256x256 image), ours against diffusers with the same random weights and inputs, in the same run.

    python bench/forward.py [--repeats 5] [--dtype fp32] [--device cpu]   (needs requirements-dev.txt)
"""
import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.timing import median_time  # noqa: E402
from sd.unet import SD15_UNET, UNet  # noqa: E402
from sd.vae import SD15_VAE, VAE  # noqa: E402


def main():
    import diffusers
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    dev = torch.device(args.device)
    torch.manual_seed(0)
    ref_unet = diffusers.UNet2DConditionModel(**SD15_UNET).to(dev, dtype).eval()
    ours_unet = UNet(dict(ref_unet.config)).to(dev, dtype).eval()
    ours_unet.load_state_dict(ref_unet.state_dict())
    vae_cfg = {k: SD15_VAE[k] for k in ("block_out_channels", "layers_per_block", "latent_channels")}
    ref_vae = diffusers.AutoencoderKL(**vae_cfg, down_block_types=["DownEncoderBlock2D"] * 4,
                                      up_block_types=["UpDecoderBlock2D"] * 4).to(dev, dtype).eval()
    ours_vae = VAE(dict(ref_vae.config)).to(dev, dtype).eval()
    ours_vae.load_state_dict(ref_vae.state_dict())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 32, 32, generator=g).to(dev, dtype)
    t = torch.tensor([500.0], device=dev)
    ctx = torch.randn(1, 77, 768, generator=g).to(dev, dtype)
    rows = []
    with torch.inference_mode():
        diff = (ours_unet(x, t, ctx) - ref_unet(x, t, ctx).sample).abs().max().item()
        r = median_time(lambda: ref_unet(x, t, ctx), args.repeats, dev)
        o = median_time(lambda: ours_unet(x, t, ctx), args.repeats, dev)
        rows.append(("UNet forward, 1x4x32x32", o, r, diff))
        diff = (ours_vae.decode(x) - ref_vae.decode(x).sample).abs().max().item()
        r = median_time(lambda: ref_vae.decode(x), args.repeats, dev)
        o = median_time(lambda: ours_vae.decode(x), args.repeats, dev)
        rows.append(("VAE decode, 1x4x32x32 -> 256x256", o, r, diff))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{name}, {args.dtype}, torch {torch.__version__}, median of {args.repeats} runs\n")
    print("| | ours (s) | diffusers (s) | ratio ours / diffusers | max abs diff |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, o, r, d in rows:
        print(f"| {label} | {o:.3f} | {r:.3f} | {o / r:.2f} | {d:.1e} |")


if __name__ == "__main__":
    main()
