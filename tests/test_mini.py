"""The mini InstaFlow: its captions, tokenizer and judge, the eps teacher as a flow, and a --fast run."""
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch

from sd.checkpoints.safetensors_io import SafeOpen
from sd.mini import models, shapes
from sd.sampling.samplers import EpsFlow, eps_velocity, sd_alphas_cumprod
from tests.conftest import ROOT


def test_every_caption_word_is_one_token():
    tok = models.tokenizer()
    for c in shapes.CAPTIONS:
        ids = tok.encode(c)
        assert len(ids) == len(c.split()) and len(set(ids)) == len(set(c.split()))
    assert tok(shapes.CAPTIONS[:3]).shape == (3, 16)


def test_the_judge_accepts_the_data_and_rejects_wrong_images():
    x, caps = shapes.dataset(256, 16, seed=1)
    assert shapes.fidelity(x, caps) == 1.0
    assert shapes.fidelity(torch.randn_like(x), caps) == 0.0                      # noise
    assert shapes.fidelity(torch.full_like(x, -1.0), caps) == 0.0                # empty image
    swap = {"red": "green", "green": "blue", "blue": "yellow", "yellow": "red"}
    wrong_colour = [shapes.caption(swap[c], s, p) for c, s, p in map(shapes.parse, caps)]
    assert not any(r["colour"] for r in shapes.judge(x, wrong_colour))
    flip = {"top left": "bottom right", "top right": "bottom left", "bottom left": "top right", "bottom right": "top left"}
    res = shapes.judge(x, [shapes.caption(c, s, flip[p]) for c, s, p in map(shapes.parse, caps)])
    assert all(r["colour"] and not r["position"] for r in res)
    two = torch.maximum(x, x.roll(8, dims=-1))                                    # a second shape: half the pixels wrong
    assert shapes.fidelity(two, caps) < 0.5


def test_the_eps_teacher_as_a_velocity_field_is_exact_for_a_point_mass():
    """For data = one point x*, the ideal eps model is eps(x, k) = (x - alpha_k x*) / sigma_k;
    its rectified-flow velocity must then be x* - X_0 at every t, also called as a flow UNet (EpsFlow, DMD2's
    generator on the mini) at the timestep (1 - t) 1000."""
    ac = sd_alphas_cumprod()
    g = torch.Generator().manual_seed(0)
    x_star, x0 = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)

    def eps_model(x, k):
        a = torch.from_numpy(np.interp(k.numpy(), np.arange(1000), ac.numpy())).float().reshape(-1, 1)
        return (x - a.sqrt() * x_star) / (1 - a).sqrt()
    t = torch.tensor([0.2, 0.5, 0.95])
    X = t[:, None] * x_star + (1 - t[:, None]) * x0
    assert torch.allclose(eps_velocity(eps_model)(X, t), x_star - x0, atol=1e-4)
    as_flow_unet = EpsFlow(lambda x, k, context: eps_model(x, k))
    assert torch.allclose(as_flow_unet(X, (1 - t) * 1000, None), x_star - x0, atol=1e-4)


def test_mini_fast_runs_every_stage_and_resumes(mini_fast, tmp_path):
    from sd.mini.run import MiniConfig
    from sd.training.trainer import latest_checkpoint
    run = shutil.copytree(mini_fast / "run", tmp_path / "run")   # the session's fast run (tests/conftest.py), copied:
    stdout = (mini_fast / "stdout.txt").read_text()               # the rerun below writes in its folder
    cmd = [sys.executable, "-m", "sd.mini", "--fast", "--out", str(run)]
    m = json.loads((run / "metrics.json").read_text())
    fast = MiniConfig.fast()
    assert m["config"] == json.loads(json.dumps(asdict(fast)))
    names = ["teacher, 4 steps", "teacher, 1 step", "teacher, 2 steps", "2-RF, 1 step", "2-RF, 2 steps", "2-RF, 4 steps",
             "distilled 2-RF, 1 step", "LCM, 1 step", "LCM, 2 steps", "LCM, 4 steps", "DMD2, 1 step"]
    assert list(m)[1:13] == names + ["held-out renders"]
    assert m["teacher, 4 steps"]["mse_to_teacher"] == 0                      # the reference
    floor = m["held-out renders"]
    assert floor["fd"] > 0 and 0 <= floor["caption_score"] <= 1 and floor["judge"] == 1.0
    assert all(m[k]["fd"] > 0 and 0 <= m[k]["caption_score"] <= 1 for k in names)
    for k in names:                   # fidelity = colour and position both right: a count over 16 samples
        f = m[k]["fidelity"]
        assert f * fast.eval_samples == round(f * fast.eval_samples) and f <= min(m[k]["colour"], m[k]["position"])
        assert (k == "teacher, 4 steps") == (m[k]["mse_to_teacher"] == 0)
    assert set(m["straightness"]) == {"teacher", "2-RF", "distilled 2-RF"} and all(v > 0 for v in m["straightness"].values())
    assert (run / "grid.png").stat().st_size > 1000 and (run / "edit.png").stat().st_size > 1000
    assert list(m["inversion"]) == ["teacher (CFG 3)", "teacher (CFG 1)", "2-RF", "distilled 2-RF (2-RF inverts, 1 step)"]
    assert all(list(r) == ["1", "4"] and all(np.isfinite(list(r.values()))) for r in m["inversion"].values())
    assert len(m["edit"]) == 6 and all(0 <= r["fidelity"] <= 1 and r["centroid_shift_px"] >= 0 for r in m["edit"].values())
    ctrl = m["controlnet"]
    assert list(ctrl) == [f"{k}, {w} ControlNet" for k in ("teacher, 4 steps", "2-RF, 4 steps", "2-RF, 1 step",
                                                           "distilled 2-RF, 1 step") for w in ("without", "with")]
    assert all(0 <= r["iou"] <= 1 and 0 <= r["judge"] <= r["colour"] <= 1 for r in ctrl.values())
    assert (run / "control.png").stat().st_size > 1000
    assert "distilled 2-RF, 1 step" in stdout
    assert m["LCM, 1 step"]["sampler"] == "consistency" and m["seconds"]["lcm"] > 0
    # DMD2: the same budget, generator and fake steps together in DMD2's ratio 1:5
    dmd2 = SafeOpen(run / "dmd2" / "generator.safetensors").metadata()
    budget = fast.reflow_iters + fast.distill_iters
    assert (json.loads(dmd2["generator_steps"]), json.loads(dmd2["fake_steps"])) == (2, 10) == (
        budget // 6, 5 * (budget // 6))
    assert m["DMD2, 1 step"]["sampler"] == "euler" and m["seconds"]["dmd2"] > 0
    for stage, iters in (("teacher", fast.teacher_iters), ("2rf", fast.reflow_iters), ("student", fast.distill_iters),
                         ("lcm", fast.reflow_iters + fast.distill_iters)):       # LCM: the 2-RF's + student's budget
        assert latest_checkpoint(run / stage).name == f"step-{iters:07d}.safetensors"   # every step ran
    for folder in ("triplets-teacher", "triplets-2rf"):
        shards = json.loads((run / folder / "manifest.json").read_text())["shards"]
        assert sum(s["count"] for s in shards) == fast.pairs
    # a rerun reuses every finished stage: no checkpoint or shard is written again (every stage is
    # seeded, so equal metrics alone would not show it)
    def stamps():                 # every file but the evaluation's outputs, with its modification time
        return {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.suffix != ".png"
                and p.name != "metrics.json"}
    kept = stamps()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert again.returncode == 0
    # 4 checkpoints, 2 manifests, 2 shards, the ControlNet, the feature net, DMD2's generator, config.json
    assert stamps() == kept and len(kept) == 12
    m2 = json.loads((run / "metrics.json").read_text())
    assert all(m2[k] == m[k] for k in names + ["held-out renders", "straightness", "inversion", "edit", "controlnet"])


def test_edit_recolours_keeps_shape_and_position_and_centroids_find_the_shape():
    from sd.mini import edit
    for c in shapes.CAPTIONS:
        colour, shape, position = shapes.parse(edit.recolour(c))
        assert shapes.parse(c)[1:] == (shape, position) and colour != shapes.parse(c)[0]
    x, caps = shapes.dataset(64, 16, seed=2)
    rc = edit.centroid(x)
    for (r, col), cap in zip(rc.tolist(), caps):
        row_q, col_q = shapes.POSITIONS[shapes.parse(cap)[2]]
        assert (r >= 8) == bool(row_q) and (col >= 8) == bool(col_q)
    assert torch.isnan(edit.centroid(torch.full((1, 3, 16, 16), -1.0))).all()
    scores = edit.edit_scores(x, torch.full_like(x, -1.0), caps)                    # edits that lost the shape
    assert scores == {"fidelity": 0.0, "centroid_shift_px": 16.0}


def test_inversion_and_edits_on_straight_fields_are_exact():
    """Fields constant in X and t (one velocity per caption) are straight: any number of steps inverts
    exactly, and an edit gives x_1 - v(source) + v(target); the student regenerates in one step."""
    from sd.mini import edit
    x, caps = shapes.dataset(8, 16, seed=3)
    speed = {"teacher": 1.0, "2-RF": 2.0, "student": 3.0}

    def field(name, captions, g):
        c = torch.stack([torch.full((3, 16, 16), float(shapes.CAPTIONS.index(k))) for k in captions]) * speed[name]
        return lambda X, t: c.to(X)
    table = edit.reconstruction_table(field, x.double(), caps, steps=(1, 3))
    student = table.pop("distilled 2-RF (2-RF inverts, 1 step)")        # back at speed 2, forward at 3
    assert all(v < 1e-20 for row in table.values() for v in row.values()) and len(table) == 3
    off = field("student", caps, 1)(x, 0).double() / 3                    # (3 - 2) v: the mismatch
    assert student == pytest.approx({"1": off.pow(2).flatten(1).sum(1).mean().item()} | {"3": off.pow(2).flatten(1).sum(1).mean().item()})
    target = [edit.recolour(c) for c in caps]
    for model, back in (("2-RF", "2-RF"), ("student", "2-RF"), ("teacher", "teacher")):
        got = edit.edit(field, x.double(), caps, model, 3)
        want = x.double() - field(back, caps, 1)(x, 0).double() + field(model, target, 1)(x, 0).double()
        assert torch.allclose(got, want, atol=1e-12), model


@pytest.mark.skipif(not os.environ.get("RECTFLOW_SLOW"), reason="the default run takes ~28 min on 2 cores: RECTFLOW_SLOW=1")
def test_default_run_tells_the_instaflow_story(tmp_path):
    """The claims of the README's table, on a fresh default run (not in CI: too long)."""
    from sd.mini.run import MiniConfig, run
    m = run(MiniConfig(), tmp_path, progress=False)
    s = m["straightness"]
    assert s["2-RF"] < s["teacher"] / 10                                          # reflow straightens
    assert m["teacher, 1 step"]["fidelity"] <= 0.2                                # one teacher step fails
    assert m["distilled 2-RF, 1 step"]["fidelity"] >= 0.9                         # one student step works
    assert m["distilled 2-RF, 1 step"]["mse_to_teacher"] < m["2-RF, 1 step"]["mse_to_teacher"]
    assert m["distilled 2-RF, 1 step"]["fd"] < m["2-RF, 1 step"]["fd"]             # and the distribution shows it
    # LCM on the same budget: far better than one teacher step, below InstaFlow's student (docs/training.md)
    lcm = m["LCM, 1 step"]
    assert lcm["fidelity"] >= 0.8 and lcm["fd"] < m["teacher, 1 step"]["fd"] / 10
    assert lcm["fd"] > 2 * m["distilled 2-RF, 1 step"]["fd"] and lcm["fidelity"] < m["distilled 2-RF, 1 step"]["fidelity"]
    models = [k for k, v in m.items() if isinstance(v, dict) and "steps" in v]
    assert all(m[k]["fd"] > 2 * m["held-out renders"]["fd"] for k in models)      # far above the floor
    inv, ed = m["inversion"], m["edit"]
    assert inv["2-RF"]["1"] < inv["teacher (CFG 1)"]["1"] / 10                  # straight flows invert in few steps
    assert all(inv["2-RF"][n] < min(inv["teacher (CFG 1)"][n], inv["teacher (CFG 3)"][n]) for n in inv["2-RF"])
    assert ed["2-RF, 4 steps back"]["fidelity"] >= 0.95 and ed["student, 4 steps back"]["fidelity"] >= 0.95
    control = ed["control: fresh noise, 2-RF 4 steps"]["centroid_shift_px"]
    assert all(ed[k]["centroid_shift_px"] < control for k in ("2-RF, 1 step back", "2-RF, 4 steps back"))
    c = m["controlnet"]                         # the teacher's ControlNet steers the one-step student
    assert c["distilled 2-RF, 1 step, with ControlNet"]["iou"] > c["distilled 2-RF, 1 step, without ControlNet"]["iou"] + 0.15
    assert c["distilled 2-RF, 1 step, with ControlNet"]["colour"] >= 0.95


def test_the_feature_net_behind_fd_tells_renders_from_noise_and_right_captions_from_wrong():
    """sd/mini/features.py, briefly trained: FD to held-out renders grows with the noise added to the
    images, and the caption score prefers each image's own caption."""
    from sd.mini.features import accuracy, caption_score, frechet, labels, train_feature_net
    assert labels(["a red circle at the top left", "a yellow square at the bottom right"]).tolist() == [[0, 0, 0], [3, 1, 3]]
    net = train_feature_net(2048, 300, 64, seed=0, progress=False)
    caps = shapes.CAPTIONS * 4
    a, b = (shapes.render(caps, 16, torch.Generator().manual_seed(k)) for k in (1, 2))
    assert accuracy(net, a, caps) > 0.3                    # all three labels right; chance is 1/32
    noise = torch.randn(a.shape, generator=torch.Generator().manual_seed(3))
    fds = [frechet(net, a + s * noise, b) for s in (0.0, 0.1, 0.3, 1.0)]
    assert all(x < y for x, y in zip(fds, fds[1:])), fds
    assert caption_score(net, a, caps) > caption_score(net, a, caps[1:] + caps[:1]) + 0.2
