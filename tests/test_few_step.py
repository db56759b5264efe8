"""rectflow's few-step objectives against their formulas written out: consistency distillation and
training, MeanFlow's identity (its jvp), shortcut models' self-consistency, progressive distillation's
two teacher steps. Exact flows with known solutions (dz/dt = a z) give targets the formulas must hit."""
import copy
import math

import pytest
import torch

import rectflow.consistency as consistency
from rectflow.consistency import (consistency_fn, consistency_loss, consistency_sample, ct_schedule, ict_loss,
                                  ict_schedule, karras_sigmas, train_consistency)
from rectflow.flow import pseudo_huber
from rectflow.train import ema_update
from rectflow.meanflow import meanflow_loss, meanflow_sample, meanflow_target
from rectflow.progressive import progressive_loss, two_teacher_steps
from rectflow.shortcut import levels, shortcut_loss, shortcut_sample, shortcut_target
from tests.small_nets import Net, batch
from toy.model import VelocityMLP

A = 0.7            # the exact flow dz/dt = A z: Z_r = Z_t exp(A (r - t))


# ---- consistency models ------------------------------------------------------------------------------

def test_the_consistency_function_meets_its_boundary_condition_at_the_data_end():
    f, (x, _) = Net(), batch()
    assert torch.equal(consistency_fn(f, x, 1.0), x)                         # f(x, 1) = x, whatever F is
    assert torch.allclose(consistency_fn(f, x, 0.0), x + f(x, torch.zeros(len(x), dtype=x.dtype)))


@pytest.mark.parametrize("kind", ["cd", "ct"])
def test_consistency_loss_is_the_formula_written_out(kind):
    model, target, teacher, (x0, x1), n = Net(seed=0), Net(seed=1), Net(seed=2), batch(), 7
    got = consistency_loss(model, target, x0, x1, n, teacher if kind == "cd" else None,
                           generator=torch.Generator().manual_seed(5))
    k = torch.randint(0, n, (len(x0),), generator=torch.Generator().manual_seed(5)).double()
    t, t1 = k / n, (k + 1) / n
    xt = t[:, None] * x1 + (1 - t[:, None]) * x0
    x_hat = xt + (1 / n) * teacher(xt, t) if kind == "cd" else t1[:, None] * x1 + (1 - t1[:, None]) * x0
    want = ((xt + (1 - t[:, None]) * model(xt, t)) - (x_hat + (1 - t1[:, None]) * target(x_hat, t1))).pow(2).mean()
    assert torch.allclose(got, want, rtol=1e-12), (float(got), float(want))


def test_consistency_distillation_on_one_interval_is_one_step_distillation_of_the_teacher():
    """N = 1: the target f^-(X_hat, 1) = X_hat = X_0 + v_T(X_0, 0) (the boundary), whatever theta^- is."""
    model, teacher, (x0, x1) = Net(seed=0), Net(seed=2), batch()
    zero = torch.zeros(len(x0), dtype=x0.dtype)
    got = consistency_loss(model, Net(seed=9), x0, x1, 1, teacher)
    assert torch.allclose(got, (model(x0, zero) - teacher(x0, zero)).pow(2).mean(), rtol=1e-12)


def test_ct_schedule_and_multistep_sampling():
    assert ct_schedule(0, 1000) == 2 and ct_schedule(1000, 1000) == 151
    assert all(ct_schedule(k, 1000) <= ct_schedule(k + 1, 1000) for k in range(1000))
    f, (x0, _) = Net(), batch()
    assert torch.equal(consistency_sample(f, x0, 1), consistency_fn(f, x0, 0.0))
    g = torch.Generator().manual_seed(3)
    two = consistency_sample(f, x0, 2, generator=g)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3)).double()     # drawn in float32
    assert torch.allclose(two, consistency_fn(f, 0.5 * consistency_fn(f, x0, 0.0) + 0.5 * z, 0.5))


def test_multistep_consistency_sampling_renoises_from_the_source():
    """X_{t_k} = t_k X_1 + (1 - t_k) Z with Z a fresh draw of pi_0 (`source`), not N(0, I): on the paper pair's
    mixture source, N(0, I) noise puts X_{t_k} off the marginal f was trained on."""
    f, (x0, _) = Net(), batch()
    drawn = []

    def source(n, generator):
        drawn.append(n)
        return torch.full((n, 2), 5.0)
    three = consistency_sample(f, x0, 3, generator=torch.Generator().manual_seed(0), source=source)
    x1 = consistency_fn(f, x0, 0.0)
    for t in (1 / 3, 2 / 3):
        x1 = consistency_fn(f, t * x1 + (1 - t) * 5.0, t)
    assert drawn == [len(x0)] * 2 and torch.allclose(three, x1)


def test_ict_loss_is_its_formula_written_out():
    """iCT in this time: the Karras grid (doubled), the lognormal index, lambda = 1 / (sigma_{i+1} - sigma_i), the
    pseudo-Huber distance, and X at noise level sigma the point t = 1 / (1 + sigma) of the path."""
    model, target, (x0, x1), n = Net(seed=0), Net(seed=1), batch(), 11
    sig = torch.tensor([(0.004 ** (1 / 7) + k / 10 * (160 ** (1 / 7) - 0.004 ** (1 / 7))) ** 7 for k in range(n)],
                       dtype=torch.float64)
    assert torch.allclose(karras_sigmas(n), sig, rtol=1e-12)
    cdf = torch.erf((sig.log() - (-1.1 + math.log(2))) / (2.0 * math.sqrt(2)))
    i = torch.multinomial(cdf[1:] - cdf[:-1], len(x0), replacement=True, generator=torch.Generator().manual_seed(5))
    t, t1 = 1 / (1 + sig[i + 1]), 1 / (1 + sig[i])            # t the noisier point, t1 the cleaner
    xt, xt1 = (s[:, None] * (x1 + ((1 - s) / s)[:, None] * x0) for s in (t, t1))   # X_t = t (X_1 + sigma X_0)
    pred, want = xt + (1 - t[:, None]) * model(xt, t), xt1 + (1 - t1[:, None]) * target(xt1, t1)
    c = 0.00054 * math.sqrt(2)
    per_sample = ((pred - want).pow(2).sum(1) + c * c).sqrt() - c
    want_loss = (per_sample / (sig[i + 1] - sig[i])).mean()
    got = ict_loss(model, target, x0, x1, n, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(got, want_loss, rtol=1e-10), (float(got), float(want_loss))


def test_ict_curriculum_doubles_the_grid_in_equal_stages():
    """K = 8000: K' = 8000 / (log2 128 + 1) = 1000, so 10 intervals up to k = 999, 20 from 1000, 1280 from 7000."""
    assert [ict_schedule(k, 8000) for k in (0, 999, 1000, 2000, 6999, 7000, 7999)] == [11, 11, 21, 41, 641, 1281, 1281]


def test_ema_update_is_the_moving_average_of_the_weights():
    """theta_ema <- decay theta_ema + (1 - decay) theta: 0.9 of the average, 0.1 of the weights (not the reverse)."""
    avg, weights = [torch.zeros(3, dtype=torch.float64)], [torch.full((3,), 10.0, dtype=torch.float64)]
    ema_update(avg, weights, 0.9)
    assert torch.allclose(avg[0], torch.full((3,), 1.0, dtype=torch.float64), rtol=1e-15)
    ema_update(avg, weights, 0.0)                                              # decay 0: a copy
    assert torch.equal(avg[0], weights[0])



def test_pseudo_huber_is_icts_distance_written_out():
    """sqrt(||x - y||^2 + c^2) - c per sample (the norm over all of a sample's coordinates), averaged;
    c = 0.00054 sqrt(d) by default."""
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(5, 3, 4, generator=g, dtype=torch.float64) for _ in range(2))
    c = 0.00054 * 12 ** 0.5
    want = sum(((x[i] - y[i]).pow(2).sum() + c * c).sqrt() - c for i in range(5)) / 5
    assert torch.allclose(pseudo_huber(x, y), want, rtol=1e-14)
    want_c2 = sum(((x[i] - y[i]).pow(2).sum() + 4).sqrt() - 2 for i in range(5)) / 5
    assert torch.allclose(pseudo_huber(x, y, c=2.0), want_c2)
    assert pseudo_huber(x, x) == 0


@pytest.mark.parametrize("kind", ["cd", "ct", "ict"])
def test_the_consistency_training_loop_feeds_the_loss_its_grid_and_the_ema_target(kind, monkeypatch):
    """Each iteration i gets CT's growing grid N(i) - 1 intervals (CD: the fixed grid; iCT: its curriculum's
    N(i) points) and the target network theta^- = EMA of the weights, updated with the weights as they are
    after step i - 1."""
    seen = []

    def recording_loss(model, target, x0, x1, n, teacher=None, cond=None, generator=None, loss_fn=pseudo_huber):
        assert loss_fn is pseudo_huber                                          # the distance asked for
        seen.append((n, [p.detach().clone() for p in model.parameters()],
                     [p.detach().clone() for p in target.parameters()]))
        return model(x0, torch.zeros(len(x0), dtype=x0.dtype)).pow(2).mean()
    monkeypatch.setattr(consistency, "ict_loss" if kind == "ict" else "consistency_loss", recording_loss)
    (x0, x1), iters, decay = batch(), 5, 0.8
    coupling = lambda n, g: (x0[:n], x1[:n], None)  # noqa: E731
    model = Net(seed=3)
    train_consistency(model, coupling, iters, teacher=Net(seed=4) if kind == "cd" else None, n_intervals=18,
                      ema=decay, batch_size=16, progress=False, lr=1e-2, loss_fn=pseudo_huber, ict=kind == "ict")
    want_n = {"cd": [18] * iters, "ct": [ct_schedule(i, iters) - 1 for i in range(iters)],
              "ict": [ict_schedule(i, iters) for i in range(iters)]}[kind]
    assert [n for n, _, _ in seen] == want_n
    target = [p.clone() for p in seen[0][1]]                                   # theta^- starts as theta
    for _, weights, got in seen:
        target = [decay * a + (1 - decay) * w for a, w in zip(target, weights)]
        assert all(torch.allclose(g, a, rtol=1e-12, atol=1e-15) for g, a in zip(got, target))
    assert not torch.equal(seen[-1][1][0], seen[0][1][0])                      # the weights did move


# ---- MeanFlow ----------------------------------------------------------------------------------------

def exact_average_velocity(z, t, r):
    """u(z, t, r) of dz/dt = A z: (Z_r - Z_t) / (r - t) = z (exp(A (r - t)) - 1) / (r - t); A z at r = t."""
    h = (r - t)[:, None]
    safe = torch.where(h.abs() < 1e-12, torch.ones_like(h), h)
    return torch.where(h.abs() < 1e-12, A * z, z * torch.expm1(A * h) / safe)


def test_the_meanflow_identity_holds_for_the_exact_average_velocity():
    """u = v + (r - t) du/dt with du/dt the jvp along (v, 1, 0): the exact u is its own target."""
    z, _ = batch()
    g = torch.Generator().manual_seed(2)
    t = torch.rand(len(z), generator=g, dtype=torch.float64) * 0.5
    r = t + torch.rand(len(z), generator=g, dtype=torch.float64) * 0.5
    u, target = meanflow_target(exact_average_velocity, z, t, r, A * z)
    assert torch.allclose(u, target, atol=1e-10), float((u - target).abs().max())
    # the jvp equals central finite differences of u along the flow, for any network
    net, eps = Net(extra=1), 1e-6
    v = torch.randn(z.shape, generator=g, dtype=torch.float64)
    u, target = meanflow_target(net, z, t, r, v)
    fd = (net(z + eps * v, t + eps, r) - net(z - eps * v, t - eps, r)) / (2 * eps)
    assert torch.allclose(target, v + (r - t)[:, None] * fd, atol=1e-7)


def test_meanflow_at_r_equal_t_is_the_rectified_flow_loss_and_samples_on_its_grid():
    net, (x0, x1) = Net(extra=1), batch()
    g = torch.Generator().manual_seed(4)
    got = meanflow_loss(net, x0, x1, generator=g, equal_fraction=1.0)
    g = torch.Generator().manual_seed(4)
    t = torch.minimum(torch.rand(len(x0), generator=g), torch.rand(len(x0), generator=g)).double()  # float32 draws
    xt = t[:, None] * x1 + (1 - t[:, None]) * x0
    assert torch.allclose(got, (net(xt, t, t) - (x1 - x0)).pow(2).mean(), rtol=1e-12)
    one = meanflow_sample(exact_average_velocity, x0, 1)
    assert torch.allclose(one, x0 * math.exp(A), atol=1e-12)             # one step of the exact u is exact
    assert torch.allclose(meanflow_sample(exact_average_velocity, x0, 4), one, atol=1e-12)


def test_meanflow_loss_with_r_after_t_is_the_formula_written_out():
    """r > t everywhere (equal_fraction 0): u(X_t, t, r) regressed on v + (r - t) du/dt, du/dt taken here by
    central finite differences along (X_1 - X_0, 1, 0), not by jvp."""
    net, (x0, x1), eps = Net(extra=1), batch(), 1e-6
    got = meanflow_loss(net, x0, x1, generator=torch.Generator().manual_seed(8), equal_fraction=0.0)
    g = torch.Generator().manual_seed(8)
    a, b = torch.rand(len(x0), generator=g).double(), torch.rand(len(x0), generator=g).double()
    t, r = torch.minimum(a, b), torch.maximum(a, b)
    xt, v = t[:, None] * x1 + (1 - t[:, None]) * x0, x1 - x0
    dudt = (net(xt + eps * v, t + eps, r) - net(xt - eps * v, t - eps, r)) / (2 * eps)
    want = (net(xt, t, r) - (v + (r - t)[:, None] * dudt)).pow(2).mean()
    assert bool((r > t).all()) and torch.allclose(got, want, rtol=1e-7), (float(got), float(want))


def test_meanflow_adaptive_weighting_is_the_formula_written_out():
    """w = sg(1 / (e + c)^p) on each sample's squared error e: the loss's value is mean(e / (e + c)^p) and its gradient
    that of mean(w e) with w held fixed."""
    net, (x0, x1) = Net(extra=1), batch()
    got = meanflow_loss(net, x0, x1, generator=torch.Generator().manual_seed(8), equal_fraction=0.0, adaptive_p=1.0)
    got.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    g = torch.Generator().manual_seed(8)
    a, b = torch.rand(len(x0), generator=g).double(), torch.rand(len(x0), generator=g).double()
    t, r = torch.minimum(a, b), torch.maximum(a, b)
    u, target = meanflow_target(net, t[:, None] * x1 + (1 - t[:, None]) * x0, t, r, x1 - x0)
    e = (u - target).pow(2).sum(1)
    want = (e / (e.detach() + 0.01)).mean()
    want.backward()
    assert torch.allclose(got, want) and all(torch.allclose(a, p.grad) for a, p in zip(grads, net.parameters()))
    assert not torch.allclose(got, meanflow_loss(net, x0, x1, generator=torch.Generator().manual_seed(8),
                                                 equal_fraction=0.0))


# ---- shortcut models ---------------------------------------------------------------------------------

def exact_shortcut(x, t, d):
    """The exact step of size d of dz/dt = A z, as a velocity: x (exp(A d) - 1) / d; A x at d = 0."""
    dd = d[:, None]
    return torch.where(dd == 0, A * x, x * torch.expm1(A * dd) / torch.where(dd == 0, torch.ones_like(dd), dd))


def test_the_shortcut_target_is_the_mean_of_two_half_steps():
    net, (x, _) = Net(extra=1), batch()
    t = torch.full((len(x),), 0.25, dtype=torch.float64)
    d = torch.full_like(t, 0.125)
    s1 = net(x, t, d)
    want = (s1 + net(x + 0.125 * s1, t + 0.125, d)) / 2
    assert torch.allclose(shortcut_target(net, x, t, d, finest=1 / 128), want, rtol=1e-12)
    # the exact shortcut is self-consistent at every level; below the finest level the flow (d = 0) steps
    for two_d in levels(8):
        d = torch.full_like(t, two_d / 2)
        target = shortcut_target(exact_shortcut, x, t, d, finest=1 / 8)
        if two_d / 2 >= 1 / 8:
            assert torch.allclose(target, exact_shortcut(x, t, 2 * d), atol=1e-12), two_d
        else:                                                  # two Euler half steps of the flow
            h = two_d / 2
            assert torch.allclose(target, x * ((1 + A * h) ** 2 - 1) / (2 * h), atol=1e-12)


def test_shortcut_levels_loss_and_sampling():
    assert levels(8) == [0.125, 0.25, 0.5, 1.0]
    with pytest.raises(ValueError, match="power of two"):
        levels(12)
    net, (x0, x1) = Net(extra=1), batch()
    g = torch.Generator().manual_seed(6)
    got = shortcut_loss(net, x0, x1, generator=g, consistency_fraction=0.0)
    t = torch.rand(len(x0), generator=torch.Generator().manual_seed(6)).double()
    xt = t[:, None] * x1 + (1 - t[:, None]) * x0
    assert torch.allclose(got, (net(xt, t, torch.zeros_like(t)) - (x1 - x0)).pow(2).mean(), rtol=1e-12)
    assert torch.isfinite(shortcut_loss(net, x0, x1, generator=g))
    for n in (1, 2, 8):                                        # the exact shortcut is exact at any step count
        assert torch.allclose(shortcut_sample(exact_shortcut, x0, n), x0 * math.exp(A), atol=1e-12)


def test_the_shortcut_loss_with_self_consistency_is_the_formula_written_out():
    """A quarter of the batch on self-consistency: s(x_t, t, 2d) against the mean of two steps of d (the flow,
    d = 0, below the finest level), at t on the grid of 2d; the rest on flow matching; one mean of both."""
    net, (x0, x1), m = Net(extra=1), batch(), 8
    got = shortcut_loss(net, x0, x1, generator=torch.Generator().manual_seed(9), m=m, consistency_fraction=0.25)
    g, n_sc = torch.Generator().manual_seed(9), len(x0) // 4
    t_fm = torch.rand(len(x0) - n_sc, generator=g).double()
    xt_fm = t_fm[:, None] * x1[n_sc:] + (1 - t_fm[:, None]) * x0[n_sc:]
    fm = net(xt_fm, t_fm, torch.zeros_like(t_fm)) - (x1[n_sc:] - x0[n_sc:])
    two_d = torch.tensor([1 / 8, 1 / 4, 1 / 2, 1.0], dtype=torch.float64)[torch.randint(4, (n_sc,), generator=g)]
    t = torch.floor(torch.rand(n_sc, generator=g) / two_d) * two_d
    xt = t[:, None] * x1[:n_sc] + (1 - t[:, None]) * x0[:n_sc]
    d = two_d / 2
    d_in = torch.where(d < 1 / 8, torch.zeros_like(d), d)                       # below 1/M: the flow itself
    s1 = net(xt, t, d_in)
    s2 = net(xt + d[:, None] * s1, t + d, d_in)
    sc = net(xt, t, two_d) - (s1 + s2) / 2
    want = (sc.pow(2).sum() + fm.pow(2).sum()) / (sc.numel() + fm.numel())
    assert bool((t + two_d <= 1).all()) and torch.allclose(got, want, rtol=1e-12), (float(got), float(want))


# ---- progressive distillation ------------------------------------------------------------------------

def test_progressive_target_is_two_teacher_euler_steps():
    teacher, (x, _) = (lambda z, t: A * z), batch()
    t = torch.zeros(len(x), dtype=torch.float64)
    h = 1 / 8
    assert torch.allclose(two_teacher_steps(teacher, x, t, 8), x * ((1 + A * h) ** 2 - 1) / (2 * h), atol=1e-12)
    net, teacher_net, (x0, x1) = Net(seed=0), Net(seed=3), batch()
    got = progressive_loss(net, teacher_net, x0, x1, 8, generator=torch.Generator().manual_seed(7))
    k = torch.randint(0, 4, (len(x0),), generator=torch.Generator().manual_seed(7)).double()
    t = 2 * k / 8
    xt = t[:, None] * x1 + (1 - t[:, None]) * x0
    x_a = xt + h * teacher_net(xt, t)
    x_b = x_a + h * teacher_net(x_a, t + h)
    assert torch.allclose(got, (net(xt, t) - (x_b - xt) / (2 * h)).pow(2).mean(), rtol=1e-12)


def test_the_toy_mlp_takes_an_extra_input_for_r_or_d():
    m = VelocityMLP(extra=1)
    x, t = torch.randn(5, 2), torch.rand(5)
    assert m(x, t, t).shape == (5, 2)
    assert copy.deepcopy(VelocityMLP())(x, t).shape == (5, 2)
