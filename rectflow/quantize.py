"""Post-training fake quantisation: what a model's samples lose when its weights and activations are stored in b bits.

"Fake": the numbers are rounded to the b-bit grid and computed in float, which gives exactly the low-bit model's
values (up to float rounding), not its speed. Symmetric (no zero point: the simplest grid; it leaves unused the part
of the grid below SiLU's smallest output, -0.28):
    q(x; s, b) = s clamp(round(x / s), -(2^{b-1} - 1), 2^{b-1} - 1),
with the scale s = max|x| / (2^{b-1} - 1), taken
    weights       per output channel (each row of a Linear, each filter of a Conv), from the weights themselves;
    activations   per tensor, the input of each layer, from the largest |input| seen while the float model runs on
                  calibration samples (which the caller keeps apart from its evaluation samples).
MixDQ's sensitivity (Zhao et al. 2024): each layer quantised alone, the signal-to-quantisation-noise ratio of the
model's output, SQNR = 10 log10(||y||^2 / ||y - y_q||^2). The bit allocation is a greedy stand-in for MixDQ's integer
programme: the least robust layers first, each raised to the high bit width while the average still fits the budget.
"""
import copy
import math

import torch
from torch import nn

LAYERS = (nn.Linear, nn.Conv2d)


def fake_quant(x, scale, bits):
    """q(x; s, b) of the module docstring; `scale` broadcasts against x."""
    qmax = 2 ** (bits - 1) - 1
    return torch.clamp(torch.round(x / scale), -qmax, qmax) * scale


def weight_scale(w, bits):
    """Per output channel: s_o = max_i |W_oi| / (2^{b-1} - 1), shaped to broadcast against w (an all-zero row gets a
    tiny scale and stays 0)."""
    amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12)
    return (amax / (2 ** (bits - 1) - 1)).reshape(-1, *([1] * (w.ndim - 1)))


def quant_layers(model):
    """name -> Linear / Conv2d of the model, in order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LAYERS)}


@torch.no_grad()
def input_ranges(model, calibrate):
    """name -> the largest |input| of each layer while `calibrate(model)` runs the model on calibration samples."""
    amax, hooks = {}, []
    for name, m in quant_layers(model).items():
        def hook(_, args, name=name):
            amax[name] = max(amax.get(name, 0.0), args[0].detach().abs().max().item())
        hooks.append(m.register_forward_pre_hook(hook))
    try:
        calibrate(model)
    finally:
        for h in hooks:
            h.remove()
    return amax


@torch.no_grad()
def quantize(model, bits, calibrate=None, act_bits=None, keep_inputs=()):
    """A copy of `model` with each layer's weights on the grid of bits[name] (an int: every layer), and, with
    `act_bits`, its inputs fake-quantised per tensor at scales calibrated by `calibrate(model)` (on the float model),
    but for the layers named in `keep_inputs` (a model's raw input, say, where rounding would change the data)."""
    if act_bits and calibrate is None:
        raise ValueError("quantised activations need a calibrate(model) that runs the model on calibration samples")
    bits = dict.fromkeys(quant_layers(model), bits) if isinstance(bits, int) else bits
    ranges = input_ranges(model, calibrate) if act_bits else {}
    q = copy.deepcopy(model)
    for name, m in quant_layers(q).items():
        if bits.get(name):
            m.weight.copy_(fake_quant(m.weight, weight_scale(m.weight, bits[name]), bits[name]))
        if act_bits and name in ranges and name not in keep_inputs:
            scale = max(ranges[name], 1e-12) / (2 ** (act_bits - 1) - 1)
            m.register_forward_pre_hook(lambda _, args, s=scale: (fake_quant(args[0], s, act_bits), *args[1:]))
    return q


def weight_counts(model):
    """name -> the number of weights of each layer (what a bit width is averaged over)."""
    return {name: m.weight.numel() for name, m in quant_layers(model).items()}


def average_bits(model, bits):
    """The parameter-weighted average bit width of an allocation name -> bits."""
    sizes = weight_counts(model)
    return sum(bits[n] * k for n, k in sizes.items()) / sum(sizes.values())


def sqnr(y, y_q):
    """10 log10(||y||^2 / ||y - y_q||^2), in dB (infinite where nothing changed)."""
    noise = (y - y_q).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(y.pow(2).sum().item() / noise)


@torch.no_grad()
def layer_sensitivity(model, bits, output):
    """name -> SQNR of `output(model)` with that layer's weights alone at `bits` (MixDQ's per-layer sensitivity)."""
    y = output(model)
    return {name: sqnr(y, output(quantize(model, {name: bits}))) for name in quant_layers(model)}


def allocate_bits(model, sensitivity, low, high, budget):
    """name -> bits: every layer at `low`; then, in order of rising SQNR (the least robust first), each layer raised to
    `high` if the parameter-weighted average bit width stays within `budget` (one that does not fit is skipped and
    the next tried)."""
    sizes = weight_counts(model)
    total, spent = sum(sizes.values()), low * sum(sizes.values())
    bits = dict.fromkeys(sizes, low)
    for name in sorted(sensitivity, key=sensitivity.get):
        extra = (high - low) * sizes[name]
        if (spent + extra) / total <= budget:
            bits[name], spent = high, spent + extra
    return bits
