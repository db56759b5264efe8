import math

import pytest
import torch

import rectflow as rf


def linear(a):
    return lambda x, t: a * x


def test_euler_on_a_linear_field_is_the_exact_recursion():
    z0 = torch.randn(7, 3, dtype=torch.float64)
    for n in (1, 2, 5, 50):
        z1 = rf.euler(linear(0.7), z0, n)
        torch.testing.assert_close(z1, (1 + 0.7 / n) ** n * z0)


def test_euler_trajectory_shape_and_values():
    z0 = torch.ones(4, 2, 2, 2, dtype=torch.float64)
    traj = rf.euler(linear(1.0), z0, 4, return_trajectory=True)
    assert traj.shape == (5, 4, 2, 2, 2)
    for i in range(5):
        torch.testing.assert_close(traj[i], (1.25 ** i) * z0)


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_solver_orders_of_convergence(method, order):
    z0 = torch.ones(1, 1, dtype=torch.float64)
    err = [abs(rf.solve(linear(1.0), z0, n, method).item() - math.e) for n in (8, 16)]
    rate = math.log2(err[0] / err[1])
    assert abs(rate - order) < 0.2, (method, err, rate)


def test_time_dependent_field_and_condition():
    # dz/dt = cond * t  =>  z1 = z0 + cond / 2; Heun is exact for a field linear in t.
    z0 = torch.zeros(3, 1, dtype=torch.float64)
    cond = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    v = lambda x, t, c: c * t[:, None]  # noqa: E731
    torch.testing.assert_close(rf.solve(v, z0, 3, "heun", cond=cond), cond / 2)


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "4"])
def test_non_positive_or_non_integer_steps_are_refused(bad):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        rf.euler(linear(1.0), torch.zeros(2, 2), bad)


def test_unknown_solver():
    with pytest.raises(ValueError, match="unknown ODE solver 'rk45'"):
        rf.solve(linear(1.0), torch.zeros(2, 2), 4, "rk45")


def test_backwards_then_forwards_euler_on_a_straight_field_is_exact():
    """v constant: X_0 = X_1 - N (1/N) c, then forwards again: back to X_1 up to rounding."""
    c = torch.tensor([3.0, -2.0], dtype=torch.float64)
    x1 = torch.randn(16, 2, dtype=torch.float64)
    v = lambda x, t: c.expand_as(x)  # noqa: E731
    for n in (1, 3, 10):
        z0 = rf.invert(v, x1, n)
        torch.testing.assert_close(z0, x1 - c, rtol=0, atol=1e-13)
        torch.testing.assert_close(rf.euler(v, z0, n), x1, rtol=0, atol=1e-13)


def test_any_time_span_forwards_and_backwards():
    # dz/dt = t: z(t1) = z(t0) + (t1^2 - t0^2) / 2; Heun is exact for a field linear in t, both ways
    v = lambda x, t: t[:, None].expand_as(x)  # noqa: E731
    z = torch.zeros(2, 1, dtype=torch.float64)
    torch.testing.assert_close(rf.solve(v, z, 3, "heun", t0=0.25, t1=0.75), z + 0.25)
    torch.testing.assert_close(rf.solve(v, z, 3, "heun", t0=1.0, t1=0.0), z - 0.5)
    torch.testing.assert_close(rf.invert(v, z, 5, "heun"), z - 0.5)
    traj = rf.euler(v, z, 4, t0=1.0, t1=0.0, return_trajectory=True)
    # Euler backwards: X_{t - 1/4} = X_t - (1/4) t at t = 1, 3/4, 1/2, 1/4
    torch.testing.assert_close(traj[-1], z - (1 + 0.75 + 0.5 + 0.25) / 4)
    # the default span is [0, 1], unchanged
    assert torch.equal(rf.euler(linear(0.3), z + 1, 7), rf.euler(linear(0.3), z + 1, 7, t0=0.0, t1=1.0))


@pytest.mark.parametrize("method,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_backward_solvers_converge_at_their_order(method, order):
    z1 = torch.ones(1, 1, dtype=torch.float64)                 # dz/dt = z backwards: z(0) = z(1) / e
    err = [abs(rf.invert(linear(1.0), z1, n, method).item() - 1 / math.e) for n in (8, 16)]
    assert abs(math.log2(err[0] / err[1]) - order) < 0.2, (method, err)


def test_inversion_of_a_curved_flow_improves_with_steps():
    v = lambda x, t: torch.stack([-x[:, 1], x[:, 0]], 1) * 2  # noqa: E731  (rotation: curved paths)
    x1 = torch.randn(64, 2, dtype=torch.float64)
    errs = [(rf.euler(v, rf.invert(v, x1, n), n) - x1).pow(2).sum(1).mean().item() for n in (1, 4, 16, 64)]
    assert all(a > 2 * b for a, b in zip(errs, errs[1:])), errs


@pytest.mark.parametrize("span", [dict(t0=-0.1), dict(t1=1.5)])
def test_time_span_outside_0_1_is_refused(span):
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        rf.solve(linear(1.0), torch.zeros(2, 2), 4, **span)
