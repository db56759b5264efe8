"""rectflow/slimflow.py against its formulas written out, and `python -m toy slim`'s bookkeeping."""
import dataclasses
import json

import pytest
import torch

import rectflow.slimflow as sf
from toy.experiment import Config
from toy.model import VelocityMLP
from toy.slim import run_slim


def test_annealing_schedule_and_noise():
    assert [sf.annealing_beta(i, 8) for i in (0, 2, 4, 8, 20)] == [1.0, 0.75, 0.5, 0.0, 0.0]
    z0 = torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0))
    out = sf.annealed_noise(z0, 0.6, torch.Generator().manual_seed(1))
    xi = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out, 0.8 * z0 + 0.6 * xi)                        # sqrt(1 - 0.36) = 0.8
    assert out.var(0).sub(1).abs().max() < 0.02                            # still N(0, I)
    assert torch.equal(sf.annealed_noise(z0, 0.0), z0)


def test_annealed_reflow_anneals_beta_over_three_eighths_of_the_steps(monkeypatch):
    betas, noise = [], sf.annealed_noise
    monkeypatch.setattr(sf, "annealed_noise", lambda z0, beta, gen: betas.append(beta) or noise(z0, beta, gen))
    z = torch.randn(64, 2)
    sf.train_annealed_reflow(VelocityMLP(hidden=8, depth=1), z, z + 1, 16, batch_size=8, progress=False)
    assert betas == [sf.annealing_beta(i, 6) for i in range(16)] and betas[0] == 1 and betas[6:] == [0.0] * 10


def test_flow_guided_loss_is_its_formula():
    torch.manual_seed(0)
    student, teacher = VelocityMLP(hidden=8, depth=2), VelocityMLP(hidden=8, depth=2)
    z0, z1, z = torch.randn(16, 2), torch.randn(16, 2), torch.randn(16, 2)
    loss = sf.flow_guided_loss(student, teacher, z0, z1, z, torch.Generator().manual_seed(3))
    loss.backward()
    grads = [p.grad.clone() for p in student.parameters()]
    assert all(p.grad is None for p in teacher.parameters())               # the teacher is not trained

    student.zero_grad()
    zero, t = torch.zeros(16), 0.2 + 0.6 * torch.rand(16, generator=torch.Generator().manual_seed(3))
    jump = z + student(z, zero)
    xt = (z + t[:, None] * (jump - z)).detach()                            # a point of the student's own path
    target = (xt + (1 - t[:, None]) * teacher(xt, t)).detach()             # the teacher's one Euler step to t = 1
    by_hand = ((z0 + student(z0, zero) - z1) ** 2).mean() + ((jump - target) ** 2).mean()
    by_hand.backward()
    assert torch.allclose(loss, by_hand)
    assert all(torch.allclose(g, p.grad) for g, p in zip(grads, student.parameters()))


def test_flow_guided_training_draws_its_own_noise(monkeypatch):
    """Each step's second term starts from fresh noise, not from the pairs' noise."""
    seen, loss = [], sf.flow_guided_loss
    monkeypatch.setattr(sf, "flow_guided_loss",
                        lambda s, t, z0, z1, z, gen: seen.append((z0, z)) or loss(s, t, z0, z1, z, gen))
    z = torch.randn(64, 2)
    teacher = VelocityMLP(hidden=8, depth=1)
    sf.train_flow_guided(VelocityMLP(hidden=8, depth=1), teacher, z, z + 1, 4, batch_size=8, progress=False)
    assert len(seen) == 4
    for z0, fresh in seen:
        assert fresh.shape == z0.shape and not (fresh[:, None] == z[None]).all(-1).any()


def test_toy_slim_command(tmp_path, monkeypatch, capsys):
    import toy.__main__ as cli
    tiny = dict(iters=30, distill_iters=30, n_pairs=256, n_samples=64, n_eval=64, batch_size=128, progress=False)
    monkeypatch.setattr(cli, "run_slim", lambda cfg: run_slim(dataclasses.replace(cfg, **tiny), widths=(16, 4)))
    assert cli.main(["slim", "--fast", "--out", str(tmp_path / "s")]) == 0
    m = json.loads((tmp_path / "s" / "slim.json").read_text())
    assert m["fast"] and list(m["widths"]) == ["16", "4"]
    assert m["widths"]["4"]["params"] == sum(p.numel() for p in VelocityMLP(hidden=4, depth=4).parameters())
    for e in m["widths"].values():
        for method in ("plain", "slimflow"):
            assert set(e[method]) == {"2-rf", "student"} and set(e[method]["student"]) == {"w2", "min_mode_share"}
    assert "slimflow student" in capsys.readouterr().out


def test_toy_slim_refuses_a_non_gaussian_source(tmp_path, capsys):
    import toy.__main__ as cli
    with pytest.raises(SystemExit) as e:
        cli.main(["slim", "--dataset", "paper", "--out", str(tmp_path / "s")])
    assert e.value.code == 2 and "not N(0, I)" in capsys.readouterr().err and not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="non-Gaussian source"):
        run_slim(Config.fast(dataset="paper"))
