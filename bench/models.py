"""SD 1.5-shaped models with random weights for the benchmarks: ours as a Pipeline, and the same
weights in diffusers / transformers modules (the reference) when those libraries are installed.

    random_sd("full" | "tiny", device, dtype) -> (Pipeline, Reference or None)
"""
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sd.models.clip import SD15_TEXT, TextEncoder
from sd.sampling.pipeline import Pipeline
from sd.models.tokenizer import Tokenizer, TokenizerError, byte_vocab, load_tokenizer
from sd.models.unet import SD15_UNET, UNet
from sd.models.vae import SD15_VAE, VAE

VAE_TYPES = dict(down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
CONFIGS = {
    "full": (SD15_UNET, {**SD15_VAE, **VAE_TYPES}, SD15_TEXT),
    # SD 1.5's layout (4 levels, the same block types) at tiny widths: for --smoke runs on a CPU
    "tiny": ({**SD15_UNET, "block_out_channels": [32, 32, 64, 64], "attention_head_dim": 2, "cross_attention_dim": 32,
              "norm_num_groups": 8},
             {**SD15_VAE, **VAE_TYPES, "block_out_channels": [16, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8},
             {**SD15_TEXT, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}),
}


@dataclass
class Reference:
    unet: torch.nn.Module
    vae: torch.nn.Module
    text: torch.nn.Module
    tokenizer: object


def tokenizer():
    """OpenAI's CLIP vocabulary when a wheel that ships it is installed, else a byte-level one (every
    byte a token: the ids differ from CLIP's, the shapes and the cost do not)."""
    try:
        return load_tokenizer()
    except TokenizerError:
        return Tokenizer(byte_vocab(), [])


def merges_text(tok):
    """The merges.txt of `tok`: a header, then one merge per line. No blank line when there are no merges
    (the byte-level vocabulary): transformers' tokenizers reject one."""
    return "".join(line + "\n" for line in ["#version: 0.2"] + [" ".join(m) for m in sorted(tok.ranks, key=tok.ranks.get)])


def reference_tokenizer(tok):
    """transformers' CLIPTokenizer with the same vocabulary and merges as our tokenizer `tok`."""
    import transformers
    with tempfile.TemporaryDirectory() as d:
        Path(d, "vocab.json").write_text(json.dumps(tok.vocab))
        Path(d, "merges.txt").write_text(merges_text(tok))
        return transformers.CLIPTokenizer(str(Path(d, "vocab.json")), str(Path(d, "merges.txt")))


def random_sd(size, device, dtype, reference=True, seed=0):
    """Our pipeline with random weights (built on `device`), and the reference modules holding the
    same weights (None when diffusers or transformers is missing, or reference=False)."""
    unet_cfg, vae_cfg, text_cfg = CONFIGS[size]
    torch.manual_seed(seed)
    with torch.device(device):
        unet, vae, text = UNet(unet_cfg), VAE(vae_cfg), TextEncoder(text_cfg)
    for m in (unet, vae, text):
        m.to(dtype).eval()
    tok = tokenizer()
    pipe = Pipeline(unet, vae, text, tok)
    if not reference:
        return pipe, None
    try:
        import diffusers
        import transformers
    except ImportError:
        return pipe, None
    with torch.device(device):
        ref_unet = diffusers.UNet2DConditionModel(**{k: v for k, v in unet_cfg.items()})
        ref_vae = diffusers.AutoencoderKL(**{k: vae_cfg[k] for k in ("block_out_channels", "layers_per_block",
                                                                      "latent_channels", "norm_num_groups",
                                                                      "down_block_types", "up_block_types")})
        ref_text = transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_cfg))
    ref_unet.load_state_dict(unet.state_dict())
    ref_vae.load_state_dict(vae.state_dict())
    prefix = "text_model." if any(k.startswith("text_model.") for k in ref_text.state_dict()) else ""
    sd = {prefix + k: v for k, v in text.state_dict().items()}
    missing, unexpected = ref_text.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    refs = [m.to(dtype).eval() for m in (ref_unet, ref_vae, ref_text)]
    return pipe, Reference(*refs, reference_tokenizer(tok))


def random_weights(module, device, dtype, seed=0):
    """A module built on the meta device, given random weights made directly in `dtype` on `device`
    (N(0, 1 / fan_in): activations stay finite through deep stacks); returns its state dict too."""
    g = torch.Generator().manual_seed(seed)
    weights = {k: (torch.randn(v.shape, generator=g) / max(1, v[0].numel()) ** 0.5).to(device, dtype)
               for k, v in module.state_dict().items()}
    module.load_state_dict(weights, assign=True)
    return module.eval(), weights


# the refiner's layout at tiny widths (for --smoke runs on a CPU)
TINY_REFINER = (dict(block_out_channels=[32, 32, 64, 64], layers_per_block=1,
                     down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                     up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                     attention_head_dim=[2, 2, 4, 4], transformer_layers_per_block=2, cross_attention_dim=32,
                     use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=16 + 5 * 8, norm_num_groups=8),
                dict(block_out_channels=[16, 16, 32, 32], layers_per_block=1, norm_num_groups=8),
                dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, projection_dim=16))


def random_refiner(size, device, dtype, seed=0):
    """The SDXL Refiner with random weights ("full": its real configuration, 2.3 B parameters in the UNet; "tiny"),
    the UNet and text encoder in `dtype`, the VAE in float32 (SDXL's force_upcast), tokenizer_2 padding with "!"."""
    from sd.models.clip import SDXL_TEXT_2, TextEncoderWithProjection
    from sd.models.unet import SDXL_REFINER_UNET, UNet
    from sd.sampling.refiner import Refiner
    unet_cfg, vae_cfg, text_cfg = ((SDXL_REFINER_UNET, {}, {}) if size == "full" else TINY_REFINER)
    tok = tokenizer()
    tok2 = Tokenizer(tok.vocab, sorted(tok.ranks, key=tok.ranks.get), pad_token="!")
    with torch.device("meta"):
        unet, vae = UNet(unet_cfg), VAE({**SD15_VAE, "scaling_factor": 0.13025, "force_upcast": True, **vae_cfg})
        text = TextEncoderWithProjection({**SDXL_TEXT_2, "vocab_size": len(tok.vocab), **text_cfg})
    unet = random_weights(unet, device, dtype, seed)[0]
    vae = random_weights(vae, device, torch.float32, seed + 1)[0]
    text = random_weights(text, device, dtype, seed + 2)[0]
    return Refiner(unet, vae, text, tok2)
