"""A tiny SD-layout model folder saved by diffusers itself (model_index.json, unet/, vae/, text_encoder/,
tokenizer/ with a byte-level vocabulary, scheduler/): random weights, real file layout."""
import json

import torch

from sd.models.tokenizer import byte_vocab
from tests.test_sd_models import ref_unet, ref_vae


def byte_tokenizer(folder):
    """The byte-level vocabulary written to `folder` (vocab.json, merges.txt), and transformers'
    CLIPTokenizer reading it."""
    import transformers
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(byte_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))


def tiny_text_encoder(tok):
    """transformers' CLIPTextModel for that tokenizer: 2 layers of width 32 (weights from the global RNG)."""
    import transformers
    cfg = transformers.CLIPTextConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                                      hidden_act="quick_gelu", bos_token_id=512, eos_token_id=513, pad_token_id=513)
    return transformers.CLIPTextModel(cfg).eval()


def tiny_sd_folder(root):
    import diffusers
    tok = byte_tokenizer(root)
    torch.manual_seed(3)
    vae = ref_vae()
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=tiny_text_encoder(tok), tokenizer=tok, unet=ref_unet(),
        scheduler=diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                          clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "model")
    return root / "model"
