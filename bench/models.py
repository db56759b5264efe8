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
    (the byte-level vocabulary): transformers 5.17's tokenizers reject one (found on the first GPU lease)."""
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
