"""The somar family's self-organizing map (models/som.py): patch layout, the batch and online SOM updates, the
sigma / lr schedules, topographic order, pruning, buffers-only state and the sums over torch.distributed ranks."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models.som import SOMCodebook, decayed, grid_shape, patchify, pca_plane, unpatchify


def uniform_square(n: int, seed: int) -> torch.Tensor:
    """n points uniform on [0, 1]^2 (a balanced toy set: every unit of a fitted map gets a cell of it)."""
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed))


def gaussian_mixture(n: int, seed: int, dim: int = 4) -> torch.Tensor:
    """n points from 4 well separated Gaussians (std 0.1) in dim dimensions, centres at ±2 on the first two axes."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.zeros(4, dim)
    centres[:, :2] = torch.tensor([[2.0, 2.0], [2.0, -2.0], [-2.0, 2.0], [-2.0, -2.0]])
    which = torch.randint(4, (n,), generator=generator)
    return centres[which] + 0.1 * torch.randn(n, dim, generator=generator)


def fitted(mode: str = "batch", steps: int = 60, batch: int = 256, lr_end: float = 0.1) -> SOMCodebook:
    """An 8 x 8 map fitted on batches of the uniform square for som_steps + 20 steps. lr_end 0.1: in so short a run,
    lr -> 0.01 would freeze a batch map before sigma has shrunk (it lags by ~1 / lr steps)."""
    som = SOMCodebook(64, 2, som_steps=steps, mode=mode, lr_end=lr_end)
    for step in range(steps + 20):
        som.fit_step(uniform_square(batch, seed=step))
    return som


@pytest.fixture(scope="module")
def batch_som() -> SOMCodebook:
    torch.manual_seed(0)
    return fitted("batch")


def mean_quantization_error(som: SOMCodebook, x: torch.Tensor) -> float:
    codes, _ = som.quantize(x)
    return float((x - codes).norm(dim=1).mean())


@pytest.mark.parametrize("patch", [1, 2, 4, None, 0])
def test_patchify_unpatchify_are_inverse(patch):
    fmap = torch.randn(3, 4, 8, 8)
    tokens = patchify(fmap, patch)
    side = patch or 8
    assert tokens.shape == (3, (8 // side) ** 2, 4 * side * side)
    assert torch.equal(unpatchify(tokens, patch, (4, 8, 8)), fmap)


def test_patch_layout_is_row_major_over_patches_and_channel_major_inside():
    fmap = torch.arange(2 * 4 * 4).float().view(1, 2, 4, 4)
    tokens = patchify(fmap, 2)  # (1, 4, 8)
    assert torch.equal(tokens[0, 0], fmap[0, :, :2, :2].flatten())  # top-left patch, channel 0 then channel 1
    assert torch.equal(tokens[0, 1], fmap[0, :, :2, 2:].flatten())  # its right neighbour comes next
    assert torch.equal(tokens[0, 2], fmap[0, :, 2:, :2].flatten())
    with pytest.raises(ValueError, match="cannot be cut"):
        patchify(torch.zeros(1, 2, 6, 6), 4)


def test_grid_shapes_are_the_most_square():
    assert grid_shape(256, "2d") == (16, 16)
    assert grid_shape(128, "2d") == (8, 16)
    assert grid_shape(7, "2d") == (1, 7)
    assert grid_shape(64, "1d") == (1, 64)
    som = SOMCodebook(128, 3)
    assert som.grid_shape == (8, 16) and som.sigma_start == 8.0  # half the larger side
    assert SOMCodebook(40, 3, topology="1d").sigma_start == 20.0


def test_buffers_only_and_no_gradients():
    som = SOMCodebook(16, 3)
    assert list(som.parameters()) == []
    expected = {"codes", "grid", "steps_done", "initialized", "counts", "error_sums", "vectors_seen"}
    assert set(som.state_dict()) == expected


def test_neighbourhood_is_a_gaussian_of_grid_distance():
    som = SOMCodebook(12, 2)  # 3 x 4 grid
    h = som.neighbourhood(torch.tensor([5]), sigma=1.5)[0]  # unit 5 sits at (1, 1)
    distances = (som.grid - som.grid[5]).pow(2).sum(1)
    assert torch.allclose(h, torch.exp(-distances / (2 * 1.5**2)))
    assert h[5] == 1.0 and h.argmax() == 5


def test_one_batch_step_lowers_the_quantization_error():
    torch.manual_seed(0)
    x = gaussian_mixture(512, seed=1)
    som = SOMCodebook(16, 4, sigma_start=1.0, som_steps=10)
    som.codes.uniform_(-1 / 16, 1 / 16)  # the original's init: every unit far from the data
    som.initialized.fill_(True)
    before = mean_quantization_error(som, x)
    logs = som.fit_step(x)
    assert logs["quantization_error"] == pytest.approx(before, rel=1e-5)  # measured on the codes before the update
    assert mean_quantization_error(som, x) < 0.7 * before


@pytest.mark.parametrize("decay", ["exponential", "linear"])
def test_schedules_reach_their_end_values_at_som_steps_and_stay(decay):
    som = SOMCodebook(16, 2, sigma_start=4.0, sigma_end=0.5, lr_start=0.5, lr_end=0.01, som_steps=10, decay=decay)
    sigmas = [som.sigma_at(step) for step in range(15)]
    assert sigmas[0] == 4.0 and som.lr_at(0) == 0.5
    assert all(a > b for a, b in zip(sigmas[:10], sigmas[1:11]))  # strictly decreasing until som_steps
    assert sigmas[10:] == [0.5] * 5 and som.lr_at(10) == som.lr_at(1000) == 0.01
    middle = math.sqrt(4.0 * 0.5) if decay == "exponential" else (4.0 + 0.5) / 2
    assert som.sigma_at(5) == pytest.approx(middle)
    logs = [som.fit_step(uniform_square(32, seed)) for seed in range(12)]
    assert [entry["sigma"] for entry in logs] == sigmas[:12]  # fit step t uses sigma(t)
    assert logs[-1]["som_lr"] == 0.01 and int(som.steps_done) == 12
    assert decayed(2.0, 1.0, 0, 0, decay) == 1.0  # no decay steps: the end value from the start


def test_pca_init_starts_ordered_and_inside_the_data():
    x = uniform_square(2048, seed=0) * torch.tensor([2.0, 1.0])  # a 2 x 1 rectangle: distinct principal axes
    som = SOMCodebook(128, 2)  # 8 x 16: the longer grid axis along the longer side
    som.init_from(x)
    assert bool(som.initialized)
    inside = (som.codes > 0).all() and (som.codes < torch.tensor([2.0, 1.0])).all()
    assert inside and (som.codes.amax(0) - som.codes.amin(0) > torch.tensor([1.5, 0.7])).all()  # and spread over it
    assert som.observe(x)["topographic_error"] < 0.05  # already a topographically ordered plane
    line = torch.randn(500, 3) * torch.tensor([3.0, 0.1, 0.1])  # data stretched along the first axis
    codes = pca_plane(line, SOMCodebook(8, 3, topology="1d").grid)
    assert (codes[1:, 0] - codes[:-1, 0]).abs().min() > 0.3  # the line of units lies along the long axis


def test_a_fitted_2d_map_is_topographically_ordered(batch_som):
    codes, (rows, cols) = batch_som.codes.view(8, 8, 2), batch_som.grid_shape
    assert (rows, cols) == (8, 8)
    vertical, horizontal = (codes[1:] - codes[:-1]).norm(dim=-1), (codes[:, 1:] - codes[:, :-1]).norm(dim=-1)
    neighbours = torch.cat([vertical.flatten(), horizontal.flatten()])
    generator = torch.Generator().manual_seed(0)
    pairs = torch.randint(64, (2, 2000), generator=generator)
    random_pairs = (batch_som.codes[pairs[0]] - batch_som.codes[pairs[1]]).norm(dim=1)
    assert neighbours.mean() < 0.35 * random_pairs.mean()


def test_a_fitted_map_has_low_topographic_error_and_no_empty_unit(batch_som):
    batch_som.epoch_stats()  # the fitting steps' statistics
    logs = batch_som.observe(uniform_square(4096, seed=99))
    stats = batch_som.epoch_stats()
    assert stats["usage"] == 1.0 and stats["perplexity"] > 0.8 * 64
    assert logs["topographic_error"] < 0.2 and stats["topographic_error"] == pytest.approx(logs["topographic_error"])
    assert stats["quantization_error"] < 0.06  # the optimum for 64 cells of the unit square is about 0.048
    assert set(batch_som.epoch_stats().values()) == {0.0}  # reset by the previous call


def test_online_and_batch_modes_both_converge():
    torch.manual_seed(0)
    x = uniform_square(4096, seed=99)
    for som in (fitted("batch", steps=30, batch=128), fitted("online", steps=30, batch=128)):
        som.epoch_stats()
        logs = som.observe(x)
        assert logs["quantization_error"] < 0.06 and logs["topographic_error"] < 0.2, som.mode  # optimum ~0.048


def test_a_1d_map_orders_its_units_along_a_line():
    torch.manual_seed(0)
    som = SOMCodebook(10, 1, topology="1d", som_steps=40, init="samples")
    for step in range(60):
        som.fit_step(torch.rand(128, 1, generator=torch.Generator().manual_seed(step)))
    steps = som.codes[1:, 0] - som.codes[:-1, 0]
    assert (steps > 0).all() or (steps < 0).all()  # monotone: neighbours on the grid are neighbours on the line


def test_prune_renumbers_and_drops_unused_units(batch_som):
    som = SOMCodebook(64, 2)
    som.load_state_dict(batch_som.state_dict())
    x = uniform_square(1024, seed=5)
    old_bmu = som.bmu(x)
    counts = torch.bincount(old_bmu, minlength=64)
    counts[::3] = 0  # every third unit unused
    mapping = som.prune(1, counts)
    kept = counts >= 1
    assert som.codes.shape == (int(kept.sum()), 2) and som.size == int(kept.sum())
    assert torch.equal(mapping[kept], torch.arange(int(kept.sum()))) and (mapping[~kept] == -1).all()
    assert torch.equal(som.codes, batch_som.codes[kept]) and torch.equal(som.grid, batch_som.grid[kept])
    survivors = mapping[old_bmu] >= 0
    assert torch.equal(som.bmu(x)[survivors], mapping[old_bmu][survivors])  # a surviving winner still wins
    assert som.grid_shape == (8, 8)  # survivors keep their coordinates
    reloaded = SOMCodebook(som.size, 2)
    reloaded.load_state_dict(som.state_dict())
    assert torch.equal(reloaded.grid, som.grid) and torch.equal(reloaded.bmu(x), som.bmu(x))
    with pytest.raises(ValueError, match="empty codebook"):
        som.prune(10**6, torch.zeros(som.size))


def test_state_dict_round_trip_gives_identical_bmus(batch_som):
    copy = SOMCodebook(64, 2, som_steps=60, lr_end=0.1)
    copy.load_state_dict(batch_som.state_dict())
    x = uniform_square(512, seed=3)
    assert torch.equal(copy.bmu(x), batch_som.bmu(x))
    assert bool(copy.initialized) and int(copy.steps_done) == 80
    assert copy.fit_step(x)["sigma"] == 0.5  # resumes its schedule where it stopped, without re-initialising


def test_quantize_returns_the_bmu_code_for_any_leading_shape():
    som = SOMCodebook(4, 2)
    som.codes.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    x = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.1, 0.1], [0.7, 0.9]]])  # (2, 2, 2)
    codes, index = som.quantize(x)
    assert torch.equal(index, torch.tensor([[1, 2], [0, 3]])) and torch.equal(codes, som.codes[index])


def _distributed_fit(rank: int, world: int, port: int, folder: str) -> None:
    """One rank: batch and online SOMs fitted on this rank's half of each batch."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    for mode in ("batch", "online"):
        som = SOMCodebook(16, 2, som_steps=5, mode=mode)
        logs = [som.fit_step(uniform_square(64, seed=step)[rank::world]) for step in range(6)]
        results[mode] = (som.codes.clone(), som.epoch_stats(), logs[-1])
    torch.save(results, f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_ranks_sum_their_statistics_and_keep_identical_codebooks(tmp_path):
    """2 gloo processes, each with half of every batch == one process with the whole batch (rank 0's half first):
    batch SOM sums its statistics over ranks, online SOM runs through all ranks' vectors in rank order."""
    # spawn, not fork: a child forked after the parent's OpenMP pool has run can hang in its first parallel op
    mp.spawn(_distributed_fit, args=(2, free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for mode in ("batch", "online"):
        som = SOMCodebook(16, 2, som_steps=5, mode=mode)
        som.init_from(uniform_square(64, seed=0)[0::2])  # the ranks use rank 0's initialisation
        for step in range(6):  # one process, each batch in the ranks' order: rank 0's half, then rank 1's
            x = uniform_square(64, seed=step)
            som.fit_step(torch.cat([x[0::2], x[1::2]]))
        assert torch.equal(ranks[0][mode][0], ranks[1][mode][0]), mode  # identical codebooks on every rank
        assert torch.allclose(ranks[0][mode][0], som.codes, atol=1e-5), mode
        assert ranks[0][mode][1]["usage"] == pytest.approx(som.epoch_stats()["usage"])


def test_distances_stay_float32_under_autocast_and_in_chunks(monkeypatch):
    som = SOMCodebook(2, 2)
    som.codes.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    x = torch.stack([0.5 + torch.linspace(-4e-3, 4e-3, 100), torch.full((100,), 0.3)], 1)  # a bf16 dot would blur
    error = float((x - som.codes[(x[:, 0] > 0.5).long()]).norm(dim=1).mean())
    expected = (x[:, 0] > 0.5).long()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(som.bmu(x), expected)
        assert som.observe(x)["quantization_error"] == pytest.approx(error)
    monkeypatch.setattr("models.som.BMU_CHUNK", 7)
    assert torch.equal(som.bmu(x), expected) and som._two_best(x)[0].tolist() == expected.tolist()


def test_edge_cases_one_unit_no_vectors_and_bad_settings():
    single = SOMCodebook(1, 3)
    logs = single.fit_step(torch.randn(10, 3))
    assert logs["topographic_error"] == 0.0 and torch.equal(single.bmu(torch.randn(4, 3)), torch.zeros(4).long())
    som = fitted(steps=2)
    before = som.codes.clone()
    assert som.observe(torch.zeros(0, 2))["quantization_error"] == 0.0  # a rank may hold no vectors this step
    som.fit_step(torch.zeros(0, 2))
    assert torch.equal(som.codes, before) and som.bmu(torch.zeros(0, 2)).shape == (0,)
    with pytest.raises(ValueError, match="dim 3"):
        som.fit_step(torch.zeros(4, 3))
    for bad in ({"topology": "3d"}, {"mode": "sgd"}, {"decay": "cosine"}, {"sigma_end": 0.0}, {"lr_start": 1.5}):
        with pytest.raises(ValueError):
            SOMCodebook(4, 2, **bad)


def test_u_matrix_averages_the_distances_to_grid_neighbours():
    som = SOMCodebook(6, 2)  # 2 x 3
    som.codes.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [1.0, 2.0], [3.0, 2.0]]))
    expected = torch.tensor([[1.5, (1 + 2 + 2) / 3, 2.0], [1.5, 5 / 3, 2.0]])
    assert torch.allclose(som.u_matrix(), expected)
    som.prune(1, torch.tensor([1, 1, 1, 1, 1, 0]))  # the last unit goes: its cell is empty, its neighbours lose it
    after = som.u_matrix()
    assert after[1, 2].isnan() and after[0, 2] == 2.0 and after[1, 1] == 1.5
