"""One small training loop shared by 1-rectified flow, reflow and distillation."""
import torch
from tqdm.auto import tqdm

from .checks import positive_int


def fit(model, loss_on_batch, iters, lr=1e-3, weight_decay=0.0, grad_clip=1.0, cosine=True,
        desc="train", progress=True, log_every=100):
    """Minimise `loss_on_batch(model, i)` (a scalar tensor) for `iters` AdamW steps, the learning
    rate decaying from `lr` to 0 on a cosine (or constant with cosine=False).

    Returns the list of losses (one per iteration). The model is left in eval mode.
    """
    positive_int(iters, "iters")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters) if cosine else None
    model.train()
    losses = []
    bar = tqdm(range(iters), desc=desc, disable=not progress, leave=False)
    for i in bar:
        loss = loss_on_batch(model, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
        if i % log_every == 0 or i == iters - 1:
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses


@torch.no_grad()
def ema_update(averages, params, decay):
    """An exponential moving average of weights, tensor by tensor: theta_ema <- decay theta_ema + (1 - decay) theta
    (decay 0 copies theta: a stop-gradient copy)."""
    for a, p in zip(averages, params):
        a.lerp_(p.detach(), 1 - decay)


def fit_coupling(model, coupling, loss, iters, batch_size=1024, seed=0, **fit_kwargs):
    """Train on batches of a coupling: `loss(model, x0, x1, cond, generator)` on each draw.

    `coupling(n, generator) -> (x0, x1, cond or None)`; see `rectflow.reflow`.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device

    def loss_on_batch(model, i):
        x0, x1, cond = coupling(batch_size, gen)
        cond = None if cond is None else cond.to(device)
        return loss(model, x0.to(device), x1.to(device), cond, gen)
    return fit(model, loss_on_batch, iters, **fit_kwargs)
