"""CLIP (Radford et al. 2021) in transformers' parameter names: the text encoder of SD 1.x, and the whole
model (text tower, vision tower, projections) that CLIP score measures with.

text_encoder(ids [B, 77]) -> last hidden state [B, 77, 768], after the final layer norm (what SD's UNet reads);
SDXL's second text encoder (TextEncoderWithProjection) gives the penultimate state and a projected pooled one.
Both towers are the same pre-LayerNorm transformer layer,
    x += Attn(LN1 x);  x += MLP(LN2 x)    (MLP: fc1 -> quick-GELU or GELU -> fc2),
the text tower's attention causal (token i sees tokens <= i), the vision tower's not.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, layer_norm_eps=1e-5, hidden_act="quick_gelu")
# SDXL's text_encoder_2 (OpenCLIP ViT-bigG/14's text tower in transformers' layout); its config says eos_token_id 2
SDXL_TEXT_2 = dict(SD15_TEXT, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                   hidden_act="gelu", projection_dim=1280, eos_token_id=2)
# transformers' CLIPTextConfig / CLIPVisionConfig defaults (a CLIPModel config.json may leave keys out)
CLIP_TEXT = dict(SD15_TEXT, hidden_size=512, intermediate_size=2048, num_attention_heads=8, eos_token_id=49407)
CLIP_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   num_channels=3, image_size=224, patch_size=32, layer_norm_eps=1e-5, hidden_act="quick_gelu")


def quick_gelu(x):
    """x * sigmoid(1.702 x), the GELU approximation CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


def activation(name):
    if name not in ("quick_gelu", "gelu"):
        raise ValueError(f"unsupported hidden_act {name!r} (quick_gelu or gelu)")
    return quick_gelu if name == "quick_gelu" else F.gelu


class SelfAttention(nn.Module):
    def __init__(self, dim, heads, causal):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        q, k, v = (rearrange(p(x), "b n (h d) -> b h n d", h=self.heads) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)   # softmax(q k^T / sqrt(d)) v
        return self.out_proj(rearrange(out, "b h n d -> b n (h d)"))


class EncoderLayer(nn.Module):
    """One pre-LayerNorm transformer layer; `causal` for the text tower."""

    def __init__(self, c, causal=True):
        super().__init__()
        d, eps = c["hidden_size"], c["layer_norm_eps"]
        self.act = activation(c["hidden_act"])
        self.layer_norm1, self.self_attn = nn.LayerNorm(d, eps), SelfAttention(d, c["num_attention_heads"], causal)
        self.layer_norm2, self.mlp = nn.LayerNorm(d, eps), nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, c["intermediate_size"]), nn.Linear(c["intermediate_size"], d)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp.fc2(self.act(self.mlp.fc1(self.layer_norm2(x))))


def encoder(c, causal):
    """transformers' `encoder.layers.N` container."""
    enc = nn.Module()
    enc.layers = nn.ModuleList([EncoderLayer(c, causal) for _ in range(c["num_hidden_layers"])])
    return enc


class TextEncoder(nn.Module):
    def __init__(self, config=None):
        super().__init__()
        c = {**SD15_TEXT, **(config or {})}
        activation(c["hidden_act"])
        self.config = c
        self.embeddings = nn.Module()
        self.embeddings.token_embedding = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.embeddings.position_embedding = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])
        self.encoder = encoder(c, causal=True)
        self.final_layer_norm = nn.LayerNorm(c["hidden_size"], c["layer_norm_eps"])

    def hidden_states(self, ids, layers=None):
        """The residual stream after the first `layers` layers (all by default), before the final
        LayerNorm: transformers' hidden_states[layers]."""
        n = ids.shape[1]
        if n > self.config["max_position_embeddings"]:
            raise ValueError(f"{n} tokens exceed the {self.config['max_position_embeddings']} positions of the encoder")
        x = self.embeddings.token_embedding(ids) + self.embeddings.position_embedding.weight[:n]
        for layer in self.encoder.layers[:layers]:
            x = layer(x)
        return x

    def forward(self, ids):
        return self.final_layer_norm(self.hidden_states(ids))

    def at_eos(self, ids, states):
        """states [B, n, d] at the end-of-text token: its first occurrence, or, where the config says
        eos_token_id 2 (OpenAI's original configs), the largest id, as transformers does."""
        eos = self.config.get("eos_token_id", 2)
        at = ids.argmax(-1) if eos == 2 else (ids == eos).int().argmax(-1)
        return states[torch.arange(len(ids), device=ids.device), at]

    def pooled(self, ids):
        """The final state at the end-of-text token."""
        return self.at_eos(ids, self(ids))


class TextEncoderWithProjection(TextEncoder):
    """transformers' CLIPTextModelWithProjection: the text tower plus `text_projection` (no bias). As SDXL's
    second text encoder (OpenCLIP ViT-bigG's text tower: gelu, 1280 wide, 32 layers) it gives
        context     = h_{L-1}, the state after the penultimate layer (no final LayerNorm)  [B, 77, 1280]
        text_embeds = W_proj LN(h_L)[eos]                                                 [B, 1280]"""

    def __init__(self, config=None):
        super().__init__(config)
        self.text_projection = nn.Linear(self.config["hidden_size"], self.config["projection_dim"], bias=False)

    def context_and_pooled(self, ids):
        h = self.hidden_states(ids, len(self.encoder.layers) - 1)
        last = self.final_layer_norm(self.encoder.layers[-1](h))
        return h, self.text_projection(self.at_eos(ids, last))


class VisionEncoder(nn.Module):
    """The ViT of CLIP: 16x16 (or 14, 32) patches -> linear embedding, a class token in front, learned
    positions; pre-LayerNorm ("pre_layrnorm", transformers' spelling), the layers (not causal), and the
    post-LayerNorm of the class token's final state, which is the image's pooled output."""

    def __init__(self, config=None):
        super().__init__()
        c = self.config = {**CLIP_VISION, **(config or {})}
        d, n = c["hidden_size"], (c["image_size"] // c["patch_size"]) ** 2
        self.embeddings = nn.Module()
        self.embeddings.class_embedding = nn.Parameter(torch.zeros(d))
        self.embeddings.patch_embedding = nn.Conv2d(c["num_channels"], d, c["patch_size"], c["patch_size"], bias=False)
        self.embeddings.position_embedding = nn.Embedding(n + 1, d)
        self.pre_layrnorm = nn.LayerNorm(d, c["layer_norm_eps"])
        self.encoder = encoder(c, causal=False)
        self.post_layernorm = nn.LayerNorm(d, c["layer_norm_eps"])

    def forward(self, pixels):
        s = self.config["image_size"]
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (self.config["num_channels"], s, s):
            raise ValueError(f"pixels must be [N, {self.config['num_channels']}, {s}, {s}] (resized and normalised), "
                             f"got {tuple(pixels.shape)}")
        e = self.embeddings
        x = rearrange(e.patch_embedding(pixels.to(e.patch_embedding.weight.dtype)), "b d h w -> b (h w) d")
        x = torch.cat([e.class_embedding.expand(len(x), 1, -1), x], 1) + e.position_embedding.weight
        x = self.pre_layrnorm(x)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x[:, 0])


class CLIPModel(nn.Module):
    """transformers' CLIPModel: the two towers and their projections into the shared embedding space.
    encode_text / encode_image return the projected, unnormalised embeddings (get_text_features /
    get_image_features); their cosine is what CLIP score averages."""

    def __init__(self, text_config=None, vision_config=None, projection_dim=512):
        super().__init__()
        self.text_model = TextEncoder({**CLIP_TEXT, **(text_config or {})})
        self.vision_model = VisionEncoder(vision_config)
        self.text_projection = nn.Linear(self.text_model.config["hidden_size"], projection_dim, bias=False)
        self.visual_projection = nn.Linear(self.vision_model.config["hidden_size"], projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))        # log(1 / 0.07); loaded, unused by CLIP score

    @property
    def image_size(self):
        return self.vision_model.config["image_size"]

    def encode_text(self, ids):
        return self.text_projection(self.text_model.pooled(ids))

    def encode_image(self, pixels):
        return self.visual_projection(self.vision_model(pixels))
