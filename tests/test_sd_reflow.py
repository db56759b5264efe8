"""InstaFlow training at SD scale, on a tiny SD folder saved by diffusers: triplets (resume, ranks),
the objectives, the trainer (exact resume, accumulation, DDP on gloo), export, and the CLI's errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

from rectflow.flow import pseudo_huber
from sd.training import objectives, triplets
from sd.sampling.pipeline import default_sampler, load_pipeline
from sd.reflow import main as reflow_main
from sd.checkpoints.safetensors_io import load_file
from sd.training.trainer import TrainConfig, batch_indices, latest_checkpoint, read_checkpoint, train, weights
from tests.conftest import ROOT
from tests.sd_training import ENV, GEN, TRAIN, cli, max_state_diff, tiny_data, tiny_models

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

# ---- triplets ----------------------------------------------------------------------------------

def test_triplets_are_the_teacher_samples_of_their_seeds(reflow_folder, reflow_data):
    d, manifest = triplets.load(reflow_data / "t")
    prompts = triplets.read_prompts(reflow_data / "prompts.txt")
    assert d["noise"].shape == (len(prompts), 4, 8, 8) and d["ids"].shape == (len(prompts), 77)
    assert [s["count"] for s in manifest["shards"]] == [2, 2, 2, 2]
    pipe = load_pipeline(reflow_folder)
    for j in (0, 5):                          # sample j = the pipeline's output for prompt j, seed 5 + j
        out = pipe(prompts[j], steps=2, guidance=2.0, seed=5 + j, height=16, width=16, return_latents=True,
                   progress=False)
        assert (out.latents[0] - d["latents"][j]).abs().max() <= 1e-5
        assert torch.equal(d["ids"][j], pipe.tokenizer(prompts[j])[0])


def test_generate_resumes_only_missing_shards_and_ranks_split_the_work(reflow_folder, reflow_data, tmp_path):
    ref, _ = triplets.load(reflow_data / "t")
    out = tmp_path / "t"
    args = ["generate", "--teacher", str(reflow_folder), "--prompts", str(reflow_data / "prompts.txt"), "--out", str(out), *GEN]
    for rank in (1, 0):                       # two "torchrun" ranks, one after the other
        os.environ.update(RANK=str(rank), WORLD_SIZE="2")
        try:
            reflow_main(args)
        finally:
            del os.environ["RANK"], os.environ["WORLD_SIZE"]
        written = sorted(p.name for p in out.glob("shard-*.safetensors"))
        assert written == (["shard-00001.safetensors", "shard-00003.safetensors"] if rank == 1 else
                           [f"shard-0000{i}.safetensors" for i in range(4)])
    first = (out / "shard-00000.safetensors").stat().st_mtime_ns
    (out / "shard-00001.safetensors").unlink()                                     # lost
    (out / "shard-00002.safetensors.tmp").write_bytes(b"half a shard")             # killed mid-write
    (out / "shard-00002.safetensors").unlink()
    raw = (out / "shard-00003.safetensors").read_bytes()
    (out / "shard-00003.safetensors").write_bytes(raw[: len(raw) // 2])            # truncated
    with pytest.raises(triplets.TripletError, match="3 of 4 shards missing or incomplete"):
        triplets.load(out)
    reflow_main(args)
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first           # complete: not redone
    d, _ = triplets.load(out)
    assert all(torch.equal(d[k], ref[k]) for k in ref)


def test_generate_refuses_a_folder_of_another_run(reflow_folder, reflow_data, capsys):
    with pytest.raises(SystemExit) as e:
        reflow_main(["generate", "--teacher", str(reflow_folder), "--prompts", str(reflow_data / "prompts.txt"), "--out",
                     str(reflow_data / "t"), *GEN[:2], "--guidance", "3.0", *GEN[4:]])
    assert e.value.code == 2
    assert "different run (guidance: 2.0 there, 3.0 now)" in capsys.readouterr().err


# ---- objectives --------------------------------------------------------------------------------

def test_objectives_follow_their_equations():
    unet, text = tiny_models()
    d = tiny_data(4)
    ctx = text(d["ids"])
    x0, x1 = d["noise"], d["latents"]
    t = torch.tensor([0.1, 0.5, 0.9, 0.0])
    with torch.no_grad():
        ours = objectives.loss("reflow", unet, x0, x1, ctx, {"t": t})
        # Eq. (1) written out here: X_t = t X_1 + (1 - t) X_0, target X_1 - X_0, the UNet at timestep (1 - t) 1000
        tb = t[:, None, None, None]
        xt = tb * x1 + (1 - tb) * x0
        ref = (unet(xt, (1 - t) * 1000, ctx) - (x1 - x0)).pow(2).mean()
        assert torch.allclose(ours, ref)
        one = objectives.loss("distill", unet, x0, x1, ctx, {})
        assert torch.allclose(one, (x0 + unet(x0, torch.full((4,), 1000.0), ctx) - x1).pow(2).mean())
        k, eps = torch.tensor([0, 10, 500, 999]), torch.randn(4, 4, 8, 8)
        sched = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        noisy = sched.add_noise(x1, eps, k)                                              # diffusers as the oracle
        assert torch.allclose(objectives.loss("eps", unet, x0, x1, ctx, {"k": k, "eps": eps}),
                              (unet(noisy, k.float(), ctx) - eps).pow(2).mean(), atol=1e-6)


def toy_teacher(x, t, c):
    """A teacher velocity that depends on x, t and the context (the consistency tests' teacher)."""
    return -x * (1 + t[:, None, None, None]) + c.mean()


def test_consistency_objective_follows_lcm_equations():
    """LCM in rectified-flow time, written out: f(x, t) = x + (1 - t) UNet(x, (1 - t) 1000, c);
    X_hat = X_{t_n} + (1/N) v_teacher(X_{t_n}, t_n); loss = || f_theta(X_{t_n}, t_n) - f_ema(X_hat, t_{n+1}) ||^2."""
    unet, text = tiny_models()
    target = tiny_models(seed=1)[0]
    d = tiny_data(4)
    ctx = text(d["ids"])
    x1, N = d["latents"], 5
    rand = {"n": torch.tensor([0, 1, 3, 4]), "noise": torch.randn(4, 4, 8, 8)}
    with torch.no_grad():
        ours = objectives.loss("consistency", unet, None, x1, ctx, rand, teacher=toy_teacher, target=target,
                               intervals=N)
        t = rand["n"].float() / N
        tn = (rand["n"] + 1).float() / N
        b = lambda s: s[:, None, None, None]                                              # noqa: E731
        xt = b(t) * x1 + (1 - b(t)) * rand["noise"]
        x_hat = xt + (1 / N) * toy_teacher(xt, t, ctx)
        pred = xt + (1 - b(t)) * unet(xt, (1 - t) * 1000, ctx)
        goal = x_hat + (1 - b(tn)) * target(x_hat, (1 - tn) * 1000, ctx)
        assert torch.allclose(ours, (pred - goal).pow(2).mean(), rtol=1e-5)
        assert (pred - goal).pow(2).mean() > 1e-3                            # not zero by accident


def test_eps_teacher_guides_like_cfg_on_the_velocities():
    """The consistency objective's teacher: the CFG-guided eps UNet in rectified-flow time,
    v_empty + w (v_text - v_empty) (CFG commutes with the affine eps -> velocity map), empty first."""
    unet, text = tiny_models()
    ctx, empty = text(tiny_data(3)["ids"]), text(torch.zeros(1, 6, dtype=torch.long))
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([0.2, 0.5, 0.8])
    with torch.no_grad():
        v_text = objectives.eps_teacher(unet, empty, 1.0)(x, t, ctx)
        v_empty = objectives.eps_teacher(unet, empty, 1.0)(x, t, empty.expand(3, -1, -1))
        guided = objectives.eps_teacher(unet, empty, 4.0)(x, t, ctx)
    assert torch.allclose(guided, v_empty + 4.0 * (v_text - v_empty), atol=1e-4)
    assert (v_text - v_empty).abs().max() > 1e-3


def test_consistency_sampler_is_multistep_consistency_sampling():
    """sample(..., "consistency"): X_1 = f(X_0, 0), then at t_k = k / N re-noised with a seed-0 CPU
    generator and mapped again; 1 step = one Euler step of the UNet."""
    from sd.sampling.loop import sample
    unet, text = tiny_models()
    ctx = text(tiny_data(2)["ids"])
    x0 = torch.randn(2, 4, 8, 8)
    f = lambda x, t: x + (1 - t) * unet(x, torch.full((2,), (1 - t) * 1000.0), ctx)     # noqa: E731
    with torch.no_grad():
        assert torch.allclose(sample(unet, ctx, x0, 1, sampler="consistency"), sample(unet, ctx, x0, 1), atol=1e-6)
        g = torch.Generator().manual_seed(0)
        x1 = f(x0, 0.0)
        x1 = f(0.5 * x1 + 0.5 * torch.randn(x0.shape, generator=g), 0.5)
        assert torch.allclose(sample(unet, ctx, x0, 2, sampler="consistency"), x1, atol=1e-5)


def test_loss_is_pluggable_and_bad_names_are_explained():
    assert objectives.resolve_loss("torch.nn.functional:l1_loss") is torch.nn.functional.l1_loss
    with pytest.raises(ValueError, match="cannot import lpips from torch"):
        objectives.resolve_loss("torch:lpips")
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        objectives.resolve_loss("l1")
    with pytest.raises(ValueError, match="needs LPIPS's weights"):         # known, but its network is not given
        objectives.resolve_loss("lpips")


def test_lcm_huber_is_lcms_distance_per_coordinate():
    """The mini's LCM loss (sd.mini's lcm_loss names it): per coordinate it is iCT's pseudo-Huber of a
    one-coordinate sample; about d^2 / (2c) well within c of the target and |d| - c well beyond."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(64, 3, 4, 4, generator=g), torch.randn(64, 3, 4, 4, generator=g)
    got = objectives.resolve_loss("sd.training.objectives:lcm_huber")(pred, target)
    per_coordinate = pseudo_huber(pred.reshape(-1, 1), target.reshape(-1, 1), c=0.001)
    assert torch.allclose(got, per_coordinate, rtol=1e-5)
    small, large = torch.full((8,), 1e-4), torch.full((8,), 2.0)
    zero = torch.zeros(8)
    assert objectives.lcm_huber(small, zero).item() == pytest.approx(1e-8 / 2e-3, rel=1e-2)
    assert objectives.lcm_huber(large, zero).item() == pytest.approx(2.0 - 1e-3, rel=1e-6)


# ---- the trainer -------------------------------------------------------------------------------

def run(tmp, cfg, seed=0, on_step=None, data=None):
    unet, text = tiny_models(seed)
    res = train(unet, text, data or tiny_data(), cfg, tmp, torch.zeros(1, 6, dtype=torch.long), progress=False,
                on_step=on_step, teacher=toy_teacher if cfg.objective == "consistency" else None)
    return unet, res


def test_batches_walk_through_seeded_epochs():
    idx = torch.cat([batch_indices(s, 4, 10, 3) for s in range(5)])        # 20 positions = 2 epochs of 10
    assert sorted(idx[:10].tolist()) == list(range(10)) and sorted(idx[10:].tolist()) == list(range(10))
    assert not torch.equal(idx[:10], idx[10:])
    assert torch.equal(batch_indices(3, 4, 10, 3), idx[12:16])


@pytest.mark.parametrize("objective", ["reflow", "distill", "eps", "consistency"])
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, objective):
    cfg = TrainConfig(objective=objective, iters=6, batch_size=4, lr=1e-3, save_every=2, ema=0.9, cfg_dropout=0.3)
    ref, ref_res = run(tmp_path / "a", cfg)

    def kill(step, loss):
        if step == 5:                                   # step 5 done, not yet saved: the work is lost
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", cfg, on_step=kill)
    assert latest_checkpoint(tmp_path / "b").name == "step-0000004.safetensors"
    (tmp_path / "b" / "checkpoints" / "step-0000006.safetensors.tmp").write_bytes(b"killed while writing")
    resumed, res = run(tmp_path / "b", cfg, seed=1)     # another UNet init: the state must come from the checkpoint
    assert len(res["losses"]) == 2 and res["losses"] == ref_res["losses"][4:]
    for (name, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert all(torch.equal(ref_res["ema"][k], res["ema"][k]) for k in ref_res["ema"])
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("*.safetensors")) == \
        ["step-0000004.safetensors", "step-0000006.safetensors"]       # keep=2


def test_checkpointing_does_not_change_the_steps(tmp_path):
    """Gradient checkpointing recomputes the same numbers: bit-equal weights after 3 steps."""
    base = dict(objective="reflow", iters=3, batch_size=4, lr=1e-3, save_every=3)
    start = tiny_models()[0].state_dict()
    a, _ = run(tmp_path / "a", TrainConfig(**base))
    b, _ = run(tmp_path / "b", TrainConfig(**base, grad_checkpointing=True))
    assert max_state_diff(a.state_dict(), start) > 1e-3
    assert max_state_diff(a.state_dict(), b.state_dict()) == 0 and not b.gradient_checkpointing


def test_accumulation_gives_the_gradient_of_the_whole_batch(tmp_path, monkeypatch):
    """With SGD and no clipping (tests/sgd_reflow.py says why not AdamW), 2 micro-batches take the same
    steps as one batch of 4, up to float summation order; a wrong loss scale would double them."""
    from tests.sgd_reflow import sgd
    monkeypatch.setattr(torch.optim, "AdamW", sgd)
    base = dict(objective="reflow", iters=3, batch_size=4, lr=0.05, grad_clip=0.0, ema=0.0, save_every=3)
    start = tiny_models()[0].state_dict()
    a, res_a = run(tmp_path / "a", TrainConfig(**base))
    c, res_c = run(tmp_path / "c", TrainConfig(**base, grad_accum=2))
    moved = max_state_diff(a.state_dict(), start)
    assert moved > 1e-2 and max_state_diff(a.state_dict(), c.state_dict()) < 1e-5 * moved / 1e-2
    assert res_a["losses"] == pytest.approx(res_c["losses"], rel=1e-5)


def test_bf16_autocast_runs_the_unet_in_bf16_on_the_cpu(tmp_path):
    """The UNet's convolutions and linear layers see bf16 inputs, the losses are bf16-close to fp32's
    (within 2%) but not equal to them."""
    seen = set()
    unet, text = tiny_models()
    hook = unet.conv_in.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    cfg = dict(objective="reflow", iters=2, batch_size=4, save_every=2)
    res = train(unet, text, tiny_data(), TrainConfig(**cfg, precision="bf16"), tmp_path / "bf16",
                torch.zeros(1, 6, dtype=torch.long), progress=False)
    hook.remove()
    assert seen == {torch.bfloat16}
    _, ref = run(tmp_path / "fp32", TrainConfig(**cfg))
    assert res["losses"] == pytest.approx(ref["losses"], rel=2e-2) and res["losses"] != ref["losses"]


def test_trainer_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="batch_size 6 must be divisible by processes x grad_accum = 1 x 4"):
        run(tmp_path / "a", TrainConfig(batch_size=6, grad_accum=4))
    with pytest.raises(ValueError, match="precision fp16 needs a CUDA device"):
        run(tmp_path / "b", TrainConfig(precision="fp16"))
    run(tmp_path / "c", TrainConfig(iters=2, batch_size=4, save_every=2))
    with pytest.raises(ValueError, match="started with lr=1e-05, now 0.001"):
        run(tmp_path / "c", TrainConfig(iters=4, batch_size=4, save_every=2, lr=1e-3))
    with pytest.raises(ValueError, match="objective reflow needs \\(noise, latents\\) pairs"):
        run(tmp_path / "d", TrainConfig(), data={"latents": torch.zeros(2, 4, 8, 8), "ids": torch.zeros(2, 6).long()})
    with pytest.raises(ValueError, match="objective consistency needs a teacher and ema > 0"):
        run(tmp_path / "e", TrainConfig(objective="consistency", ema=0.0))
    with pytest.raises(ValueError, match="intervals must be a positive integer"):
        run(tmp_path / "f", TrainConfig(objective="consistency", intervals=0))


# ---- CLI: DDP on gloo, export ------------------------------------------------------------------

def test_ddp_two_processes_match_one(reflow_folder, reflow_data, tmp_path):
    """2 gloo processes against 1 with the same global batch, with SGD and no clipping (so that a wrong
    averaging of the gradients over processes would show in the weights, see tests/sgd_reflow.py)."""
    args = ["train", "--init", reflow_folder, "--data", reflow_data / "t", *TRAIN, "--lr", "0.2", "--grad-clip", "0", "--ema", "0"]
    one = subprocess.run([sys.executable, "tests/sgd_reflow.py", *map(str, args), "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "tests/sgd_reflow.py", *map(str, args), "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(tmp_path / "one" / "checkpoints" / "step-0000003.safetensors")
    b = load_file(tmp_path / "two" / "checkpoints" / "step-0000003.safetensors")
    assert not any(k.startswith("adam.") for k in a)                    # SGD ran: no Adam state
    start = load_pipeline(reflow_folder).unet.state_dict()
    a, b = ({k[6:]: v for k, v in x.items() if k.startswith("model.")} for x in (a, b))
    moved = max_state_diff(a, start)
    assert moved > 1e-2                                                 # training did change the weights
    print(f"DDP vs one process: moved {moved:.2e}, apart {max_state_diff(a, b):.2e}")
    assert max_state_diff(a, b) < 1e-5 * moved / 1e-2                         # the same steps, up to summation order


def test_export_is_a_model_folder_for_us_and_diffusers(reflow_folder, reflow_data, tmp_path):
    assert cli("train", "--init", reflow_folder, "--data", reflow_data / "t", "--out", tmp_path / "run", *TRAIN).returncode == 0
    r = cli("export", "--run", tmp_path / "run", "--init", reflow_folder, "--out", tmp_path / "2rf")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "2rf"
    assert default_sampler(out) == "euler" and json.loads((out / "rectflow.json").read_text())["step"] == 3
    ema = weights(tmp_path / "run" / "checkpoints" / "step-0000003.safetensors", "ema")
    pipe = load_pipeline(out)
    assert all(torch.equal(v, ema[k]) for k, v in pipe.unet.state_dict().items())
    ref = diffusers.StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([700.0]), torch.randn(1, 77, 32)
    with torch.no_grad():
        assert (ref.unet(x, t, c).sample - pipe.unet(x, t, c)).abs().max() <= 1e-5
    img = pipe("a red circle", steps=2, height=16, width=16, progress=False).images
    assert img.shape == (1, 16, 16, 3)


def test_cli_errors_exit_2_with_one_line(reflow_folder, tmp_path):
    r = cli("train", "--init", reflow_folder, "--data", tmp_path / "nothing", "--out", tmp_path / "o")
    assert r.returncode == 2 and "no manifest.json: not a triplet folder" in r.stderr
    r = cli("export", "--run", tmp_path / "o", "--init", reflow_folder, "--out", tmp_path / "x")
    assert r.returncode == 2 and "no checkpoint" in r.stderr
    (tmp_path / "p.txt").write_text("\n\n")
    r = cli("generate", "--teacher", reflow_folder, "--prompts", tmp_path / "p.txt", "--out", tmp_path / "g")
    assert r.returncode == 2 and "no prompts (one per line)" in r.stderr


def test_zero_output_starts_from_v_equal_zero_and_keeps_the_rest(tmp_path):
    start = tiny_models()[0].state_dict()
    unet, res = run(tmp_path, TrainConfig(iters=1, batch_size=4, lr=0.0, save_every=1, zero_output=True))
    after = unet.state_dict()
    assert after["conv_out.weight"].abs().max() == 0 and after["conv_out.bias"].abs().max() == 0
    assert res["ema"]["conv_out.weight"].abs().max() == 0
    assert all(torch.equal(after[k], v) for k, v in start.items() if not k.startswith("conv_out."))


def test_distill_with_a_loss_from_a_module(reflow_folder, reflow_data, tmp_path):
    """`--loss torch.nn.functional:l1_loss`: the first step's loss is the L1 distance of one Euler step
    from X_0 to X_1 over the whole reflow_data (batch = all 8 samples, no CFG dropout), written out here."""
    r = cli("distill", "--init", reflow_folder, "--data", reflow_data / "t", "--out", tmp_path / "s", "--iters", "1", "--batch-size",
            "8", "--cfg-dropout", "0", "--loss", "torch.nn.functional:l1_loss")
    assert r.returncode == 0, r.stderr[-2000:]
    d, _ = triplets.load(reflow_data / "t")
    pipe = load_pipeline(reflow_folder)
    with torch.no_grad():
        v = pipe.unet(d["noise"], torch.full((8,), 1000.0), pipe.text_encoder(d["ids"]))
        expected = (d["noise"] + v - d["latents"]).abs().mean().item()
    reported = float(r.stdout.split("last loss ")[1].split(",")[0])
    assert reported == pytest.approx(expected, abs=2e-5)
    meta = read_checkpoint(tmp_path / "s" / "checkpoints" / "step-0000001.safetensors")[1]["config"]
    assert meta["loss"] == "torch.nn.functional:l1_loss" and meta["objective"] == "distill"


def test_export_a_checkpoint_file_raw_weights_in_fp16(reflow_folder, reflow_data, tmp_path):
    assert cli("train", "--init", reflow_folder, "--data", reflow_data / "t", "--out", tmp_path / "run", *TRAIN).returncode == 0
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000003.safetensors"
    r = cli("export", "--checkpoint", ckpt, "--init", reflow_folder, "--out", tmp_path / "m", "--weights", "model",
            "--dtype", "fp16")
    assert r.returncode == 0, r.stderr
    raw, ema = weights(ckpt, "model"), weights(ckpt, "ema")
    assert max_state_diff(raw, ema) > 0                                       # the two choices differ
    pipe = load_pipeline(tmp_path / "m")
    assert pipe.unet.conv_in.weight.dtype == torch.float16
    assert all(torch.equal(v, raw[k].half()) for k, v in pipe.unet.state_dict().items())
    assert json.loads((tmp_path / "m" / "rectflow.json").read_text())["weights"] == "model"
