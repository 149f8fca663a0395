"""Datasets and loaders: the embedded demos, CIFAR-10, FFHQ-64, image folders, .npz arrays of images or 1-D
signals, Parquet tables of images or spectra (Spherinator's layout) and the built-in synthetic 'sines'.

Every item is (x, label) or, where the data has per-value errors, (x, label, sigma): x float32, images (3, S, S) in
[-1, 1], signals (C, L); label an int64 scalar (0 when unlabeled); sigma float32 of x's shape, positive, in x's units.
"""

import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate
from torchvision.transforms import InterpolationMode, v2

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_PATH = REPO_ROOT / "assets" / "cifar10_demo.npz"
FASHION_PATH = REPO_ROOT / "assets" / "fashion_mnist_demo.npz"
EMBEDDED = {"demo": DEMO_PATH, "fashion": FASHION_PATH}  # --dataset name -> .npz shipped in assets/
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
NEAREST_MAX_SIZE = 64  # sources this small are upsampled with nearest so pixels stay crisp, not blurred
SIXTEEN_BIT_MAX = 65535  # Pillow's integer modes I;16* and I hold 16-bit samples (16-bit PNG and TIFF)
TRANSPARENT_BACKGROUND = (255, 255, 255)  # transparent pixels show as on a web page: over white
ACCEPTED_FORMS = (
    "'demo', 'fashion', 'cifar10', 'ffhq', 'sines', a path to a .npz file with an 'images' or 'signals' array, "
    "a .parquet file or folder of them, or a folder of images (jpg/png/webp/bmp)"
)
UINT8_MAX = 255  # uint8 data (images, Parquet columns) is read as value / 255, its errors too
AUTO, NONE = "auto", "none"  # column choices: guess from the table / no such column
SIGNAL_NORMS = ("absmax", "standard", "none")  # dataset-level rules (SignalNormalisation); never per sample
DATA_KINDS = (AUTO, "image", "signal")
ERROR_SUFFIXES = ("_error", "_errors", "_err")  # '<data column><suffix>' is its error column
LABEL_COLUMNS = ("label", "labels")
SPLIT_COLUMN = "split"  # as the .npz 'split' array: 0 = train, 1 = test
SINES_COUNTS = (2400, 600)  # train, test signals
SINES_LENGTH = 128  # samples per signal unless --image_size asks for another length
SINES_MIN_LENGTH = 32  # the highest band has 14 cycles per signal: Nyquist needs more than 28 samples
SINES_SEED = 0
SINES_BANDS = np.array([[1.0, 3.0], [4.0, 7.0], [8.0, 14.0]])  # cycles per signal of the strongest sinusoid
SINES_CLASSES = ("low", "mid", "high")  # the class of a signal is the band of its strongest sinusoid


class DatasetError(ValueError):
    """A dataset that cannot be found or read; the message names the problem and the fix on one line."""


def interpolation_for(native_size: int, image_size: int) -> InterpolationMode:
    """Nearest for upsampling tiny sources (pixels stay crisp), bilinear with antialiasing otherwise."""
    upsample_tiny = native_size <= NEAREST_MAX_SIZE and image_size > native_size
    # NEAREST_EXACT is PIL's nearest-neighbour rule (pixel centres); torch's NEAREST shifts by half a pixel
    return InterpolationMode.NEAREST_EXACT if upsample_tiny else InterpolationMode.BILINEAR


def build_transform(native_size: int, image_size: int, hflip: bool) -> Callable:
    """uint8 image (PIL or (3, H, W) tensor) -> float32 (3, S, S) in [-1, 1]: resize, center-crop, flip."""
    interpolation = interpolation_for(native_size, image_size)
    # Resize returns its input untouched when the shorter side already is image_size; crop squares the rest
    steps = [v2.ToImage(), v2.Resize(image_size, interpolation=interpolation, antialias=True)]
    steps.append(v2.CenterCrop(image_size))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]
    return v2.Compose(steps)


class ArrayDataset(Dataset):
    """In-memory uint8 images (N, 3, H, W) with int64 labels (N,); split is "train", "test" (held out) or "all"."""

    kind, has_sigma, in_channels = "image", False, 3

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        name: str,
        num_classes: int,
        image_size: int | None = None,
        hflip: bool = True,
        split: str = "all",
        class_names: list[str] | None = None,
    ):
        self.images, self.labels = images, labels  # (N, 3, H, W) uint8, (N,) int64
        self.name, self.num_classes, self.split, self.class_names = name, num_classes, split, class_names
        self.native_size = min(images.shape[-2:])
        self.image_size = image_size or self.native_size
        self.transform = build_transform(self.native_size, self.image_size, hflip)
        self.in_memory = not hflip  # items are fixed: they can be made once and kept (stack_items)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.transform(self.images[index]).as_subclass(torch.Tensor)
        return image, self.labels[index]

    def items(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Items start..stop-1 stacked, transformed as one batch (the same values as item by item)."""
        return self.transform(self.images[start:stop]).as_subclass(torch.Tensor), self.labels[start:stop]


class ImageFolderDataset(Dataset):
    """All images under a folder (recursive, sorted); unlabeled, so every label is 0."""

    kind, has_sigma, in_channels, class_names = "image", False, 3, None

    def __init__(self, root: Path, name: str, image_size: int | None = None, hflip: bool = True):
        self.root, self.name, self.num_classes, self.split = Path(root), name, 0, "all"  # one split
        self.paths, shorter_sides, self.num_skipped = scan_image_folder(self.root)
        self.native_size = common_size(shorter_sides, self.root, strict=image_size is None)
        self.image_size = image_size or self.native_size
        self.transform = build_transform(self.native_size, self.image_size, hflip)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        # a file can pass the header check and still fail to decode (e.g. a truncated JPEG): use the next one
        for offset in range(len(self.paths)):
            path = self.paths[(index + offset) % len(self.paths)]
            try:
                image = read_rgb(path)
            except (OSError, SyntaxError, ValueError) as error:
                warnings.warn(f"could not decode '{path}' ({error}); using another image", stacklevel=2)
                continue
            return self.transform(image).as_subclass(torch.Tensor), torch.tensor(0, dtype=torch.int64)
        raise DatasetError(f"no image in '{self.root}' could be decoded; check the files or re-download them")


def resize_crop(image: torch.Tensor, native_size: int, image_size: int) -> torch.Tensor:
    """Float (C, H, W) -> (C, S, S) with build_transform's resize kernel and center crop (no flip, no scaling)."""
    interpolation = interpolation_for(native_size, image_size)
    resized = v2.functional.resize(image, [image_size], interpolation=interpolation, antialias=True)
    return v2.functional.center_crop(resized, [image_size])


class FloatImageDataset(Dataset):
    """In-memory float images (N, 3, H, W) in [0, 1], int64 labels (N,) and optional per-pixel sigma (N, 3, H, W)
    in the same units; items are in [-1, 1], so sigma is doubled."""

    kind, in_channels = "image", 3

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        name: str,
        num_classes: int,
        errors: torch.Tensor | None = None,
        image_size: int | None = None,
        hflip: bool = True,
        split: str = "all",
        class_names: list[str] | None = None,
    ):
        self.images, self.labels, self.errors = images, labels, errors  # (N, 3, H, W), (N,), (N, 3, H, W) | None
        self.name, self.num_classes, self.split, self.class_names = name, num_classes, split, class_names
        self.has_sigma, self.hflip, self.in_memory = errors is not None, hflip, not hflip  # see ArrayDataset
        self.native_size = min(images.shape[-2:])
        self.image_size = image_size or self.native_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        image = resize_crop(self.images[index], self.native_size, self.image_size)
        # sigma goes through the image's kernel: exact at native size and for nearest upsampling; after averaging
        # (bilinear) it bounds the propagated sigma of independent noise from above (sum w*s >= sqrt(sum w^2 s^2))
        sigma = None if self.errors is None else resize_crop(self.errors[index], self.native_size, self.image_size)
        if self.hflip and torch.rand(()) < 0.5:  # one coin for both: a pixel's sigma moves with the pixel
            image, sigma = image.flip(-1), (None if sigma is None else sigma.flip(-1))
        item = (image * 2 - 1, self.labels[index])
        return item if sigma is None else (*item, sigma * 2)  # [0, 1] -> [-1, 1] doubles every deviation


@dataclass(frozen=True)
class SignalNormalisation:
    """x = (raw - offset) / scale per channel and sigma = sigma_raw / scale, fitted once on the train split and
    applied to every split. 'absmax': one scale for all channels, the largest |value| (train signals in [-1, 1],
    ratios between signals and channels kept); 'standard': per-channel mean and standard deviation; 'none'."""

    rule: str
    offset: np.ndarray  # (C,) float32
    scale: np.ndarray  # (C,) float32, > 0

    @classmethod
    def fit(cls, train_signals: np.ndarray, rule: str) -> "SignalNormalisation":
        """The rule's offset and scale from the train signals (N, C, L); constant data keeps scale 1."""
        channels = train_signals.shape[1]
        offset, scale = np.zeros(channels), np.ones(channels)
        if rule == "absmax":
            scale = np.full(channels, np.abs(train_signals).max(), dtype=np.float64)
        elif rule == "standard":
            offset, scale = (
                train_signals.mean(axis=(0, 2), dtype=np.float64),
                train_signals.std(axis=(0, 2), dtype=np.float64),
            )
        scale = np.where(scale > 0, scale, 1.0)  # all-constant data: dividing would make NaNs (Spherinator's bug)
        return cls(rule, offset.astype(np.float32), scale.astype(np.float32))

    def apply(self, signals: np.ndarray, errors: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw (N, C, L) signals and their sigma -> normalised ones."""
        scale = self.scale[:, None]
        return (signals - self.offset[:, None]) / scale, (None if errors is None else errors / scale)

    def invert(self, signals: torch.Tensor) -> torch.Tensor:
        """Normalised signals (..., C, L), e.g. a model's outputs -> the data's own units."""
        scale, offset = (torch.as_tensor(v, device=signals.device)[:, None] for v in (self.scale, self.offset))
        return signals * scale + offset


class SignalDataset(Dataset):
    """In-memory 1-D signals (N, C, L), already normalised, with int64 labels (N,) and optional per-value sigma
    (N, C, L) in the same units; image_size = native_size = signal_length (no resampling, no flips)."""

    kind, in_memory = "signal", True

    def __init__(
        self,
        signals: torch.Tensor,
        labels: torch.Tensor,
        name: str,
        num_classes: int,
        normalisation: SignalNormalisation,
        errors: torch.Tensor | None = None,
        split: str = "all",
        class_names: list[str] | None = None,
    ):
        self.signals, self.labels, self.errors = signals, labels, errors  # (N, C, L), (N,), (N, C, L) | None
        self.name, self.num_classes, self.split, self.class_names = name, num_classes, split, class_names
        self.normalisation, self.has_sigma = normalisation, errors is not None
        self.in_channels, self.signal_length = signals.shape[1:]
        self.image_size = self.native_size = self.signal_length  # what length-agnostic engine code reads as a size

    def __len__(self) -> int:
        return len(self.signals)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        item = (self.signals[index], self.labels[index])
        return item if self.errors is None else (*item, self.errors[index])


STACK_CHUNK = 1024  # items made at once while stacking a dataset (bounds the host memory it takes)


def item_range(dataset: Dataset, start: int, stop: int) -> tuple[torch.Tensor, ...]:
    """Items start..stop-1 stacked: the dataset class's own batch method where it has one (not one a wrapper
    forwards: its items may differ from the wrapped dataset's), else item by item."""
    if callable(getattr(type(dataset), "items", None)):
        return tuple(dataset.items(start, stop))
    return tuple(default_collate([dataset[index] for index in range(start, stop)]))


def stacked_bytes(dataset: Dataset) -> int:
    """Bytes that stack_items would take: the first item's tensors times the number of items."""
    return len(dataset) * sum(t.numel() * t.element_size() for t in map(torch.as_tensor, dataset[0]))


def stack_items(dataset: Dataset, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Every item of an in-memory dataset (`in_memory`: its items are fixed) as tensors (N, ...) on `device`,
    (x, labels[, sigma]) in item order; made STACK_CHUNK items at a time and copied into place."""
    first = item_range(dataset, 0, 1)
    stacked = [torch.empty((len(dataset), *t.shape[1:]), dtype=t.dtype, device=device) for t in first]
    for start in range(0, len(dataset), STACK_CHUNK):
        for target, part in zip(stacked, item_range(dataset, start, min(start + STACK_CHUNK, len(dataset)))):
            target[start : start + len(part)].copy_(part)
    return tuple(stacked)


def common_size(shorter_sides: list[int], root: Path, strict: bool) -> int:
    """The most common shorter side; when strict, sizes that mostly disagree ask for --image_size."""
    side, count = Counter(shorter_sides).most_common(1)[0]
    if strict and 2 * count < len(shorter_sides):
        raise DatasetError(
            f"images in '{root}' have different sizes (shorter sides {min(shorter_sides)}-{max(shorter_sides)} px; "
            f"the most common, {side} px, in only {count} of {len(shorter_sides)}); pass --image_size"
        )
    return side


def _sixteen_bit_to_l(image: Image.Image) -> Image.Image:
    """Integer modes (I;16, I;16B, I): 0..65535 -> 0..255 (.convert would clip everything above 255 to white)."""
    values = np.asarray(image).astype(np.float64) * (255 / SIXTEEN_BIT_MAX)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _float_to_l(image: Image.Image) -> Image.Image:
    """Mode F: values in [0, 1] scale to 0..255; any other range is taken as 0..255 (clipped)."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    scale = 255 if values.size and values.min() >= 0 and values.max() <= 1 else 1
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any Pillow mode: 16-bit and float grayscale rescaled, transparency composited over white."""
    if image.mode.startswith("I"):
        image = _sixteen_bit_to_l(image)
    elif image.mode == "F":
        image = _float_to_l(image)
    try:
        if image.has_transparency_data:
            background = Image.new("RGBA", image.size, TRANSPARENT_BACKGROUND)
            return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")
    except ValueError as error:  # Pillow has no conversion for a few exotic modes
        raise DatasetError(f"images of mode {image.mode} are not supported ({error}); save them as RGB") from None


def read_rgb(path: Path) -> Image.Image:
    """Fully decode an image file as 8-bit RGB (see to_rgb for 16-bit, float, transparent and other modes)."""
    with Image.open(path) as image:
        return to_rgb(image)


def scan_image_folder(root: Path) -> tuple[list[Path], list[int], int]:
    """Sorted readable image paths under root, their shorter sides (from the headers) and the number of
    unreadable files skipped (with a warning)."""
    if not root.is_dir():
        raise DatasetError(f"dataset folder '{root}' does not exist; pass --dataset {ACCEPTED_FORMS}")
    candidates = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not candidates:
        raise DatasetError(
            f"dataset folder '{root}' contains no readable images (jpg/png/webp/bmp); "
            "point --dataset at a folder of images or run download_faces.py"
        )
    paths, shorter_sides, failures = [], [], []
    for path in candidates:
        try:
            with Image.open(path) as image:
                side = min(image.size)
                image.verify()  # reads headers (and PNG chunk checksums), does not decode pixels
            paths.append(path)
            shorter_sides.append(side)
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for broken files
            failures.append(f"{path.name} ({error})")
    if failures:
        warnings.warn(f"skipped {len(failures)} unreadable image file(s) in '{root}': {failures[:3]}", stacklevel=3)
    if not paths:
        raise DatasetError(f"all {len(failures)} image files in '{root}' are unreadable (corrupt or truncated)")
    return paths, shorter_sides, len(failures)


# ---- named arrays: .npz files, Parquet tables, the sines -------------------------------------------------


@dataclass(frozen=True)
class ReadOptions:
    """How arrays become a dataset: which split, the image size (None = native), flips, the signals' normalisation."""

    train: bool = True
    image_size: int | None = None
    hflip: bool = True
    signal_norm: str = "absmax"


def channels_first(images: np.ndarray, source: str, key: str = "images") -> np.ndarray:
    """Images (N, H, W, C), (N, C, H, W) or (N, H, W) with C = 1 or 3, of any dtype -> (N, C, H, W)."""
    if images.ndim == 3:
        images = images[:, None]  # grayscale (N, H, W) -> (N, 1, H, W)
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DatasetError(f"'{key}' in '{source}' has shape {images.shape}; expected (N, H, W, 3) or (N, 3, H, W)")
    return images


def three_channels(images: np.ndarray) -> torch.Tensor:
    """(N, 1 or 3, H, W) array -> contiguous tensor (N, 3, H, W): grayscale repeated into every channel."""
    return torch.from_numpy(np.ascontiguousarray(images)).expand(-1, 3, -1, -1).contiguous()


def to_nchw(images: np.ndarray, source: str) -> torch.Tensor:
    """uint8 images (N, H, W, C), (N, C, H, W) or (N, H, W) -> contiguous uint8 tensor (N, 3, H, W)."""
    if images.dtype != np.uint8:
        raise DatasetError(f"'images' in '{source}' has dtype {images.dtype}; expected uint8 values 0-255")
    return three_channels(channels_first(images, source))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz file (no pickles); DatasetError for anything np.load cannot read."""
    try:
        with np.load(path) as arrays:
            return {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetError(f"cannot read '{path}' as a .npz file ({error}); write it with np.savez") from None


def noun(contents: dict) -> str:
    """What the rows of these arrays are, for messages."""
    return "signals" if "signals" in contents else "images"


def npz_labels(contents: dict, count: int, source: str) -> tuple[np.ndarray, int]:
    """(int64 labels (N,), num_classes): checked against the data; unlabeled = all 0 with 0 classes."""
    labels = contents.get("labels")
    if labels is None:
        return np.zeros(count, dtype=np.int64), 0
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"'labels' in '{source}' is {labels.dtype} of shape {labels.shape}; "
            f"expected {count} integers (one per {noun(contents)[:-1]})"
        )
    if labels.min() < 0:
        raise DatasetError(f"'labels' in '{source}' holds negative values (min {labels.min()}); use classes 0..K-1")
    num_classes = len(contents["class_names"]) if "class_names" in contents else int(labels.max()) + 1
    if labels.max() >= num_classes:
        raise DatasetError(
            f"'labels' in '{source}' go up to {labels.max()} but 'class_names' names only {num_classes} classes"
        )
    return labels.astype(np.int64), num_classes


def class_names_of(contents: dict) -> list[str] | None:
    """The 'class_names' array as strings; None when the data does not name its classes."""
    names = contents.get("class_names")
    return None if names is None else [str(name) for name in np.atleast_1d(names).tolist()]


def split_mask(contents: dict, count: int, train: bool, source: str) -> np.ndarray | None:
    """Which rows belong to the requested split ('split': 0 = train, 1 = test); None = no split array."""
    split = contents.get("split")
    if split is None:
        return None
    if split.shape != (count,) or not np.isin(split, (0, 1)).all():
        raise DatasetError(f"'split' in '{source}' must hold one 0 (train) or 1 (test) per {noun(contents)[:-1]}")
    mask = split == (0 if train else 1)
    if not mask.any():
        raise DatasetError(f"'{source}' has no {'train' if train else 'test'} {noun(contents)} (its 'split' array)")
    return mask


def split_rows(contents: dict, count: int, train: bool, source: str) -> tuple[np.ndarray | slice, str]:
    """The requested split's row indices and name; every row and "all" when there is no 'split' array."""
    mask = split_mask(contents, count, train, source)
    if mask is None:
        return slice(None), "all"
    return np.flatnonzero(mask), "train" if train else "test"


def unit_scale(data: np.ndarray) -> float:
    """uint8 data and its errors are read as value / 255, as Spherinator reads uint8 columns."""
    return 1 / UINT8_MAX if data.dtype == np.uint8 else 1.0


def float_values(values: np.ndarray, source: str, key: str) -> np.ndarray:
    """Real numbers as float32; DatasetError for other dtypes and for NaN or infinite values."""
    if values.dtype.kind not in "uif":
        raise DatasetError(f"'{key}' in '{source}' has dtype {values.dtype}; expected real numbers")
    floats = values.astype(np.float32)
    bad = int((~np.isfinite(floats)).sum())
    if bad:
        raise DatasetError(
            f"'{key}' in '{source}' holds {bad} NaN or infinite values (in float32); every value must be finite "
            "(give unreliable data values a large sigma in 'errors')"
        )
    return floats


def sigma_values(contents: dict, data: np.ndarray, source: str) -> np.ndarray | None:
    """'errors' as float32 sigma in the units of the data after unit_scale; one positive finite sigma per value."""
    errors = contents.get("errors")
    if errors is None:
        return None
    if errors.shape != data.shape:
        raise DatasetError(
            f"'errors' in '{source}' has shape {errors.shape}; "
            f"expected the data's shape {data.shape} (one sigma per value)"
        )
    sigma = float_values(errors, source, "errors") * unit_scale(data)
    bad = int((sigma <= 0).sum())
    if bad:
        raise DatasetError(
            f"'errors' in '{source}' holds {bad} values <= 0 (in float32); every sigma must be positive "
            "(give unreliable values a large sigma instead)"
        )
    return sigma


def uint8_image_dataset(contents: dict, source: str, name: str, options: ReadOptions) -> ArrayDataset:
    """uint8 'images' without errors: stored as uint8, resized and flipped per item by build_transform."""
    images = to_nchw(contents["images"], source)
    if len(images) == 0 or 0 in images.shape[-2:]:
        raise DatasetError(f"'{source}' holds no images ('images' has shape {contents['images'].shape})")
    labels, num_classes = npz_labels(contents, len(images), source)
    rows, split = split_rows(contents, len(images), options.train, source)
    labels, names = torch.from_numpy(labels[rows]), class_names_of(contents)
    return ArrayDataset(images[rows], labels, name, num_classes, options.image_size, options.hflip, split, names)


def float_image_dataset(contents: dict, source: str, name: str, options: ReadOptions) -> FloatImageDataset:
    """Float 'images' in [0, 1], or uint8 ones (read as value / 255) with 'errors'; optional per-pixel 'errors'."""
    raw = contents["images"]
    images = channels_first(float_values(raw, source, "images") * unit_scale(raw), source)
    if images.size == 0:
        raise DatasetError(f"'{source}' holds no images ('images' has shape {raw.shape})")
    if images.min() < 0 or images.max() > 1:
        raise DatasetError(
            f"float 'images' in '{source}' range over [{images.min():.4g}, {images.max():.4g}]; expected [0, 1]: "
            "divide them (and their errors) by one dataset-wide maximum, not per image"
        )
    sigma = sigma_values(contents, raw, source)
    labels, num_classes = npz_labels(contents, len(images), source)
    rows, split = split_rows(contents, len(images), options.train, source)
    errors = None if sigma is None else three_channels(channels_first(sigma, source, "errors")[rows])
    labels, names = torch.from_numpy(labels[rows]), class_names_of(contents)
    image_size, hflip = options.image_size, options.hflip
    return FloatImageDataset(
        three_channels(images[rows]), labels, name, num_classes, errors, image_size, hflip, split, names
    )


def signal_array(contents: dict, source: str, image_size: int | None) -> np.ndarray:
    """'signals' (N, L) or (N, C, L) as float32 (N, C, L), uint8 read as value / 255."""
    raw = contents["signals"]
    signals = float_values(raw, source, "signals") * unit_scale(raw)
    signals = signals[:, None] if signals.ndim == 2 else signals  # (N, L) -> one channel
    if signals.ndim != 3 or 0 in signals.shape:
        raise DatasetError(
            f"'signals' in '{source}' has shape {raw.shape}; expected (N, L) or (N, C, L) with N, C, L > 0"
        )
    length = signals.shape[-1]
    if image_size not in (None, length):
        raise DatasetError(
            f"signals in '{source}' have length {length} and are never resampled; drop --image_size or pass {length}"
        )
    return signals


def signal_dataset(contents: dict, source: str, name: str, options: ReadOptions) -> SignalDataset:
    """'signals' with optional per-value 'errors', normalised by a rule fitted on the train split (if any)."""
    signals = signal_array(contents, source, options.image_size)
    sigma = sigma_values(contents, contents["signals"], source)
    sigma = None if sigma is None else sigma.reshape(signals.shape)
    labels, num_classes = npz_labels(contents, len(signals), source)
    train_rows, _ = split_rows(contents, len(signals), True, source)
    normalisation = SignalNormalisation.fit(signals[train_rows], options.signal_norm)  # the same for every split
    rows, split = split_rows(contents, len(signals), options.train, source)
    signals, sigma = normalisation.apply(signals[rows], None if sigma is None else sigma[rows])
    errors = None if sigma is None else torch.from_numpy(sigma)
    labels, names = torch.from_numpy(labels[rows]), class_names_of(contents)
    return SignalDataset(torch.from_numpy(signals), labels, name, num_classes, normalisation, errors, split, names)


def dataset_from_arrays(contents: dict, source: str, name: str, options: ReadOptions) -> Dataset:
    """Dataset of named arrays (a .npz file, a Parquet table, the sines): 'images' or 'signals', optional
    'errors' (sigma per value), 'labels', 'class_names' and 'split'."""
    if "signals" in contents and "images" in contents:
        raise DatasetError(f"'{source}' holds both 'images' and 'signals'; keep one of them")
    if "signals" in contents:
        return signal_dataset(contents, source, name, options)
    if "images" not in contents:
        raise DatasetError(
            f"'{source}' has no 'images' array and no 'signals' array (found {sorted(contents)}); "
            "save images=... or signals=... in it"
        )
    if contents["images"].dtype == np.uint8 and "errors" not in contents:
        return uint8_image_dataset(contents, source, name, options)
    return float_image_dataset(contents, source, name, options)


def npz_dataset(path: Path, name: str, options: ReadOptions) -> Dataset:
    """Dataset from a .npz file (see dataset_from_arrays for the arrays it may hold)."""
    return dataset_from_arrays(read_npz(path), str(path), name, options)


# ---- the built-in synthetic 1-D set ------------------------------------------------------------------------


def sine_arrays(length: int = SINES_LENGTH) -> dict[str, np.ndarray]:
    """The 'sines' arrays, the same on every call: noisy mixtures of three sinusoids (N, 1, L), their noise-free
    'clean' versions, per-value sigma (the noise level, growing along the signal), labels, class names, split."""
    rng = np.random.default_rng(SINES_SEED)
    count = sum(SINES_COUNTS)
    labels = rng.permutation(np.arange(count) % len(SINES_CLASSES))
    low, high = SINES_BANDS[labels].T
    others = rng.uniform(SINES_BANDS.min(), SINES_BANDS.max(), (2, count))
    frequencies = np.stack([rng.uniform(low, high), *others], axis=1)  # (N, 3) cycles per signal
    # the strongest sinusoid has at least twice the amplitude of the others, so it decides the class
    amplitudes = np.concatenate([rng.uniform(0.6, 1.0, (count, 1)), rng.uniform(0.1, 0.3, (count, 2))], axis=1)
    phases = rng.uniform(0, 2 * np.pi, (count, 3))
    t = np.arange(length) / length  # (L,)
    waves = amplitudes[..., None] * np.sin(2 * np.pi * frequencies[..., None] * t + phases[..., None])  # (N, 3, L)
    clean = waves.sum(axis=1)  # (N, L)
    sigma = rng.uniform(0.02, 0.08, (count, 1)) * (0.5 + t)  # noisier towards the end, like a spectrum's red edge
    signals = clean + sigma * rng.standard_normal((count, length))
    arrays = {"signals": signals, "clean": clean, "errors": sigma}
    arrays = {key: value[:, None].astype(np.float32) for key, value in arrays.items()}  # (N, 1, L)
    split = (np.arange(count) >= SINES_COUNTS[0]).astype(np.int64)  # the first 2400 train, the last 600 test
    return arrays | {"labels": labels, "class_names": np.array(SINES_CLASSES), "split": split}


def sines_dataset(options: ReadOptions) -> SignalDataset:
    """The built-in 'sines' at length options.image_size (default 128), generated in milliseconds."""
    length = options.image_size or SINES_LENGTH
    if length < SINES_MIN_LENGTH:
        raise DatasetError(
            f"'sines' needs --image_size >= {SINES_MIN_LENGTH} samples (its fastest sinusoids have 14 cycles); "
            f"got {length}"
        )
    return signal_dataset(sine_arrays(length), "sines", "sines", options)


# ---- Parquet (Spherinator's layout) -------------------------------------------------------------------------


@dataclass(frozen=True)
class ParquetColumns:
    """Which Parquet columns hold what ('auto': guessed from the table, 'none': absent), the shape of one row
    (None: the '<data>_shape' schema metadata, else the rows' own nesting) and the data's kind."""

    data: str = AUTO
    error: str = AUTO
    label: str = AUTO
    shape: tuple[int, ...] | None = None
    kind: str = AUTO  # 'auto': 1-D rows are signals, 2-D and 3-D rows images


def import_parquet():
    """pyarrow.parquet, an optional dependency: a one-line DatasetError when it is missing."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DatasetError("reading Parquet needs pyarrow: pip install pyarrow") from None
    return parquet


def parse_shape(text: str) -> tuple[int, ...]:
    """'(3,64,64)' (Spherinator's '<column>_shape' metadata), '3,64,64' or '3x64x64' -> (3, 64, 64)."""
    parts = [part for part in re.split(r"[\s,x]+", text.strip().strip("()[]")) if part]
    if not parts or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise DatasetError(f"shape '{text}' is not a list of positive integers; write it like 3,64,64")
    return tuple(int(part) for part in parts)


def parquet_files(folder: Path) -> list[Path]:
    """The .parquet files under a folder, sorted; names starting with '_' or '.' are skipped, as pyarrow does."""
    files = sorted(p for p in folder.rglob("*.parquet") if p.is_file() and not p.name.startswith(("_", ".")))
    if files and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.rglob("*")):
        raise DatasetError(f"'{folder}' holds both image files and .parquet files; point --dataset at one kind")
    return files


def one_line(error: Exception, limit: int = 200) -> str:
    """An exception's text on one line (pyarrow's span several), cut to limit characters."""
    return " ".join(str(error).split())[:limit] or type(error).__name__


def read_parquet(file: Path, read: Callable):
    """read(file) with pyarrow's errors as a one-line DatasetError."""
    import pyarrow as pa

    try:
        return read(file)
    except (OSError, ValueError, KeyError, pa.ArrowException) as error:
        raise DatasetError(
            f"cannot read '{file}' as Parquet ({one_line(error)}); check the file or rewrite it"
        ) from None


def is_list_type(arrow_type) -> bool:
    """Lists of any kind: variable, large and fixed-size."""
    import pyarrow as pa

    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def auto_data_column(schema, error_column: str, source: str) -> str:
    """The one column of lists (one image or spectrum per row) that is not an error column."""
    errors = [field.name for field in schema if field.name.endswith(ERROR_SUFFIXES) or field.name == error_column]
    lists = [field.name for field in schema if is_list_type(field.type) and field.name not in errors]
    if len(lists) != 1:
        problem = f"several columns of lists {lists}" if lists else "no column of lists (one image or spectrum per row)"
        raise DatasetError(
            f"'{source}' has {problem}; name the data column with --data_column (columns: {schema.names})"
        )
    return lists[0]


def named_column(choice: str, candidates: list[str], names: list[str], source: str, flag: str) -> str | None:
    """'none' -> None, 'auto' -> the first candidate the table has (None if none), a name -> that column."""
    if choice == NONE:
        return None
    if choice == AUTO:
        return next((name for name in candidates if name in names), None)
    if choice not in names:
        raise DatasetError(f"'{source}' has no column '{choice}' (columns: {names}); fix --{flag}")
    return choice


def choose_columns(schema, columns: ParquetColumns, source: str) -> dict[str, str]:
    """Role ('data', 'errors', 'labels', 'split') -> column name, for the roles the table has."""
    names = schema.names
    data = auto_data_column(schema, columns.error, source) if columns.data == AUTO else columns.data
    chosen = {
        "data": named_column(data, [], names, source, "data_column"),
        "errors": named_column(
            columns.error, [data + suffix for suffix in ERROR_SUFFIXES], names, source, "error_column"
        ),
        "labels": named_column(columns.label, list(LABEL_COLUMNS), names, source, "label_column"),
        "split": SPLIT_COLUMN if SPLIT_COLUMN in names else None,
    }
    if chosen["data"] is None:
        raise DatasetError(f"--data_column cannot be 'none': name the column holding the data (columns: {names})")
    return {role: name for role, name in chosen.items() if name is not None}


def column_values(table, name: str, source: str) -> np.ndarray:
    """A column of numbers, or of (nested) equal-length lists of numbers, as an array (N, *list lengths)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = table.column(name).combine_chunks()
    shape = [len(values)]
    while is_list_type(values.type):
        lengths = pc.list_value_length(values).to_numpy(zero_copy_only=False)
        if values.null_count:
            raise DatasetError(f"column '{name}' in '{source}' has {values.null_count} missing rows; fill or drop them")
        if (lengths != lengths[:1]).any():
            raise DatasetError(
                f"rows of column '{name}' in '{source}' differ in length ({lengths.min()}-{lengths.max()} values); "
                "every row needs the same number of values"
            )
        shape.append(int(lengths[0]) if len(lengths) else 0)
        values = values.flatten()
    if values.null_count or not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise DatasetError(
            f"column '{name}' in '{source}' holds {values.type} values ({values.null_count} missing); "
            "expected numbers or lists of numbers in every row"
        )
    return values.to_numpy(zero_copy_only=False, writable=True).reshape(shape)  # torch wants writable arrays


def reshape_rows(values: np.ndarray, shape: tuple[int, ...], column: str, source: str) -> np.ndarray:
    """(N, ...) -> (N, *shape); DatasetError when a row's number of values does not fit the shape."""
    per_row, needed = int(np.prod(values.shape[1:])), int(np.prod(shape))
    if per_row != needed:
        raise DatasetError(
            f"rows of column '{column}' in '{source}' hold {per_row} values but the row shape {shape} needs {needed}; "
            "fix --data_shape or the data column's '<column>_shape' schema metadata"
        )
    return values.reshape(len(values), *shape)


ROW_FORMS = {"signal": {1: "(L,)", 2: "(C, L)"}, "image": {2: "(H, W)", 3: "(C, H, W) or (H, W, C)"}}


def data_key(shape: tuple[int, ...], kind: str, column: str, source: str) -> str:
    """'images' or 'signals' for rows of this shape: 1-D rows are signals and 2-D or 3-D rows images, unless
    --data_kind says otherwise ((C, L) rows need --data_kind signal)."""
    kind = ("signal" if len(shape) == 1 else "image") if kind == AUTO else kind
    if len(shape) not in ROW_FORMS[kind]:
        raise DatasetError(
            f"rows of column '{column}' in '{source}' have shape {shape}; {kind}s need "
            f"{' or '.join(ROW_FORMS[kind].values())} (set --data_shape or --data_kind)"
        )
    return kind + "s"


def label_arrays(column, name: str, source: str) -> dict[str, np.ndarray]:
    """Integer labels as they are; strings -> indices into their sorted distinct values ('class_names')."""
    values = column.to_numpy()
    if column.null_count == 0 and values.dtype.kind in "iu":
        return {"labels": values}
    if column.null_count == 0 and values.dtype.kind in "OU":
        class_names, labels = np.unique(values.astype(str), return_inverse=True)
        return {"labels": labels.astype(np.int64), "class_names": class_names}
    raise DatasetError(
        f"label column '{name}' in '{source}' holds {column.type} values ({column.null_count} missing); "
        "expected an integer or a string in every row (or pass --label_column none)"
    )


def table_arrays(table, metadata: dict, chosen: dict[str, str], columns: ParquetColumns, source: str) -> dict:
    """The named arrays dataset_from_arrays takes, from the chosen columns of a table."""
    if table.num_rows == 0:
        raise DatasetError(f"'{source}' has no rows")
    data = column_values(table, chosen["data"], source)
    stored_shape = metadata.get(f"{chosen['data']}_shape".encode())
    shape = columns.shape or (parse_shape(stored_shape.decode()) if stored_shape else data.shape[1:])
    contents = {
        data_key(shape, columns.kind, chosen["data"], source): reshape_rows(data, shape, chosen["data"], source)
    }
    if "errors" in chosen:
        contents["errors"] = reshape_rows(
            column_values(table, chosen["errors"], source), shape, chosen["errors"], source
        )
    if "labels" in chosen:
        contents |= label_arrays(table.column(chosen["labels"]), chosen["labels"], source)
    if "split" in chosen:
        contents["split"] = table.column(chosen["split"]).to_numpy()
    return contents


def parquet_dataset(
    files: list[Path], source: str, name: str, options: ReadOptions, columns: ParquetColumns
) -> Dataset:
    """Dataset from Parquet files read Spherinator's way: one image or spectrum per row in a list column, its
    shape from the schema metadata '<column>_shape', optional error and label columns, uint8 read as value / 255."""
    parquet = import_parquet()
    import pyarrow as pa

    schema = read_parquet(files[0], parquet.read_schema)  # the first file's metadata, as Spherinator reads it
    chosen = choose_columns(schema, columns, source)
    wanted = list(dict.fromkeys(chosen.values()))
    tables = [read_parquet(file, lambda path: parquet.read_table(path, columns=wanted)) for file in files]
    try:
        table = pa.concat_tables(tables)
    except pa.ArrowInvalid as error:
        raise DatasetError(
            f"the Parquet files in '{source}' differ in their columns ({one_line(error)}); write them alike"
        ) from None
    return dataset_from_arrays(
        table_arrays(table, schema.metadata or {}, chosen, columns, source), source, name, options
    )


# ---- by name or path ------------------------------------------------------------------------------------------


def cifar10_dataset(folder: Path, train: bool, image_size: int | None = None, hflip: bool = True) -> ArrayDataset:
    """CIFAR-10 from torchvision's files in folder (the parent of cifar-10-batches-py); never downloads."""
    from torchvision.datasets import CIFAR10

    try:
        cifar = CIFAR10(root=str(folder), train=train, download=False)
    except RuntimeError as error:  # torchvision: "Dataset not found or corrupted."
        raise DatasetError(
            f"CIFAR-10 not found in '{folder}'; run `python download_cifar.py --root {folder.parent}` "
            "(add --archive cifar-10-python.tar.gz for a local copy) or use --dataset demo"
        ) from error
    labels = torch.tensor(cifar.targets, dtype=torch.int64)
    images = to_nchw(cifar.data, str(folder))
    split = "train" if train else "test"
    return ArrayDataset(images, labels, "cifar10", len(cifar.classes), image_size, hflip, split)


def slug(text: str) -> str:
    """A short name safe for run-folder names."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "dataset"


def check_choice(value: str, choices: tuple[str, ...], flag: str) -> None:
    """DatasetError unless value is one of choices."""
    if value not in choices:
        raise DatasetError(f"--{flag} '{value}' is not one of {', '.join(choices)}")


def path_dataset(name: str, options: ReadOptions, columns: ParquetColumns) -> Dataset:
    """A dataset given by path: CIFAR-10's folder, a .npz or .parquet file, a folder of Parquet files or of images."""
    path = Path(name)
    if path.name == "cifar-10-batches-py":
        path = path.parent
    if (path / "cifar-10-batches-py").is_dir():
        return cifar10_dataset(path, options.train, options.image_size, options.hflip)
    if path.is_file() and path.suffix.lower() == ".npz":
        return npz_dataset(path, slug(path.stem), options)
    if path.is_file() and path.suffix.lower() == ".parquet":
        return parquet_dataset([path], str(path), slug(path.stem), options, columns)
    if path.is_dir() and (files := parquet_files(path)):
        return parquet_dataset(files, str(path), slug(path.resolve().name), options, columns)
    if path.is_dir():
        return ImageFolderDataset(path, slug(path.resolve().name), options.image_size, options.hflip)
    problem = "does not exist" if not path.exists() else "is not a .npz file, a .parquet file or a folder"
    raise DatasetError(f"dataset '{name}' {problem}; --dataset takes {ACCEPTED_FORMS}")


def build_dataset(
    name: str,
    image_size: int | None = None,
    train: bool = True,
    hflip: bool = True,
    root: str = "data",
    *,
    signal_norm: str = "absmax",
    data_column: str = AUTO,
    error_column: str = AUTO,
    label_column: str = AUTO,
    data_shape: tuple[int, ...] | str | None = None,
    data_kind: str = AUTO,
) -> Dataset:
    """Dataset by name or path whose items are (x, int64 label) or, with per-value errors, (x, label, sigma):
    images (3, S, S) in [-1, 1] (image_size None = native size), signals (C, L) normalised by signal_norm.

    train selects the split of CIFAR-10, of 'sines' and of .npz/Parquet data with a 'split' array or column (the
    embedded 'fashion'); folders and other .npz files (the embedded 'demo') have a single split, returned either
    way. hflip applies to images only. The keyword arguments choose Parquet columns (ParquetColumns).
    """
    check_choice(signal_norm, SIGNAL_NORMS, "signal_norm")
    check_choice(data_kind, DATA_KINDS, "data_kind")
    options = ReadOptions(train, image_size, hflip, signal_norm)
    shape = None if data_shape is None else parse_shape(data_shape if isinstance(data_shape, str) else str(data_shape))
    columns = ParquetColumns(data_column, error_column, label_column, shape, data_kind)
    if name in EMBEDDED:
        return npz_dataset(EMBEDDED[name], name, options)
    if name == "sines":
        return sines_dataset(options)
    if name == "cifar10":
        return cifar10_dataset(Path(root) / "cifar10", train, image_size, hflip)
    if name == "ffhq":
        folder = Path(root) / "ffhq_64"
        if not folder.is_dir():
            raise DatasetError(f"FFHQ folder '{folder}' not found; run `python download_faces.py --root {root}`")
        return ImageFolderDataset(folder, "ffhq", image_size, hflip)
    return path_dataset(name, options, columns)


def load_image(path: str, image_size: int | None) -> torch.Tensor:
    """One image file -> (1, 3, S, S) in [-1, 1], shorter side resized to S, then center-cropped; image_size None:
    (1, 3, H, W) at the file's own size (tiled reconstruction of large images)."""
    if Path(path).is_dir():
        raise DatasetError(f"'{path}' is a folder; pass image files (jpg/png/webp/bmp)")
    try:
        image = read_rgb(Path(path))
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read image '{path}' ({error}); pass a jpg/png/webp/bmp file") from error
    if image_size is None:
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, 3)
        return pixels.permute(2, 0, 1)[None].float() / 127.5 - 1
    transform = build_transform(min(image.size), image_size, hflip=False)
    return transform(image).as_subclass(torch.Tensor).unsqueeze(0)
