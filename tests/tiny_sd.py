"""Tiny folders in the real layouts, saved by the reference libraries themselves, random weights: an SD model
(model_index.json, unet/, vae/, text_encoder/, tokenizer/ with a byte-level vocabulary, scheduler/), an SDXL
refiner, a CLIPModel; and smooth test images."""
import json

import numpy as np
import torch

from sd.models.tokenizer import byte_vocab
from tests.sd_oracles import ref_unet, ref_vae


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


PROJ = 16
# the refiner's structure (no attention at the outer levels, per-level heads, linear projections, several
# transformer layers per block, 5 time ids) and SDXL base's (3 levels, 1/2/3 layers, 6 time ids), tiny widths
REFINER_UNET = dict(block_out_channels=[16, 32, 64, 64], layers_per_block=2,
                    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                    attention_head_dim=[2, 4, 8, 8], transformer_layers_per_block=2, use_linear_projection=True,
                    cross_attention_dim=32, addition_embed_type="text_time", addition_time_embed_dim=8,
                    projection_class_embeddings_input_dim=PROJ + 5 * 8, norm_num_groups=8, sample_size=16)
BASE_UNET = dict(block_out_channels=[16, 32, 64], layers_per_block=2,
                 down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 attention_head_dim=[1, 2, 4], transformer_layers_per_block=[1, 2, 3], use_linear_projection=True,
                 cross_attention_dim=48, addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=PROJ + 6 * 8, norm_num_groups=8, sample_size=16)
# stabilityai/stable-diffusion-xl-refiner-1.0's scheduler/scheduler_config.json
REFINER_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
                         num_train_timesteps=1000, prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
                         use_karras_sigmas=False)


def ref_text_2(eos_token_id=2, vocab_size=514):
    """transformers' CLIPTextModelWithProjection in the layout of SDXL's text_encoder_2 (gelu, projection; its
    config says eos_token_id 2, the legacy value that makes transformers pool at the largest id)."""
    import transformers
    from tests.sd_oracles import randomize
    cfg = transformers.CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
                                      projection_dim=PROJ, bos_token_id=0, eos_token_id=eos_token_id, pad_token_id=1)
    return randomize(transformers.CLIPTextModelWithProjection(cfg), 2)


def tiny_refiner_folder(root):
    """A tiny random SDXL refiner folder written by diffusers (model_index.json, unet/ with the refiner's
    structure, vae/ with SDXL's scaling factor and force_upcast, text_encoder_2/, tokenizer_2/ padding with "!",
    scheduler/ as the refiner's): (folder, the diffusers StableDiffusionXLImg2ImgPipeline on it)."""
    import diffusers
    import transformers
    from tests.sd_oracles import randomize
    byte_tokenizer(root / "tok")
    tok = transformers.CLIPTokenizer(str(root / "tok" / "vocab.json"), str(root / "tok" / "merges.txt"), pad_token="!",
                                     model_max_length=77)
    vae = randomize(diffusers.AutoencoderKL(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8,
                                            latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 2,
                                            up_block_types=["UpDecoderBlock2D"] * 2, scaling_factor=0.13025,
                                            force_upcast=True), 1)
    pipe = diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, text_encoder_2=ref_text_2(), tokenizer=None, tokenizer_2=tok,
        unet=randomize(diffusers.UNet2DConditionModel(**REFINER_UNET), 3),
        scheduler=diffusers.EulerDiscreteScheduler(**REFINER_SCHEDULER), requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False)
    pipe.save_pretrained(root / "model")
    pipe.set_progress_bar_config(disable=True)
    return root / "model", pipe


def tiny_clip_folder(folder, act="quick_gelu", eos=2, seed=0):
    """transformers' CLIPModel (random weights) saved by itself, with a byte-level vocabulary at the root:
    the layout of openai/clip-vit-large-patch14 and the LAION conversions, at a tiny size."""
    import transformers
    tok = byte_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=20, hidden_act=act, eos_token_id=eos,
                         bos_token_id=512, pad_token_id=513),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act=act),
        projection_dim=24)
    ref = transformers.CLIPModel(cfg).eval()
    ref.save_pretrained(folder)
    return ref, tok


def smooth_images(n, h, w, seed):
    """uint8 [n, h, w, 3]: sines of random frequency and phase (CLIP sees structure, not only noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = [np.stack([127 + 120 * np.sin(xx * rng.uniform(0.05, 0.5) + rng.uniform(0, 6))
                     * np.cos(yy * rng.uniform(0.05, 0.5)) for _ in range(3)], -1) for _ in range(n)]
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
