"""Model layouts users bring beyond the tiny SD 1.x folders of test_sd_models.py: SD 2-style UNet
configs, sharded weights with an index, single files at SD 1.x's default heads and groups, and the
clear refusal of what this project does not build."""
import json

import pytest
import torch

from sd import CheckpointError, load_text_encoder, load_unet, load_vae
from sd.sampling.pipeline import PipelineError, default_sampler
from sd.checkpoints.safetensors_io import save_file
from tests.sd_oracles import max_diff, randomize, to_ldm_unet, to_ldm_vae, unet_inputs

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
TOL = 1e-4
SD2_CFG = dict(block_out_channels=[32, 64], layers_per_block=1, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
               up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=[2, 4], cross_attention_dim=32,
               norm_num_groups=8, use_linear_projection=True, upcast_attention=True)


def test_sd2_style_unet_from_a_folder_and_a_single_file(tmp_path):
    """use_linear_projection (proj_in/out as linear layers) and per-level head counts, as SD 2.x."""
    ref = randomize(diffusers.UNet2DConditionModel(**SD2_CFG))
    ref.save_pretrained(tmp_path / "m" / "unet")
    ckpt = to_ldm_unet(ref.state_dict(), dict(ref.config))
    save_file({k: v.contiguous() for k, v in ckpt.items()}, tmp_path / "sd2.safetensors")
    ours = load_unet(tmp_path / "m")
    single = load_unet(tmp_path / "sd2.safetensors", config={"attention_head_dim": [2, 4], "norm_num_groups": 8})
    assert single.config["use_linear_projection"] is True               # read off the 2-D proj_in weights
    x, t, c = unet_inputs(SD2_CFG)
    with torch.no_grad():
        r = ref(x, t, c).sample
        assert max_diff(ours(x, t, c), r) <= TOL and max_diff(single(x, t, c), r) <= TOL


@pytest.mark.parametrize("field,value", [("addition_embed_type", "text"), ("class_embed_type", "timestep"),
                                         ("resnet_time_scale_shift", "scale_shift")])
def test_unet_configs_we_do_not_build_are_refused_by_name(tmp_path, field, value):
    ref = diffusers.UNet2DConditionModel(**{**SD2_CFG, field: value})
    ref.save_pretrained(tmp_path / "unet")
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'unet'}: UNet config not supported .*{field}={value!r}"):
        load_unet(tmp_path / "unet")


def test_v_prediction_schedulers_are_refused(tmp_path):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}))
    with pytest.raises(PipelineError, match="v-prediction model .* not supported"):
        default_sampler(tmp_path)


def test_sharded_weights_with_an_index(tmp_path):
    ref = randomize(diffusers.UNet2DConditionModel(**SD2_CFG))
    ref.save_pretrained(tmp_path / "unet", max_shard_size="200KB")
    index = json.loads((tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    x, t, c = unet_inputs(SD2_CFG)
    with torch.no_grad():
        assert max_diff(load_unet(tmp_path / "unet")(x, t, c), ref(x, t, c).sample) <= TOL


def test_single_file_at_sd1_default_heads_and_groups(tmp_path):
    """No config override: 8 UNet heads, 32 GroupNorm groups, 12 text heads, as SD 1.x single files assume."""
    unet = randomize(diffusers.UNet2DConditionModel(
        block_out_channels=[32, 64], layers_per_block=1, down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=8, cross_attention_dim=48,
        norm_num_groups=32))
    vae = randomize(diffusers.AutoencoderKL(block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=32,
                                            down_block_types=["DownEncoderBlock2D"] * 2,
                                            up_block_types=["UpDecoderBlock2D"] * 2), 1)
    text = randomize(transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=1000, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu")), 2)
    ckpt = {**to_ldm_unet(unet.state_dict(), dict(unet.config)), **to_ldm_vae(vae.state_dict(), 2),
            **{"cond_stage_model.transformer.text_model." + k: v for k, v in text.state_dict().items()}}
    save_file({k: v.contiguous() for k, v in ckpt.items()}, tmp_path / "sd.safetensors")
    f = tmp_path / "sd.safetensors"
    ours_unet, ours_vae, ours_text = load_unet(f), load_vae(f), load_text_encoder(f)
    g = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10.0, 900.0]), torch.randn(2, 7, 48, generator=g)
    ids = torch.randint(0, 1000, (2, 77), generator=g)
    with torch.no_grad():
        assert max_diff(ours_unet(x, t, c), unet(x, t, c).sample) <= TOL
        assert max_diff(ours_vae.decode(x), vae.decode(x).sample) <= TOL
        assert max_diff(ours_text(ids), text(ids).last_hidden_state) <= TOL
