import math

import pytest
import torch

from toy.datasets import D, DATASETS, S3, get_dataset, label, uniforms


@pytest.mark.parametrize("name", list(DATASETS))
def test_samplers_shapes_and_reproducibility(name):
    ds = DATASETS[name]
    for sample in (ds.sample0, ds.sample1):
        for qmc in (False, True):
            a = sample(256, torch.Generator().manual_seed(3), qmc=qmc)
            b = sample(256, torch.Generator().manual_seed(3), qmc=qmc)
            assert a.shape == (256, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
            assert torch.equal(a, b)


def test_paper_pair_matches_the_tutorial_definition():
    ds = get_dataset("paper")
    x0 = ds.sample0(30000, torch.Generator().manual_seed(0))
    x1 = ds.sample1(30000, torch.Generator().manual_seed(0))
    # equal weights: the means of the mixtures are the means of their centres
    # (i.i.d.: standard error ~0.04, so 0.2 is 5 sigma; the QMC draw is far tighter)
    m0, m1 = torch.tensor([0.0, (D - D * S3) / 3]), torch.tensor([0.0, (D * S3 - D) / 3])
    torch.testing.assert_close(x0.mean(0), m0, atol=0.2, rtol=0)
    torch.testing.assert_close(x1.mean(0), m1, atol=0.2, rtol=0)
    torch.testing.assert_close(ds.sample0(3072, qmc=True).mean(0), m0, atol=0.02, rtol=0)
    torch.testing.assert_close(ds.sample1(3072, qmc=True).mean(0), m1, atol=0.02, rtol=0)
    # points of the top-right mode have variance 0.3 per coordinate
    top_right = x0[(x0[:, 0] > 4) & (x0[:, 1] > 0)]
    torch.testing.assert_close(top_right.mean(0), torch.tensor([D * S3, D / 2]), atol=0.05, rtol=0)
    torch.testing.assert_close(top_right.var(0), torch.tensor([0.3, 0.3]), atol=0.03, rtol=0)


def test_qmc_labels_are_balanced():
    u = uniforms(1024, 3, torch.Generator().manual_seed(0), qmc=True)
    counts = torch.bincount(label(u[:, 0], 8), minlength=8)
    assert counts.max() - counts.min() <= 1
    iid = torch.bincount(label(uniforms(1024, 3, torch.Generator().manual_seed(0))[:, 0], 8), minlength=8)
    assert iid.max() - iid.min() > 1


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'spiral': choose one of paper, moons"):
        get_dataset("spiral")
    assert math.isclose(S3, math.sqrt(3) / 2)
