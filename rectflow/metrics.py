"""How straight is a flow, and how close are its samples to the target?

straightness  S(Z) = int_0^1 E[ || (Z_1 - Z_0) - dZ_t/dt ||^2 ] dt   (the paper's straightness;
              S(Z) = 0 exactly when every trajectory is a straight line run at constant speed).
reconstruction_error  E|| G(I(x_1)) - x_1 ||^2: invert with N backward Euler steps, then generate;
              zero on a straight flow for any N.
w2            the 2-Wasserstein distance between two equal-size sample sets, computed EXACTLY as
              an optimal assignment (a permutation), in numpy:
                  W2(a, b)^2 = min_sigma (1/n) sum_i || a_i - b_sigma(i) ||^2.
              The assignment costs O(n^3): keep n <= ~1000 (seconds on one core).
mode_shares   the fraction of samples nearest each of a mixture's centres: a 0 is a dropped mode.
"""
import numpy as np
import torch

from .flow import call_velocity
from .ode import euler, invert
from .checks import positive_int


@torch.no_grad()
def straightness(v, z0, steps=100, cond=None, batch_size=None):
    """Discretised S(Z) along the N-step Euler path of the flow started at z0:

        S ~= (1/N) sum_i E|| (Z_1 - Z_0) - v(Z_{t_i}, t_i) ||^2,   t_i = i/N,

    where Z_1 - Z_0 = (1/N) sum_i v(Z_{t_i}, t_i) comes from the same path (so the discrete value
    is the per-sample variance of the velocity along the path, exactly 0 for a constant one).
    The squared norm is summed over coordinates and averaged over samples.
    """
    positive_int(steps, "steps")
    if batch_size is not None and z0.shape[0] > batch_size:
        parts = [straightness(v, z0[s:s + batch_size], steps, None if cond is None else cond[s:s + batch_size])
                 * min(batch_size, z0.shape[0] - s) for s in range(0, z0.shape[0], batch_size)]
        return float(sum(parts) / z0.shape[0])
    dt, z = 1.0 / steps, z0
    vs = []
    for i in range(steps):
        vel = call_velocity(v, z, i * dt, cond)
        vs.append(vel)
        z = z + dt * vel                      # Euler: Z_{t+dt} = Z_t + dt v(Z_t, t)
    vs = torch.stack(vs)                      # [N, B, ...]
    chord = vs.mean(0, keepdim=True)          # Z_1 - Z_0
    dev = (chord - vs).pow(2).flatten(2).sum(-1)  # || (Z_1 - Z_0) - v(Z_t, t) ||^2, [N, B]
    return float(dev.mean())


def linear_sum_assignment(cost):
    """Minimum-cost perfect matching of a square cost matrix: returns col[i] for each row i.

    Shortest augmenting paths with dual potentials (Jonker & Volgenant 1987; the same algorithm
    as scipy's, written out): each row is added in turn along the cheapest path in reduced costs
    C_ij - u_i - v_j >= 0, and the potentials are updated so that matched pairs stay tight.
    """
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise ValueError(f"cost must be a square matrix, got shape {cost.shape}")
    if not np.all(np.isfinite(cost)):
        raise ValueError("cost contains NaN or infinite entries")
    n = cost.shape[0]
    u, v = np.zeros(n), np.zeros(n)                 # dual potentials of rows and columns
    col_of_row, row_of_col = np.full(n, -1), np.full(n, -1)
    for new_row in range(n):
        dist = np.full(n, np.inf)                   # shortest reduced-cost path to each column
        prev_row = np.full(n, -1)                   # the row that reaches each column on that path
        done = np.zeros(n, bool)
        rows_on_tree, i, d_min, sink = [], new_row, 0.0, -1
        while sink < 0:                             # Dijkstra over columns until a free one
            rows_on_tree.append(i)
            reach = d_min + cost[i] - u[i] - v
            better = ~done & (reach < dist)
            dist[better], prev_row[better] = reach[better], i
            j = int(np.argmin(np.where(done, np.inf, dist)))
            d_min, done[j] = dist[j], True
            if row_of_col[j] < 0:
                sink = j
            else:
                i = row_of_col[j]
        u[new_row] += d_min                         # update potentials: keep matched edges tight
        others = np.asarray(rows_on_tree[1:], dtype=int)
        u[others] += d_min - dist[col_of_row[others]]
        v[done] -= d_min - dist[done]
        j = sink                                    # flip the augmenting path
        while True:
            i = prev_row[j]
            row_of_col[j] = i
            col_of_row[i], j = j, col_of_row[i]
            if i == new_row:
                break
    return col_of_row


def w2(a, b):
    """Exact W2 between two sample sets of equal size n (rows are points): optimal assignment."""
    a = torch.as_tensor(a).detach().double().flatten(1).cpu().numpy()
    b = torch.as_tensor(b).detach().double().flatten(1).cpu().numpy()
    if a.shape != b.shape:
        raise ValueError(f"w2 needs two sample sets of the same shape, got {a.shape} and {b.shape}")
    cost = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T   # ||a_i - b_j||^2
    cost = np.maximum(cost, 0.0)
    col = linear_sum_assignment(cost)
    return float(np.sqrt(cost[np.arange(len(a)), col].mean()))


def mode_shares(x, centres):
    """The fraction of the samples x [n, d] nearest each centre [K, d]: 1/K each for a balanced mixture, a 0 where
    a mode is dropped (the failure of reverse-KL objectives such as distribution matching)."""
    x, centres = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(centres, dtype=torch.float64)
    nearest = torch.cdist(x, centres).argmin(1)
    return (torch.bincount(nearest, minlength=len(centres)).double() / len(x)).tolist()


@torch.no_grad()
def reconstruction_error(back, forward, x1, n, m=None, cond=None):
    """Invert, then generate:  E|| G(I(x_1)) - x_1 ||^2  over data points x_1 (squared norm summed over
    coordinates), where I runs `back` from t = 1 to 0 with n backward Euler steps (invert) and G
    runs `forward` from 0 to 1 with m forward steps (m = n by default). Zero for any n on a straight
    flow; a curved flow needs many steps to come back to where it started."""
    z0 = invert(back, x1, n, cond=cond)
    return float((euler(forward, z0, m or n, cond=cond) - x1).pow(2).flatten(1).sum(1).mean())
