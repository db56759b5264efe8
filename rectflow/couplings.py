"""Couplings: ways to draw pairs (X_0, X_1) with X_0 ~ pi_0 and X_1 ~ pi_1 (Algorithm 1's input).

  - independent   X_0 and X_1 drawn apart: what 1-rectified flow is trained on;
  - pairs         stored pairs (Z_0, Z_1): the deterministic coupling of a flow, for reflow
                  (`rectflow.reflow.generate_pairs`), or any coupling drawn once;
  - minibatch OT  independent draws re-paired, block by block, by the exact optimal assignment
                  (Pooladian et al. 2023, Tong et al. 2023): straighter pairs without simulating
                  any flow, but optimal only within a block, so the coupling is not the OT plan.

A coupling is a function  draw(n, generator) -> (x0 [n, ...], x1 [n, ...], cond [n, ...] or None).
"""
import time

import torch

from .checks import positive_int
from .metrics import linear_sum_assignment


def independent_coupling(sample0, sample1):
    """(X_0, X_1) drawn independently: sample_i(n, generator) -> [n, ...]."""
    def draw(n, generator=None):
        return sample0(n, generator), sample1(n, generator), None
    return draw


def pairs_coupling(z0, z1, cond=None):
    """A fixed coupling given by stored pairs (Z_0, Z_1[, cond]): draws random rows."""
    if z0.shape != z1.shape:
        raise ValueError(f"pairs must have equal shapes, got z0 {tuple(z0.shape)} and z1 {tuple(z1.shape)}")
    if cond is not None and cond.shape[0] != z0.shape[0]:
        raise ValueError(f"cond has {cond.shape[0]} rows but there are {z0.shape[0]} pairs")

    def draw(n, generator=None):
        idx = torch.randint(0, z0.shape[0], (n,), generator=generator)
        return z0[idx], z1[idx], None if cond is None else cond[idx]
    return draw


def minibatch_ot_pairs(x0, x1, block=256):
    """Re-pair x1 to x0 within each block of `block` rows by the exact optimal assignment

        sigma = argmin_sigma  sum_i || x0_i - x1_sigma(i) ||^2    (minibatch OT, squared cost),

    solved by `rectflow.linear_sum_assignment` (O(block^3) per block). Returns (x0, x1 re-paired,
    seconds spent in the assignments). A last block shorter than `block` is assigned as it is.
    Use it once on a pool of draws and train on `pairs_coupling` of the result: solving a fresh
    assignment at every training step is what costs (see `python -m toy compare`).
    """
    if x0.shape != x1.shape:
        raise ValueError(f"minibatch OT needs equal shapes, got x0 {tuple(x0.shape)} and x1 {tuple(x1.shape)}")
    positive_int(block, "block")
    out, secs = torch.empty_like(x1), 0.0
    for s in range(0, x0.shape[0], block):
        a, b = x0[s:s + block].flatten(1).double(), x1[s:s + block].flatten(1).double()
        cost = torch.cdist(a, b).pow(2).numpy()         # || x0_i - x1_j ||^2
        t0 = time.perf_counter()
        col = linear_sum_assignment(cost)
        secs += time.perf_counter() - t0
        out[s:s + block] = x1[s:s + block][torch.from_numpy(col)]
    return x0, out, secs
