"""Everything in rectflow works for image-shaped data and conditioned models v(x, t, cond)."""
import torch
from torch import nn

import rectflow as rf


class TinyConvVelocity(nn.Module):
    """v(x, t, cond) on [B, C, H, W]: a conv net with time and a class label added as channels."""

    def __init__(self, channels=2, classes=3):
        super().__init__()
        self.embed = nn.Embedding(classes, 8)
        self.net = nn.Sequential(nn.Conv2d(channels + 9, 16, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(16, channels, 3, padding=1))

    def forward(self, x, t, cond):
        b, _, h, w = x.shape
        extra = torch.cat([t.reshape(b, 1, 1, 1).expand(b, 1, h, w),
                           self.embed(cond)[:, :, None, None].expand(b, 8, h, w)], 1)
        return self.net(torch.cat([x, extra], 1))


def test_pipeline_on_images_with_a_condition():
    g = torch.Generator().manual_seed(0)
    n, shape = 64, (2, 4, 4)
    cond = torch.randint(0, 3, (n,), generator=g)
    x1 = cond[:, None, None, None].float() + 0.1 * torch.randn(n, *shape, generator=g)  # "images" per class
    x0 = torch.randn(n, *shape, generator=g)
    v = TinyConvVelocity()
    losses = rf.train_flow(v, rf.pairs_coupling(x0, x1, cond), 60, batch_size=32, lr=1e-2, progress=False)
    assert losses[-1] < losses[0]
    z0, z1 = rf.generate_pairs(v, x0, 4, "heun", cond=cond, batch_size=20, progress=False)
    assert z1.shape == (n, *shape)
    traj = rf.euler(v, x0, 3, cond=cond, return_trajectory=True)
    assert traj.shape == (4, n, *shape)
    # straightness, written out on the Euler trajectory: the mean over steps and samples of
    # || (Z_1 - Z_0) - (Z_{t+dt} - Z_t) / dt ||^2, summed over the C x H x W coordinates
    vel = (traj[1:] - traj[:-1]) * 3
    expected = ((traj[-1] - traj[0])[None] - vel).pow(2).flatten(2).sum(-1).mean()
    s = rf.straightness(v, x0, 3, cond=cond)
    assert s > 1e-3 and abs(s - expected.item()) <= 1e-5 * expected.item()
    student = TinyConvVelocity()
    student.load_state_dict(v.state_dict())
    before = rf.distill_loss(student, z0, z1, k=1, cond=cond).item()
    rf.train_student(student, rf.pairs_coupling(z0, z1, cond), 60, k=1, batch_size=32, lr=1e-2, progress=False)
    assert rf.distill_loss(student, z0, z1, k=1, cond=cond).item() < before
    # W2 between a set and a shuffled, shifted copy of itself is exactly the shift's norm (any other
    # assignment adds sum ||a_i - a_sigma(i)||^2 > 0): the solver must find the hidden permutation
    shift = torch.randn(1, *shape, generator=g)
    perm = torch.randperm(16, generator=g)
    assert abs(rf.w2(z1[:16], z1[:16][perm] + shift) - shift.norm().item()) <= 1e-6
