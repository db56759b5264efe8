"""InstaFlow sampling speed: the fused Euler update, and end-to-end one-step text-to-image with a
full-size SD 1.5-shaped model (random weights) against InstaFlow's loop on diffusers modules.

    python bench/pipeline.py [--sizes 256 512] [--repeats 3] [--device cpu] [--dtype fp32] [--compile]
    (needs requirements-dev.txt and OpenAI's vocabulary, see the README)
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.timing import median_time  # noqa: E402
from sd.clip import SD15_TEXT, TextEncoder  # noqa: E402
from sd.euler import cfg_euler_step, fused_step  # noqa: E402
from sd.pipeline import Pipeline  # noqa: E402
from sd.tokenizer import load_tokenizer  # noqa: E402
from sd.unet import SD15_UNET, UNet  # noqa: E402
from sd.vae import SD15_VAE, VAE  # noqa: E402
from tests.reference import instaflow_reference  # noqa: E402


def main():
    import diffusers
    import transformers
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="*", default=[256, 512], help="none: only the update benchmark")
    p.add_argument("--update-iters", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--compile", action="store_true", help="also time our pipeline with compile=True")
    args = p.parse_args()
    dev, dtype = torch.device(args.device), {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, {args.dtype}, torch {torch.__version__}, median of {args.repeats}\n")

    # 1. the update alone, at SD's shape with CFG: eager (several kernels) vs torch.compile (one)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 4, 64, 64, generator=g).to(dev, dtype)
    v = torch.randn(2, 4, 64, 64, generator=g).to(dev, dtype)
    fused = fused_step(compile=True)
    n = args.update_iters
    eager_t = median_time(lambda: [cfg_euler_step(lat, v, 7.5, 1.0, True) for _ in range(n)], args.repeats, dev) / n
    fused_t = median_time(lambda: [fused(lat, v, 7.5, 1.0, True) for _ in range(n)], args.repeats, dev) / n
    print("| CFG + Euler update, 1x4x64x64 | eager (us) | compiled (us) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| per step | {eager_t * 1e6:.1f} | {fused_t * 1e6:.1f} | {fused_t / eager_t:.2f} |\n")
    if not args.sizes:
        return

    # 2. one step, text to image, full-size random model; same weights for both
    torch.manual_seed(0)
    ref_unet = diffusers.UNet2DConditionModel(**SD15_UNET).to(dev, dtype).eval()
    ref_vae = diffusers.AutoencoderKL(block_out_channels=SD15_VAE["block_out_channels"], layers_per_block=2,
                                      down_block_types=["DownEncoderBlock2D"] * 4,
                                      up_block_types=["UpDecoderBlock2D"] * 4).to(dev, dtype).eval()
    ref_text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**SD15_TEXT)).to(dev, dtype).eval()
    unet, vae, text = UNet(dict(ref_unet.config)), VAE(dict(ref_vae.config)), TextEncoder()
    for ours, ref in ((unet, ref_unet), (vae, ref_vae), (text, ref_text)):
        ours.load_state_dict(ref.state_dict())
        ours.to(dev, dtype).eval()
    tok = load_tokenizer()
    with tempfile.TemporaryDirectory() as d:
        Path(d, "vocab.json").write_text(json.dumps(tok.vocab))
        merges = sorted(tok.ranks, key=tok.ranks.get)
        Path(d, "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        ref_tok = transformers.CLIPTokenizer(str(Path(d, "vocab.json")), str(Path(d, "merges.txt")))
    pipe = Pipeline(unet, vae, text, tok)
    prompt = ["a hyper-realistic photo of a cute cat"]
    print("| one step, text to image | ours (s) | ours, compiled (s) | diffusers modules (s) | ratio ours / ref |"
          " ratio compiled / ref |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    with torch.inference_mode():
        for size in args.sizes:
            ref_t = median_time(lambda: instaflow_reference(ref_unet, ref_vae, ref_text, ref_tok, prompt, [""], 1, 1.0,
                                                            0, size), args.repeats, dev)
            ours_t = median_time(lambda: pipe(prompt, height=size, width=size, progress=False), args.repeats, dev)
            comp_t = (median_time(lambda: pipe(prompt, height=size, width=size, progress=False, compile=True),
                                  args.repeats, dev) if args.compile else float("nan"))
            print(f"| {size}x{size} | {ours_t:.3f} | {comp_t:.3f} | {ref_t:.3f} | {ours_t / ref_t:.2f} | "
                  f"{comp_t / ref_t:.2f} |")


if __name__ == "__main__":
    main()
