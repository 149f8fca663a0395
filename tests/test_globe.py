"""The latent sphere's pictures (engine/globe.py): slerp on spheres of any radius, the atlas grid and the map's
coordinates, the pictures themselves, and sampling.py --atlas / --interpolate for psvae and sphere models."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sampling
from engine.families import FAMILIES
from engine.globe import (
    MARGIN,
    PALETTE,
    atlas_points,
    decode_points,
    dot_map,
    interpolation_strips,
    lonlat_degrees,
    map_layout,
    random_points,
    save_atlas,
    slerp,
)
from engine.images import ORIGINAL_COLOUR, SIGNAL_COLOURS, plot_signals
from models import build_model
from tests.helpers import perturb
from tests.test_export import write_run

GENERATOR = torch.Generator().manual_seed(0)


def points_on_sphere(count: int, dim: int, radius: float = 1.0) -> torch.Tensor:
    points = torch.randn(count, dim, generator=GENERATOR)
    return points / points.norm(dim=-1, keepdim=True) * radius


def angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.arccos((u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))).clamp(0, math.pi)


# ---------------------------------------------------------------------------------------------------------
# Geometry


@pytest.mark.parametrize(("dim", "radius"), [(3, 1.0), (64, 8.0)])  # psvae's unit sphere, the sphere's sqrt(L)
def test_slerp_stays_on_the_sphere_and_moves_at_a_constant_angle(dim, radius):
    a, b = points_on_sphere(4, dim, radius), points_on_sphere(4, dim, radius)
    path = slerp(a, b, torch.linspace(0, 1, 7))  # (4, 7, dim)
    torch.testing.assert_close(path[:, 0], a)
    torch.testing.assert_close(path[:, -1], b)
    torch.testing.assert_close(path.norm(dim=-1), torch.full((4, 7), radius))
    steps = angle(path[:, 1:], path[:, :-1])  # (4, 6)
    torch.testing.assert_close(steps, (angle(a, b) / 6)[:, None].expand(4, 6), atol=1e-5, rtol=1e-4)


def test_slerp_between_a_point_and_itself_stays_there():
    a = points_on_sphere(2, 3)
    path = slerp(a, a.clone(), torch.tensor([0.0, 0.3, 1.0]))
    torch.testing.assert_close(path, a[:, None].expand(2, 3, 3))


@pytest.mark.parametrize(("name", "radius"), [("psvae_tiny", 1.0), ("convnet_tiny", math.sqrt(256))])
def test_random_points_lie_on_the_models_latent_sphere(name, radius):
    model = build_model(name, image_size=16, latent_dim=256 if name == "convnet_tiny" else None).eval()
    points = random_points(model, 5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(points.norm(dim=-1), torch.full((5,), radius))
    with torch.no_grad():
        assert tuple(decode_points(model, points).shape) == (5, 3, 16, 16)


def test_atlas_cells_run_from_the_north_west_and_their_coordinates_read_back():
    points = atlas_points(12, 24)
    assert points.shape == (288, 3)
    torch.testing.assert_close(points.norm(dim=-1), torch.ones(288))
    lonlat = lonlat_degrees(points)
    np.testing.assert_allclose(lonlat[0], [-172.5, 82.5], atol=1e-9)  # first cell: north-west
    np.testing.assert_allclose(lonlat[1], [-157.5, 82.5], atol=1e-9)  # then eastwards along the row
    np.testing.assert_allclose(lonlat[24], [-172.5, 67.5], atol=1e-9)  # next row: 15 degrees south
    np.testing.assert_allclose(lonlat[-1], [172.5, -82.5], atol=1e-9)


def lonlat_point(lon: float, lat: float) -> list[float]:
    lon, lat = math.radians(lon), math.radians(lat)
    return [math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)]


def test_the_map_places_points_at_their_longitude_and_latitude():
    points = torch.tensor([lonlat_point(0, 0), lonlat_point(90, 45), lonlat_point(-90, -45)]) * 3  # any radius
    canvas, xy = map_layout(points, 180, "3 items")
    left, top = MARGIN[:2]
    np.testing.assert_allclose(xy, [[left + 180, top + 90], [left + 270, top + 45], [left + 90, top + 135]], atol=1e-6)
    assert canvas.size == (left + 360 + MARGIN[2], top + 180 + MARGIN[3])  # equirectangular: 2 to 1


def test_latents_off_s2_are_mapped_on_their_principal_directions():
    points = torch.zeros(40, 6)
    points[:20, 0], points[20:, 1], points[:, 2] = 1.0, 1.0, torch.linspace(-0.1, 0.1, 40)  # two clusters
    canvas, xy = map_layout(points, 100, "40 items")
    assert canvas.width == MARGIN[0] + 100 + MARGIN[2]  # a square plot
    first, second = xy[:20].mean(0), xy[20:].mean(0)
    assert np.linalg.norm(first - second) > 50  # the clusters lie apart along the first principal axis


def test_the_dot_map_colours_each_class_and_names_it_in_a_legend():
    points = torch.tensor([lonlat_point(-90, 0)] * 5 + [lonlat_point(90, 0)] * 5)
    labels = torch.tensor([0] * 5 + [3] * 5)
    picture = dot_map(points, labels, ["tee", "trouser", "bag", "boot"], "10 items")
    left, top = MARGIN[:2]
    assert picture.getpixel((left + 90 * 2, top + 90 * 2)) == PALETTE[0]  # plot height 360: 2 px per degree
    assert picture.getpixel((left + 270 * 2, top + 90 * 2)) == PALETTE[3]
    assert picture.width > left + 720 + MARGIN[2]  # the legend to the right of the map


def test_signal_plots_draw_reconstructions_over_grey_originals():
    originals = torch.sin(torch.linspace(0, 6, 64)).view(1, 1, 64)
    plots = plot_signals(-originals, originals=originals)  # (1, 3, 48, 64) in [-1, 1]
    colours = {tuple(c) for c in ((plots[0] + 1) * 127.5).round().int().view(3, -1).T.tolist()}
    assert ORIGINAL_COLOUR in colours and SIGNAL_COLOURS[0] in colours


# ---------------------------------------------------------------------------------------------------------
# Pictures of real models


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_the_atlas_cells_are_the_decoded_grid_points(tmp_path):
    model = perturb(build_model("psvae_tiny", image_size=16)).eval()
    path = save_atlas(model, tmp_path / "atlas.png", rows=3, cols=4)
    pixels = png(path)
    assert pixels.shape == (3 * 34 + 2, 4 * 34 + 2, 3)  # 16 px cells shown at 32 px, 2 px apart
    with torch.no_grad():
        north_west = model.decode(atlas_points(3, 4)[:1])[0]  # (3, 16, 16)
    expected = ((north_west.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
    np.testing.assert_allclose(pixels[2:34:2, 2:34:2], expected, atol=1)


def test_a_signal_atlas_draws_each_cell_as_a_curve(tmp_path):
    model = perturb(build_model("psvae_tiny", backbone="conv1d", image_size=64, in_channels=1)).eval()
    pixels = png(save_atlas(model, tmp_path / "atlas.png", rows=2, cols=3))
    assert pixels.shape == (2 * 34 + 2, 3 * 66 + 2, 3)  # 64 x 32 plots
    assert (pixels[2:34, 2:66] == SIGNAL_COLOURS[0]).all(-1).any()


@pytest.mark.parametrize("name", ["psvae_tiny", "convnet_tiny"])
def test_interpolation_strips_start_and_end_at_the_reconstructions(name):
    model = perturb(build_model(name, image_size=16)).eval()
    first, second = torch.rand(2, 3, 16, 16, generator=GENERATOR) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    strips = interpolation_strips(model, first, second, 5).view(2, 7, 3, 32, 32)[..., ::2, ::2]  # back to 16 px
    torch.testing.assert_close(strips[:, 0], first)
    torch.testing.assert_close(strips[:, 1], model.reconstruct(first), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(strips[:, 5], model.reconstruct(second), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(strips[:, 6], second)
    assert not torch.allclose(strips[:, 3], strips[:, 1])  # the middle is somewhere else on the sphere


# ---------------------------------------------------------------------------------------------------------
# sampling.py --atlas / --interpolate


def model_run(tmp_path: Path, name: str, dataset: str = "demo", **overrides) -> Path:
    write_run(tmp_path, f"{dataset}_20250101_000000", dataset, perturb(build_model(name, **overrides)))
    return tmp_path / f"{dataset}_20250101_000000"


def sample(run: Path, dest: Path, *flags: str) -> list[Path]:
    argv = ["--checkpoint", str(run), "--dest_folder", str(dest), "--device", "cpu", *flags]
    return sampling.main(sampling.parse_args(argv))


def sampling_error(run: Path, dest: Path, *flags: str) -> str:
    with pytest.raises(SystemExit) as caught:
        sample(run, dest, *flags)
    message = str(caught.value.code)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


ATLAS_FLAGS = ("--atlas", "--atlas_rows", "3", "--atlas_cols", "6", "--map_items", "30")


def test_sampling_atlas_writes_the_atlas_and_the_latent_maps(tmp_path):
    run = model_run(tmp_path / "results", "psvae_tiny", image_size=16)
    paths = sample(run, tmp_path / "out", *ATLAS_FLAGS)
    assert [p.name for p in paths] == ["atlas_3x6.png", "latent_thumbnails.png", "latent_map.png"]
    assert png(paths[0]).shape == (3 * 34 + 2, 6 * 34 + 2, 3)
    assert "already exists" in sampling_error(run, tmp_path / "out", *ATLAS_FLAGS)


@pytest.mark.parametrize(("name", "overrides"), [("psvae_tiny", {"latent_dim": 5}), ("convnet_tiny", {})])
def test_sampling_atlas_off_s2_maps_the_principal_directions(tmp_path, capsys, name, overrides):
    run = model_run(tmp_path / "results", name, image_size=16, **overrides)
    paths = sample(run, tmp_path / "out", *ATLAS_FLAGS)
    assert [p.name for p in paths] == ["latent_thumbnails.png", "latent_map.png"]
    assert "note: the globe atlas needs a latent sphere in 3 dimensions" in capsys.readouterr().out


def test_sampling_interpolates_input_files_and_held_out_pairs(tmp_path):
    run = model_run(tmp_path / "results", "psvae_tiny", image_size=16)
    files = []
    for name, colour in (("a", (200, 0, 0)), ("b", (0, 200, 0)), ("c", (0, 0, 200))):
        files.append(tmp_path / f"{name}.png")
        Image.new("RGB", (20, 20), colour).save(files[-1])
    (strips,) = sample(run, tmp_path / "out", "--input", *map(str, files), "--interpolate", "4")
    assert strips.name == "interpolate_a_c.png" and png(strips).shape == (2 * 34 + 2, 6 * 34 + 2, 3)  # a-b, b-c
    (held_out,) = sample(run, tmp_path / "out", "--interpolate", "3", "--num_samples", "6")
    assert held_out.name == "interpolate_heldout_3.png" and png(held_out).shape == (3 * 34 + 2, 5 * 34 + 2, 3)


def test_sampling_interpolates_signals_as_curves(tmp_path):
    run = model_run(tmp_path / "results", "psvae_tiny", "sines", backbone="conv1d", image_size=128, in_channels=1)
    (strips,) = sample(run, tmp_path / "out", "--interpolate", "3", "--num_samples", "2")
    assert png(strips).shape == (48 + 4, 5 * 130 + 2, 3)  # one pair, 5 plots of 128 x 48


def test_globe_mistakes_are_one_line_errors(tmp_path, monkeypatch):
    image = tmp_path / "a.png"
    Image.new("RGB", (20, 20)).save(image)
    run = model_run(tmp_path / "images", "psvae_tiny", image_size=16)
    message = sampling_error(run, tmp_path / "out", "--input", str(image), "--interpolate", "4")
    assert message == "error: --interpolate between --input files needs two or more of them"
    signals = model_run(tmp_path / "signals", "psvae_tiny", "sines", backbone="conv1d", image_size=128, in_channels=1)
    assert sampling_error(signals, tmp_path / "out", "--input", str(image)).startswith(
        "error: --input takes image files, but this model encodes 1-D signals of 128 values"
    )
    monkeypatch.setitem(FAMILIES, "psvae", dataclasses.replace(FAMILIES["psvae"], latent=None))
    message = sampling_error(run, tmp_path / "out", "--atlas")
    assert message == "error: psvae models have no latent sphere to interpolate on or to map"
    assert not (tmp_path / "out").exists()
