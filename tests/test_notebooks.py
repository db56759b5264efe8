"""The tutorials run top to bottom (fast mode), are committed with outputs, and their exercise
checks accept a correct answer and reject a wrong one (the mistake a student is likely to make)."""
import copy
import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT
from tests.notebook_checks import exercise_faults, failed_claims, leaking_checks, missing_header, own_fast_reads

NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))

# (text in an exercise cell, a reference answer to put in its place)
SOLUTIONS = {
    "01_rectified_flow.ipynb": [
        ("def my_euler(v, z0, n):\n    # your code here\n    return None",
         "def my_euler(v, z0, n):\n    z = z0\n    with torch.no_grad():\n        for i in range(n):\n"
         "            z = z + v(z, torch.full((len(z),), i / n)) / n\n    return z"),
        ("my_loss = None   # your code here",
         "with torch.no_grad():\n    xt = tt[:, None] * x1 + (1 - tt[:, None]) * x0\n"
         "    my_loss = ((x1 - x0) - flow1(xt, tt)).pow(2).mean()"),
        ("flow_moons = S_moons = None   # your code here",
         "flow_moons = VelocityMLP()\n"
         "rf.train_flow(flow_moons, rf.independent_coupling(moons.sample0, moons.sample1), ITERS, batch_size=1024, lr=3e-3)\n"
         "S_moons = rf.straightness(flow_moons, z_moons, 100)"),
    ],
    "02_reflow_and_straightness.ipynb": [
        ("    # your code here\n    return None",
         "    vel = n * (traj[1:] - traj[:-1])\n    return float((traj[-1] - traj[0] - vel).pow(2).sum(-1).mean())"),
        ("cost_independent = cost_1rf = cost_2rf = None   # your code here",
         "cost = lambda a, b: (b - a).pow(2).sum(1).mean().item()\n"
         "cost_independent = cost(zz, xx)\n"
         "cost_1rf = cost(*rf.generate_pairs(flows['1-rf'], zz, 25, 'rk4'))\n"
         "cost_2rf = cost(*rf.generate_pairs(flows['2-rf'], zz, 25, 'rk4'))"),
    ],
    "03_distillation.ipynb": [
        ("my_loss = None   # your code here",
         "with torch.no_grad():\n"
         "    my_loss = (z0b + students['2-rf'](z0b, torch.zeros(len(z0b))) - z1b).pow(2).mean()"),
        ("weak_students = W_weak = None   # your code here",
         "weak_students = {}\n"
         "for name, prs in [('1-rf', pairs1), ('2-rf', pairs2)]:\n"
         "    weak_students[name] = VelocityMLP(hidden=32, depth=2)\n"
         "    rf.train_student(weak_students[name], rf.pairs_coupling(*prs), 300, k=1, batch_size=1024,\n"
         "                     lr=3e-3, seed=7, progress=False)\n"
         "with torch.no_grad():\n"
         "    W_weak = {k: rf.w2(rf.euler(m, z_eval, 1), target) for k, m in weak_students.items()}"),
    ],
    "04_stable_diffusion_from_scratch.ipynb": [
        ("def read_header(path):\n    # your code here\n    return None",
         "def read_header(path):\n    data = Path(path).read_bytes()\n    n = struct.unpack('<Q', data[:8])[0]\n"
         "    return {k: (v['dtype'], v['shape']) for k, v in json.loads(data[8:8 + n]).items() if k != '__metadata__'}"),
        ("attn_params = None   # your code here",
         "attn_params = sum(p.numel() for n, p in models['UNet'].named_parameters() if '.attn1.' in n or '.attn2.' in n)"),
    ],
    "05_instaflow_sampling.ipynb": [
        ("def my_step(latents, v, w, dt):\n    # your code here\n    return None",
         "def my_step(latents, v, w, dt):\n    neg, text = v.chunk(2)\n    return latents + dt * (neg + w * (text - neg))"),
        ("def my_slerp(a, b, alpha):\n    # your code here\n    return None",
         "def my_slerp(a, b, alpha):\n    th = torch.arccos((a * b).sum() / (a.norm() * b.norm()))\n"
         "    return (torch.sin((1 - alpha) * th) * a + torch.sin(alpha * th) * b) / torch.sin(th)"),
    ],
    "06_instaflow_training.ipynb": [
        ("def my_one_step(unet, x0, ctx):\n    # your code here\n    return None",
         "def my_one_step(unet, x0, ctx):\n    return x0 + unet(x0, torch.full((len(x0),), 1000.0), ctx)"),
    ],
    "07_straight_flows_in_use.ipynb": [
        ("def my_invert(v, x1, n):\n    # your code here\n    return None",
         "def my_invert(v, x1, n):\n    z = x1\n    for i in range(n):\n"
         "        z = z - v(z, torch.full((len(z),), 1.0 - i / n)) / n\n    return z"),
        ("my_edit = None   # your code here",
         "with torch.no_grad():\n"
         "    my_edit = rf.euler(field('2-RF', caps_new, 1.0), rf.invert(field('2-RF', caps, 1.0), x, 2), 2)"),
    ],
    "08_comparing_flows.ipynb": [
        ("def my_vp_target(x0, x1, t):\n    # your code here\n    return None",
         "def my_vp_target(x0, x1, t):\n    a, b = 19.9, 0.1\n    alpha = torch.exp(-a * (1 - t) ** 2 / 4 - b * (1 - t) / 2)\n"
         "    d_alpha = alpha * (a * (1 - t) / 2 + b / 2)\n    beta = torch.sqrt(1 - alpha ** 2)\n"
         "    return d_alpha * x1 - alpha * d_alpha / beta * x0"),
        ("def my_ot_pairs(x0, x1):\n    # your code here\n    return None",
         "def my_ot_pairs(x0, x1):\n    col = rf.linear_sum_assignment(torch.cdist(x0, x1).pow(2).double().numpy())\n"
         "    return x1[torch.from_numpy(col)]"),
        ("winner_at_2 = None   # your code here", "winner_at_2 = min(W, key=lambda m: W[m][1])"),
    ],
    "09_controlnet.ipynb": [
        ("my_iou = None   # your code here",
         "fg = ((shown['student, 1 step, with'] + 1) / 2).amax(1) > 0.5\nm = masks[:, 0] > 0\n"
         "my_iou = ((fg & m).flatten(1).sum(1) / (fg | m).flatten(1).sum(1).clamp(min=1)).mean()"),
    ],
    "10_few_step_methods.ipynb": [
        ("def my_consistency_fn(model, x, t):\n    # your code here\n    return None",
         "def my_consistency_fn(model, x, t):\n    return x + (1 - t)[:, None] * model(x, t)"),
        ("def my_meanflow_target(model, xt, t, r, v):\n    # your code here\n    return None",
         "def my_meanflow_target(model, xt, t, r, v):\n"
         "    u, dudt = jvp(model, (xt, t, r), (v, torch.ones_like(t), torch.zeros_like(r)))\n"
         "    return u, (v + (r - t)[:, None] * dudt).detach()"),
        ("fewest_steps = None   # your code here",
         "fewest_steps = {m: next((n for n, x in zip(steps, W[m]) if x < 2.0), None) for m in W}"),
    ],
    "11_distribution_matching.ipynb": [
        ("def my_score(v, x, t):\n    # your code here\n    return None",
         "def my_score(v, x, t):\n    return (t[:, None] * v(x, t) - x) / (1 - t)[:, None]"),
        ("def my_dmd_direction(x_g, x_real, x_fake):\n    # your code here\n    return None",
         "def my_dmd_direction(x_g, x_real, x_fake):\n"
         "    return -(x_fake - x_real) / (x_g - x_real).abs().mean(1, keepdim=True)"),
        ("def my_lost_share(x):\n    # your code here\n    return None",
         "def my_lost_share(x):\n    return (torch.cdist(x.double(), modes.double()).argmin(1) == 2).double().mean().item()"),
    ],
    "12_solvers_and_small_models.ipynb": [
        ("def my_ddim_step(x, v, t, s):\n    # your code here\n    return None",
         "def my_ddim_step(x, v, t, s):\n    x1_hat, eps_hat = x + (1 - t) * v, x - t * v\n"
         "    return s * x1_hat + (1 - s) * eps_hat"),
        ("def my_shifted_grid(n, shift):\n    # your code here\n    return None",
         "def my_shifted_grid(n, shift):\n    sig = [1 - i / n for i in range(n + 1)]\n"
         "    return [1 - shift * x / (1 + (shift - 1) * x) for x in sig]"),
        ("def my_annealed_noise(z0, beta, xi):\n    # your code here\n    return None",
         "def my_annealed_noise(z0, beta, xi):\n    return (1 - beta ** 2) ** 0.5 * z0 + beta * xi"),
    ],
}


# (the same exercise stub, a plausible wrong answer): each check must print ✗ for it
WRONG = {
    "01_rectified_flow.ipynb": [   # t at the end of the step; the target's sign flipped
        ("def my_euler(v, z0, n):\n    # your code here\n    return None",
         "def my_euler(v, z0, n):\n    z = z0\n    with torch.no_grad():\n        for i in range(n):\n"
         "            z = z + v(z, torch.full((len(z),), (i + 1) / n)) / n\n    return z"),
        ("my_loss = None   # your code here",
         "with torch.no_grad():\n    xt = tt[:, None] * x1 + (1 - tt[:, None]) * x0\n"
         "    my_loss = ((x0 - x1) - flow1(xt, tt)).pow(2).mean()"),
        ("flow_moons = S_moons = None   # your code here",        # measured before training
         "flow_moons = VelocityMLP()\nS_moons = rf.straightness(flow_moons, z_moons, 100)"),
    ],
    "02_reflow_and_straightness.ipynb": [   # the velocity without the factor N; squared lengths averaged over coordinates
        ("    # your code here\n    return None",
         "    vel = traj[1:] - traj[:-1]\n    return float((traj[-1] - traj[0] - vel).pow(2).sum(-1).mean())"),
        ("cost_independent = cost_1rf = cost_2rf = None   # your code here",
         "cost = lambda a, b: (b - a).pow(2).mean().item()\n"
         "cost_independent = cost(zz, xx)\n"
         "cost_1rf = cost(*rf.generate_pairs(flows['1-rf'], zz, 25, 'rk4'))\n"
         "cost_2rf = cost(*rf.generate_pairs(flows['2-rf'], zz, 25, 'rk4'))"),
    ],
    "03_distillation.ipynb": [   # the student evaluated at t = 1 instead of t = 0; weak students never trained
        ("my_loss = None   # your code here",
         "with torch.no_grad():\n"
         "    my_loss = (z0b + students['2-rf'](z0b, torch.ones(len(z0b))) - z1b).pow(2).mean()"),
        ("weak_students = W_weak = None   # your code here",
         "weak_students = {k: VelocityMLP(hidden=32, depth=2) for k in ('1-rf', '2-rf')}\n"
         "with torch.no_grad():\n"
         "    W_weak = {k: rf.w2(rf.euler(m, z_eval, 1), target) for k, m in weak_students.items()}"),
    ],
    "04_stable_diffusion_from_scratch.ipynb": [   # shapes as tuples, not the header's lists; cross-attention only
        ("def read_header(path):\n    # your code here\n    return None",
         "def read_header(path):\n    data = Path(path).read_bytes()\n    n = struct.unpack('<Q', data[:8])[0]\n"
         "    return {k: (v['dtype'], tuple(v['shape'])) for k, v in json.loads(data[8:8 + n]).items() if k != '__metadata__'}"),
        ("attn_params = None   # your code here",
         "attn_params = sum(p.numel() for n, p in models['UNet'].named_parameters() if '.attn2.' in n)"),
    ],
    "05_instaflow_sampling.ipynb": [   # guidance around the text prediction; a straight line, not slerp
        ("def my_step(latents, v, w, dt):\n    # your code here\n    return None",
         "def my_step(latents, v, w, dt):\n    neg, text = v.chunk(2)\n    return latents + dt * (text + w * (text - neg))"),
        ("def my_slerp(a, b, alpha):\n    # your code here\n    return None",
         "def my_slerp(a, b, alpha):\n    return (1 - alpha) * a + alpha * b"),
    ],
    "06_instaflow_training.ipynb": [   # the timestep of data (0), not of noise (1000)
        ("def my_one_step(unet, x0, ctx):\n    # your code here\n    return None",
         "def my_one_step(unet, x0, ctx):\n    return x0 + unet(x0, torch.zeros(len(x0)), ctx)"),
    ],
    "07_straight_flows_in_use.ipynb": [   # stepping forwards; inverting under the new caption
        ("def my_invert(v, x1, n):\n    # your code here\n    return None",
         "def my_invert(v, x1, n):\n    z = x1\n    for i in range(n):\n"
         "        z = z + v(z, torch.full((len(z),), 1.0 - i / n)) / n\n    return z"),
        ("my_edit = None   # your code here",
         "with torch.no_grad():\n"
         "    my_edit = rf.euler(field('2-RF', caps_new, 1.0), rf.invert(field('2-RF', caps_new, 1.0), x, 2), 2)"),
    ],
    "08_comparing_flows.ipynb": [   # beta's derivative forgotten; no re-pairing; the highest W2
        ("def my_vp_target(x0, x1, t):\n    # your code here\n    return None",
         "def my_vp_target(x0, x1, t):\n    a, b = 19.9, 0.1\n    alpha = torch.exp(-a * (1 - t) ** 2 / 4 - b * (1 - t) / 2)\n"
         "    return alpha * (a * (1 - t) / 2 + b / 2) * x1"),
        ("def my_ot_pairs(x0, x1):\n    # your code here\n    return None", "def my_ot_pairs(x0, x1):\n    return x1"),
        ("winner_at_2 = None   # your code here", "winner_at_2 = max(W, key=lambda m: W[m][1])"),
    ],
    "09_controlnet.ipynb": [   # one IoU over the whole batch instead of the mean of per-image IoUs
        ("my_iou = None   # your code here",
         "fg = ((shown['student, 1 step, with'] + 1) / 2).amax(1) > 0.5\nm = masks[:, 0] > 0\n"
         "my_iou = (fg & m).sum() / (fg | m).sum()"),
    ],
    "10_few_step_methods.ipynb": [   # the boundary at t = 0; the tangent of (t, r) swapped; the N of the lowest W2
        ("def my_consistency_fn(model, x, t):\n    # your code here\n    return None",
         "def my_consistency_fn(model, x, t):\n    return x + t[:, None] * model(x, t)"),
        ("def my_meanflow_target(model, xt, t, r, v):\n    # your code here\n    return None",
         "def my_meanflow_target(model, xt, t, r, v):\n"
         "    u, dudt = jvp(model, (xt, t, r), (v, torch.zeros_like(t), torch.ones_like(r)))\n"
         "    return u, (v + (r - t)[:, None] * dudt).detach()"),
        ("fewest_steps = None   # your code here",
         "fewest_steps = {m: min(steps, key=lambda n: W[m][steps.index(n)]) for m in W}"),
    ],
    "11_distribution_matching.ipynb": [   # the score's sign flipped; normalised by the whole batch; within 1 of the mode
        ("def my_score(v, x, t):\n    # your code here\n    return None",
         "def my_score(v, x, t):\n    return (x - t[:, None] * v(x, t)) / (1 - t)[:, None]"),
        ("def my_dmd_direction(x_g, x_real, x_fake):\n    # your code here\n    return None",
         "def my_dmd_direction(x_g, x_real, x_fake):\n    return -(x_fake - x_real) / (x_g - x_real).abs().mean()"),
        ("def my_lost_share(x):\n    # your code here\n    return None",
         "def my_lost_share(x):\n    return ((x - modes[2]).norm(dim=1) < 1).double().mean().item()"),
    ],
    "12_solvers_and_small_models.ipynb": [   # alpha and sigma swapped; the shift applied to t; a linear mix
        ("def my_ddim_step(x, v, t, s):\n    # your code here\n    return None",
         "def my_ddim_step(x, v, t, s):\n    x1_hat, eps_hat = x + (1 - t) * v, x - t * v\n"
         "    return (1 - s) * x1_hat + s * eps_hat"),
        ("def my_shifted_grid(n, shift):\n    # your code here\n    return None",
         "def my_shifted_grid(n, shift):\n    u = [i / n for i in range(n + 1)]\n"
         "    return [shift * x / (1 + (shift - 1) * x) for x in u]"),
        ("def my_annealed_noise(z0, beta, xi):\n    # your code here\n    return None",
         "def my_annealed_noise(z0, beta, xi):\n    return (1 - beta) * z0 + beta * xi"),
    ],
}


def _with_answers(nb, name):
    """The notebook with each exercise answered twice in a row: a likely mistake (WRONG), then the reference answer
    (SOLUTIONS) in copies of the exercise's cells up to its check, tagged `answer: right`. The cells after it run
    on the right answer, as a student's would."""
    for (stub, wrong), (stub_, right) in zip(WRONG[name], SOLUTIONS[name]):
        assert stub == stub_
        at = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and stub in c.source]
        assert len(at) == 1, f"exercise stub {stub!r} not found once in {name}"
        i = at[0]
        end = next(j for j in range(i, len(nb.cells)) if nb.cells[j].cell_type == "code" and "✓" in nb.cells[j].source)
        copies = [nbformat.from_dict(copy.deepcopy(dict(c))) for c in nb.cells[i:end + 1]]
        copies[0].source = copies[0].source.replace(stub, right)
        for c in copies:
            c.metadata["answer"] = "right"
            if "id" in c:
                c.id += "-right"
        nb.cells[i].source = nb.cells[i].source.replace(stub, wrong)
        nb.cells[end + 1:end + 1] = copies
    return nb


def _printed(cells):
    return "".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.get("outputs", []))


def test_there_are_tutorials():
    assert [p.name for p in NOTEBOOKS] == list(SOLUTIONS) == list(WRONG)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_with_outputs(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "run every cell before committing"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert any(o.get("data", {}).get("image/png") for c in code for o in c.outputs), "no plot in the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_teach(path):
    """Full-mode outputs with no failed claim; objectives, prerequisites and run times on top; every exercise
    marked ⋆ to ⋆⋆⋆ and checked, no check printing the value it compares with; fast mode read one way."""
    nb = json.loads(path.read_text())
    assert failed_claims(nb) == []
    assert missing_header(nb) == []
    assert exercise_faults(nb) == []
    assert leaking_checks(nb) == []
    assert own_fast_reads(nb) == []


def test_the_teaching_checks_see_each_fault():
    def cell(kind, text, out=""):
        return {"cell_type": kind, "source": [text], "outputs": [{"text": [out]}] if out else []}
    top = cell("markdown", "# 0\n\n**Objectives.** x\n\n**Prerequisites.** y\n\n**Run time** 1 min full, 5 s fast.\n")
    good = {"cells": [top, cell("code", "claim(True, 'a')", "claim ✓ a\n"), cell("markdown", "**Exercise 1** (⋆). Do it."),
                      cell("code", 'print("✓ correct" if ok else "✗ differs")')]}
    assert (failed_claims(good), missing_header(good), exercise_faults(good), leaking_checks(good)) == ([], [], [], [])
    assert failed_claims({"cells": [cell("code", "", "claim ✗ a\n")]}) == ["claim ✗ a"]
    assert missing_header({"cells": [cell("markdown", "# 0\n\n**Objectives.** x\n\n**Run time** 1 min.\n")]}) == [
        "**Prerequisites.**"]
    assert missing_header({"cells": [cell("markdown", "**Objectives.** **Prerequisites.** **Run time** 1 min\n")]}) == [
        "run times, full and fast"]
    assert exercise_faults({"cells": [cell("markdown", "**Exercise 1** (⋆). Do it."), cell("markdown", "**Exercise 2**. More.")]}) == [
        "no check: **Exercise 1** (⋆). Do it.", "no difficulty mark: **Exercise 2**. More.", "no check: **Exercise 2**. More."]
    assert leaking_checks({"cells": [cell("code", 'print("✓" if ok else f"✗ expected {want:.4f}")')]}) != []
    assert leaking_checks({"cells": [cell("code", 'print("✓" if ok else f"✗ {mine} != {ref}")')]}) != []
    assert own_fast_reads({"cells": [cell("code", 'FAST = os.environ.get("RECTFLOW_FAST") == "1"')]}) != []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_in_fast_mode_and_its_checks_judge_answers(path, mini_fast):
    """The notebook as a student runs it (fast mode), each exercise first with a likely mistake, whose check must
    say ✗, then with a correct answer, whose check must say ✓."""
    nb = _with_answers(nbformat.read(path, as_version=4), path.name)
    os.environ["RECTFLOW_FAST"] = "1"      # the kernel inherits these: tiny iterations, and the mini notebooks
    os.environ["RECTFLOW_MINI_FAST"] = str(mini_fast / "run")    # start from a copy of the session's fast mini run
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "tutorials")}}).execute()
    first = _printed(c for c in nb.cells if c.metadata.get("answer") != "right")
    again = _printed(c for c in nb.cells if c.metadata.get("answer") == "right")
    assert "✓" not in first and first.count("✗") == len(WRONG[path.name]), first[-2000:]
    assert again.count("✓") == len(SOLUTIONS[path.name]) and "✗" not in again, again[-2000:]
