"""The exact 1-rectified-flow velocity for two Gaussian mixtures (independent coupling).

The minimiser of Eq. (1) is the conditional expectation  v(x, t) = E[X_1 - X_0 | X_t = x].
For X_0 ~ sum_i N(a_i, s^2 I) / K0 and X_1 ~ sum_j N(b_j, s^2 I) / K1 drawn independently, X_t is a
mixture of K0 K1 Gaussians, one per pair (i, j):

    X_t | (i, j) ~ N(m_ij, c_t I),   m_ij = t b_j + (1 - t) a_i,   c_t = (t^2 + (1 - t)^2) s^2,

and within a pair (X_1 - X_0, X_t) is jointly Gaussian with Cov(X_1 - X_0, X_t) = (2t - 1) s^2 I, so

    E[X_1 - X_0 | X_t = x, i, j] = (b_j - a_i) + (2t - 1) s^2 / c_t * (x - m_ij),
    v(x, t) = sum_ij w_ij(x, t) E[X_1 - X_0 | X_t = x, i, j],   w_ij ∝ N(x; m_ij, c_t I).

A trained 1-RF can be compared with this field: it is the best any model can do on Eq. (1).
"""
import torch


def mixture_velocity(means0, means1, var):
    """v(x, t) of 1-RF between equal-weight mixtures N(means0_i, var I) and N(means1_j, var I)."""
    a = torch.as_tensor(means0, dtype=torch.float64)
    b = torch.as_tensor(means1, dtype=torch.float64)
    a_ij = a.repeat_interleave(len(b), 0)          # [K0 K1, d]: a_i for every pair (i, j)
    b_ij = b.repeat(len(a), 1)                     # [K0 K1, d]: b_j for every pair (i, j)

    def v(x, t):
        x64, t = x.double(), t.double().reshape(-1, 1, 1)
        m = t * b_ij + (1 - t) * a_ij                                  # m_ij = t b_j + (1 - t) a_i
        c = (t ** 2 + (1 - t) ** 2) * var                              # c_t
        d = x64[:, None, :] - m                                        # x - m_ij, [B, K0 K1, d]
        w = torch.softmax(-d.pow(2).sum(-1, keepdim=True) / (2 * c), dim=1)   # w_ij
        cond = (b_ij - a_ij) + (2 * t - 1) * var / c * d               # E[X_1 - X_0 | x, i, j]
        return (w * cond).sum(1).to(x.dtype)
    return v
