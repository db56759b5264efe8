"""sd/models/clip.py's CLIPModel and sd/evaluation/clip_score.py against transformers: both towers, the
cosine CLIP score averages, loading a CLIPModel folder, and the image preprocessing against
CLIPImageProcessor's (PIL) pixel values."""
import json

import numpy as np
import pytest
import torch

from sd.checkpoints.loaders import CheckpointError
from sd.evaluation import clip_score, load_clip
from sd.evaluation.clip_score import CLIP_MEAN, CLIP_STD, preprocess
from tests.tiny_sd import smooth_images, tiny_clip_folder

transformers = pytest.importorskip("transformers")

CONFIGS = {   # OpenAI-style: quick-GELU, eos_token_id 2 (pooled at the largest id); LAION-style: GELU, the EOS id
    "openai quick-gelu": dict(act="quick_gelu", eos=2),
    "laion gelu": dict(act="gelu", eos=513),
}


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_towers_and_cosine_equal_transformers(tmp_path, name):
    ref, tok = tiny_clip_folder(tmp_path, **CONFIGS[name])
    ours = load_clip(tmp_path)
    captions = ["a red circle", "two blue squares in the top left", "x" * 40]     # the last is truncated at 20
    ids = tok(captions, padding="max_length", max_length=20, truncation=True, return_tensors="pt")["input_ids"]
    assert torch.equal(ours.tokenizer(captions), ids)
    images = smooth_images(3, 32, 32, seed=1)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    pixels = (pixels - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        t_ref = ref.get_text_features(input_ids=ids).pooler_output
        i_ref = ref.get_image_features(pixel_values=pixels).pooler_output
        t_ours, i_ours = ours.encode_text(ids), ours.encode_image(pixels)
    errs = dict(text=rel(t_ours, t_ref), image=rel(i_ours, i_ref))
    cos_ref = torch.nn.functional.cosine_similarity(i_ref.double(), t_ref.double(), dim=-1)
    cos = clip_score(ours, ours.tokenizer, images, captions)       # uint8 in, preprocessing included
    errs["cosine"] = float((cos - cos_ref).abs().max())
    print(f"CLIP {name} vs transformers: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    assert max(errs.values()) <= 1e-4, errs


@pytest.mark.parametrize("shape", [(300, 257), (180, 400), (100, 150)], ids=["down, portrait", "down, landscape", "up"])
def test_preprocessing_matches_clip_image_processor_within_two_levels(shape):
    """Our torch preprocessing vs transformers' CLIPImageProcessor (PIL) on noise, the hardest case for
    a resize: every pixel within 2 of 255 levels (x std, in normalised units), under 1% of them off at all."""
    from transformers import CLIPImageProcessorPil
    img = (np.random.default_rng(0).random((*shape, 3)) * 255).astype(np.uint8)
    want = CLIPImageProcessorPil()(images=[img], return_tensors="pt")["pixel_values"]
    cfg = dict(size=224, crop=224, mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")
    got = preprocess(img[None], cfg)
    assert got.shape == want.shape == (1, 3, 224, 224)
    levels = ((got - want) * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255).abs()
    off = float((levels > 0.5).float().mean())
    print(f"preprocessing {shape} vs CLIPImageProcessor: max {float(levels.max()):.2f} levels, {off:.2%} of values off")
    assert float(levels.max()) <= 2.01 and off < 0.01
    floats = preprocess(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, cfg)   # float input: same
    assert torch.equal(floats, got)


def test_a_preprocessor_config_overrides_the_defaults(tmp_path):
    tiny_clip_folder(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3,
         "image_std": [0.5] * 3, "resample": 3}))
    cfg = load_clip(tmp_path).preprocess
    assert (cfg["size"], cfg["mean"], cfg["std"]) == (32, (0.5,) * 3, (0.5,) * 3)
    img = smooth_images(1, 32, 32, 2)
    assert torch.allclose(preprocess(img, cfg), torch.from_numpy(img).permute(0, 3, 1, 2).float() / 127.5 - 1, atol=1e-6)


def test_folders_that_are_not_clip_models_are_refused(tmp_path):
    tiny_clip_folder(tmp_path / "good")
    bad = tmp_path / "text_only"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "clip_text_model", "hidden_size": 32}))
    cut = tmp_path / "cut"
    tiny_clip_folder(cut)
    from sd.checkpoints.safetensors_io import load_file, save_file
    sd = load_file(cut / "model.safetensors")
    save_file({k: v for k, v in sd.items() if "visual_projection" not in k}, cut / "model.safetensors")
    cases = {tmp_path / "nothing": "no config.json", bad: "no text_config and vision_config",
             cut: "missing (1): visual_projection.weight"}
    for folder, words in cases.items():
        with pytest.raises(CheckpointError) as err:
            load_clip(folder)
        assert str(folder) in str(err.value) and words in str(err.value), str(err.value)
