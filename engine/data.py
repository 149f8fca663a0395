"""Datasets and loaders: the embedded demos, CIFAR-10, FFHQ-64, image folders and .npz arrays of images."""

import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
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
    "'demo', 'fashion', 'cifar10', 'ffhq', a path to a .npz file with a uint8 'images' array, "
    "or a path to a folder of images (jpg/png/webp/bmp)"
)


class DatasetError(ValueError):
    """A dataset that cannot be found or read; the message names the problem and the fix on one line."""


def build_transform(native_size: int, image_size: int, hflip: bool) -> Callable:
    """uint8 image (PIL or (3, H, W) tensor) -> float32 (3, S, S) in [-1, 1]: resize, center-crop, flip."""
    upsample_tiny = native_size <= NEAREST_MAX_SIZE and image_size > native_size
    # NEAREST_EXACT is PIL's nearest-neighbour rule (pixel centres); torch's NEAREST shifts by half a pixel
    interpolation = InterpolationMode.NEAREST_EXACT if upsample_tiny else InterpolationMode.BILINEAR
    # Resize returns its input untouched when the shorter side already is image_size; crop squares the rest
    steps = [v2.ToImage(), v2.Resize(image_size, interpolation=interpolation, antialias=True)]
    steps.append(v2.CenterCrop(image_size))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3)]
    return v2.Compose(steps)


class ArrayDataset(Dataset):
    """In-memory uint8 images (N, 3, H, W) with int64 labels (N,); split is "train", "test" (held out) or "all"."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        name: str,
        num_classes: int,
        image_size: int | None = None,
        hflip: bool = True,
        split: str = "all",
    ):
        self.images, self.labels = images, labels  # (N, 3, H, W) uint8, (N,) int64
        self.name, self.num_classes, self.split = name, num_classes, split
        self.native_size = min(images.shape[-2:])
        self.image_size = image_size or self.native_size
        self.transform = build_transform(self.native_size, self.image_size, hflip)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.transform(self.images[index]).as_subclass(torch.Tensor)
        return image, self.labels[index]


class ImageFolderDataset(Dataset):
    """All images under a folder (recursive, sorted); unlabeled, so every label is 0."""

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


def to_nchw(images: np.ndarray, source: str) -> torch.Tensor:
    """uint8 images (N, H, W, C), (N, C, H, W) or (N, H, W) -> contiguous uint8 tensor (N, 3, H, W)."""
    if images.dtype != np.uint8:
        raise DatasetError(f"'images' in '{source}' has dtype {images.dtype}; expected uint8 values 0-255")
    if images.ndim == 3:
        images = images[:, None]  # grayscale (N, H, W) -> (N, 1, H, W)
    elif images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DatasetError(f"'images' in '{source}' has shape {images.shape}; expected (N, H, W, 3) or (N, 3, H, W)")
    return torch.from_numpy(np.ascontiguousarray(images)).expand(-1, 3, -1, -1).contiguous()


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz file (no pickles); DatasetError for anything np.load cannot read."""
    try:
        with np.load(path) as arrays:
            return {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetError(f"cannot read '{path}' as a .npz file ({error}); write it with np.savez") from None


def npz_labels(contents: dict, count: int, source: str) -> tuple[np.ndarray, int]:
    """(int64 labels (N,), num_classes): checked against the images; unlabeled = all 0 with 0 classes."""
    labels = contents.get("labels")
    if labels is None:
        return np.zeros(count, dtype=np.int64), 0
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"'labels' in '{source}' is {labels.dtype} of shape {labels.shape}; "
            f"expected {count} integers (one per image)"
        )
    if labels.min() < 0:
        raise DatasetError(f"'labels' in '{source}' holds negative values (min {labels.min()}); use classes 0..K-1")
    num_classes = len(contents["class_names"]) if "class_names" in contents else int(labels.max()) + 1
    if labels.max() >= num_classes:
        raise DatasetError(
            f"'labels' in '{source}' go up to {labels.max()} but 'class_names' names only {num_classes} classes"
        )
    return labels.astype(np.int64), num_classes


def split_mask(contents: dict, count: int, train: bool, source: str) -> np.ndarray | None:
    """Which images belong to the requested split ('split': 0 = train, 1 = test); None = no split array."""
    split = contents.get("split")
    if split is None:
        return None
    if split.shape != (count,) or not np.isin(split, (0, 1)).all():
        raise DatasetError(f"'split' in '{source}' must hold one 0 (train) or 1 (test) per image")
    mask = split == (0 if train else 1)
    if not mask.any():
        raise DatasetError(f"'{source}' has no {'train' if train else 'test'} images (its 'split' array)")
    return mask


def npz_dataset(
    path: Path, name: str, image_size: int | None = None, hflip: bool = True, train: bool = True
) -> ArrayDataset:
    """Dataset from a .npz file holding uint8 'images' and optional int 'labels', 'class_names' and 'split'."""
    contents = read_npz(path)
    if "images" not in contents:
        raise DatasetError(f"'{path}' has no 'images' array (found {sorted(contents)}); save images=... in it")
    images = to_nchw(contents["images"], str(path))
    if len(images) == 0 or 0 in images.shape[-2:]:
        raise DatasetError(f"'{path}' holds no images ('images' has shape {contents['images'].shape})")
    labels, num_classes = npz_labels(contents, len(images), str(path))
    mask = split_mask(contents, len(images), train, str(path))
    split = "all"
    if mask is not None:
        images, labels, split = images[torch.from_numpy(mask)], labels[mask], "train" if train else "test"
    return ArrayDataset(images, torch.from_numpy(labels), name, num_classes, image_size, hflip, split)


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


def build_dataset(
    name: str, image_size: int | None = None, train: bool = True, hflip: bool = True, root: str = "data"
) -> Dataset:
    """Dataset of (image (3, S, S) in [-1, 1], int64 label) by name or path; image_size None = native size.

    train selects the split of CIFAR-10 and of .npz files with a 'split' array (the embedded 'fashion'); folders
    and other .npz files (the embedded 'demo') have a single split, returned either way.
    """
    if name in EMBEDDED:
        return npz_dataset(EMBEDDED[name], name, image_size, hflip, train)
    if name == "cifar10":
        return cifar10_dataset(Path(root) / "cifar10", train, image_size, hflip)
    if name == "ffhq":
        folder = Path(root) / "ffhq_64"
        if not folder.is_dir():
            raise DatasetError(f"FFHQ folder '{folder}' not found; run `python download_faces.py --root {root}`")
        return ImageFolderDataset(folder, "ffhq", image_size, hflip)
    path = Path(name)
    if path.name == "cifar-10-batches-py":
        path = path.parent
    if (path / "cifar-10-batches-py").is_dir():
        return cifar10_dataset(path, train, image_size, hflip)
    if path.is_file() and path.suffix.lower() == ".npz":
        return npz_dataset(path, slug(path.stem), image_size, hflip, train)
    if path.is_dir():
        return ImageFolderDataset(path, slug(path.resolve().name), image_size, hflip)
    problem = "does not exist" if not path.exists() else "is not a .npz file or a folder"
    raise DatasetError(f"dataset '{name}' {problem}; --dataset takes {ACCEPTED_FORMS}")


def load_image(path: str, image_size: int) -> torch.Tensor:
    """One image file -> (1, 3, S, S) in [-1, 1], shorter side resized to S, then center-cropped."""
    if Path(path).is_dir():
        raise DatasetError(f"'{path}' is a folder; pass image files (jpg/png/webp/bmp)")
    try:
        image = read_rgb(Path(path))
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read image '{path}' ({error}); pass a jpg/png/webp/bmp file") from error
    transform = build_transform(min(image.size), image_size, hflip=False)
    return transform(image).as_subclass(torch.Tensor).unsqueeze(0)
