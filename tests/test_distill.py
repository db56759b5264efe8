import pytest
import torch

import rectflow as rf
from toy.model import VelocityMLP

J = torch.tensor([[0.0, -1.0], [1.0, 0.0]])


def rotation(x, t):
    """A curved teacher: every point turns by one radian around the origin over t in [0, 1]."""
    return x @ J.T


@pytest.mark.parametrize("k", [1, 2])
def test_student_lands_on_the_teachers_endpoints(k):
    z0 = torch.randn(4096, 2, generator=torch.Generator().manual_seed(0))
    z0, z1 = rf.generate_pairs(rotation, z0, 20, "rk4", progress=False)
    student = VelocityMLP(hidden=64, depth=3)
    rf.train_student(student, rf.pairs_coupling(z0, z1), 800, k=k, batch_size=512, lr=3e-3, progress=False)
    z_test = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    truth = rf.solve(rotation, z_test, 50, "rk4")
    student_err = (rf.euler(student, z_test, k) - truth).pow(2).sum(1).mean().item()
    teacher_err = (rf.euler(rotation, z_test, k) - truth).pow(2).sum(1).mean().item()
    assert student_err < 0.05 * teacher_err, (student_err, teacher_err)


def test_one_step_distill_loss_is_the_endpoint_error():
    z0, z1 = torch.randn(8, 2), torch.randn(8, 2)
    v = lambda x, t: 0.5 * x  # noqa: E731
    expected = (z0 + 0.5 * z0 - z1).pow(2).mean()
    torch.testing.assert_close(rf.distill_loss(v, z0, z1, k=1), expected)
    with pytest.raises(ValueError, match="positive integer"):
        rf.distill_loss(v, z0, z1, k=0)
