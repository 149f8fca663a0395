"""The vqvae family's quantisers (models/quantize.py) against closed forms: straight-through gradient, unit-norm
codes, the vq/commit/entropy terms, usage and perplexity, the EMA update, dead-code restarts, k-means init, FSQ."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.quantize import (
    LAPLACE_EPS,
    FSQuantizer,
    VectorQuantizer,
    entropy_terms,
    kmeans,
    usage_and_perplexity,
)


def as_map(vectors: torch.Tensor) -> torch.Tensor:
    """(N, D) vectors -> (1, D, 1, N) map, the quantiser's input layout."""
    return vectors.t()[None, :, None, :].contiguous()


def fixed_quantizer(codes: torch.Tensor, **kwargs) -> VectorQuantizer:
    """A quantiser with the given codebook, already initialised and with every code alive (no restart)."""
    quantizer = VectorQuantizer(len(codes), codes.shape[1], kmeans_init=False, **kwargs)
    quantizer.embedding.weight.data.copy_(codes)
    quantizer.initialized.fill_(True)
    quantizer.usage_ema.fill_(100.0)
    if quantizer.ema_decay is not None:
        quantizer.embed_sum.copy_(quantizer.codebook() * 100.0)
    return quantizer


def test_straight_through_gradient_is_identity_on_z():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, 4, l2_norm=False).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3)
    z_q, _, _ = quantizer(z)
    (z_q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)
    assert not torch.allclose(z_q, z)  # the forward value is the code, not z


def test_straight_through_with_l2_norm_passes_the_gradient_of_the_normalised_z():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, 4).train()
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3)
    (quantizer(z)[0] * upstream).sum().backward()
    reference = z.detach().clone().requires_grad_(True)
    (F.normalize(reference, dim=1) * upstream).sum().backward()
    torch.testing.assert_close(z.grad, reference.grad)


def test_codes_and_latents_are_unit_vectors_with_l2_norm():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(32, 8).train()
    z_q, indices, _ = quantizer(3 * torch.randn(2, 8, 4, 4))
    torch.testing.assert_close(quantizer.codebook().norm(dim=1), torch.ones(32))
    torch.testing.assert_close(z_q.norm(dim=1), torch.ones(2, 4, 4))
    torch.testing.assert_close(quantizer.codes(indices), z_q)


def test_vq_commit_and_entropy_on_a_hand_built_example():
    quantizer = fixed_quantizer(torch.eye(2), l2_norm=False, commit_beta=0.25, entropy_ratio=0.5).train()
    quantizer.entropy_temperature = 1.0
    z = as_map(torch.tensor([[0.8, 0.1], [0.2, 0.9]]))
    z_q, indices, aux = quantizer(z)
    assert indices.flatten().tolist() == [0, 1]
    # squared errors: (0.2^2 + 0.1^2) per vector, mean over 4 entries = 0.025
    assert aux["vq"].item() == pytest.approx(0.025)
    assert aux["commit"].item() == pytest.approx(0.25 * 0.025)
    # distances [[0.05, 1.45], [1.45, 0.05]]: each p_i = (s, 1 - s), s = 1/(1 + e^-1.4); the mean p is uniform
    s = 1 / (1 + math.exp(-1.4))
    sample_entropy = -(s * math.log(s) + (1 - s) * math.log(1 - s))
    assert aux["entropy"].item() == pytest.approx(0.5 * (sample_entropy - math.log(2)), rel=1e-5)


def test_entropy_terms_are_zero_for_confident_uniform_use_and_positive_for_collapse():
    confident = torch.tensor([[0.0, 100.0], [100.0, 0.0]])
    assert entropy_terms(confident, 1.0).item() == pytest.approx(-math.log(2), abs=1e-6)  # the minimum
    collapsed = torch.tensor([[0.0, 100.0], [0.0, 100.0]])
    assert entropy_terms(collapsed, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_eval_mode_gives_zero_terms_and_changes_nothing():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4).eval()
    before = quantizer.embedding.weight.clone()
    _, _, aux = quantizer(torch.randn(1, 4, 2, 2))
    assert all(value.item() == 0 for value in aux.values())
    assert torch.equal(quantizer.embedding.weight, before) and quantizer.counts.sum() == 0
    assert not quantizer.initialized


def test_usage_and_perplexity_on_known_assignments():
    codes = torch.eye(4)
    quantizer = fixed_quantizer(codes, l2_norm=False).train()
    quantizer(as_map(codes[[0, 0, 1, 1]]))
    assert quantizer.counts.tolist() == [2, 2, 0, 0]
    assert quantizer.usage_stats(reset=False) == {"usage": 0.5, "perplexity": pytest.approx(2.0)}
    quantizer(as_map(codes[[2, 3, 3, 3]]))
    p = torch.tensor([2, 2, 1, 3]) / 8
    expected = math.exp(-(p * p.log()).sum().item())
    assert quantizer.usage_stats() == {"usage": 1.0, "perplexity": pytest.approx(expected)}
    assert quantizer.counts.sum() == 0  # reset
    assert usage_and_perplexity(torch.zeros(3)) == {"usage": 0.0, "perplexity": 0.0}


def test_ema_update_matches_its_closed_form():
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    quantizer = fixed_quantizer(codes, l2_norm=False, ema_decay=0.9).train()
    assert not quantizer.embedding.weight.requires_grad
    batch = torch.tensor([[0.8, 0.2], [0.6, 0.0], [0.1, 0.7]])
    _, _, aux = quantizer(as_map(batch))
    assert aux["vq"].item() == 0.0  # the codebook learns from the averages, not from a loss
    sizes = 0.9 * torch.tensor([100.0, 100.0]) + 0.1 * torch.tensor([2.0, 1.0])  # N_k
    sums = 0.9 * 100 * codes + 0.1 * torch.stack([batch[0] + batch[1], batch[2]])  # m_k
    total = sizes.sum()
    smoothed = (sizes + LAPLACE_EPS) / (total + 2 * LAPLACE_EPS) * total
    torch.testing.assert_close(quantizer.usage_ema, sizes)
    torch.testing.assert_close(quantizer.embedding.weight, sums / smoothed[:, None])


def test_ema_update_keeps_spherical_codes_on_the_sphere():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 4, ema_decay=0.5).train()
    for _ in range(3):
        quantizer(torch.randn(2, 4, 4, 4))
    torch.testing.assert_close(quantizer.embedding.weight.norm(dim=1), torch.ones(8))


def test_dead_codes_are_reseeded_from_batch_vectors():
    torch.manual_seed(0)
    codes = F.normalize(torch.randn(4, 3), dim=1)
    quantizer = fixed_quantizer(codes, dead_code_threshold=1.0).train()
    quantizer.usage_ema.copy_(torch.tensor([10.0, 10.0, 0.5, 0.0]))
    batch = torch.randn(6, 3)
    quantizer(as_map(batch))
    weight, unit_batch = quantizer.embedding.weight, F.normalize(batch, dim=1)
    assert torch.equal(weight[:2], codes[:2])  # live codes untouched
    for code in weight[2:]:
        assert (unit_batch - code).norm(dim=1).min() < 1e-6  # a dead code became one of the batch's vectors
    assert (quantizer.usage_ema[2:] > 0.99 * quantizer.dead_code_threshold - 1e-6).all()


def test_kmeans_init_puts_codes_on_the_data_clusters():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 8), dim=1)
    points = F.normalize(centres.repeat_interleave(50, 0) + 0.01 * torch.randn(200, 8), dim=1)
    quantizer = VectorQuantizer(4, 8).train()
    quantizer(as_map(points[torch.randperm(200)]))
    similarity = quantizer.codebook() @ centres.t()  # (codes, clusters)
    assert (similarity.max(0).values > 0.999).all()  # every cluster has a code on it
    assert (similarity.max(1).values > 0.999).all()  # every code sits on a cluster
    assert quantizer.initialized and quantizer.usage_ema.tolist() == [50.0] * 4


def test_kmeans_with_fewer_points_than_codes_and_euclidean_centres():
    torch.manual_seed(0)
    points = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    centres = kmeans(points, 5, iters=3, spherical=False)
    assert centres.shape == (5, 2)
    assert all(((points - c).norm(dim=1).min() < 1e-6) for c in centres)


def test_fsq_round_trip_and_codebook():
    levels = (8, 5, 5, 5)
    quantizer = FSQuantizer(levels).train()
    assert quantizer.codebook_size == 1000 and quantizer.dim == 4
    codebook = quantizer.codebook()
    assert codebook.shape == (1000, 4) and len(torch.unique(codebook, dim=0)) == 1000
    assert codebook.min() >= -1 and codebook.max() <= 1
    torch.manual_seed(0)
    z = (3 * torch.randn(2, 4, 5, 5)).requires_grad_(True)
    z_q, indices, aux = quantizer(z)
    assert indices.min() >= 0 and indices.max() < 1000
    torch.testing.assert_close(quantizer.codes(indices), z_q.detach())
    torch.testing.assert_close(codebook[indices.flatten()], z_q.detach().permute(0, 2, 3, 1).reshape(-1, 4))
    assert all(value.item() == 0 for value in aux.values())
    z_q.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # straight-through rounding passes a gradient
    assert quantizer.counts.sum() == 50 and list(quantizer.parameters()) == []


def test_fsq_reaches_every_level():
    quantizer = FSQuantizer((8, 5)).eval()
    grid = torch.linspace(-6, 6, 401)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"))[None]  # (1, 2, 401, 401)
    indices = quantizer(z)[1]
    assert len(torch.unique(indices)) == 40


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="ema_decay"):
        VectorQuantizer(4, 2, ema_decay=1.5)
    with pytest.raises(ValueError, match="fsq_levels"):
        FSQuantizer((8, 1))
