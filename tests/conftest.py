import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny SD-layout model folder: unet/, vae/, text_encoder/, tokenizer/ (byte-level vocabulary), and the
    diffusers/transformers modules saved in it: (root, unet, vae, text, tok). Shared by the pipeline tests."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("diffusers")
    from sd.tokenizer import byte_vocab
    from tests.test_sd_models import ref_unet, ref_vae
    root = tmp_path_factory.mktemp("tiny-instaflow")
    unet, vae = ref_unet(), ref_vae()
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    vocab = byte_vocab()
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    cfg = transformers.CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                                      bos_token_id=512, eos_token_id=513, pad_token_id=513)
    torch.manual_seed(3)
    text = transformers.CLIPTextModel(cfg).eval()
    text.save_pretrained(root / "text_encoder")
    tok = transformers.CLIPTokenizer(str(root / "tokenizer" / "vocab.json"), str(root / "tokenizer" / "merges.txt"))
    return root, unet, vae, text, tok
