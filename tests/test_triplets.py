"""Triplets at scale (sd/training/triplets.py): shards read on demand, the noise regenerated instead of stored,
latents in half precision, prompt files indexed by offset; and the trainer on them, bit-equal to the
in-memory path, with or without the prefetch thread, resumed mid-epoch."""
import json

import pytest
import torch

from sd.training import triplets
from sd.training.trainer import TrainConfig, latest_checkpoint, train
from tests.sd_training import tiny_models

SHAPE = (4, 8, 8)


def tokenizer(prompts):
    return torch.tensor([[1, min(len(p), 18), ord(p[0]) % 19, ord(p[-1]) % 19, 2, 0] for p in prompts])


def teacher(x0, ids):
    """A deterministic stand-in for a teacher's sampler: X_1 depends on X_0 and the prompt."""
    return 0.5 * x0.flip(-1) + ids[:, 1:4].float().mean(1)[:, None, None, None] / 10


PROMPTS = [f"prompt number {j} {'!' * (j % 4)}".strip() for j in range(23)]


def make(out, **kw):
    """23 triplets in shards of 5 (the last one of 3), seed 7."""
    triplets.generate(out, kw.pop("prompts", PROMPTS), tokenizer, teacher, SHAPE, {"teacher": "test"}, shard_size=5,
                      batch_size=4, seed=7, progress=False, **kw)
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("triplets")
    return {"new": make(root / "new"), "stored": make(root / "stored", store_noise=True),
            "fp16": make(root / "fp16", latent_dtype="fp16")}


def test_columns_gather_rows_across_shards_in_their_order(folders):
    data, manifest = triplets.open_triplets(folders["new"])
    full, _ = triplets.load(folders["new"])
    assert len(manifest["shards"]) == 5 and full["latents"].shape == (23, *SHAPE) and full["ids"].dtype == torch.int64
    idx = torch.tensor([22, 0, 7, 7, 13, 4, 5, 19])          # across shards, repeats, out of order
    for k in ("latents", "ids", "noise"):
        assert torch.equal(data[k][idx], full[k][idx]), k
    j = 13                                                    # sample j: the teacher's output from the noise of seed + j
    x0 = torch.randn((1, *SHAPE), generator=torch.Generator("cpu").manual_seed(7 + j))
    assert torch.equal(full["noise"][j], x0[0])
    assert torch.equal(full["latents"][j], teacher(x0, tokenizer([PROMPTS[j]]))[0])
    assert not any(f.mapped for _, f in data["latents"].shards)     # rows are read, no shard is mapped or held


def test_noise_is_regenerated_exactly_as_it_was_stored(folders):
    stored, _ = triplets.load(folders["stored"])
    new, manifest = triplets.load(folders["new"])
    assert manifest["noise"] == "seed+j" and all(torch.equal(stored[k], new[k]) for k in stored)
    assert "noise" not in triplets.SafeOpen(folders["new"] / "shard-00000.safetensors").keys()
    shards = triplets.open_triplets(folders["new"])[0]["noise"].shards
    off_by_one = triplets.Column("noise", shards, 23, SHAPE, seed=8)        # seeded bug: sample j from seed + j + 1
    assert not torch.equal(off_by_one[torch.arange(3)], stored["noise"][:3])
    on_disk = {k: sum((f / s["file"]).stat().st_size for s in manifest["shards"]) for k, f in folders.items()}
    assert on_disk["new"] < 0.55 * on_disk["stored"] and on_disk["fp16"] < 0.6 * on_disk["new"]


def test_half_precision_latents_are_read_as_float32(folders):
    full, manifest = triplets.load(folders["fp16"])
    ref, _ = triplets.load(folders["new"])
    assert manifest["latent_dtype"] == "fp16" and full["latents"].dtype == torch.float32
    assert torch.equal(full["latents"], ref["latents"].half().float())
    with pytest.raises(triplets.TripletError, match="latent dtype 'fp8': choose fp32, fp16, bf16"):
        make(folders["fp16"].parent / "bad", latent_dtype="fp8")


def run(out, data, **kw):
    unet, text = tiny_models()
    cfg = TrainConfig(**{"objective": "reflow", "iters": 20, "batch_size": 4, "lr": 1e-3, "save_every": 100,
                         "cfg_dropout": 0.2, **kw})
    return unet, train(unet, text, data, cfg, out, torch.zeros(1, 6, dtype=torch.long), progress=False)


def test_streamed_training_equals_the_in_memory_one_bit_for_bit(folders, tmp_path):
    """20 steps over 23 samples (3+ epochs): in memory, streamed without and with the prefetch thread, and from a
    folder that stores the noise: the same losses and weights, exactly."""
    memory, _ = triplets.load(folders["new"])
    a, ra = run(tmp_path / "a", memory, prefetch=0)
    for name, (data, prefetch) in {"streamed": (triplets.open_triplets(folders["new"])[0], 0),
                                   "prefetched": (triplets.open_triplets(folders["new"])[0], 3),
                                   "noise stored": (triplets.open_triplets(folders["stored"])[0], 2)}.items():
        b, rb = run(tmp_path / name, data, prefetch=prefetch)
        assert rb["losses"] == ra["losses"], name
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())), name


def test_a_streamed_run_resumes_mid_epoch_exactly(folders, tmp_path):
    data = triplets.open_triplets(folders["new"])[0]
    _, whole = run(tmp_path / "whole", data, iters=9, save_every=3)

    class Stop(Exception):
        pass

    def kill(step, loss):
        if step == 7:                                  # after step 7 (saved at 6): 28 samples seen, epoch 2 of 23
            raise Stop
    unet, text = tiny_models()
    cfg = TrainConfig(objective="reflow", iters=9, batch_size=4, lr=1e-3, save_every=3, cfg_dropout=0.2)
    with pytest.raises(Stop):
        train(unet, text, data, cfg, tmp_path / "cut", torch.zeros(1, 6, dtype=torch.long), progress=False, on_step=kill)
    assert latest_checkpoint(tmp_path / "cut").name == "step-0000006.safetensors"
    _, rest = run(tmp_path / "cut", data, iters=9, save_every=3)
    assert rest["losses"] == whole["losses"][6:]


def test_prefetch_keeps_the_order_and_passes_errors_on():
    from sd.training.trainer import Prefetch
    assert list(Prefetch(iter(range(50)), 3)) == list(range(50))

    def broken():
        yield 1
        raise OSError("shard-00003.safetensors: read error")
    with pytest.raises(OSError, match="shard-00003"):
        list(Prefetch(broken(), 2))
    with pytest.raises(ValueError, match="prefetch must be an integer >= 0"):
        TrainConfig(prefetch=-1).validate()


def test_folders_that_disagree_or_are_cut_are_named(folders, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(folders["new"], bad)
    m = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**m, "latent_shape": [4, 4, 4]}))
    with pytest.raises(triplets.TripletError, match="latents of shape \\(4, 8, 8\\), but the manifest says \\(4, 4, 4\\)"):
        triplets.open_triplets(bad)
    (bad / "manifest.json").write_text(json.dumps(m))
    raw = (bad / "shard-00002.safetensors").read_bytes()
    (bad / "shard-00002.safetensors").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(triplets.TripletError, match="1 of 5 shards missing or incomplete \\(first: shard-00002"):
        triplets.open_triplets(bad)


def test_a_prompt_file_is_indexed_once_and_read_by_offset(tmp_path, capsys):
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(["", "  first prompt ", "", "ünïcödé ✨ second", *PROMPTS[2:], ""]) + "\n\n", encoding="utf-8")
    want = triplets.read_prompts(f)
    index = tmp_path / "t" / triplets.PROMPT_INDEX
    index.parent.mkdir()
    pf = triplets.PromptFile(f, index)
    assert index.exists() and len(pf) == len(want) and [pf[j] for j in range(len(pf))] == want
    assert pf.sha256 == triplets.prompts_digest(want)
    again = triplets.PromptFile(f, index)                      # read from the index: not rebuilt
    assert torch.equal(again.offsets, pf.offsets) and "rebuilding" not in capsys.readouterr().out
    index.write_bytes(b"not an index")
    assert torch.equal(triplets.PromptFile(f, index).offsets, pf.offsets)
    assert "unreadable" in capsys.readouterr().out
    f.write_text("one\ntwo\n")
    changed = triplets.PromptFile(f, index)
    assert [changed[0], changed[1]] == ["one", "two"] and "another version" in capsys.readouterr().out
    index.unlink()
    assert len(triplets.PromptFile(f, index)) == 2 and index.exists()        # a missing index is rebuilt
    f.write_text("\n\n")
    with pytest.raises(triplets.TripletError, match="no prompts"):
        triplets.PromptFile(f)


def test_generate_from_a_prompt_file_equals_generate_from_the_list(tmp_path, folders):
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = make(tmp_path / "t", prompts=triplets.PromptFile(f, tmp_path / "index.safetensors"))
    a, ma = triplets.load(out)
    b, mb = triplets.load(folders["new"])
    assert ma == mb and all(torch.equal(a[k], b[k]) for k in a)
