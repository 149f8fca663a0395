"""Distributions on the unit sphere S^(d-1): Power Spherical (De Cao & Aziz 2020), von Mises-Fisher (Davidson et al.
2018) and the uniform prior, with closed-form KL to the uniform.

Everything is computed in float32 with autocast off, whatever the caller's precision: Beta/Gamma sampling, lgamma,
digamma and the Householder reflection are not safe in half precision. Samplers take `generator`: None, one
torch.Generator, or a list with one generator per batch element (then each sample depends only on its own generator,
not on the batch it is drawn in).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.special
import torch
import torch.nn.functional as F
from torch.distributions import Distribution, constraints, register_kl

Generators = torch.Generator | list[torch.Generator] | tuple[torch.Generator, ...] | None


def _fp32(method):
    """Run a distribution method with autocast off (its tensors are already float32)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with torch.autocast(self.device.type, enabled=False):
            return method(self, *args, **kwargs)

    return wrapper


def log_sphere_area(dim: int) -> float:
    """log |S^(d-1)| = ln 2 + (d/2) ln pi - ln Gamma(d/2), the surface area of the unit sphere in R^d."""
    return math.log(2.0) + dim / 2 * math.log(math.pi) - math.lgamma(dim / 2)


def _draw(fn, generator: Generators, batch: int, device: torch.device) -> torch.Tensor:
    """fn(index, generator) -> one draw; with a list of generators, draw each batch element with its own and stack
    on dim 0, else call fn(None, generator) once for the whole batch. Results land on `device`."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
        return torch.stack([fn(index, g) for index, g in enumerate(generator)]).to(device)
    return fn(None, generator).to(device)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _gen_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def standard_normal(shape: tuple[int, ...], generator: Generators, device: torch.device) -> torch.Tensor:
    """N(0, I) of `shape`; a list of generators draws row i of dim 0 with generator i."""
    if isinstance(generator, (list, tuple)):
        return _draw(lambda _, g: torch.randn(shape[1:], generator=g, device=g.device), generator, shape[0], device)
    return torch.randn(shape, generator=generator, device=_gen_device(generator, device)).to(device)


def _gamma(concentration: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Reparameterised Gamma(concentration, 1) draw (implicit gradient of torch._standard_gamma) with a generator."""
    target = _gen_device(generator, concentration.device)
    return torch._standard_gamma(concentration.to(target), generator=generator).to(concentration.device)


def _beta_parts(alpha: torch.Tensor, beta: torch.Tensor, generator: Generators) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1 - B) for B ~ Beta(alpha, beta) as G1/(G1+G2), G2/(G1+G2): both sides stay accurate near 0 and 1."""
    if isinstance(generator, (list, tuple)):
        pick = lambda i, g: torch.stack([_gamma(alpha[i], g), _gamma(beta[i], g)])  # noqa: E731
        gammas = _draw(pick, generator, alpha.shape[0], alpha.device).movedim(1, 0)
    else:
        gammas = torch.stack([_gamma(alpha, generator), _gamma(beta, generator)])
    total = gammas.sum(0)
    return gammas[0] / total, gammas[1] / total


def householder_to(loc: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Reflect samples y (..., d) around e_1 onto loc: z = y - 2 (u.y) u, u = (e_1 - loc) / ||e_1 - loc||."""
    e1 = torch.zeros_like(loc)
    e1[..., 0] = 1.0
    u = F.normalize(e1 - loc, dim=-1, eps=1e-12)  # u = 0 when loc = e_1: the identity
    return y - 2 * (u * y).sum(-1, keepdim=True) * u


def _tangent_sample(t: torch.Tensor, radial: torch.Tensor, shape: tuple[int, ...], dim: int, generator, device):
    """y = (t, radial * v) with v ~ Uniform(S^(d-2)): a point at 'height' t along e_1; radial = sqrt(1 - t^2)."""
    v = F.normalize(standard_normal((*shape, dim - 1), generator, device), dim=-1)  # (..., d-1)
    return torch.cat([t.unsqueeze(-1), radial.unsqueeze(-1) * v], dim=-1)


class HypersphericalUniform(Distribution):
    """Uniform distribution on S^(d-1) (the VAE prior); log p = -log |S^(d-1)|."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, dim: int, device: torch.device | str = "cpu"):
        if dim < 2:
            raise ValueError(f"the sphere S^(d-1) needs d >= 2, got d = {dim}")
        self.dim, self.device = dim, torch.device(device)
        super().__init__(torch.Size(), torch.Size([dim]), validate_args=False)

    def sample(self, n: int | torch.Size = (), generator: Generators = None) -> torch.Tensor:
        """n points (n, d) on the sphere: normalised Gaussians; a list of n generators draws one point each."""
        shape = (n,) if isinstance(n, int) else tuple(n)
        return F.normalize(standard_normal((*shape, self.dim), generator, self.device), dim=-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.full(value.shape[:-1], -log_sphere_area(self.dim), device=value.device)

    def entropy(self) -> torch.Tensor:
        return torch.tensor(log_sphere_area(self.dim), device=self.device)


class _SphericalPosterior(Distribution):
    """Shared parts of the two posteriors: loc (..., d) on the sphere, scalar concentration kappa (...)."""

    arg_constraints = {"loc": constraints.real_vector, "scale": constraints.nonnegative}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor):
        if scale.shape != loc.shape[:-1]:
            raise ValueError(f"scale must have shape {tuple(loc.shape[:-1])} (one kappa per loc), got {scale.shape}")
        self.loc, self.scale = _at_least_fp32(loc), _at_least_fp32(scale)
        self.dim = loc.shape[-1]
        super().__init__(self.scale.shape, torch.Size([self.dim]), validate_args=False)

    @property
    def device(self) -> torch.device:
        return self.loc.device

    def _check_generators(self, sample_shape: torch.Size, generator: Generators) -> None:
        if isinstance(generator, (list, tuple)) and (len(sample_shape) > 0 or len(self.batch_shape) != 1):
            raise ValueError("per-sample generators need a batch of shape (B,) and sample_shape ()")

    def sample(self, sample_shape: tuple[int, ...] = (), generator: Generators = None) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape, generator)

    @_fp32
    def kl_to_uniform(self) -> torch.Tensor:
        """KL(q || Uniform(S^(d-1))) = -H[q] + log |S^(d-1)| per batch element, in float64 inside: the two terms
        nearly cancel for small kappa at large d (float32 would leave ~1e-4 of rounding in a KL near 0)."""
        precise = type(self)(self.loc.double(), self.scale.double())
        kl = log_sphere_area(self.dim) - precise.entropy()
        return kl.clamp_min(0.0).to(self.scale.dtype)  # KL >= 0; float64 rounding can leave -1e-14 at kappa -> 0


class PowerSpherical(_SphericalPosterior):
    """Power Spherical distribution p(z) = N(kappa, d) (1 + loc.z)^kappa (De Cao & Aziz 2020, eq. 4-6)."""

    @property
    def alpha(self) -> torch.Tensor:
        return (self.dim - 1) / 2 + self.scale  # alpha = (d-1)/2 + kappa

    @property
    def beta(self) -> float:
        return (self.dim - 1) / 2  # beta = (d-1)/2

    @_fp32
    def log_normalizer(self) -> torch.Tensor:
        """log N = -[(alpha + beta) ln 2 + beta ln pi + lnGamma(alpha) - lnGamma(alpha + beta)] (eq. 5)."""
        alpha, beta = self.alpha, self.beta
        log_gammas = torch.lgamma(alpha) - torch.lgamma(alpha + beta)
        return -((alpha + beta) * math.log(2) + beta * math.log(math.pi) + log_gammas)

    @_fp32
    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """log N + kappa log(1 + loc.z); xlogy keeps kappa = 0 exact at z = -loc."""
        dot = (self.loc * value.float()).sum(-1)
        return self.log_normalizer() + torch.xlogy(self.scale, 1 + dot)

    @_fp32
    def rsample(self, sample_shape: tuple[int, ...] = (), generator: Generators = None) -> torch.Tensor:
        """Reparameterised, rejection-free draw (Alg. 1): t = 2B - 1 with B ~ Beta(alpha, beta), v uniform on
        S^(d-2), then a Householder reflection of (t, sqrt(1 - t^2) v) from e_1 onto loc."""
        sample_shape = torch.Size(sample_shape)
        self._check_generators(sample_shape, generator)
        shape = sample_shape + self.batch_shape
        alpha = self.alpha.expand(shape)
        b, one_minus_b = _beta_parts(alpha, torch.full_like(alpha, self.beta), generator)
        t, radial = b - one_minus_b, 2 * (b * one_minus_b).sqrt()  # 1 - t^2 = 4 B (1 - B), no cancellation
        y = _tangent_sample(t, radial, tuple(shape), self.dim, generator, self.device)
        return householder_to(self.loc.expand(*shape, self.dim), y)

    @_fp32
    def entropy(self) -> torch.Tensor:
        """H = -log N - kappa (ln 2 + psi(alpha) - psi(alpha + beta)) (eq. 7)."""
        alpha = self.alpha
        expected_log = math.log(2) + torch.digamma(alpha) - torch.digamma(alpha + self.beta)  # E[log(1 + loc.z)]
        return -self.log_normalizer() - self.scale * expected_log

    @property
    def mean(self) -> torch.Tensor:
        """E[z] = loc * E[t], E[t] = (alpha - beta) / (alpha + beta) = kappa / (kappa + d - 1)."""
        return self.loc * (self.scale / (self.scale + self.dim - 1)).unsqueeze(-1)


class _LogBesselIv(torch.autograd.Function):
    """log I_v(kappa) via scipy's exponentially scaled ive (float64), with d/dkappa = I_{v+1}/I_v + v/kappa."""

    @staticmethod
    def forward(ctx, v: float, kappa: torch.Tensor) -> torch.Tensor:
        k = kappa.detach().double().cpu().numpy()
        scaled = scipy.special.ive(v, k)  # I_v(k) e^{-k}; underflows to 0 only for k -> 0 at large v
        small = v * np.log(np.maximum(k, 1e-300) / 2) - scipy.special.gammaln(v + 1)  # I_v ~ (k/2)^v / Gamma(v+1)
        with np.errstate(divide="ignore"):
            out = np.where(scaled > 0, np.log(scaled) + k, small)
        ctx.v = v
        ctx.save_for_backward(kappa)
        return torch.from_numpy(out).to(kappa.device, kappa.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (kappa,) = ctx.saved_tensors
        return None, grad * (bessel_ratio(ctx.v, kappa.detach()) + ctx.v / kappa)


def log_bessel_iv(v: float, kappa: torch.Tensor) -> torch.Tensor:
    """log I_v(kappa), differentiable in kappa > 0 (scipy on the CPU: one host round trip per call)."""
    return _LogBesselIv.apply(v, kappa)


def bessel_ratio(v: float, kappa: torch.Tensor) -> torch.Tensor:
    """I_{v+1}(kappa) / I_v(kappa) in float64 precision (no gradient: used inside the backward)."""
    k = kappa.double().cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = scipy.special.ive(v + 1, k) / scipy.special.ive(v, k)
    ratio = np.where(np.isfinite(ratio), ratio, k / (2 * (v + 1)))  # both underflow: the small-kappa limit
    return torch.from_numpy(ratio).to(kappa.device, kappa.dtype)


class VonMisesFisher(_SphericalPosterior):
    """von Mises-Fisher f(z) = C_d(kappa) exp(kappa loc.z), C_d = kappa^(d/2-1) / ((2 pi)^(d/2) I_(d/2-1)(kappa)).

    Needs kappa > 0. Sampling: for d = 3 the exact inverse CDF of w = loc.z (fully reparameterised); otherwise
    Wood's (1994) rejection sampler, with the gradient taken through the accepted proposal w = h(eps, kappa)
    (Davidson et al. 2018's g_rep; their score-function correction g_cor is left out, as in the s-vae code, so
    the kappa gradient of a sample is slightly biased for d != 3; the loc gradient is exact).
    """

    @property
    def order(self) -> float:
        return self.dim / 2 - 1  # v = d/2 - 1

    @_fp32
    def log_normalizer(self) -> torch.Tensor:
        """log C_d(kappa) = (d/2 - 1) log kappa - (d/2) log 2 pi - log I_(d/2-1)(kappa)."""
        kappa = self.scale
        return torch.xlogy(self.order, kappa) - self.dim / 2 * math.log(2 * math.pi) - log_bessel_iv(self.order, kappa)

    @_fp32
    def mean_resultant(self) -> torch.Tensor:
        """A_d(kappa) = I_(d/2)(kappa) / I_(d/2-1)(kappa) = E[loc.z]; the log-difference in float64 (the logs grow
        like kappa, so float32 would lose the ratio's last digits at large kappa)."""
        kappa = self.scale.double()
        log_ratio = log_bessel_iv(self.order + 1, kappa) - log_bessel_iv(self.order, kappa)
        return log_ratio.exp().to(self.scale.dtype)

    @_fp32
    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.log_normalizer() + self.scale * (self.loc * value.float()).sum(-1)

    @_fp32
    def entropy(self) -> torch.Tensor:
        """H = -log C_d(kappa) - kappa A_d(kappa)."""
        return -self.log_normalizer() - self.scale * self.mean_resultant()

    @property
    def mean(self) -> torch.Tensor:
        return self.loc * self.mean_resultant().unsqueeze(-1)

    @_fp32
    def rsample(self, sample_shape: tuple[int, ...] = (), generator: Generators = None) -> torch.Tensor:
        """w = loc.z from the d = 3 inverse CDF or Wood's sampler, v uniform on S^(d-2), Householder onto loc."""
        sample_shape = torch.Size(sample_shape)
        self._check_generators(sample_shape, generator)
        shape = sample_shape + self.batch_shape
        kappa = self.scale.expand(shape).double()
        w = self._w_exact(kappa, generator) if self.dim == 3 else self._w_wood(kappa, generator)
        radial = (1 - w * w).clamp_min(1e-30).sqrt()
        y = _tangent_sample(w.float(), radial.float(), tuple(shape), self.dim, generator, self.device)
        return householder_to(self.loc.expand(*shape, self.dim), y)

    def _uniform(self, shape: tuple[int, ...], generator: Generators) -> torch.Tensor:
        """U(0, 1) in float64; a list of generators draws element i of dim 0 with generator i."""
        if isinstance(generator, (list, tuple)):
            draw = lambda _, g: torch.rand(shape[1:], generator=g, device=g.device, dtype=torch.float64)  # noqa: E731
            return _draw(draw, generator, shape[0], self.device)
        device = _gen_device(generator, self.device)
        return torch.rand(shape, generator=generator, device=device, dtype=torch.float64).to(self.device)

    def _w_exact(self, kappa: torch.Tensor, generator: Generators) -> torch.Tensor:
        """d = 3: w = 1 + log(u + (1 - u) e^(-2 kappa)) / kappa, the inverse CDF of f(w) ~ e^(kappa w) on [-1, 1]
        (written with log1p/expm1 so that small kappa stays accurate and u = 0 gives w = -1, not -inf)."""
        u = self._uniform(tuple(kappa.shape), generator)
        return 1 + torch.log1p((1 - u) * torch.expm1(-2 * kappa)) / kappa

    def _w_wood(self, kappa: torch.Tensor, generator: Generators) -> torch.Tensor:
        """Wood (1994): accept eps ~ Beta((d-1)/2, (d-1)/2), then w = (1 - (1+b) eps) / (1 - (1-b) eps)."""
        m = self.dim - 1
        b = m / (2 * kappa + torch.sqrt(4 * kappa * kappa + m * m))  # = (-2k + sqrt(4k^2 + m^2)) / m, stable
        eps = _wood_accepted(kappa.detach(), b.detach(), m, generator)
        return (1 - (1 + b) * eps) / (1 - (1 - b) * eps)


WOOD_MAX_ROUNDS = 1000  # acceptance is > 0.5 for every kappa and d, so this is never reached in practice


def _wood_accepted(kappa: torch.Tensor, b: torch.Tensor, m: int, generator: Generators) -> torch.Tensor:
    """Accepted eps of Wood's rejection sampler, float64, no gradient; per-element generators loop per element."""
    if isinstance(generator, (list, tuple)):
        one = lambda i, g: _wood_rounds(kappa[i : i + 1], b[i : i + 1], m, g)[0]  # noqa: E731
        return _draw(one, generator, kappa.shape[0], kappa.device)
    return _wood_rounds(kappa, b, m, generator)


def _wood_rounds(kappa: torch.Tensor, b: torch.Tensor, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """Rejection rounds, each redrawing only the elements still pending, until all have an accepted proposal."""
    shape, home, device = kappa.shape, kappa.device, _gen_device(generator, kappa.device)
    kappa, b = kappa.reshape(-1).to(device), b.reshape(-1).to(device)
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + m * torch.log1p(-x0 * x0)
    eps, pending = torch.empty_like(kappa), torch.arange(kappa.numel(), device=device)
    for _ in range(WOOD_MAX_ROUNDS):
        half = torch.full((pending.numel(),), m / 2, dtype=kappa.dtype, device=device)
        proposal, _ = _beta_parts(half, half, generator)
        w = (1 - (1 + b[pending]) * proposal) / (1 - (1 - b[pending]) * proposal)
        u = torch.rand(pending.shape, generator=generator, device=device, dtype=kappa.dtype)
        accept = kappa[pending] * w + m * torch.log1p(-x0[pending] * w) - c[pending] >= torch.log(u)
        eps[pending[accept]] = proposal[accept]
        pending = pending[~accept]
        if pending.numel() == 0:
            return eps.view(shape).to(home)
    raise RuntimeError(f"Wood's sampler did not accept within {WOOD_MAX_ROUNDS} rounds (kappa={kappa.max():.3g})")


@register_kl(PowerSpherical, HypersphericalUniform)
@register_kl(VonMisesFisher, HypersphericalUniform)
def _kl_to_uniform(q: _SphericalPosterior, p: HypersphericalUniform) -> torch.Tensor:
    """torch.distributions.kl_divergence(q, HypersphericalUniform(d)) in closed form."""
    if q.dim != p.dim:
        raise ValueError(f"KL between distributions on S^{q.dim - 1} and S^{p.dim - 1}")
    return q.kl_to_uniform()
