import numpy as np
import pytest
import torch

import rectflow as rf
from toy.datasets import get_dataset
from toy.model import VelocityMLP


def test_reflow_straightens_a_small_flow():
    """1-RF on the paper's pair, then one reflow: straightness drops by far more than half."""
    ds = get_dataset("paper")
    z_eval = ds.sample0(512, torch.Generator().manual_seed(1), qmc=True)
    flow1 = VelocityMLP(hidden=64, depth=3)
    rf.train_flow(flow1, rf.independent_coupling(ds.sample0, ds.sample1), 400, batch_size=512, lr=3e-3,
                  progress=False)
    z0, z1 = rf.generate_pairs(flow1, ds.sample0(2048, torch.Generator().manual_seed(2)), 10, "rk4",
                               progress=False)
    flow2 = VelocityMLP(hidden=64, depth=3)
    flow2.load_state_dict(flow1.state_dict())
    rf.train_flow(flow2, rf.pairs_coupling(z0, z1), 400, batch_size=512, lr=3e-3, seed=1, progress=False)
    s1, s2 = rf.straightness(flow1, z_eval, 50), rf.straightness(flow2, z_eval, 50)
    assert s2 < 0.25 * s1, (s1, s2)


def test_generate_pairs_batches_equal_one_batch():
    v = lambda x, t: torch.sin(x) + t[:, None]  # noqa: E731
    z = torch.randn(100, 2, dtype=torch.float64)
    a0, a1 = rf.generate_pairs(v, z, 8, "rk4", batch_size=7, progress=False)
    b0, b1 = rf.generate_pairs(v, z, 8, "rk4", batch_size=1000, progress=False)
    assert torch.equal(a0, z) and torch.equal(a1, b1)
    torch.testing.assert_close(a1, rf.solve(v, z, 8, "rk4"))


def test_pairs_round_trip_and_bad_files(tmp_path):
    z0, z1, c = torch.randn(10, 3), torch.randn(10, 3), torch.arange(10)
    rf.save_pairs(tmp_path / "p.npz", z0, z1, c)
    l0, l1, lc = rf.load_pairs(tmp_path / "p.npz")
    assert torch.equal(l0, z0) and torch.equal(l1, z1) and torch.equal(lc, c)
    rf.save_pairs(tmp_path / "q.npz", z0, z1)
    assert rf.load_pairs(tmp_path / "q.npz")[2] is None
    np.savez(tmp_path / "bad.npz", z0=np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"bad.npz: not a pairs file, missing arrays \['z1'\]"):
        rf.load_pairs(tmp_path / "bad.npz")
    np.savez(tmp_path / "shape.npz", z0=np.zeros((2, 2)), z1=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="differ in shape"):
        rf.load_pairs(tmp_path / "shape.npz")
    np.savez(tmp_path / "obj.npz", z0=np.array([{"a": 1}], dtype=object), z1=np.zeros(1))
    with pytest.raises(ValueError, match="pickle"):   # never unpickled
        rf.load_pairs(tmp_path / "obj.npz")


def test_pairs_coupling_checks_shapes():
    with pytest.raises(ValueError, match=r"equal shapes, got z0 \(4, 2\) and z1 \(5, 2\)"):
        rf.pairs_coupling(torch.zeros(4, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="cond has 3 rows but there are 4 pairs"):
        rf.pairs_coupling(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(3))
