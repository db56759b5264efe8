"""rectflow/quantize.py against its formulas written out."""
import math

import pytest
import torch
from torch import nn

from rectflow.quantize import (allocate_bits, average_bits, fake_quant, layer_sensitivity, quant_layers, quantize, sqnr,
                               weight_scale)


def test_fake_quant_rounds_to_the_grid_and_clips():
    x = torch.tensor([0.0, 0.26, -1.3, 7.9, -9.0])
    # s = 0.5, b = 4: round(x / s) = 0, 1, -3, 16 -> 7, -18 -> -7 (the grid is -7..7), times s
    assert torch.equal(fake_quant(x, 0.5, 4), torch.tensor([0.0, 0.5, -1.5, 3.5, -3.5]))


def test_weight_scale_is_per_output_channel():
    w = torch.tensor([[1.0, -4.0, 2.0], [0.3, 0.1, -0.2]])
    s = weight_scale(w, 8)
    assert torch.allclose(s.flatten(), torch.tensor([4.0, 0.3]) / 127)
    q = fake_quant(w, s, 8)
    assert torch.allclose(q.abs().amax(1), torch.tensor([4.0, 0.3]))      # each row's largest weight is on its grid
    assert (q - w).abs().le(s / 2 + 1e-7).all()                           # and every weight within half a step


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 16), nn.SiLU(), nn.Linear(16, 16), nn.SiLU(), nn.Linear(16, 2))


def test_quantize_puts_weights_on_their_grid_and_leaves_the_model_alone():
    model = net()
    before = [p.clone() for p in model.parameters()]
    q = quantize(model, 4)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for m in quant_layers(q).values():
        steps = m.weight / weight_scale(m.weight, 4)
        assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 7 + 1e-4
    only_first = quantize(model, {"0": 4})
    assert not torch.equal(only_first[0].weight, model[0].weight) and torch.equal(only_first[2].weight, model[2].weight)


def test_activations_are_quantised_per_tensor_at_the_calibrated_scale():
    lin = nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.diag(torch.tensor([2.0, 0.5])))            # on the 8-bit grid exactly
        lin.bias.copy_(torch.tensor([0.1, -0.3]))
    calibration = torch.tensor([[2.0, -1.0], [0.5, 0.25]])                # largest |input|: 2
    q = quantize(lin, 8, calibrate=lambda m: m(calibration), act_bits=4)
    x = torch.tensor([[0.3, -0.9], [1.9, 3.0]])
    assert torch.allclose(q(x), lin(fake_quant(x, 2.0 / 7, 4)))          # the input, s = 2 / (2^3 - 1), clipped at 2
    assert torch.allclose(lin(x), x @ lin.weight.T + lin.bias)            # the float layer has no hook
    assert torch.equal(quantize(lin, 8, lambda m: m(calibration), act_bits=4, keep_inputs=("",))(x), lin(x))
    with pytest.raises(ValueError, match="calibrat"):
        quantize(lin, 8, act_bits=4)


def test_sqnr_and_sensitivity():
    y = torch.tensor([3.0, 4.0])
    assert sqnr(y, y) == math.inf and math.isclose(sqnr(y, y + torch.tensor([0.0, 0.5])), 10 * math.log10(25 / 0.25))
    model, x = net(), torch.randn(64, 3)
    sens = layer_sensitivity(model, 4, lambda m: m(x))
    assert list(sens) == ["0", "2", "4"]
    assert math.isclose(sens["2"], sqnr(model(x), quantize(model, {"2": 4})(x)))
    assert all(layer_sensitivity(model, 8, lambda m: m(x))[k] > v for k, v in sens.items())   # more bits, less noise


def test_allocate_bits_raises_the_least_robust_layers_within_the_budget():
    model = nn.Sequential(nn.Linear(10, 10, bias=False), nn.Linear(1, 10, bias=False), nn.Linear(100, 10, bias=False))
    sizes = [100, 10, 1000]
    assert [m.weight.numel() for m in model] == sizes
    sens = {"0": 10.0, "1": 5.0, "2": 1.0}
    # all at 4 bits: 4440 bit-params of 1110. Raising "2" costs 4000 (7.6 bits on average: over 4.5), "1" 40, "0" 400.
    bits = allocate_bits(model, sens, 4, 8, 4.5)
    assert bits == {"0": 8, "1": 8, "2": 4}
    assert average_bits(model, bits) == pytest.approx((8 * 110 + 4 * 1000) / 1110)
    assert allocate_bits(model, sens, 4, 8, 8) == dict.fromkeys("012", 8)
    # the least robust first: "0" (4.36 bits on average) fits a 4.37 budget, and then "1" (4.40) no longer does
    assert allocate_bits(model, {"0": 1.0, "1": 5.0, "2": 10.0}, 4, 8, 4.37) == {"0": 8, "1": 4, "2": 4}
