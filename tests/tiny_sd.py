"""A tiny SD-layout model folder saved by diffusers itself (model_index.json, unet/, vae/, text_encoder/,
tokenizer/ with a byte-level vocabulary, scheduler/): random weights, real file layout."""
import json

import torch

from sd.tokenizer import byte_vocab
from tests.test_sd_models import ref_unet, ref_vae


def tiny_sd_folder(root):
    import diffusers
    import transformers
    vocab = byte_vocab()
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    cfg = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                                      bos_token_id=512, eos_token_id=513, pad_token_id=513)
    torch.manual_seed(3)
    pipe = diffusers.StableDiffusionPipeline(
        vae=ref_vae(), text_encoder=transformers.CLIPTextModel(cfg).eval(), tokenizer=tok, unet=ref_unet(),
        scheduler=diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                          clip_sample=False, set_alpha_to_one=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "model")
    return root / "model"
