import itertools

import numpy as np
import pytest
import torch

import rectflow as rf


def test_straightness_is_zero_for_straight_flows():
    z0 = torch.randn(256, 2, dtype=torch.float64)
    shift = lambda x, t: torch.tensor([1.0, -2.0], dtype=x.dtype).expand_as(x)  # noqa: E731
    assert rf.straightness(shift, z0, 50) == 0.0
    # X_t = (1 + t) Z_0 (a straight line at constant speed) has v(x, t) = x / (1 + t):
    scaling = lambda x, t: x / (1 + t[:, None])  # noqa: E731
    assert rf.straightness(scaling, z0, 50) < 1e-20


def test_straightness_of_a_rotation_matches_the_closed_form():
    # v(x) = J x turns each point around a circle of radius r = |Z_0| at unit angular speed.
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)
    rot = lambda x, t: x @ J.T  # noqa: E731
    z0 = torch.randn(512, 2, dtype=torch.float64)
    r2 = z0.pow(2).sum(1).mean().item()
    # S = int_0^1 |chord - v(t)|^2 dt with |chord|^2 = r^2 (2 - 2cos 1), |v|^2 = r^2,
    # int <chord, v(t)> dt = |chord|^2  =>  S = r^2 - r^2 (2 - 2 cos 1).
    exact = r2 * (1 - (2 - 2 * np.cos(1.0)))
    assert rf.straightness(rot, z0, 2000) == pytest.approx(exact, rel=2e-3)
    # batching gives the same number
    assert rf.straightness(rot, z0, 100, batch_size=100) == pytest.approx(rf.straightness(rot, z0, 100), rel=1e-9)


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_assignment_matches_brute_force(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        cost = rng.normal(size=(n, n)) ** 2
        col = rf.linear_sum_assignment(cost)
        assert sorted(col) == list(range(n))
        best = min(sum(cost[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
        assert cost[np.arange(n), col].sum() == pytest.approx(best, abs=1e-12)


def test_assignment_ties_and_errors():
    assert list(rf.linear_sum_assignment(np.ones((4, 4)))) != []
    with pytest.raises(ValueError, match="square"):
        rf.linear_sum_assignment(np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        rf.linear_sum_assignment(np.array([[0.0, np.nan], [1.0, 0.0]]))


def test_w2_exact_values():
    a = torch.randn(300, 2)
    assert rf.w2(a, a[torch.randperm(300)]) == pytest.approx(0.0, abs=1e-6)
    assert rf.w2(a, a + torch.tensor([3.0, 4.0])) == pytest.approx(5.0, rel=1e-6)   # a shift by |c| = 5
    with pytest.raises(ValueError, match="same shape"):
        rf.w2(torch.zeros(3, 2), torch.zeros(4, 2))


def test_reconstruction_error_is_zero_on_a_straight_flow_and_shrinks_with_steps_on_a_curved_one():
    x1 = torch.randn(64, 3, 4, 4, dtype=torch.float64)
    c = torch.randn(3, 4, 4, dtype=torch.float64)
    assert rf.reconstruction_error(lambda x, t: c.expand_as(x), lambda x, t: c.expand_as(x), x1, 1) < 1e-24
    rot = lambda x, t: torch.stack([-x[:, 1], x[:, 0]], 1) * (1 + torch.as_tensor(t).reshape(-1, 1))   # noqa: E731 - curved
    errs = [rf.reconstruction_error(rot, rot, x1[:, :2, 0, 0], n) for n in (1, 2, 4, 16)]
    assert all(a > b for a, b in zip(errs, errs[1:])) and errs[-1] < errs[0] / 10, errs
    direct = (rf.euler(rot, rf.invert(rot, x1[:, :2, 0, 0], 3), 1) - x1[:, :2, 0, 0]).pow(2).sum(1).mean()
    assert rf.reconstruction_error(rot, rot, x1[:, :2, 0, 0], 3, 1) == pytest.approx(float(direct), rel=1e-12)


def test_mode_shares_count_each_sample_at_its_nearest_centre():
    centres = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]
    g = torch.Generator().manual_seed(0)
    at = lambda k, n: torch.tensor(centres[k]) + 0.5 * torch.randn(n, 2, generator=g)     # noqa: E731
    assert rf.mode_shares(torch.cat([at(0, 50), at(2, 150)]), centres) == [0.25, 0.0, 0.75]   # mode 1 dropped
    assert rf.mode_shares(torch.cat([at(k, 40) for k in range(3)]), centres) == pytest.approx([1 / 3] * 3)
