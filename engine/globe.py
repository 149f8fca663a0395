"""Pictures of a model's latent sphere, drawn with PIL: slerp strips between encoded inputs, the globe atlas (an
equirectangular grid of decoded points of S^2: HiPSter's HEALPix survey without HEALPix) and the latent map
(held-out items encoded and placed at their longitude/latitude, or on the first two principal directions when the
sphere is not S^2). Each family says what a point of its sphere is (Family.latent, engine/family.py).

Coordinates of a point (x, y, z) of S^2: latitude asin(z), longitude atan2(y, x); the atlas and the maps share them,
so a region of the map is the same region of the atlas.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .families import LatentSphere, family_name_of, family_of, input_shape
from .images import plot_signals, save_grid

ATLAS_ROWS, ATLAS_COLS = 12, 24  # 15 degrees of latitude and longitude per cell
MAP_ITEMS = 1000  # held-out items encoded for the latent map
MAP_HEIGHT = 360  # pixels of the dot map's plot area (2:1 equirectangular: half a degree per pixel)
THUMBNAIL_MAP_HEIGHT = 540  # the thumbnail map is larger: its items are pictures, not dots
THUMBNAIL_MAX = 32  # pixels of an image on the thumbnail map (at most; 16 px ones are doubled, larger shrunk)
CELL_MIN = 32  # pixels: smaller images are enlarged (nearest, whole multiples) in the atlas and strips
SIGNAL_CELL = (64, 32)  # (width, height) of one signal's plot in the atlas and on the thumbnail map
GRATICULE_DEGREES = 30
MARGIN = (34, 18, 10, 16)  # left (latitude labels), top (caption), right, bottom (longitude labels)
DOT_RADIUS = 2.5
BATCH = 256  # items per encoder/decoder call
# tab10 then tab20's light shades: distinct colours for up to 20 classes, then they repeat
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194),
    (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138),
    (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141),
    (158, 218, 229),
]  # fmt: skip
GRID_COLOUR, AXIS_COLOUR, TEXT_COLOUR = (225, 225, 225), (170, 170, 170), (60, 60, 60)
FRAME_COLOUR = (150, 150, 150)


class GlobeError(ValueError):
    """A picture of the latent sphere asked of a model whose family has none (Family.latent is None)."""


def latent_sphere(model: torch.nn.Module) -> LatentSphere:
    """The family's encode/decode of points of the model's latent sphere; GlobeError when it has none."""
    latent = family_of(model).latent
    if latent is None:
        raise GlobeError(f"{family_name_of(model)} models have no latent sphere to interpolate on or to map")
    return latent


# ---------------------------------------------------------------------------------------------------------
# Geometry


def slerp(a: torch.Tensor, b: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Great-circle interpolation from points a to b (B, D) of a sphere centred at 0, at fractions (T,) in [0, 1]:
    (B, T, D). The radius goes linearly from |a| to |b| (so it stays put when both lie on one sphere); nearly equal
    directions fall back to a normalised lerp, where slerp's sin(omega) would divide by ~0."""
    ua, ub = (unit(v.double()) for v in (a, b))
    omega = torch.arccos((ua * ub).sum(-1).clamp(-1, 1))[:, None, None]  # (B, 1, 1) angle between them
    t = fractions.double().to(a.device).view(1, -1, 1)  # (1, T, 1)
    sin = torch.sin(omega)
    close = sin < 1e-6
    weight_a = torch.where(close, 1 - t, torch.sin((1 - t) * omega) / sin.clamp_min(1e-12))
    weight_b = torch.where(close, t, torch.sin(t * omega) / sin.clamp_min(1e-12))
    direction = unit(weight_a * ua[:, None] + weight_b * ub[:, None])
    radius = (1 - t) * a.double().norm(dim=-1)[:, None, None] + t * b.double().norm(dim=-1)[:, None, None]
    return (direction * radius).to(a.dtype)


def unit(v: torch.Tensor) -> torch.Tensor:
    """v / |v| along the last axis (the zero vector stays zero)."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def atlas_points(rows: int, cols: int) -> torch.Tensor:
    """Cell centres of an equirectangular rows x cols grid on S^2, row-major from the north-west: (rows*cols, 3)."""
    lat = torch.deg2rad(90 - (torch.arange(rows) + 0.5) * 180 / rows)
    lon = torch.deg2rad(-180 + (torch.arange(cols) + 0.5) * 360 / cols)
    lat, lon = torch.meshgrid(lat, lon, indexing="ij")
    return torch.stack([lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()], -1).view(-1, 3)


def lonlat_degrees(points: torch.Tensor) -> np.ndarray:
    """(longitude in [-180, 180], latitude in [-90, 90]) of points (N, 3) of any radius: (N, 2)."""
    x, y, z = unit(points.double()).unbind(-1)
    lon, lat = torch.rad2deg(torch.atan2(y, x)), torch.rad2deg(torch.asin(z.clamp(-1, 1)))
    return torch.stack([lon, lat], 1).numpy()


def principal_coordinates(points: torch.Tensor) -> tuple[np.ndarray, float]:
    """The directions of points (N, D) on their first two principal axes (N, 2), and the share of the variance
    those two axes hold."""
    centred = unit(points.double())
    centred = centred - centred.mean(0)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    share = float((singular[:2] ** 2).sum() / (singular**2).sum().clamp_min(1e-24))
    return (centred @ vh[:2].T).numpy(), share


# ---------------------------------------------------------------------------------------------------------
# Encoding and decoding in batches


@torch.no_grad()
def decode_points(model: torch.nn.Module, points: torch.Tensor) -> torch.Tensor:
    """The model's outputs for points of its latent sphere (N, D), on the CPU; conditional models decode the
    null class."""
    latent, device = latent_sphere(model), next(model.parameters()).device
    outputs = [latent.decode(model, chunk.to(device), None).float().cpu() for chunk in points.split(BATCH)]
    return torch.cat(outputs)


@torch.no_grad()
def encode_items(model: torch.nn.Module, dataset, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(points (N, D), labels (N,), inputs (N, ...)) of the first `count` items of the dataset, on the CPU; a
    conditional model encodes each item with its label."""
    latent, device = latent_sphere(model), next(model.parameters()).device
    items = [dataset[i] for i in range(min(count, len(dataset)))]
    inputs = torch.stack([item[0] for item in items])
    labels = torch.stack([torch.as_tensor(item[1]) for item in items]).long()
    conditional = model.config.num_classes > 0
    points = []
    for x, y in zip(inputs.split(BATCH), labels.split(BATCH)):
        points.append(latent.encode(model, x.to(device), y.to(device) if conditional else None).float().cpu())
    return torch.cat(points), labels, inputs


@torch.no_grad()
def random_points(model: torch.nn.Module, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`count` points drawn uniformly from the model's latent sphere (N, D), on the CPU: normalised Gaussians at
    the sphere's radius (that of an encoded input: 1 for psvae, sqrt(L) for the sphere family)."""
    latent, device = latent_sphere(model), next(model.parameters()).device
    probe = latent.encode(model, torch.zeros(1, *input_shape(model), device=device), None).float().cpu()  # (1, D)
    directions = torch.randn(count, probe.shape[1], generator=generator)
    return unit(directions) * probe.norm()


def latent_size(model: torch.nn.Module, dataset) -> int:
    """D: the dimension of the space the model's latent sphere lives in (3 for a globe)."""
    return encode_items(model, dataset, 1)[0].shape[1]


# ---------------------------------------------------------------------------------------------------------
# Interpolation strips and the atlas


def as_pictures(outputs: torch.Tensor, signal_size: tuple[int, int] | None = None) -> torch.Tensor:
    """Images (N, C, H, W) enlarged to CELL_MIN pixels (whole nearest multiples: 16 px Fashion-MNIST stays crisp);
    signals (N, C, L) as line plots on one value scale (signal_size: (width, height) of each plot, None = L x the
    default plot height)."""
    if outputs.ndim == 4:
        factor = max(1, -(-CELL_MIN // outputs.shape[-1]))  # ceil
        return outputs.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    width, height = signal_size or (None, None)
    return plot_signals(outputs, **({} if height is None else {"height": height, "width": width}))


@torch.no_grad()
def interpolation_strips(model: torch.nn.Module, first: torch.Tensor, second: torch.Tensor, frames: int):
    """Per pair (first[i], second[i]): the original, `frames` decoded points along the great circle from its
    encoding to the other's (both ends included), the other original: (B * (frames + 2), ...) in rows."""
    latent = latent_sphere(model)
    a, b = latent.encode(model, first, None), latent.encode(model, second, None)
    path = slerp(a, b, torch.linspace(0, 1, frames))  # (B, frames, D)
    decoded = decode_points(model, path.flatten(0, 1)).view(len(first), frames, *first.shape[1:])
    strips = torch.cat([first.cpu()[:, None], decoded, second.cpu()[:, None]], 1)  # (B, frames + 2, ...)
    return as_pictures(strips.flatten(0, 1))


def save_atlas(model: torch.nn.Module, path: Path, rows: int = ATLAS_ROWS, cols: int = ATLAS_COLS) -> Path:
    """The globe atlas: the decoded centre of every cell of an equirectangular rows x cols grid of S^2 (north up,
    longitude -180 at the left), images as they are, signals as small plots on one value scale."""
    cells = as_pictures(decode_points(model, atlas_points(rows, cols)), SIGNAL_CELL)
    return save_grid(cells, path, nrow=cols)


# ---------------------------------------------------------------------------------------------------------
# Maps


def font() -> ImageFont.ImageFont:
    """Pillow's built-in font: no font file to ship or find."""
    return ImageFont.load_default()


def blank_map(width: int, height: int, caption: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A white canvas with room around a width x height plot area for labels, and the caption at the top."""
    left, top, right, bottom = MARGIN
    canvas = Image.new("RGB", (left + width + right, top + height + bottom), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((left, 3), caption, fill=TEXT_COLOUR, font=font())
    return canvas, draw


def draw_graticule(draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    """Meridians and parallels every GRATICULE_DEGREES (equator and meridian 0 darker), labelled in degrees."""
    left, top = MARGIN[:2]
    for lon in range(-180, 181, GRATICULE_DEGREES):
        x = left + (lon + 180) / 360 * width
        draw.line([(x, top), (x, top + height)], fill=AXIS_COLOUR if lon == 0 else GRID_COLOUR)
        draw.text((x, top + height + 2), f"{lon}", fill=TEXT_COLOUR, font=font(), anchor="ma")
    for lat in range(-90, 91, GRATICULE_DEGREES):
        y = top + (90 - lat) / 180 * height
        draw.line([(left, y), (left + width, y)], fill=AXIS_COLOUR if lat == 0 else GRID_COLOUR)
        draw.text((left - 3, y), f"{lat}", fill=TEXT_COLOUR, font=font(), anchor="rm")


def draw_axes(draw: ImageDraw.ImageDraw, side: int) -> None:
    """A frame and the two principal axes through the centre."""
    left, top = MARGIN[:2]
    draw.rectangle([left, top, left + side, top + side], outline=GRID_COLOUR)
    draw.line([(left + side / 2, top), (left + side / 2, top + side)], fill=AXIS_COLOUR)
    draw.line([(left, top + side / 2), (left + side, top + side / 2)], fill=AXIS_COLOUR)


def map_layout(points: torch.Tensor, height: int, what: str) -> tuple[Image.Image, np.ndarray]:
    """The empty map for points (N, D) and each point's pixel position (N, 2): longitude/latitude on an
    equirectangular map for D = 3, else the first two principal directions on a square."""
    left, top = MARGIN[:2]
    if points.shape[1] == 3:
        canvas, draw = blank_map(2 * height, height, f"{what} on S^2: longitude (x), latitude (y)")
        draw_graticule(draw, 2 * height, height)
        lonlat = lonlat_degrees(points)
        xy = np.stack([(lonlat[:, 0] + 180) / 360 * 2 * height, (90 - lonlat[:, 1]) / 180 * height], 1)
        return canvas, xy + (left, top)
    coordinates, share = principal_coordinates(points)
    caption = f"{what}, S^{points.shape[1] - 1}: first two principal directions ({100 * share:.0f}% of variance)"
    canvas, draw = blank_map(height, height, caption)
    draw_axes(draw, height)
    reach = max(float(np.abs(coordinates).max()), 1e-12) * 1.05
    return canvas, (coordinates * [1, -1] / reach + 1) / 2 * height + (left, top)  # principal axis 2 points up


def class_name(names: list[str] | None, label: int) -> str:
    """The dataset's name of a class, else 'class k'."""
    return names[label] if names and 0 <= label < len(names) else f"class {label}"


def draw_legend(canvas: Image.Image, labels: torch.Tensor, names: list[str] | None) -> Image.Image:
    """The map with a legend of colour swatches and class names (with their counts) to its right."""
    present = sorted(set(labels.tolist()))
    texts = [f"{class_name(names, label)} ({int((labels == label).sum())})" for label in present]
    width = 24 + max(int(font().getlength(text)) for text in texts)
    out = Image.new("RGB", (canvas.width + width, max(canvas.height, MARGIN[1] + 14 * len(texts))), "white")
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    for row, (label, text) in enumerate(zip(present, texts)):
        x, y = canvas.width + 4, MARGIN[1] + 14 * row
        draw.rectangle([x, y + 2, x + 9, y + 11], fill=PALETTE[label % len(PALETTE)])
        draw.text((x + 14, y + 1), text, fill=TEXT_COLOUR, font=font())
    return out


def dot_map(points: torch.Tensor, labels: torch.Tensor, names: list[str] | None, what: str) -> Image.Image:
    """Every point as a dot coloured by its label, in a fixed shuffled order (no class always drawn on top)."""
    canvas, xy = map_layout(points, MAP_HEIGHT, what)
    draw = ImageDraw.Draw(canvas)
    for index in np.random.default_rng(0).permutation(len(xy)):
        (x, y), colour = xy[index], PALETTE[int(labels[index]) % len(PALETTE)]
        draw.ellipse([x - DOT_RADIUS, y - DOT_RADIUS, x + DOT_RADIUS, y + DOT_RADIUS], fill=colour)
    return draw_legend(canvas, labels, names)


def thumbnails(inputs: torch.Tensor) -> list[Image.Image]:
    """The items as small pictures: images near THUMBNAIL_MAX pixels (small ones enlarged by whole multiples,
    large ones shrunk); signals as SIGNAL_CELL plots."""
    if inputs.ndim == 3:
        pictures = as_pictures(inputs, SIGNAL_CELL)
    elif inputs.shape[-1] > THUMBNAIL_MAX:
        pictures = torch.nn.functional.interpolate(inputs, size=THUMBNAIL_MAX, mode="area")
    else:
        factor = THUMBNAIL_MAX // inputs.shape[-1]
        pictures = inputs.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    pixels = ((pictures.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    if inputs.ndim == 3:  # white plots on a white map: a frame tells overlapping ones apart
        pixels[:, [0, -1]], pixels[:, :, [0, -1]] = FRAME_COLOUR, FRAME_COLOUR
    return [Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array) for array in pixels]


def thumbnail_map(points: torch.Tensor, inputs: torch.Tensor, what: str) -> Image.Image:
    """The items themselves at their positions; where several would overlap, the first of them (a catalogue
    thinned to one item per thumbnail-sized cell, like one zoom level of HiPSter's)."""
    canvas, xy = map_layout(points, THUMBNAIL_MAP_HEIGHT, what)
    pictures, taken = thumbnails(inputs), set()
    for (x, y), picture in zip(xy, pictures):
        cell = (int(x // picture.width), int(y // picture.height))
        if cell not in taken:
            taken.add(cell)
            canvas.paste(picture.convert("RGB"), (int(x - picture.width / 2), int(y - picture.height / 2)))
    return canvas


def save_maps(model: torch.nn.Module, dataset, folder: Path, names: dict[str, str], count: int = MAP_ITEMS):
    """Encode the first `count` items of the dataset and write the thumbnail map (names["thumbnails"]) and, when
    the dataset has labels, the dot map coloured by class (names["dots"]). Returns the paths written."""
    points, labels, inputs = encode_items(model, dataset, count)
    what = f"{len(points)} {'held-out' if getattr(dataset, 'split', 'all') == 'test' else 'training'} items"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / names["thumbnails"]]
    thumbnail_map(points, inputs, what).save(paths[0])
    if dataset.num_classes > 0:
        paths.append(folder / names["dots"])
        dot_map(points, labels, dataset.class_names, what).save(paths[-1])
    return paths


def end_of_training_globe(model: torch.nn.Module, dataset, folder: Path, epoch: int) -> list[Path]:
    """For a model whose latent is a point of S^2 (a 3-D latent sphere): epoch_N_atlas.png, and the latent maps
    epoch_N_latent_thumbnails.png and (labelled data) epoch_N_latent_map.png. Other models: nothing."""
    if family_of(model).latent is None or latent_size(model, dataset) != 3:
        return []
    prefix = f"epoch_{epoch:04d}_"
    names = {"thumbnails": prefix + "latent_thumbnails.png", "dots": prefix + "latent_map.png"}
    return [save_atlas(model, folder / f"{prefix}atlas.png"), *save_maps(model, dataset, folder, names)]


def atlas_needs_s2(size: int) -> str:
    """Why there is no atlas for a latent sphere in D != 3 dimensions, in one clause."""
    return f"the globe atlas needs a latent sphere in 3 dimensions (z_dim 3); this model's lives in {size}"
