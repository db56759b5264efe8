"""The CLIP text encoder of SD 1.x (transformers' CLIPTextModel, same parameter names).

text_encoder(ids [B, 77]) -> last hidden state [B, 77, 768], after the final layer norm.
Pre-LayerNorm transformer: x += Attn(LN x) with a causal mask;  x += MLP(LN x) with quick-GELU.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, layer_norm_eps=1e-5, hidden_act="quick_gelu")


def quick_gelu(x):
    """x * sigmoid(1.702 x), the GELU approximation CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        q, k, v = (rearrange(p(x), "b n (h d) -> b h n d", h=self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # token i sees tokens <= i
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


class EncoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, eps = c["hidden_size"], c["layer_norm_eps"]
        self.act = quick_gelu if c["hidden_act"] == "quick_gelu" else (lambda x: F.gelu(x))
        self.layer_norm1, self.self_attn = nn.LayerNorm(d, eps), SelfAttention(d, c["num_attention_heads"])
        self.layer_norm2, self.mlp = nn.LayerNorm(d, eps), nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, c["intermediate_size"]), nn.Linear(c["intermediate_size"], d)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp.fc2(self.act(self.mlp.fc1(self.layer_norm2(x))))


class TextEncoder(nn.Module):
    def __init__(self, config=None):
        super().__init__()
        c = {**SD15_TEXT, **(config or {})}
        if c["hidden_act"] not in ("quick_gelu", "gelu"):
            raise ValueError(f"unsupported hidden_act {c['hidden_act']!r} (quick_gelu or gelu)")
        self.config = c
        self.embeddings = nn.Module()
        self.embeddings.token_embedding = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.embeddings.position_embedding = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([EncoderLayer(c) for _ in range(c["num_hidden_layers"])])
        self.final_layer_norm = nn.LayerNorm(c["hidden_size"], c["layer_norm_eps"])

    def forward(self, ids):
        n = ids.shape[1]
        if n > self.config["max_position_embeddings"]:
            raise ValueError(f"{n} tokens exceed the {self.config['max_position_embeddings']} positions of the encoder")
        x = self.embeddings.token_embedding(ids) + self.embeddings.position_embedding.weight[:n]
        for layer in self.encoder.layers:
            x = layer(x)
        return self.final_layer_norm(x)
