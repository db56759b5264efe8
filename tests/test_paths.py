"""The interpolation paths of the paper's nonlinear extension (rectflow/paths.py) and path_loss on them."""
import math

import pytest
import torch

import rectflow as rf
from rectflow.paths import VP_A, VP_B


def test_linear_path_is_eq1_operation_for_operation():
    """rf_loss, and path_loss on the linear path, are bit-identical to Eq. (1) written out, for the same draw."""
    x0, x1 = torch.randn(256, 2), torch.randn(256, 2)
    v = torch.nn.Linear(3, 2)
    model = lambda x, t: v(torch.cat([x, t[:, None]], 1))  # noqa: E731
    t = rf.sample_time(256, generator=torch.Generator().manual_seed(3))
    eq1 = (model(t[:, None] * x1 + (1 - t[:, None]) * x0, t) - (x1 - x0)).pow(2).mean()
    assert torch.equal(rf.rf_loss(model, x0, x1, generator=torch.Generator().manual_seed(3)), eq1)
    for path in ("linear", rf.PATHS["linear"]):
        assert torch.equal(rf.path_loss(model, x0, x1, path, generator=torch.Generator().manual_seed(3)), eq1), path


@pytest.mark.parametrize("name", ["linear", "vp", "cosine"])
def test_paths_join_noise_to_data_and_their_targets_are_the_time_derivative(name):
    p = rf.get_path(name)
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    # the target is d/dt X_t: central finite differences of alpha and beta
    h = 1e-6
    torch.testing.assert_close(p.d_alpha(t), (p.alpha(t + h) - p.alpha(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(p.d_beta(t), (p.beta(t + h) - p.beta(t - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    assert p.alpha(one).item() == pytest.approx(1) and p.beta(one).item() == pytest.approx(0, abs=1e-12)
    expected_alpha0 = math.exp(-VP_A / 4 - VP_B / 2) if name == "vp" else 0.0   # VP keeps a trace of X_1
    assert p.alpha(zero).item() == pytest.approx(expected_alpha0, abs=1e-12)
    assert p.beta(zero).item() == pytest.approx(1, abs=1e-4)
    if name != "linear":                                        # variance preserving: alpha^2 + beta^2 = 1
        torch.testing.assert_close(p.alpha(t) ** 2 + p.beta(t) ** 2, torch.ones_like(t))


def test_vp_path_is_the_vp_sde_marginal_in_rectified_flow_time():
    """Song et al.'s VP SDE (beta(s) = 0.1 + 19.9 s, data at s = 0): x_s = a(s) x_data + sqrt(1 - a^2) eps,
    a(s) = exp(-1/2 int_0^s beta) = exp(-19.9 s^2 / 4 - 0.1 s / 2); here s = 1 - t."""
    p = rf.get_path("vp")
    s = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    integral = 0.1 * s + 19.9 * s ** 2 / 2                      # int_0^s (0.1 + 19.9 u) du
    torch.testing.assert_close(p.alpha(1 - s), torch.exp(-integral / 2))


def test_loss_on_a_nonlinear_path_targets_its_derivative():
    """The loss is zero for the time derivative of the path's X_t, taken here by autograd (jvp in t) of
    alpha_t X_1 + beta_t X_0 written out from the formulas, not by the path's own d_alpha / d_beta; the
    straight direction X_1 - X_0 is not that derivative, except on the linear path."""
    x0, x1 = torch.randn(64, 2), torch.randn(64, 2)
    written = {"cosine": (lambda t: torch.sin(math.pi * t / 2), lambda t: torch.cos(math.pi * t / 2)),
               "vp": (lambda t: torch.exp(-19.9 * (1 - t) ** 2 / 4 - 0.1 * (1 - t) / 2),
                      lambda t: torch.sqrt(1 - torch.exp(-19.9 * (1 - t) ** 2 / 4 - 0.1 * (1 - t) / 2) ** 2))}
    for name, (alpha, beta) in written.items():
        p = rf.get_path(name)

        def exact(x, t):
            tc = p.clip(t)[:, None]
            return torch.func.jvp(lambda s: alpha(s) * x1 + beta(s) * x0, (tc,), (torch.ones_like(tc),))[1]
        straight = lambda x, t: x1 - x0  # noqa: E731
        assert rf.path_loss(exact, x0, x1, name).item() < 1e-8
        assert rf.path_loss(straight, x0, x1, name).item() > 0.1
    assert rf.path_loss(lambda x, t: x1 - x0, x0, x1, "linear").item() == 0.0


def test_vp_stays_finite_at_t_1_and_unknown_paths_are_refused():
    x0, x1 = torch.randn(8, 2), torch.randn(8, 2)
    loss = rf.path_loss(lambda x, t: torch.zeros_like(x), x0, x1, "vp", t=torch.ones(8))
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match=r"unknown interpolation path 've': choose one of \['cosine', 'linear', 'vp'\]"):
        rf.path_loss(lambda x, t: x, x0, x1, "ve")
