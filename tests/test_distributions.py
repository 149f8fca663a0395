"""Distributions on the sphere (models/distributions.py) against closed forms, Monte Carlo and quadrature.

Monte-Carlo checks use a tolerance of 5 standard errors (measured from the same samples) plus a float32 floor:
a correct implementation fails them with probability < 1e-6 per value, a wrong formula by O(1) does not pass.
"""

import math

import numpy as np
import pytest
import scipy.special
import torch
import torch.nn.functional as F

from models.distributions import (
    HypersphericalUniform,
    PowerSpherical,
    VonMisesFisher,
    log_bessel_iv,
    log_sphere_area,
)

POSTERIORS = [PowerSpherical, VonMisesFisher]
SAMPLES = 20_000


def _posterior(cls, dim: int, kappas, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    loc = F.normalize(torch.randn(len(kappas), dim, generator=generator), dim=-1)
    return cls(loc, torch.tensor(kappas, dtype=torch.float32))


def _within_standard_errors(samples: torch.Tensor, expected: torch.Tensor, floor: float = 1e-4) -> None:
    """Mean over dim 0 of `samples` equals `expected` within 5 standard errors (+ floor)."""
    estimate, stderr = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    assert ((estimate - expected).abs() <= 5 * stderr + floor).all(), (estimate, expected, stderr)


@pytest.mark.parametrize("cls", POSTERIORS)
@pytest.mark.parametrize("dim", [2, 3, 64])
def test_samples_lie_on_the_unit_sphere(cls, dim):
    q = _posterior(cls, dim, [1e-3, 1.0, 30.0, 1e4])
    z = q.rsample((500,))
    assert z.shape == (500, 4, dim) and z.dtype == torch.float32
    assert torch.allclose(z.norm(dim=-1), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("cls", POSTERIORS)
@pytest.mark.parametrize("dim", [3, 64])
def test_sample_mean_matches_the_closed_form(cls, dim):
    """PowerSpherical: E[z] = loc kappa / (kappa + d - 1); vMF: E[z] = loc A_d(kappa)."""
    q = _posterior(cls, dim, [0.5, 5.0, 50.0])
    if cls is PowerSpherical:
        expected = q.loc * (q.scale / (q.scale + dim - 1)).unsqueeze(-1)
        assert torch.allclose(q.mean, expected)
    _within_standard_errors(q.rsample((SAMPLES,)), q.mean)


def test_von_mises_fisher_mean_resultant_in_three_dimensions():
    """A_3(kappa) = coth(kappa) - 1/kappa (Langevin function)."""
    kappa = torch.tensor([0.01, 0.3, 2.0, 20.0, 700.0])
    q = VonMisesFisher(F.normalize(torch.ones(5, 3), dim=-1), kappa)
    langevin = 1 / torch.tanh(kappa.double()) - 1 / kappa.double()
    assert torch.allclose(q.mean_resultant().double(), langevin, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls", POSTERIORS)
@pytest.mark.parametrize("dim", [3, 8, 64])
def test_kl_is_nonnegative_and_vanishes_as_kappa_goes_to_zero(cls, dim):
    kappas = [1e-6, 1e-3, 0.1, 1.0, 10.0, 1e3, 1e5]
    kl = _posterior(cls, dim, kappas).kl_to_uniform()
    assert (kl >= 0).all() and torch.isfinite(kl).all()
    assert kl[0] < 1e-6 and (kl[1:] > kl[:-1]).all()  # KL grows with kappa


@pytest.mark.parametrize("cls", POSTERIORS)
@pytest.mark.parametrize("dim", [3, 8, 64])
def test_monte_carlo_kl_and_entropy_match_the_closed_form(cls, dim):
    """KL = E_q[log q - log p_U] and H = -E_q[log q], estimated from SAMPLES draws (the seed's test: d 8, kappa 10)."""
    q, uniform = _posterior(cls, dim, [0.5, 10.0, 200.0]), HypersphericalUniform(dim)
    z = q.sample((SAMPLES,))
    log_q = q.log_prob(z).double()  # (S, 3)
    _within_standard_errors(log_q - uniform.log_prob(z).double(), q.kl_to_uniform().double(), floor=1e-3)
    _within_standard_errors(-log_q, q.entropy().double(), floor=1e-3)
    assert torch.allclose(torch.distributions.kl_divergence(q, uniform), q.kl_to_uniform())


@pytest.mark.parametrize("cls", POSTERIORS)
def test_density_integrates_to_one_on_the_two_sphere(cls):
    """Gauss-Legendre in cos(theta) x uniform in phi; exact to ~1e-6 for these smooth densities."""
    nodes, weights = np.polynomial.legendre.leggauss(300)
    phi = torch.arange(600, dtype=torch.float64) * (2 * math.pi / 600)
    cos_t = torch.from_numpy(nodes)[:, None].expand(-1, 600)
    sin_t = (1 - cos_t**2).sqrt()
    grid = torch.stack([sin_t * phi.cos(), sin_t * phi.sin(), cos_t], dim=-1).float()  # (300, 600, 3)
    q = _posterior(cls, 3, [0.2, 5.0, 80.0])
    density = q.log_prob(grid[:, :, None, :]).double().exp()  # (300, 600, 3)
    integral = (density * torch.from_numpy(weights)[:, None, None]).sum((0, 1)) * (2 * math.pi / 600)
    assert torch.allclose(integral, torch.ones(3, dtype=torch.float64), atol=1e-4), integral


@pytest.mark.parametrize("cls", POSTERIORS)
def test_gradients_reach_loc_and_scale(cls):
    raw_loc = torch.randn(4, 5, requires_grad=True)
    kappa = torch.tensor([0.5, 2.0, 10.0, 50.0], requires_grad=True)
    q = cls(F.normalize(raw_loc, dim=-1), kappa)
    target = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    loss = (q.rsample() * target).sum() + q.kl_to_uniform().sum() + q.log_prob(target.expand(4, 5)).sum()
    loss.backward()
    for grad in (raw_loc.grad, kappa.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("cls", POSTERIORS)
def test_kappa_gradient_of_the_kl_matches_finite_differences(cls):
    kappa = torch.tensor([0.3, 4.0, 60.0], dtype=torch.float64, requires_grad=True)
    loc = F.normalize(torch.ones(3, 16, dtype=torch.float64), dim=-1)
    assert torch.autograd.gradcheck(lambda k: cls(loc, k).kl_to_uniform(), (kappa,))


def test_log_bessel_matches_scipy_with_a_correct_gradient():
    kappa = torch.tensor([1e-3, 0.7, 12.0, 900.0], dtype=torch.float64, requires_grad=True)
    for order in (0.0, 0.5, 31.0):
        expected = np.log(scipy.special.ive(order, kappa.detach().numpy())) + kappa.detach().numpy()
        assert np.allclose(log_bessel_iv(order, kappa).detach().numpy(), expected, rtol=1e-10)
        assert torch.autograd.gradcheck(lambda k, v=order: log_bessel_iv(v, k), (kappa,))


@pytest.mark.parametrize("cls", POSTERIORS)
def test_float32_under_a_bfloat16_autocast(cls):
    loc = F.normalize(torch.randn(3, 8), dim=-1).bfloat16()
    kappa = torch.tensor([1.0, 10.0, 100.0]).bfloat16()
    reference = cls(loc.float(), kappa.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = cls(loc, kappa)
        z, kl, entropy = q.rsample(), q.kl_to_uniform(), q.entropy()
        log_prob = q.log_prob(reference.loc)
    assert all(t.dtype == torch.float32 for t in (z, kl, entropy, log_prob))
    assert torch.allclose(kl, reference.kl_to_uniform()) and torch.allclose(log_prob, reference.log_prob(reference.loc))


def test_uniform_samples_have_mean_zero_and_constant_density():
    uniform = HypersphericalUniform(3)
    z = uniform.sample(SAMPLES, generator=torch.Generator().manual_seed(0))
    assert z.shape == (SAMPLES, 3) and torch.allclose(z.norm(dim=-1), torch.ones(()), atol=1e-5)
    _within_standard_errors(z, torch.zeros(3))
    assert torch.allclose(uniform.log_prob(z), torch.full((SAMPLES,), -math.log(4 * math.pi)))
    assert math.isclose(log_sphere_area(2), math.log(2 * math.pi)) and uniform.entropy() == math.log(4 * math.pi)


@pytest.mark.parametrize("cls", POSTERIORS)
def test_per_sample_generators_make_draws_batch_independent(cls):
    q = _posterior(cls, 6, [1.0, 10.0, 100.0])
    alone = cls(q.loc[1:2], q.scale[1:2]).rsample(generator=[torch.Generator().manual_seed(7)])
    batch = q.rsample(generator=[torch.Generator().manual_seed(seed) for seed in (3, 7, 11)])
    assert torch.equal(alone[0], batch[1])
    uniform_alone = HypersphericalUniform(6).sample(1, generator=[torch.Generator().manual_seed(7)])
    uniform_batch = HypersphericalUniform(6).sample(2, generator=[torch.Generator().manual_seed(s) for s in (1, 7)])
    assert torch.equal(uniform_alone[0], uniform_batch[1])
    with pytest.raises(ValueError, match="generators"):
        q.rsample(generator=[torch.Generator()])


@pytest.mark.parametrize("cls", POSTERIORS)
def test_batch_of_one_and_loc_at_the_pole(cls):
    q = cls(torch.tensor([[1.0, 0.0, 0.0]], requires_grad=True), torch.tensor([5.0], requires_grad=True))
    z = q.rsample()
    assert z.shape == (1, 3) and q.kl_to_uniform().shape == (1,) and q.entropy().shape == (1,)
    z.sum().backward()
    assert torch.isfinite(q.loc.grad).all() and torch.isfinite(q.scale.grad).all()  # no 0/0 at loc = e_1
    with pytest.raises(ValueError, match="one kappa per loc"):
        cls(torch.ones(2, 3), torch.ones(2, 1))


def test_power_spherical_package_cross_check():
    power_spherical = pytest.importorskip("power_spherical", reason="dev-only cross-check: pip install power-spherical")
    for dim in (3, 64):
        ours = _posterior(PowerSpherical, dim, [0.1, 3.0, 300.0])
        theirs = power_spherical.PowerSpherical(ours.loc, ours.scale)
        z = theirs.sample((100,))
        assert torch.allclose(ours.log_prob(z), theirs.log_prob(z), rtol=1e-4, atol=1e-3)
        assert torch.allclose(ours.entropy(), theirs.entropy(), rtol=1e-5, atol=1e-4)
        prior = power_spherical.HypersphericalUniform(dim)
        assert torch.allclose(ours.kl_to_uniform(), torch.distributions.kl_divergence(theirs, prior), atol=1e-4)
        _within_standard_errors(theirs.sample((SAMPLES,)), ours.mean)  # their samples, our closed-form mean
        # their `mean` is loc * t_mean with t_mean of shape (B,): it broadcasts over d, not B (wrong for B = d, an
        # error otherwise), so it is compared one loc at a time
        single = power_spherical.PowerSpherical(ours.loc[0], ours.scale[0])
        assert torch.allclose(single.mean, ours.mean[0])
