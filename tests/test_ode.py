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
