"""Random weights in real file layouts, for tests and for bench/cuda_check.py (no download possible here)."""
import torch


def random_inception_file(path, seed=0):
    """Random weights in pytorch-fid's layout (BatchNorm statistics too, num_batches_tracked included), scaled
    (He's initialisation) so that features stay alive through the 94 layers."""
    from sd.evaluation.inception import FIDInception
    g = torch.Generator().manual_seed(seed)
    sd = FIDInception().state_dict()
    for k, v in sd.items():
        if k.endswith("running_var"):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        elif k.endswith(("running_mean", "bias")):
            v.copy_(torch.randn(v.shape, generator=g) * 0.1)
        elif v.is_floating_point():
            fan_in = v[0].numel() if v.ndim > 1 else 1
            v.copy_(torch.randn(v.shape, generator=g) * (2 / fan_in) ** 0.5 if v.ndim > 1 else 1 + 0.1 * torch.randn(v.shape, generator=g))
    torch.save(sd, path)
    return path
