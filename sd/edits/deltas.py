"""Fine-tune deltas: InstaFlow's recipe for using a fine-tuned SD 1.5 (dreamshaper-7 in their example)
with a rectified-flow UNet without retraining:

    W_rf <- W_rf + alpha (W_finetuned - W_base)        for every UNet tensor,

with the VAE and text encoder taken from the fine-tuned model, as their script does. The delta is the
fine-tune's change of SD 1.5; adding it to 2-RF / InstaFlow carries the style over because reflow and
distillation started from the same SD 1.5 weights.

Base and fine-tuned weights are read tensor by tensor from their memory maps (safetensors through our
reader) and merged in chunks of 4M elements, so the merge allocates tens of MiB, not two extra UNets
(bench/merge_delta.py measures it). Everything is checked before anything is changed.
"""
import torch

from ..checkpoints.loaders import CheckpointError, check_keys, load_text_encoder, load_vae, unet_state_dict


def check_delta(unet, base, finetuned):
    """Both state dicts fit the UNet (loaders.check_keys: keys and shapes); else one CheckpointError
    naming the keys and files of both."""
    problems = []
    for sd, where in (base, finetuned):
        try:
            check_keys(unet, sd, where)
        except CheckpointError as e:
            problems.append(str(e))
    if problems:
        raise CheckpointError("the fine-tune delta does not fit the pipeline's UNet, nothing was changed:\n  "
                              + "\n  ".join(problems))


def _add_delta(w, w_ft, w_base, alpha, chunk=1 << 22):
    """w <- w + alpha (w_ft - w_base), computed in float32 over chunks of `chunk` elements, so that the
    merge allocates 16 MiB at a time whatever the tensor's size."""
    wv, fv, bv = w.view(-1), w_ft.reshape(-1), w_base.reshape(-1)
    for s in range(0, wv.numel(), chunk):
        d = fv[s:s + chunk].to(w.device, torch.float32)
        d.sub_(bv[s:s + chunk].to(w.device))              # W_ft - W_base
        d.mul_(alpha).add_(wv[s:s + chunk])                # W_rf + alpha (W_ft - W_base)
        wv[s:s + chunk].copy_(d)


@torch.no_grad()
def merge_delta(pipe, base, finetuned, alpha=1.0, variant=None, take_vae_and_text=True):
    """Add alpha (W_finetuned - W_base) to every tensor of pipe.unet, in place (the difference is taken
    in float32, then added in the UNet's dtype); with take_vae_and_text, pipe.vae and
    pipe.text_encoder become the fine-tuned model's. `base` / `finetuned`: folders, single files or
    local hub ids. Returns the pipeline."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise CheckpointError(f"alpha must be a number, got {alpha!r}")
    b, f = unet_state_dict(base, variant), unet_state_dict(finetuned, variant)
    check_delta(pipe.unet, b, f)
    parts = {}
    if take_vae_and_text:                                 # loaded (and checked) before the UNet changes
        kw = dict(dtype=next(pipe.vae.parameters()).dtype, device=pipe.device, variant=variant)
        parts = {"vae": load_vae(finetuned, **kw),
                 "text_encoder": load_text_encoder(finetuned, **{**kw, "dtype": next(pipe.text_encoder.parameters()).dtype})}
    for name, w in pipe.unet.state_dict().items():       # one pair of mapped tensors at a time
        _add_delta(w, f[0][name], b[0][name], alpha)
    for name, module in parts.items():
        setattr(pipe, name, module)
    return pipe
