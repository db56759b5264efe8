"""Minibatch optimal-transport coupling (rectflow/couplings.py)."""
import itertools

import pytest
import torch

import rectflow as rf


def _cost(a, b):
    return (a - b).pow(2).sum(1).sum().item()


def test_minibatch_ot_is_the_best_permutation_within_each_block():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(14, 2, generator=g, dtype=torch.float64), torch.randn(14, 2, generator=g, dtype=torch.float64)
    z0, z1, secs = rf.minibatch_ot_pairs(x0, x1, block=6)        # blocks of 6, 6 and a last one of 2
    assert torch.equal(z0, x0) and secs >= 0
    for s in (0, 6, 12):
        a, b, got = x0[s:s + 6], x1[s:s + 6], z1[s:s + 6]
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, b.tolist()))   # x1's rows, re-paired
        best = min(_cost(a, b[list(p)]) for p in itertools.permutations(range(len(a))))
        assert _cost(a, got) == pytest.approx(best, rel=1e-12)
    # no pair crosses a block: the first block's targets are its own
    assert set(map(tuple, z1[:6].tolist())) == set(map(tuple, x1[:6].tolist()))


def test_minibatch_ot_shortens_the_pairs_and_checks_its_input():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(512, 3, generator=g), torch.randn(512, 3, generator=g) + 2
    _, z1, _ = rf.minibatch_ot_pairs(x0, x1, block=128)
    # N(0, I) -> N(2, I) in 3D: the OT plan is the shift, E||X_1 - X_0||^2 = 12 per pair; independent
    # pairs cost 12 + 2 * 3 = 18. Blocks of 128 get within 10% of the plan (measured: 12.05).
    assert _cost(x0, z1) / 512 < 13.2 and _cost(x0, x1) / 512 > 16
    with pytest.raises(ValueError, match=r"equal shapes, got x0 \(4, 2\) and x1 \(5, 2\)"):
        rf.minibatch_ot_pairs(torch.zeros(4, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="block must be a positive integer, got 0"):
        rf.minibatch_ot_pairs(torch.zeros(4, 2), torch.zeros(4, 2), block=0)
