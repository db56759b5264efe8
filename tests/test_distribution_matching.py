"""rectflow.distribution_matching against its formulas written out: the score of a velocity against a Gaussian
mixture's exact score, DMD2's and SiD's generator losses and their gradients, the fake velocity's data, the two
time scales, and a generator that really moves onto a target law."""
import copy

import pytest
import torch

import rectflow as rf
from rectflow.distribution_matching import (RECIPES, dmd_loss, fake_loss, one_step, score, sid_loss,
                                            train_distribution_matching)
from tests.small_nets import Net, batch
from toy.compare import CompareConfig
from toy.exact import mixture_velocity
from toy.experiment import Bench
from toy.few_step import train_few_step
from toy.model import VelocityMLP

MEANS1 = [[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]]    # X_0 ~ N(0, I), X_1 ~ (1/3) sum_j N(b_j, I)


def mixture_posterior(x, t):
    """The exact law of X_t = t X_1 + (1 - t) X_0 for the mixture above: N(t b_j, c_t I) with c_t = t^2 + (1 - t)^2,
    so grad log p_t(x) = sum_j w_j (t b_j - x) / c_t and E[X_1 | x] = sum_j w_j (b_j + t / c_t (x - t b_j))."""
    b, tt = torch.tensor(MEANS1, dtype=torch.float64), t[:, None, None]
    c = tt ** 2 + (1 - tt) ** 2
    d = x[:, None, :] - tt * b                                          # x - t b_j, [B, K, 2]
    w = torch.softmax(-d.pow(2).sum(-1, keepdim=True) / (2 * c), dim=1)
    return (w * -d / c).sum(1), (w * (b + tt / c * d)).sum(1)


def test_the_score_of_a_velocity_is_the_exact_score_of_its_path():
    v = mixture_velocity([[0.0, 0.0]], MEANS1, 1.0)
    g = torch.Generator().manual_seed(0)
    x, t = 4 * torch.randn(256, 2, generator=g, dtype=torch.float64), 0.05 + 0.9 * torch.rand(256, generator=g).double()
    want_score, want_end = mixture_posterior(x, t)
    assert torch.allclose(score(v, x, t), want_score, atol=1e-10)
    assert torch.allclose(rf.data_end(v, x, t), want_end, atol=1e-10)


def nets_and_batch():
    (z, x0), t = batch(), torch.linspace(0.05, 0.95, 64, dtype=torch.float64)
    return Net(seed=0), Net(seed=1), Net(seed=2), z, x0, t          # generator, real, fake


def test_dmd_loss_moves_the_sample_along_the_normalised_difference_of_data_end_estimates():
    gen, real, fake, z, x0, t = nets_and_batch()
    x_g = one_step(gen, z).detach().requires_grad_()
    dmd_loss(x_g, real, fake, x0, t).backward()
    xt = t[:, None] * x_g.detach() + (1 - t[:, None]) * x0           # X_t = t x_g + (1 - t) X_0
    x_real = xt + (1 - t[:, None]) * real(xt, t)
    x_fake = xt + (1 - t[:, None]) * fake(xt, t)
    w = (x_g.detach() - x_real).abs().mean(1, keepdim=True)
    assert torch.allclose(x_g.grad, (x_fake - x_real).detach() / w / x_g.numel(), atol=1e-12)
    assert all(p.grad is None for p in [*real.parameters(), *fake.parameters()])


@pytest.mark.parametrize("alpha", [1.2, 0.0])
def test_sid_loss_is_its_formula_with_gradients_through_the_noisy_sample(alpha):
    gen, real, fake, z, x0, t = nets_and_batch()
    for p in [*real.parameters(), *fake.parameters()]:
        p.requires_grad_(False)

    def written_out(x_g, through_xt=True):
        xt = t[:, None] * x_g + (1 - t[:, None]) * x0
        xt = xt if through_xt else xt.detach()
        x_real, x_fake = xt + (1 - t[:, None]) * real(xt, t), xt + (1 - t[:, None]) * fake(xt, t)
        w = (x_g - x_real).abs().mean(1).detach()
        return (((x_real - x_fake) * ((x_real - x_g) - alpha * (x_real - x_fake))).sum(1) / w).mean()

    x_g = one_step(gen, z).detach().requires_grad_()
    got = sid_loss(x_g, real, fake, x0, t, alpha=alpha)
    want = written_out(x_g)
    assert torch.allclose(got, want, rtol=1e-12)
    (grad,), (want_grad,) = torch.autograd.grad(got, x_g), torch.autograd.grad(want, x_g)
    assert torch.allclose(grad, want_grad, atol=1e-12)
    (detached_grad,) = torch.autograd.grad(written_out(x_g, through_xt=False), x_g)
    assert (grad - detached_grad).abs().max() > 1e-3               # the gradient through X_t is not negligible


def test_the_fake_velocity_learns_the_generators_samples_and_never_moves_the_generator():
    gen, _, fake, z, x0, _ = nets_and_batch()
    got = fake_loss(fake, gen, z, x0, rng=torch.Generator().manual_seed(5))
    x_g = z + gen(z, torch.zeros(len(z), dtype=z.dtype))                # G(z) = z + g(z, 0)
    want = rf.rf_loss(fake, x0, x_g, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(got, want, rtol=1e-12)
    got.backward()
    assert all(p.grad is None for p in gen.parameters()) and all(p.grad is not None for p in fake.parameters())


@pytest.mark.parametrize("method", ["dmd2", "sid"])
def test_two_time_scales_and_which_weights_move(method):
    teacher, gen = Net(seed=3), Net(seed=3)
    fake, before = copy.deepcopy(teacher), copy.deepcopy(teacher)
    source = lambda n, g: torch.randn(n, 2, generator=g, dtype=torch.float64)      # noqa: E731
    out = train_distribution_matching(gen, teacher, fake, source, 3, method=method, batch_size=16, progress=False)
    k = RECIPES[method]["fake_updates"]
    counted = (len(out["generator_loss"]), len(out["fake_loss"]))
    assert counted == (3, 3 * k) == (out["generator_steps"], out["fake_steps"])
    assert k == {"dmd2": 5, "sid": 1}[method]                      # the papers' ratios
    weights = {n: torch.cat([p.flatten() for p in m.parameters()]) for n, m in
               (("teacher", teacher), ("gen", gen), ("fake", fake), ("before", before))}
    assert torch.equal(weights["teacher"], weights["before"])
    assert all(p.requires_grad for p in [*teacher.parameters(), *fake.parameters()])   # frozen only while in use
    assert not torch.equal(weights["gen"], weights["before"]) and not torch.equal(weights["fake"], weights["before"])


def test_a_conditional_model_sees_its_condition_everywhere_and_the_fake_its_own_objective():
    """Text to image (the mini's DMD2 stage): each batch's drawn condition reaches the generator, the teacher and
    the fake velocity; `fake_objective` trains the fake on the generator's detached samples under the same
    condition; networks are called through `as_velocity`."""
    seen, drawn, fake_batches, wrapped = [], [], [], []

    def sample_cond(n, rng):
        drawn.append(torch.rand(n, generator=rng, dtype=torch.float64))
        return drawn[-1]

    def as_velocity(net):                        # the network takes the timestep 1 - t, as a UNet (1 - t) 1000
        wrapped.append(net)
        return lambda x, t, c: seen.append((net, c)) or net(x, 1 - t, c)

    def teacher(x, t, c):
        seen.append(("teacher", c))
        return -x + c[:, None]

    gen, fake = Net(extra=1, seed=3), Net(extra=1, seed=4)

    def objective(x0, x_g, cond, rng):
        fake_batches.append((x_g.requires_grad, cond))
        return rf.rf_loss(as_velocity(fake), x0, x_g, cond, generator=rng)
    source = lambda n, g: torch.randn(n, 2, generator=g, dtype=torch.float64)      # noqa: E731
    out = train_distribution_matching(gen, teacher, fake, source, 2, batch_size=8, sample_cond=sample_cond,
                                      fake_objective=objective, as_velocity=as_velocity, progress=False)
    assert wrapped[:2] == [gen, fake] and len(out["fake_loss"]) == 10 and len(drawn) == 12    # 5 + 1 draws a step
    assert all(c is not None for _, c in seen) and {who for who, _ in seen} == {gen, fake, "teacher"}
    fakes_drawn = [drawn[i] for i in range(12) if i % 6 != 5]                                # the fake's draws
    assert len(fake_batches) == 10 and all(c is d for (_, c), d in zip(fake_batches, fakes_drawn))
    assert not any(grad for grad, _ in fake_batches)                                         # G's samples detached
    teacher_conds = [c for who, c in seen if who == "teacher"]
    assert len(teacher_conds) == 2 and all(c is drawn[i] for c, i in zip(teacher_conds, (5, 11)))   # G's draws
    for i in (5, 11):                       # a generator step: G, v_real and v_fake, all through as_velocity
        assert [who for who, c in seen if c is drawn[i]] == [gen, "teacher", fake]


@pytest.mark.parametrize("method", ["dmd2", "sid"])
def test_a_generator_moves_onto_the_teachers_law(method):
    """From G(z) = z (the source itself, W2 3.6 from the target), a few hundred steps against the exact flow of
    the mixture above bring the generator's samples within W2 1.5 of the target (measured: see the assertion)."""
    torch.manual_seed(0)
    teacher = mixture_velocity([[0.0, 0.0]], MEANS1, 1.0)
    gen, fake = VelocityMLP(hidden=64, depth=3), VelocityMLP(hidden=64, depth=3)
    torch.nn.init.zeros_(gen.net[-1].weight), torch.nn.init.zeros_(gen.net[-1].bias)
    g = torch.Generator().manual_seed(1)
    z, target = torch.randn(512, 2, generator=g), mixture_target(512, g)
    start = rf.w2(one_step(gen, z), target)
    train_distribution_matching(gen, teacher, fake, lambda n, rng: torch.randn(n, 2, generator=rng), 300,
                                method=method, lr=1e-3, batch_size=256, progress=False)
    with torch.no_grad():
        end = rf.w2(one_step(gen, z), target)
    assert start > 3 and end < 1.5, (start, end)


def mixture_target(n, g):
    return torch.tensor(MEANS1)[torch.randint(3, (n,), generator=g)] + torch.randn(n, 2, generator=g)


@pytest.mark.parametrize("method", ["dmd2", "sid"])
def test_distribution_matching_can_match_another_velocity_than_its_starting_flow(method):
    """bench/dm_teacher_ablation.py: `real` replaces v_real (the exact flow there) while the generator and the fake
    velocity still start from the teacher network's weights."""
    b = Bench(CompareConfig.fast(distill_iters=12, progress=False))
    teacher, calls = b.new_model(), []

    def real(x, t):
        calls.append(len(x))
        return torch.zeros_like(x)
    with_real = train_few_step(method, b, teacher, real=real)[0]
    assert calls and all(n == b.cfg.batch_size for n in calls)
    plain = train_few_step(method, b, teacher)[0]
    differ = [not torch.equal(p, q) for p, q in zip(with_real.parameters(), plain.parameters())]
    assert any(differ)
