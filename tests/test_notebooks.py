"""The tutorials run top to bottom (fast mode), are committed with outputs, and their exercise
checks accept a correct answer and reject a wrong one (the mistake a student is likely to make)."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

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
    ],
    "02_reflow_and_straightness.ipynb": [
        ("    # your code here\n    return None",
         "    vel = n * (traj[1:] - traj[:-1])\n    return float((traj[-1] - traj[0] - vel).pow(2).sum(-1).mean())"),
        ("cost_independent = cost_1rf = cost_2rf = None   # your code here",
         "zz = ds.sample0(2048, torch.Generator().manual_seed(9))\n"
         "cost = lambda a, b: (b - a).pow(2).sum(1).mean().item()\n"
         "cost_independent = cost(zz, ds.sample1(2048, torch.Generator().manual_seed(10)))\n"
         "cost_1rf = cost(*rf.generate_pairs(flows['1-rf'], zz, 25, 'rk4'))\n"
         "cost_2rf = cost(*rf.generate_pairs(flows['2-rf'], zz, 25, 'rk4'))"),
    ],
    "03_distillation.ipynb": [
        ("my_loss = None   # your code here",
         "with torch.no_grad():\n"
         "    my_loss = (z0b + students['2-rf'](z0b, torch.zeros(len(z0b))) - z1b).pow(2).mean()"),
    ],
    "04_stable_diffusion_from_scratch.ipynb": [
        ("def read_header(path):\n    # your code here\n    return None",
         "def read_header(path):\n    data = Path(path).read_bytes()\n    n = struct.unpack('<Q', data[:8])[0]\n"
         "    return {k: (v['dtype'], v['shape']) for k, v in json.loads(data[8:8 + n]).items() if k != '__metadata__'}"),
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
         "    my_edit = rf.euler(field('2-RF', caps_green, 1.0), rf.invert(field('2-RF', caps, 1.0), x, 2), 2)"),
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
        ("winner_at_2 = None   # your code here",
         "winner_at_2 = min((m for m in W if W[m][1] == W[m][1]), key=lambda m: W[m][1])"),
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
    ],
    "02_reflow_and_straightness.ipynb": [   # the velocity without the factor N; costs in the wrong order
        ("    # your code here\n    return None",
         "    vel = traj[1:] - traj[:-1]\n    return float((traj[-1] - traj[0] - vel).pow(2).sum(-1).mean())"),
        ("cost_independent = cost_1rf = cost_2rf = None   # your code here",
         "cost_independent, cost_1rf, cost_2rf = 1.0, 2.0, 3.0"),
    ],
    "03_distillation.ipynb": [   # the student evaluated at t = 1 instead of t = 0
        ("my_loss = None   # your code here",
         "with torch.no_grad():\n"
         "    my_loss = (z0b + students['2-rf'](z0b, torch.ones(len(z0b))) - z1b).pow(2).mean()"),
    ],
    "04_stable_diffusion_from_scratch.ipynb": [   # shapes as tuples, not the header's lists
        ("def read_header(path):\n    # your code here\n    return None",
         "def read_header(path):\n    data = Path(path).read_bytes()\n    n = struct.unpack('<Q', data[:8])[0]\n"
         "    return {k: (v['dtype'], tuple(v['shape'])) for k, v in json.loads(data[8:8 + n]).items() if k != '__metadata__'}"),
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
         "    my_edit = rf.euler(field('2-RF', caps_green, 1.0), rf.invert(field('2-RF', caps_green, 1.0), x, 2), 2)"),
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
    "10_few_step_methods.ipynb": [   # the boundary at t = 0; the tangent of (t, r) swapped; the highest W2
        ("def my_consistency_fn(model, x, t):\n    # your code here\n    return None",
         "def my_consistency_fn(model, x, t):\n    return x + t[:, None] * model(x, t)"),
        ("def my_meanflow_target(model, xt, t, r, v):\n    # your code here\n    return None",
         "def my_meanflow_target(model, xt, t, r, v):\n"
         "    u, dudt = jvp(model, (xt, t, r), (v, torch.zeros_like(t), torch.ones_like(r)))\n"
         "    return u, (v + (r - t)[:, None] * dudt).detach()"),
        ("winner_at_2 = None   # your code here",
         "winner_at_2 = max((m for m in W if W[m][1] == W[m][1]), key=lambda m: W[m][1])"),
    ],
}


def _substitute(nb, name, answers):
    for old, new in answers[name]:
        cells = [c for c in nb.cells if c.cell_type == "code" and old in c.source]
        assert len(cells) == 1, f"exercise stub {old!r} not found once in {name}"
        cells[0].source = cells[0].source.replace(old, new)
    return nb


def _execute(nb):
    os.environ["RECTFLOW_FAST"] = "1"      # the kernel inherits it: tiny iterations
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "tutorials")}}).execute()
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


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
def test_runs_in_fast_mode_and_its_checks_reject_wrong_answers(path):
    """The notebook as a student runs it, with a likely mistake in each exercise: every check says ✗."""
    out = _execute(_substitute(nbformat.read(path, as_version=4), path.name, WRONG))
    assert "✓" not in out and out.count("✗") == len(WRONG[path.name]), out[-2000:]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercise_checks_accept_a_correct_answer(path):
    out = _execute(_substitute(nbformat.read(path, as_version=4), path.name, SOLUTIONS))
    assert out.count("✓") == len(SOLUTIONS[path.name]) and "✗" not in out, out[-2000:]
