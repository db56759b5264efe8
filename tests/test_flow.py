import pytest
import torch

import rectflow as rf


def test_interpolation_is_exact_at_the_ends_and_linear_between():
    x0, x1 = torch.randn(5, 2), torch.randn(5, 2)
    assert torch.equal(rf.interpolate(x0, x1, torch.zeros(5)), x0)
    assert torch.equal(rf.interpolate(x0, x1, torch.ones(5)), x1)
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    expected = t[:, None] * x1 + (1 - t[:, None]) * x0
    torch.testing.assert_close(rf.interpolate(x0, x1, t), expected, rtol=0, atol=0)
    torch.testing.assert_close(rf.velocity_target(x0, x1), x1 - x0, rtol=0, atol=0)


def test_interpolation_broadcasts_over_image_shapes():
    x0, x1 = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0.1, 0.5, 0.9])
    xt = rf.interpolate(x0, x1, t)
    for i in range(3):
        torch.testing.assert_close(xt[i], t[i] * x1[i] + (1 - t[i]) * x0[i])
    torch.testing.assert_close(rf.interpolate(x0, x1, 0.5), (x0 + x1) / 2)


def test_loss_is_zero_for_the_true_velocity_of_a_straight_coupling():
    shift = torch.tensor([3.0, -1.0])
    x0 = torch.randn(64, 2)
    x1 = x0 + shift                    # every pair moves by the same vector
    v = lambda x, t: shift.expand_as(x)  # noqa: E731
    assert rf.rf_loss(v, x0, x1).item() < 1e-12   # (x0 + c) - x0 is c up to rounding
    wrong = lambda x, t: torch.zeros_like(x)  # noqa: E731
    assert rf.rf_loss(wrong, x0, x1).item() == pytest.approx(shift.pow(2).mean().item())


def test_loss_passes_condition_and_custom_loss():
    seen = {}

    def v(x, t, cond):
        seen["cond"] = cond
        return torch.zeros_like(x)
    x0, x1, c = torch.zeros(4, 2), torch.ones(4, 2), torch.arange(4)
    out = rf.rf_loss(v, x0, x1, cond=c, loss_fn=lambda p, tg: (p - tg).abs().sum())
    assert torch.equal(seen["cond"], c) and out.item() == 8.0


def test_time_samplers():
    g = torch.Generator().manual_seed(0)
    u = rf.sample_time(20000, "uniform", generator=g)
    assert u.min() >= 0 and u.max() <= 1 and abs(u.mean().item() - 0.5) < 0.01
    ln = rf.sample_time(20000, "logit_normal", generator=g)
    assert ln.min() > 0 and ln.max() < 1 and abs(ln.mean().item() - 0.5) < 0.01
    assert ln.std() < u.std()  # logit-normal concentrates on mid-times
    with pytest.raises(ValueError, match="unknown time sampler 'beta'"):
        rf.sample_time(3, "beta")
