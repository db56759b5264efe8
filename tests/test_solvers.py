"""rectflow/solvers.py: DDIM is Euler on this path, each solver's order measured on a flow with a closed-form
solution, DPM-Solver++(2M) against diffusers' solver for flow models, the shifted grid against diffusers' flow_shift;
and `python -m toy solvers`' bookkeeping."""
import dataclasses
import json

import pytest
import torch

import rectflow as rf
from rectflow.solvers import GRID_SOLVERS, ddim, dpmpp_2m, shifted_grid
from toy.exact import mixture_velocity
from toy.experiment import Bench, Config, run
from toy.solvers import run_solvers

A, B, VAR = [[0.0, 0.0]], [[3.0, -1.0]], 0.25


def gaussian_flow(n=256):
    """1-RF between N(A, VAR I) and N(B, VAR I): v in closed form (toy/exact.py), and the ODE's endpoint from X_0
    is X_0 + B - A (the flow keeps the marginals N(m_t, (t^2 + (1 - t)^2) VAR I), so it only translates)."""
    x0 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * VAR ** 0.5
    return mixture_velocity(A, B, VAR), x0, x0 + torch.tensor(B[0], dtype=torch.float64)


def rms(a, b):
    return (a - b).pow(2).sum(-1).mean().sqrt().item()


def test_ddim_is_euler_on_any_grid():
    v, x0, _ = gaussian_flow()
    assert torch.allclose(ddim(v, x0, shifted_grid(8)), rf.euler(v, x0, 8), atol=1e-12, rtol=0)
    ts, z = shifted_grid(5, shift=3.0), x0
    for t, s in zip(ts, ts[1:]):                                   # X_s = X_t + (s - t) v(X_t, t)
        z = z + (s - t) * v(z, torch.full((len(z),), t, dtype=z.dtype))
    assert torch.allclose(ddim(v, x0, ts), z, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name, order", [("ddim", 1), ("dpmpp_2m", 2), ("deis_tab2", 2)])
def test_order_of_convergence(name, order):
    """Halving the step divides the endpoint error by 2 ** order (measured where it has settled: DPM-Solver++(2M)
    reaches it slowly, with its first-order second and last steps)."""
    v, x0, x1 = gaussian_flow()
    err = [rms(GRID_SOLVERS[name](v, x0, shifted_grid(n)), x1) for n in (64, 128, 256)]
    ratios = [a / b for a, b in zip(err, err[1:])]
    for r in ratios:
        assert 0.8 * 2 ** order < r < 1.25 * 2 ** order, (name, err, ratios)


def test_dpmpp_2m_matches_diffusers_flow_solver():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                  flow_shift=2.0)
    sched.set_timesteps(6)
    v = mixture_velocity([[0.0, 0.0], [4.0, 0.0]], [[2.0, 3.0], [-2.0, -3.0]], 0.3)
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    ts = [1.0 - float(s) for s in sched.sigmas]              # diffusers' sigma is the noise level 1 - t
    x = x0
    for t, k in zip(ts, sched.timesteps):                   # its flow is noise - data: our -v
        x = sched.step(-v(x, torch.full((len(x),), t)), k, x).prev_sample
    assert torch.allclose(dpmpp_2m(v, x0, ts), x, atol=1e-5, rtol=0)
    assert not torch.allclose(ddim(v, x0, ts), x, atol=1e-3, rtol=0)   # the second-order term is in play


def test_shifted_grid_is_diffusers_flow_shift():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                  flow_shift=3.0)
    sched.set_timesteps(7)
    ours = shifted_grid(7, shift=3.0, t0=1 / 1000)           # diffusers' flow sigmas start at 1 - 1/1000
    assert ours == pytest.approx([1.0 - float(s) for s in sched.sigmas], abs=1e-6)
    assert shifted_grid(4) == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert shifted_grid(4, shift=3.0)[1] < 0.25                # shift > 1: smaller first steps, from the noise


def test_bad_grid_refused():
    v, x0, _ = gaussian_flow(4)
    for ts in ([0.0], [0.0, 0.5, 0.5, 1.0], [0.2, 0.1], [-0.1, 1.0], [0.0, 1.1]):
        with pytest.raises(ValueError, match="time grid"):
            dpmpp_2m(v, x0, ts)
    with pytest.raises(ValueError, match="shift"):
        shifted_grid(4, shift=0.0)


def test_dpmpp_2m_from_the_noise_end_is_first_order_on_its_second_step():
    """From t_0 = 0 (lambda = -inf) the slope in lambda is 0, and the step onto t = 1 lands on D: up to three steps
    from the noise end are Euler steps; the third of four is not."""
    v, x0, _ = gaussian_flow(16)
    assert torch.allclose(dpmpp_2m(v, x0, [0.0, 0.3, 0.6, 1.0]), ddim(v, x0, [0.0, 0.3, 0.6, 1.0]), atol=1e-12, rtol=0)
    assert not torch.allclose(dpmpp_2m(v, x0, shifted_grid(4)), ddim(v, x0, shifted_grid(4)), atol=1e-6)


# ---- python -m toy solvers ---------------------------------------------------------------------------------------

def tiny(cfg):
    return dataclasses.replace(cfg, iters=20, distill_iters=20, n_pairs=256, n_samples=64, n_eval=64, batch_size=256,
                               hidden=32, depth=2, progress=False)


def test_toy_solvers_command(tmp_path, monkeypatch, capsys):
    """The command's record: Euler = the run's own W2, one step is Euler for every multistep solver, each searched
    shift is the calibration's argmin, calibration never sees an evaluation noise, and the table shows it all."""
    import toy.__main__ as cli
    import toy.solvers as ts
    seen, search = [], ts.search_shift
    monkeypatch.setattr(ts, "search_shift", lambda v, s, k, z, target: seen.append((z, target)) or search(v, s, k, z,
                                                                                                         target))
    monkeypatch.setattr(cli, "run_solvers", lambda cfg: ts.run_solvers(tiny(cfg)))
    assert cli.main(["solvers", "--fast", "--out", str(tmp_path / "s")]) == 0
    m = json.loads((tmp_path / "s" / "solvers.json").read_text())
    w2 = m["w2"]
    assert m["fast"] and set(w2["1-rf rk4"]) == {"4", "8"} and set(w2["1-rf heun"]) == {"2", "4", "8"}
    assert w2["1-rf deis_tab2"]["1"] == w2["1-rf euler"]["1"]            # one step of a multistep solver is Euler's
    for name, per_nfe in m["search"].items():
        for k, scores in per_nfe.items():
            assert len(scores) == len(ts.SHIFTS) and m["shift"][name][k] == float(min(scores, key=scores.get))
    evaluation = Bench(tiny(Config.fast()))
    for z, target in seen:                                   # no calibration point is an evaluation point
        assert not (z[:, None] == evaluation.z_eval[None]).all(-1).any()
        assert not (target[:, None] == evaluation.target[None]).all(-1).any()
    assert seen
    out = capsys.readouterr().out
    assert "1-rf deis_tab2, searched grid" in out and f"(s={m['shift']['deis_tab2']['8']:g})" in out


def test_toy_solvers_euler_is_the_toy_runs_euler():
    cfg = tiny(Config.fast())
    m = run_solvers(cfg)
    stages = run(cfg).metrics["stages"]
    for k in ("1", "2", "4"):
        assert m["w2"]["1-rf euler"][int(k)] == pytest.approx(stages["1-rf"]["w2"][k])
        assert m["w2"]["2-rf euler"][int(k)] == pytest.approx(stages["2-rf"]["w2"][k])
    assert m["w2"]["2-rf-distilled (one step)"][1] == pytest.approx(stages["2-rf-distilled"]["w2"]["1"])
