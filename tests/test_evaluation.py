"""sd/evaluation/frechet.py: the Frechet distance against FID's formula written out with scipy's matrix
square root (pytorch-fid's way), on full-rank, rank-deficient and nearly singular covariances; its
properties; pytorch-fid's .npz statistics files."""
import types

import numpy as np
import pytest
import torch

from sd.evaluation import StatsError, frechet_distance, load_stats, save_stats, statistics
from sd.tiny import write_inception

scipy_linalg = pytest.importorskip("scipy.linalg")


def fid_written_out(mu1, s1, mu2, s2):
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)), scipy's sqrtm in float64 (real part)."""
    mu1, s1, mu2, s2 = (np.asarray(a, dtype=np.float64) for a in (mu1, s1, mu2, s2))
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def features(n, d, seed, rank=None, shift=0.0):
    """n feature vectors in d dimensions, correlated; with `rank`, confined to a subspace of that rank."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank or d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, rank or d, generator=g, dtype=torch.float64) @ basis + shift


@pytest.mark.parametrize("n,d,rank", [(400, 16, None), (40, 64, None), (300, 32, 5)],
                         ids=["full rank", "N < D (rank-deficient)", "low rank"])
def test_frechet_distance_equals_the_formula_with_scipys_sqrtm(n, d, rank):
    a, b = features(n, d, 0, rank), features(n, d, 1, rank, shift=0.3)
    (mu1, s1), (mu2, s2) = statistics(a), statistics(b)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), fid_written_out(mu1, s1, mu2, s2)
    scale = float(torch.trace(s1) + torch.trace(s2))
    assert abs(ours - ref) <= 1e-6 * scale, (ours, ref)


def test_nearly_singular_covariances():
    """Eigenvalues from 1 down to 1e-12: scipy's sqrtm and ours agree to 1e-6 of the traces."""
    g = torch.Generator().manual_seed(3)
    q1, _ = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))
    w = torch.logspace(0, -12, 24, dtype=torch.float64)
    s1, s2 = (q1 * w) @ q1.T, (q2 * w.flip(0)) @ q2.T
    mu1, mu2 = torch.zeros(24, dtype=torch.float64), torch.full((24,), 0.1, dtype=torch.float64)
    ours, ref = frechet_distance(mu1, s1, mu2, s2), fid_written_out(mu1, s1, mu2, s2)
    assert abs(ours - ref) <= 1e-6 * float(torch.trace(s1) + torch.trace(s2)), (ours, ref)


def test_statistics_are_numpys_mean_and_cov():
    x = features(50, 8, 4)
    mu, sigma = statistics(x)
    assert mu.dtype == sigma.dtype == torch.float64
    assert np.allclose(mu.numpy(), x.numpy().mean(0)) and np.allclose(sigma.numpy(), np.cov(x.numpy(), rowvar=False))
    with pytest.raises(StatsError, match=r"features must be \[N, D\] with N >= 2, got \(1, 8\)"):
        statistics(x[:1])


def test_a_set_is_at_distance_zero_from_itself_and_noise_moves_it_away():
    x = features(500, 12, 5)
    mu, sigma = statistics(x)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-9
    g = torch.Generator().manual_seed(6)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    dists = [frechet_distance(mu, sigma, *statistics(x + s * noise)) for s in (0.1, 0.3, 1.0, 3.0)]
    assert all(a < b for a, b in zip(dists, dists[1:])), dists


def test_stats_files_round_trip_in_pytorch_fids_format(tmp_path):
    mu, sigma = statistics(features(30, 6, 7))
    f = save_stats(tmp_path / "ref.npz", mu, sigma)
    with np.load(f) as z:                                   # what pytorch-fid reads: f['mu'], f['sigma']
        assert set(z.files) == {"mu", "sigma"} and z["mu"].shape == (6,) and z["sigma"].shape == (6, 6)
    mu2, sigma2 = load_stats(f)
    assert torch.equal(mu, mu2) and torch.equal(sigma, sigma2)


def test_bad_stats_files_say_what_is_wrong(tmp_path):
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(3))
    np.savez(tmp_path / "shapes.npz", mu=np.zeros(3), sigma=np.zeros((4, 4)))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    np.savez(tmp_path / "pickled.npz", mu=np.array([{"a": 1}], dtype=object), sigma=np.zeros((1, 1)))
    (tmp_path / "text.npz").write_text("not a zip file")
    cases = {"no_sigma.npz": "no array sigma (it holds mu)", "shapes.npz": "mu (3,) and sigma (4, 4) do not fit",
             "pickled.npz": "not a statistics file", "text.npz": "not a statistics file",
             "missing.npz": "no such statistics file"}
    for name, words in cases.items():
        with pytest.raises(StatsError) as err:
            load_stats(tmp_path / name)
        assert str(tmp_path / name) in str(err.value) and words in str(err.value), str(err.value)
    with pytest.raises(StatsError, match="shapes do not match"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


# ---- FID's Inception-v3 against torch-fidelity's ---------------------------------------------------

class _Anything(types.ModuleType):
    """A stand-in module whose every attribute is a stand-in (torch-fidelity imports torchvision's
    datasets and transforms at import time; its Inception needs none of them)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        return self

    def __mro_entries__(self, bases):
        return (object,)


@pytest.fixture(scope="module")
def fidelity_inception():
    """torch-fidelity's FeatureExtractorInceptionV3 class, imported with a stub torchvision (PyPI's
    torchvision breaks beside this torch); the stub is removed again."""
    import importlib.util
    import sys
    if importlib.util.find_spec("torch_fidelity") is None:
        pytest.skip("torch-fidelity (a test-only oracle) is not installed")
    names = ["torchvision", "torchvision.datasets", "torchvision.transforms", "torchvision.transforms.functional",
             "torchvision.models", "torchvision.io"]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names:
        sys.modules[n] = _Anything(n)
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        yield FeatureExtractorInceptionV3
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def test_inception_features_equal_torch_fidelitys(tmp_path, fidelity_inception):
    from sd.evaluation import load_inception
    f = write_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    ours = load_inception(f)
    ref = fidelity_inception("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(f)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 3, 299, 299), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        want = ref(x)[0]
        got = ours(x.double().float() / 256)         # torch-fidelity: (x - 128) / 128 = 2 (x / 256) - 1
    assert got.shape == want.shape == (2, 2048)
    err = (got - want).abs().max() / want.abs().max()
    print(f"FID Inception features vs torch-fidelity: max |ours - theirs| / max |theirs| = {float(err):.1e}")
    assert err <= 1e-4, float(err)


def test_inception_files_of_another_layout_are_refused(tmp_path):
    from sd.evaluation import load_inception
    from sd.evaluation.inception import InceptionError
    f = write_inception(tmp_path / "good.pth")
    sd = torch.load(f, weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith("Mixed_7c")}, tmp_path / "cut.pth")
    torch.save({**sd, "fc.weight": torch.zeros(1000, 2048)}, tmp_path / "torchvision.pth")
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, tmp_path / "no_nbt.pth")
    (tmp_path / "text.pth").write_text("not weights")
    from sd.checkpoints.safetensors_io import save_file
    save_file({"w": torch.zeros(2)}, tmp_path / "weights.safetensors")
    load_inception(tmp_path / "no_nbt.pth")
    for name, words in {"cut.pth": "missing Mixed_7c.", "torchvision.pth": "mis-shaped fc.weight (1000, 2048)",
                        "text.pth": "not a PyTorch state dict", "nothing.pth": "no such Inception weight file",
                        "weights.safetensors": "a safetensors file; FID's Inception is pytorch-fid's .pth"}.items():
        with pytest.raises(InceptionError) as err:
            load_inception(tmp_path / name)
        message = str(err.value)
        assert name in message and words in message and "install" not in message and "pickle" not in message, message
