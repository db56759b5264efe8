"""Rectification and reflow (Algorithm 1 of the paper).

Rectify: train v by Eq. (1) on the pairs of a coupling (`rectflow.couplings`). Reflow: train the
(k+1)-rectified flow on the deterministic coupling of the k-th flow,

    Z^{k+1} = RectFlow((Z^k_0, Z^k_1)),   Z^k_1 = ODE_{v_k}(Z^k_0)     (Algorithm 1, "Reflow").
"""
import numpy as np
import torch
from tqdm.auto import tqdm

from .flow import rf_loss
from .ode import solve
from .paths import path_loss
from .train import fit_coupling


def train_flow(model, coupling, iters, batch_size=1024, time_sampler="uniform", seed=0,
               desc="rectified flow", path="linear", **fit_kwargs):
    """Rectify a coupling: fit v by Eq. (1) on pairs drawn from `coupling`. Returns the losses.

    `path` other than 'linear' trains on the paper's nonlinear extension (`rectflow.paths`).
    """
    def loss(model, x0, x1, cond, gen):
        if path == "linear":
            return rf_loss(model, x0, x1, cond, time_sampler=time_sampler, generator=gen)
        return path_loss(model, x0, x1, path, cond, time_sampler=time_sampler, generator=gen)
    return fit_coupling(model, coupling, loss, iters, batch_size, seed, desc=desc, **fit_kwargs)


@torch.no_grad()
def generate_pairs(v, z0, steps=25, method="rk4", cond=None, batch_size=4096, progress=True,
                   desc="reflow pairs"):
    """Simulate the flow from each Z_0 to get the pairs (Z_0, Z_1 = ODE_v(Z_0)) of Algorithm 1.

    Runs in batches (with a progress bar) on the model's device; returns CPU tensors (z0, z1).
    Use an accurate solver (rk4 by default): the pairs define the next flow's target.
    """
    device = next(v.parameters()).device if isinstance(v, torch.nn.Module) else z0.device
    out = []
    for s in tqdm(range(0, z0.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        c = None if cond is None else cond[s:s + batch_size].to(device)
        out.append(solve(v, z0[s:s + batch_size].to(device), steps, method, c).cpu())
    return z0.cpu(), torch.cat(out)


def save_pairs(path, z0, z1, cond=None):
    """Save a coupling as .npz (plain arrays: no pickle on load)."""
    arrays = {"z0": z0.cpu().numpy(), "z1": z1.cpu().numpy()}
    if cond is not None:
        arrays["cond"] = cond.cpu().numpy()
    np.savez(path, **arrays)


def load_pairs(path):
    """Load pairs written by `save_pairs`; returns (z0, z1, cond or None)."""
    with np.load(path, allow_pickle=False) as f:
        missing = {"z0", "z1"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: not a pairs file, missing arrays {sorted(missing)}")
        z0, z1 = torch.from_numpy(f["z0"]), torch.from_numpy(f["z1"])
        cond = torch.from_numpy(f["cond"]) if "cond" in f.files else None
    if z0.shape != z1.shape:
        raise ValueError(f"{path}: z0 {tuple(z0.shape)} and z1 {tuple(z1.shape)} differ in shape")
    return z0, z1, cond
