"""fp16 and bf16 on the CPU: our UNet, VAE and text encoder against diffusers / transformers run in the
same dtype, and the whole pipeline in bf16 against InstaFlow's loop on diffusers modules.

Tolerance, and why: both sides round every intermediate to the half dtype, so they may differ by a
few roundings wherever they order an operation differently (the VAE's attention reshapes do). We allow
2 ulps of the output's largest value, 2 * eps(dtype) * max|ref|, and require that our half-precision
output is no further from the fp32 result than the reference's own half-precision output is (times
1.25, plus one ulp). Measured on the tiny configs below: UNet and text encoder bit-equal to the
reference in both dtypes; the VAE within 1.5e-3 (fp16) and 1.2e-2 (bf16) at max|ref| = 1.6, where
the reference's own fp16 / bf16 error against fp32 is 1.8e-3 / 1.6e-2. A model that ignored the dtype
(computing in fp32 and casting at the end) would be 3e-3 away from the fp16 reference and fail.
"""
import copy

import numpy as np
import pytest
import torch

from sd.models.clip import TextEncoder
from sd.checkpoints.loaders import _strip_text
from sd.sampling.pipeline import load_pipeline
from sd.models.vae import VAE
from tests.reference import instaflow_reference
from tests.sd_oracles import UNET4_CFG, load_unet_from, ref_text, ref_unet, ref_vae, unet_inputs

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
DTYPES = [torch.float16, torch.bfloat16]


def check_half(ours_fn, ref_fn, ref32, dtype):
    """ours and the reference in `dtype`, compared with each other and with the fp32 result."""
    with torch.no_grad():
        ours, ref = ours_fn().float(), ref_fn().float()
    ulp = torch.finfo(dtype).eps * ref32.abs().max().item()
    assert (ours - ref).abs().max().item() <= 2 * ulp
    assert (ours - ref32).abs().max().item() <= 1.25 * (ref - ref32).abs().max().item() + ulp


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_unet_in_half_precision(dtype):
    ref = ref_unet(UNET4_CFG)
    ours = load_unet_from(ref)
    x, t, c = unet_inputs(UNET4_CFG)
    with torch.no_grad():
        ref32 = ref(x, t, c).sample
    ref.to(dtype), ours.to(dtype)
    xh, ch = x.to(dtype), c.to(dtype)
    check_half(lambda: ours(xh, t, ch), lambda: ref(xh, t, ch).sample, ref32, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_vae_in_half_precision(dtype):
    ref = ref_vae()
    ours = VAE(dict(ref.config))
    ours.load_state_dict(ref.state_dict())
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        enc32, dec32 = ref.encode(img).latent_dist.mean, ref.decode(z).sample
    ref.to(dtype), ours.eval().to(dtype)
    imgh, zh = img.to(dtype), z.to(dtype)
    check_half(lambda: ours.encode(imgh), lambda: ref.encode(imgh).latent_dist.mean, enc32, dtype)
    check_half(lambda: ours.decode(zh), lambda: ref.decode(zh).sample, dec32, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp16", "bf16"])
def test_text_encoder_in_half_precision(dtype):
    ref = ref_text()
    c = ref.config
    ours = TextEncoder(dict(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads))
    ours.load_state_dict(_strip_text(ref.state_dict()))
    ids = torch.randint(0, 1000, (3, 77), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref32 = ref(ids).last_hidden_state
    ref.to(dtype), ours.eval().to(dtype)
    check_half(lambda: ours(ids), lambda: ref(ids).last_hidden_state, ref32, dtype)


def test_pipeline_in_bf16_equals_the_reference_loop_in_bf16(tmp_path):
    """bf16 end to end (text encoder, 2 Euler steps with CFG, VAE): latents within 2 bf16 ulps of
    their largest value, images within 2 grey levels of the same loop on diffusers modules in bf16."""
    from tests.tiny_sd import tiny_sd_folder
    root = tiny_sd_folder(tmp_path)
    ref = diffusers.StableDiffusionPipeline.from_pretrained(root, safety_checker=None)
    unet, vae, text = (copy.deepcopy(m).to(torch.bfloat16).eval() for m in (ref.unet, ref.vae, ref.text_encoder))
    pipe = load_pipeline(root, dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16
    prompts, negatives = ["a red circle at the top left", "a blue square"], ["blurry", ""]
    with torch.no_grad():
        ref_lat, ref_img = instaflow_reference(unet, vae, text, ref.tokenizer, prompts, negatives, 2, 3.0, 11, 32)
        out = pipe(prompts, negatives, steps=2, guidance=3.0, seed=11, height=32, width=32, return_latents=True,
                   progress=False)
    ulp = torch.finfo(torch.bfloat16).eps * ref_lat.float().abs().max().item()
    assert out.latents.dtype == torch.bfloat16
    assert (out.latents.float() - ref_lat.float()).abs().max().item() <= 2 * ulp
    assert np.abs(out.images.astype(int) - ref_img.astype(int)).max() <= 2
