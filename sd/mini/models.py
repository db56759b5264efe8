"""The mini InstaFlow's networks: SD's UNet and CLIP text encoder (sd/models/unet.py, sd/models/clip.py) in tiny
configurations, on 16 x 16 RGB images (pixel space: the mini run has no VAE), and a word-level BPE
vocabulary for the captions' 13 words."""
from sd.models.clip import TextEncoder
from sd.models.tokenizer import BOS, EOS, Tokenizer, bytes_to_unicode
from sd.models.unet import UNet

from .shapes import CAPTIONS

TINY_TEXT = dict(vocab_size=None, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=16, hidden_act="quick_gelu")
TINY_UNET = dict(in_channels=3, out_channels=3, block_out_channels=[32, 64, 64], layers_per_block=1,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 attention_head_dim=4, cross_attention_dim=64, norm_num_groups=8, sample_size=16)


def tokenizer(max_length=16):
    """CLIP's byte-level BPE with one merge chain per caption word, so that every word is one token."""
    units = list(bytes_to_unicode().values())
    tokens, merges = units + [u + "</w>" for u in units], []
    for word in sorted({w for c in CAPTIONS for w in c.split()}):
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:                        # merge left to right: (w0, w1), (w0w1, w2), ...
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1]] + parts[2:]
            if parts[0] not in tokens:
                tokens.append(parts[0])
    merges = list(dict.fromkeys(merges))
    return Tokenizer({t: i for i, t in enumerate(tokens + [BOS, EOS])}, merges, max_length=max_length)


def text_encoder(tok):
    return TextEncoder({**TINY_TEXT, "vocab_size": len(tok.vocab), "max_position_embeddings": tok.max_length})


def unet():
    return UNet(TINY_UNET)
