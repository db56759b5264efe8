"""The Frechet distance between two Gaussians fitted to features: FID's formula (Heusel et al. 2017,
"GANs Trained by a Two Time-Scale Update Rule", Eq. (6); the distance itself is Dowson & Landau 1982's)

    d^2 = || mu_1 - mu_2 ||^2 + tr( S_1 + S_2 - 2 (S_1 S_2)^(1/2) )

with mu, S the mean and covariance of each set's features (Inception pool features for FID; any
network's for the mini's distribution metric).

tr((S_1 S_2)^(1/2)) is computed without a matrix square root of the non-symmetric S_1 S_2: with
A = S_1^(1/2) (symmetric, from S_1's eigendecomposition),  S_1 S_2 = A (A S_2 A) A^(-1)  is similar to
the symmetric positive semi-definite  M = A S_2 A, so  tr((S_1 S_2)^(1/2)) = sum_i sqrt(lambda_i(M)).
No inverse is taken, so covariances of rank < D (fewer images than feature dimensions, e.g. N < 2048
for Inception features) need no regularisation; everything is float64.

Statistics files are pytorch-fid's .npz (arrays `mu` [D] and `sigma` [D, D]), so published reference
statistics can be used as they are; they are read with allow_pickle=False (never unpickled).
"""
from pathlib import Path

import numpy as np
import torch


class StatsError(ValueError):
    """A statistics file or array that cannot be used (the message names the file and what is wrong)."""


def statistics(features):
    """(mu [D], sigma [D, D]) in float64 of features [N, D]: the mean and the unbiased covariance
    (divided by N - 1, as numpy.cov and pytorch-fid)."""
    x = torch.as_tensor(features).double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise StatsError(f"features must be [N, D] with N >= 2, got {tuple(x.shape)}")
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _sqrt_psd(s):
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues below 0,
    rounding errors, clamped to 0)."""
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), in float64 (a Python float)."""
    mu1, mu2 = torch.as_tensor(mu1).double(), torch.as_tensor(mu2).double()
    s1, s2 = torch.as_tensor(sigma1).double(), torch.as_tensor(sigma2).double()
    d = mu1.shape[-1]
    if mu1.shape != (d,) or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise StatsError(f"shapes do not match: mu {tuple(mu1.shape)} / {tuple(mu2.shape)}, "
                         f"sigma {tuple(s1.shape)} / {tuple(s2.shape)}")
    a = _sqrt_psd((s1 + s1.T) / 2)
    m = a @ ((s2 + s2.T) / 2) @ a
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()      # tr((S1 S2)^(1/2))
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_sqrt)


def save_stats(path, mu, sigma):
    """pytorch-fid's .npz: arrays mu [D] and sigma [D, D] (float64)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mu=torch.as_tensor(mu).double().numpy(), sigma=torch.as_tensor(sigma).double().numpy())
    return path


def load_stats(path):
    """(mu, sigma) as float64 tensors from a .npz with arrays mu and sigma (pytorch-fid's format)."""
    path = Path(path)
    if not path.is_file():
        raise StatsError(f"{path}: no such statistics file")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("mu", "sigma") if k not in f.files]
            if missing:
                raise StatsError(f"{path}: no array {' or '.join(missing)} (it holds {', '.join(f.files) or 'nothing'}): "
                                 f"expected pytorch-fid's .npz with mu [D] and sigma [D, D]")
            mu, sigma = torch.from_numpy(f["mu"].astype(np.float64)), torch.from_numpy(f["sigma"].astype(np.float64))
    except StatsError:
        raise
    except (OSError, ValueError):                          # not a zip, or an array that needs pickle
        raise StatsError(f"{path}: not a statistics file: expected pytorch-fid's .npz with arrays mu [D] and "
                         f"sigma [D, D] (python -m sd.evaluate stats writes one)") from None
    d = mu.shape[0] if mu.ndim == 1 else -1
    if mu.ndim != 1 or tuple(sigma.shape) != (d, d):
        raise StatsError(f"{path}: mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} do not fit: expected [D] and [D, D]")
    return mu, sigma
