"""Teacher samplers for SD 1.5-style epsilon-prediction models, as ODE solvers.

The SD schedule: betas scaled-linear from 0.00085 to 0.012 over 1000 steps, alpha_bar = cumprod(1 - beta),
and a noisy latent at training step k is  x = alpha x_0 + sigma eps,  alpha = sqrt(alpha_bar_k),
sigma = sqrt(1 - alpha_bar_k).

In rectified-flow time the same point is on the straight line from noise to data:
    X = x / (alpha + sigma) = t x_0 + (1 - t) eps,   t = alpha / (alpha + sigma),
and an epsilon prediction gives the velocity  v = x_0_hat - eps_hat,  x_0_hat = (x - sigma eps_hat) / alpha.
DDIM (eta = 0) is exactly the Euler step X <- X + (t_next - t) v in these coordinates.
DPM-Solver++(2M) (Lu et al. 2022) is a second-order multistep exponential integrator in
lambda = log(alpha / sigma) on the data prediction x_0_hat; its step is rectflow.solvers.dpmpp_2m_step, the same
one the toy's solver takes on the path alpha = t, sigma = 1 - t.
Timesteps follow diffusers' DDIMScheduler ("leading" spacing, steps_offset) and
DPMSolverMultistepScheduler ("linspace" spacing, final sigma 0) so that results match them.

The SDXL Refiner's Euler-discrete sampler (Karras et al. 2022, as diffusers' EulerDiscreteScheduler) works
in variance-exploding coordinates  x = x_0 + s eps,  s = sigma / alpha = sqrt((1 - alpha_bar) / alpha_bar):
the UNet sees x / sqrt(s^2 + 1) (the VP latent) and the ODE dx/ds = eps_hat is stepped by Euler,
x <- x + (s_next - s) eps_hat, which is DDIM again (hence the Euler step in rectified-flow time) on
the Euler schedule's timesteps.
"""
import math

import numpy as np
import torch

from rectflow.solvers import dpmpp_2m_step


def sd_alphas_cumprod(n=1000, beta_start=0.00085, beta_end=0.012):
    """alpha_bar_k = prod_{j <= k} (1 - beta_j), beta "scaled linear": linspace of sqrt(beta), squared."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def eps_to_rf(x, eps, alpha, sigma):
    """(x, eps_hat) at (alpha, sigma) -> (X, t, v) in rectified-flow time (see the module docstring)."""
    x0 = (x - sigma * eps) / alpha
    return x / (alpha + sigma), alpha / (alpha + sigma), x0 - eps


def eps_velocity(eps_model, alphas_cumprod=None):
    """The epsilon teacher as a rectified-flow velocity field v(X, t), t in [0, 1]. The point X at t
    is the VP latent x = X (alpha + sigma) with alpha / (alpha + sigma) = t and alpha^2 + sigma^2 = 1:
        alpha^2 = alpha_bar = t^2 / (t^2 + (1 - t)^2)   (clamped to the trained range, k in [0, 999]);
    the UNet sees the (fractional) timestep k with alpha_bar_k = alpha^2, and
    v = x_0_hat - eps_hat (see the module docstring)."""
    ac = (sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).double().numpy()

    def v(X, t):
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(X.shape[0]).cpu()
        a_bar = (t ** 2 / (t ** 2 + (1 - t) ** 2)).clamp(float(ac[-1]), float(ac[0]))   # the trained range
        alpha, sigma = a_bar.sqrt(), (1 - a_bar).sqrt()
        k = torch.from_numpy(np.interp(a_bar.numpy(), ac[::-1], np.arange(len(ac))[::-1].astype(float)))
        shape = (-1, *([1] * (X.ndim - 1)))
        alpha, sigma = alpha.reshape(shape).to(X), sigma.reshape(shape).to(X)
        x = X * (alpha + sigma)
        return eps_to_rf(x, eps_model(x, k.to(X)), alpha, sigma)[2]
    return v


class EpsFlow(torch.nn.Module):
    """An epsilon UNet called as a flow UNet: forward(x, timestep (1 - t) 1000, context) is the velocity of
    `eps_velocity` at rectified-flow time t. Its weights stay the epsilon model's, so a network trained from the
    teacher in this form starts as the teacher itself (DMD2's generator and fake score on the mini)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, timesteps, context):
        return eps_velocity(lambda xk, k: self.unet(xk, k, context))(x, 1.0 - timesteps / 1000.0)


def ddim_timesteps(steps, n=1000, offset=1):
    ratio = n // steps
    return (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + offset, ratio


def sample_ddim(eps_model, x, steps, alphas_cumprod=None, set_alpha_to_one=False, offset=1, callback=None):
    """DDIM, eta = 0, as Euler steps in rectified-flow time. eps_model(x, timestep) -> eps_hat."""
    ac = sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod
    timesteps, ratio = ddim_timesteps(steps, len(ac), offset)
    final = torch.tensor(1.0) if set_alpha_to_one else ac[0]
    for i, k in enumerate(timesteps):
        eps = eps_model(x, int(k))
        a_bar, a_bar_next = ac[k], (ac[k - ratio] if k - ratio >= 0 else final)
        alpha, sigma = a_bar.sqrt(), (1 - a_bar).sqrt()
        alpha_n, sigma_n = a_bar_next.sqrt(), (1 - a_bar_next).sqrt()
        X, t, v = eps_to_rf(x, eps, alpha, sigma)
        t_next = alpha_n / (alpha_n + sigma_n)
        X = X + (t_next - t) * v                    # Euler: X_{t+dt} = X_t + dt v
        x = (X * (alpha_n + sigma_n)).to(x.dtype)   # back to the VP latent
        if callback:
            callback(i, x)
    return x


def dpm_timesteps(steps, n=1000):
    """"linspace" spacing, and the matching sigmas = sqrt((1 - alpha_bar) / alpha_bar), then 0."""
    return np.linspace(0, n - 1, steps + 1).round()[::-1][:-1].astype(np.int64)


def sample_dpmpp_2m(eps_model, x, steps, alphas_cumprod=None, callback=None):
    """DPM-Solver++(2M) with diffusers' defaults (midpoint form, first order at the first and last step)."""
    ac = (sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).double()
    timesteps = dpm_timesteps(steps, len(ac))
    all_sig = ((1 - ac) / ac).sqrt().numpy()
    sigmas = list(np.interp(timesteps, np.arange(len(all_sig)), all_sig)) + [0.0]

    def alpha_sigma(s):                  # from sigma = sigma_vp / alpha_vp back to (alpha, sigma)
        a = 1.0 / math.sqrt(s * s + 1.0)
        return a, s * a

    prev_x0 = None
    for i, k in enumerate(timesteps):
        eps = eps_model(x, int(k))
        now = alpha_sigma(sigmas[i])
        x0 = (x - now[1] * eps) / now[0]                         # data prediction
        prev = alpha_sigma(sigmas[i - 1]) if i else None
        x = dpmpp_2m_step(x, x0, prev_x0, now, alpha_sigma(sigmas[i + 1]), prev).to(eps.dtype)
        prev_x0 = x0
        if callback:
            callback(i, x)
    return x


def euler_discrete_schedule(steps, n=1000, spacing="leading", offset=1, alphas_cumprod=None):
    """diffusers' EulerDiscreteScheduler.set_timesteps: the timesteps (float32; "leading":
    k_i = (N - 1 - i) floor(n / N) + offset, "trailing" and "linspace" too) and the sigmas
    s_i = sqrt((1 - alpha_bar) / alpha_bar) interpolated linearly at k_i, then a final 0."""
    ac = sd_alphas_cumprod(n) if alphas_cumprod is None else alphas_cumprod
    if spacing == "leading":                                  # DDIM's timesteps
        timesteps = ddim_timesteps(steps, n, offset)[0].astype(np.float32)
    elif spacing == "trailing":
        timesteps = np.arange(n, 0, -n / steps).round().astype(np.float32) - 1
    elif spacing == "linspace":
        timesteps = np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
    else:
        raise ValueError(f"timestep_spacing {spacing!r} is not supported (leading, trailing or linspace)")
    all_sigmas = (((1 - ac) / ac) ** 0.5).numpy()
    sigmas = np.interp(timesteps, np.arange(len(all_sigmas)), all_sigmas)
    return torch.from_numpy(timesteps.copy()), torch.from_numpy(np.append(sigmas, 0.0).astype(np.float32))


def img2img_start(steps, strength):
    """diffusers' img2img: keep the last int(N strength) of N steps; the index of the first one kept."""
    return steps - min(int(steps * strength), steps)


def add_noise(x0, noise, sigma):
    """The image's latents at noise level sigma:  x = x_0 + sigma eps  (variance-exploding coordinates)."""
    return x0 + noise * sigma.to(x0.dtype)


def sample_euler_discrete(eps_model, x, timesteps, sigmas, callback=None):
    """Euler steps of dx/ds = eps_hat over the given (timesteps, sigmas): the UNet sees x / sqrt(s^2 + 1) at
    timestep k_i; x_0_hat = x - s eps_hat;  d = (x - x_0_hat) / s;  x <- x + (s_next - s) d,  in float32."""
    for i, k in enumerate(timesteps):
        s = sigmas[i]
        eps = eps_model(x / (s ** 2 + 1) ** 0.5, k)
        xf = x.float()
        x0 = xf - s * eps                            # data prediction
        x = (xf + (xf - x0) / s * (sigmas[i + 1] - s)).to(eps.dtype)
        if callback:
            callback(i, x)
    return x
