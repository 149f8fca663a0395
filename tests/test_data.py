"""Datasets, transforms, loaders and the download scripts, on the real images the repository ships, offline."""

import gzip
import importlib.util
import io
import struct
import tarfile
import urllib.error
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import download_cifar
import download_faces
from engine.data import DEMO_PATH, DatasetError, build_dataset, load_image, read_rgb, stack_items, stacked_bytes
from tests.conftest import CIFAR_SUBSET, needs_cifar_subset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cifar() -> dict[str, np.ndarray]:
    """The first 64 real CIFAR-10 training images (uint8 (N, 32, 32, 3)) and labels of the embedded demo."""
    with np.load(DEMO_PATH) as arrays:
        return {"images": arrays["images"][:64], "labels": arrays["labels"][:64]}


def to_signed(image_hwc: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (3, H, W) in [-1, 1], the datasets' output convention."""
    return torch.from_numpy(image_hwc).permute(2, 0, 1).float() / 127.5 - 1


def png_bytes(image: Image.Image, image_format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


def write_mixed_folder(folder: Path, images: np.ndarray) -> list[Path]:
    """Eight real images as RGB, grayscale, RGBA, palette, JPEG (upper-case suffix), non-square, nested."""
    rgb = [Image.fromarray(image) for image in images[:8]]
    files = {
        "a_rgb.png": rgb[0],
        "b_gray.png": rgb[1].convert("L"),
        "c_rgba.png": rgb[2].convert("RGBA"),
        "d_palette.png": rgb[3].convert("P"),
        "e_photo.JPG": rgb[4],
        "f_wide.bmp": rgb[5].resize((48, 32)),
        "nested/deeper/g.webp": rgb[6],
        "nested/h.png": rgb[7],
    }
    for name, image in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return sorted(folder / name for name in files)


@needs_cifar_subset
def test_demo_dataset_is_the_first_shared_images():
    dataset = build_dataset("demo", hflip=False)
    image, label = dataset[5]
    with np.load(CIFAR_SUBSET) as arrays:
        expected_image, expected_label = arrays["images"][5], arrays["labels"][5]
    assert (len(dataset), dataset.name, dataset.num_classes) == (1000, "demo", 10)
    assert (dataset.native_size, dataset.image_size) == (32, 32)
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1 and image.min() < -0.5 and image.max() > 0.5
    assert torch.allclose(image, to_signed(expected_image), atol=1e-6)
    assert label.dtype == torch.int64 and int(label) == expected_label


def test_demo_has_one_split_for_train_and_test():
    train, test = build_dataset("demo", train=True), build_dataset("demo", train=False)
    assert len(train) == len(test) == 1000 and torch.equal(train.images, test.images)


def test_hflip_flips_some_items_and_never_changes_pixels(cifar):
    dataset = build_dataset("demo", hflip=True)
    torch.manual_seed(0)
    reference = to_signed(cifar["images"][0])
    outputs = [dataset[0][0] for _ in range(20)]
    flipped = [torch.allclose(out, reference.flip(-1), atol=1e-6) for out in outputs]
    same = [torch.allclose(out, reference, atol=1e-6) for out in outputs]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)


def test_npz_layouts_and_nearest_upsampling(tmp_path, cifar):
    hwc, labels = cifar["images"][:10], cifar["labels"][:10]
    np.savez(tmp_path / "hwc.npz", images=hwc, labels=labels)
    np.savez(tmp_path / "chw.npz", images=hwc.transpose(0, 3, 1, 2), labels=labels)
    np.savez(tmp_path / "gray.npz", images=hwc[..., 0])
    for name in ("hwc", "chw"):
        dataset = build_dataset(str(tmp_path / f"{name}.npz"), hflip=False)
        assert (dataset.name, len(dataset), dataset.num_classes) == (name, 10, int(labels.max()) + 1)
        assert torch.allclose(dataset[3][0], to_signed(hwc[3]), atol=1e-6)
        assert int(dataset[3][1]) == labels[3]
    gray = build_dataset(str(tmp_path / "gray.npz"), image_size=64, hflip=False)
    image, label = gray[2]
    assert image.shape == (3, 64, 64) and (int(label), gray.num_classes, gray.image_size) == (0, 0, 64)
    expected = to_signed(np.repeat(hwc[2, ..., :1], 3, axis=-1))  # every channel = the gray channel
    assert torch.allclose(image, expected.repeat_interleave(2, -1).repeat_interleave(2, -2), atol=1e-6)


@needs_cifar_subset
def test_shared_npz_by_path():
    dataset = build_dataset(str(CIFAR_SUBSET), image_size=16)
    image, label = dataset[100]
    assert (dataset.name, len(dataset), dataset.num_classes) == ("cifar10_train_subset", 5169, 10)
    assert image.shape == (3, 16, 16) and 0 <= int(label) < 10


@pytest.mark.parametrize("image_size", [16, 64])
def test_folder_dataset_mixed_modes(tmp_path, cifar, image_size):
    paths = write_mixed_folder(tmp_path / "mixed", cifar["images"])
    dataset = build_dataset(str(tmp_path / "mixed"), image_size=image_size, hflip=False)
    assert dataset.paths == paths and dataset.num_skipped == 0
    assert (dataset.name, len(dataset), dataset.num_classes, dataset.native_size) == ("mixed", 8, 0, 32)
    for index in range(len(dataset)):
        image, label = dataset[index]
        assert image.shape == (3, image_size, image_size) and int(label) == 0
        assert -1 <= image.min() and image.max() <= 1 and image.std() > 0.05
    gray = dataset[paths.index(tmp_path / "mixed" / "b_gray.png")][0]
    assert torch.allclose(gray[0], gray[1]) and torch.allclose(gray[1], gray[2])


def test_folder_at_native_size_keeps_pixels(tmp_path, cifar):
    Image.fromarray(cifar["images"][9]).save(tmp_path / "only.png")
    dataset = build_dataset(str(tmp_path), hflip=False)
    assert dataset.image_size == 32
    assert torch.allclose(dataset[0][0], to_signed(cifar["images"][9]), atol=1e-6)


def test_corrupt_files_are_skipped_and_counted(tmp_path, cifar):
    write_mixed_folder(tmp_path, cifar["images"])
    (tmp_path / "random.png").write_bytes(np.random.default_rng(0).bytes(500))
    good_png = png_bytes(Image.fromarray(cifar["images"][10]))
    (tmp_path / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        dataset = build_dataset(str(tmp_path), hflip=False)
    assert dataset.num_skipped == 2 and len(dataset) == 8
    assert all(path.name not in ("random.png", "truncated.png") for path in dataset.paths)


def test_undecodable_file_falls_back_to_another_image(tmp_path, cifar):
    jpeg = png_bytes(Image.fromarray(cifar["images"][11]), "JPEG")
    cut = jpeg.index(b"\xff\xda") + 40  # inside the scan data: the header check passes, decoding fails
    (tmp_path / "a_truncated.jpg").write_bytes(jpeg[:cut])
    Image.fromarray(cifar["images"][12]).save(tmp_path / "b_good.png")
    dataset = build_dataset(str(tmp_path), hflip=False)
    assert len(dataset) == 2 and dataset.num_skipped == 0
    with pytest.warns(UserWarning, match="could not decode"):
        image, _ = dataset[0]
    assert torch.allclose(image, to_signed(cifar["images"][12]), atol=1e-6)


def test_dataset_errors_are_helpful(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"definitely not a png")
    (tmp_path / "notes.txt").write_text("hello")
    np.savez(tmp_path / "no_images.npz", pixels=np.zeros((2, 4, 4, 3), np.uint8))
    (tmp_path / "fake_cifar" / "cifar-10-batches-py").mkdir(parents=True)
    cases = {
        str(tmp_path / "empty"): "contains no readable images",
        str(tmp_path / "missing"): "does not exist",
        str(tmp_path / "notes.txt"): "is not a .npz file",
        str(tmp_path / "no_images.npz"): "no 'images' array",
        str(tmp_path / "fake_cifar"): "download_cifar.py",
        "cifar10": "download_cifar.py",
        "ffhq": "download_faces.py",
    }
    for name, words in cases.items():
        with pytest.raises(DatasetError, match=words) as caught:
            build_dataset(name, root=str(tmp_path))
        assert "\n" not in str(caught.value)
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="unreadable"):
        build_dataset(str(tmp_path / "broken"))


def test_load_image_center_crops_instead_of_squashing(tmp_path):
    stripes = np.zeros((16, 48, 3), np.uint8)
    stripes[:, :16, 0] = stripes[:, 16:32, 1] = stripes[:, 32:, 2] = 255  # red | green | blue thirds
    Image.fromarray(stripes).save(tmp_path / "stripes.png")
    exact = load_image(str(tmp_path / "stripes.png"), 16)
    assert exact.shape == (1, 3, 16, 16)
    assert torch.equal(exact[0, 1], torch.ones(16, 16)) and torch.equal(exact[0, 0], -torch.ones(16, 16))
    Image.fromarray(stripes).resize((96, 32), Image.Resampling.NEAREST).save(tmp_path / "big.png")
    resized = load_image(str(tmp_path / "big.png"), 16)[0, :, :, 2:14]  # interior columns: pure green
    assert resized.shape == (3, 16, 12) and resized[1].min() > 0.95 and resized[[0, 2]].max() < -0.95


def test_load_image_errors(tmp_path):
    (tmp_path / "text.png").write_text("no pixels here")
    for path in (tmp_path / "missing.png", tmp_path / "text.png"):
        with pytest.raises(DatasetError, match="cannot read image"):
            load_image(str(path), 32)


def write_face_archive(tmp_path: Path, kind: str, images: np.ndarray) -> Path:
    """Five real images of assorted sizes, one corrupt file and macOS junk, as a zip, tar.gz or folder."""
    sizes = [(64, 64), (80, 96), (128, 128), (32, 32), (100, 70)]
    files = {f"faces/{i}.png": png_bytes(Image.fromarray(images[i]).resize(s)) for i, s in enumerate(sizes)}
    files["faces/broken.png"] = b"not a png"
    files["__MACOSX/faces/._0.png"] = b"resource fork"
    if kind == "zip":
        with zipfile.ZipFile(tmp_path / "faces.zip", "w") as archive:
            for name, blob in files.items():
                archive.writestr(name, blob)
        return tmp_path / "faces.zip"
    if kind == "tar.gz":
        with tarfile.open(tmp_path / "faces.tar.gz", "w:gz") as archive:
            for name, blob in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                archive.addfile(info, io.BytesIO(blob))
        return tmp_path / "faces.tar.gz"
    for name, blob in files.items():
        (tmp_path / "folder" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "folder" / name).write_bytes(blob)
    return tmp_path / "folder"


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "folder"])
def test_download_faces_converts_local_archive(tmp_path, capsys, cifar, kind):
    archive = write_face_archive(tmp_path, kind, cifar["images"])
    root = tmp_path / "data"
    folder = download_faces.main(download_faces.parse_args(["--archive", str(archive), "--root", str(root)]))
    assert folder == root / "ffhq_64" and "(1 unreadable skipped)" in capsys.readouterr().out  # macOS junk ignored
    assert sorted(p.name for p in folder.iterdir()) == [f"{i:05d}.png" for i in range(5)]
    for path in folder.iterdir():
        with Image.open(path) as image:
            assert (image.size, image.mode) == ((64, 64), "RGB")
    with Image.open(folder / "00000.png") as image:  # the 64x64 source is copied unchanged
        assert np.array_equal(np.asarray(image), np.asarray(Image.fromarray(cifar["images"][0]).resize((64, 64))))
    dataset = build_dataset("ffhq", root=str(root), hflip=False)
    assert (dataset.name, len(dataset), dataset.native_size, dataset.num_classes) == ("ffhq", 5, 64, 0)
    assert dataset[4][0].shape == (3, 64, 64)


def test_download_faces_errors_offline(tmp_path, monkeypatch):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.md").write_text("no images")
    args = download_faces.parse_args(["--archive", str(tmp_path / "nothing"), "--root", str(tmp_path)])
    with pytest.raises(SystemExit, match="error: no readable images"):
        download_faces.main(args)
    assert not (tmp_path / "ffhq_64").exists() and not (tmp_path / "ffhq_64.partial").exists()

    def offline(**kwargs):
        raise OSError("Connection refused")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(SystemExit, match="Connection refused.*--archive"):
        download_faces.main(download_faces.parse_args(["--root", str(tmp_path)]))
    (tmp_path / "ffhq_64").mkdir()
    (tmp_path / "ffhq_64" / "00000.png").write_bytes(b"old")
    with pytest.raises(SystemExit, match="--overwrite"):
        download_faces.main(args)


def test_download_cifar_errors_offline(tmp_path, monkeypatch):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"not the real archive")
    with pytest.raises(SystemExit, match="not the official"):
        download_cifar.main(download_cifar.parse_args(["--archive", str(bad), "--root", str(tmp_path)]))
    with pytest.raises(SystemExit, match="not found"):
        download_cifar.main(
            download_cifar.parse_args(["--archive", str(tmp_path / "no.tar.gz"), "--root", str(tmp_path)])
        )

    def offline(**kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(download_cifar, "CIFAR10", offline)
    with pytest.raises(SystemExit, match="could not download.*--archive"):
        download_cifar.main(download_cifar.parse_args(["--root", str(tmp_path)]))


# ---- image modes: 16-bit, float, transparency... -> 8-bit RGB ------------------------------------------

RAMP_16 = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(16, 16)  # 0..65535; 8-bit: 0..255
RAMP_8 = np.arange(256, dtype=np.uint8).reshape(16, 16)


def png_16bit(samples: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG (color type 0 gray, 2 RGB, 4 gray+alpha, 6 RGBA), written by hand: Pillow cannot save one."""
    height, width = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=-1)


def write_mode_case(folder: Path, case: str) -> tuple[Path, np.ndarray]:
    """(file, expected uint8 RGB (H, W, 3)) for one source image mode."""
    alpha = np.tile(np.array([0, 255], np.uint8), 8).reshape(4, 4)
    half_transparent = np.stack([np.full((4, 4), 100, np.uint8), alpha], -1)
    palette = Image.fromarray(np.tile([0, 1], 8).reshape(4, 4).astype(np.uint8), "P")
    palette.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    files = {
        "gray16.png": (lambda p: Image.fromarray(RAMP_16).save(p), gray(RAMP_8)),
        "gray16_raw.png": (lambda p: p.write_bytes(png_16bit(RAMP_16, 0)), gray(RAMP_8)),
        "rgb16.png": (
            lambda p: p.write_bytes(png_16bit(np.stack([RAMP_16, 65535 - RAMP_16, RAMP_16 // 2], -1), 2)),
            np.stack([RAMP_8, 255 - RAMP_8, np.rint(RAMP_16 // 2 / 257).astype(np.uint8)], -1),
        ),
        "int32.tif": (lambda p: Image.fromarray(RAMP_16.astype(np.int32)).save(p), gray(RAMP_8)),
        "float_unit.tif": (lambda p: Image.fromarray(RAMP_8.astype(np.float32) / 255).save(p), gray(RAMP_8)),
        "float_255.tif": (lambda p: Image.fromarray(RAMP_8.astype(np.float32)).save(p), gray(RAMP_8)),
        "gray_alpha.png": (
            lambda p: Image.fromarray(half_transparent, "LA").save(p),
            gray(np.where(half_transparent[..., 1] == 0, 255, 100).astype(np.uint8)),
        ),
        "palette_transparent.png": (
            lambda p: palette.save(p, transparency=0),
            np.where(np.tile([0, 1], 8).reshape(4, 4, 1) == 0, [255, 255, 255], [200, 150, 100]).astype(np.uint8),
        ),
        "cmyk.tif": (
            lambda p: Image.fromarray(np.array([[[0, 0, 0, 0], [0, 255, 255, 0]]], np.uint8), "CMYK").save(p),
            np.array([[[255, 255, 255], [255, 0, 0]]], np.uint8),
        ),
        "bilevel.png": (
            lambda p: Image.fromarray(np.array([[True, False]])).save(p),
            np.array([[[255, 255, 255], [0, 0, 0]]], np.uint8),
        ),
    }
    write, expected = files[case]
    write(folder / case)
    return folder / case, expected


MODE_CASES = ["gray16.png", "gray16_raw.png", "rgb16.png", "int32.tif", "float_unit.tif", "float_255.tif"]
MODE_CASES += ["gray_alpha.png", "palette_transparent.png", "cmyk.tif", "bilevel.png"]


@pytest.mark.parametrize("case", MODE_CASES)
def test_image_modes_become_exact_8bit_rgb(tmp_path, case):
    path, expected = write_mode_case(tmp_path, case)
    image = read_rgb(path)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(image), expected)


def test_16bit_folder_is_not_white(tmp_path):
    """The bug: .convert("RGB") clipped 16-bit values above 255, so every image came out white."""
    write_mode_case(tmp_path, "gray16.png")
    image, _ = build_dataset(str(tmp_path), hflip=False)[0]
    assert torch.allclose(image, to_signed(gray(RAMP_8)), atol=1e-6)


# ---- folders whose sizes disagree ----------------------------------------------------------------------


def test_folder_size_is_the_common_size_not_the_first_file(tmp_path, cifar):
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "a_tiny.png")  # first alphabetically
    Image.new("RGB", (1200, 900)).save(tmp_path / "b_huge.png")
    for index in range(4):
        Image.fromarray(cifar["images"][index]).save(tmp_path / f"c_{index}.png")
    dataset = build_dataset(str(tmp_path), hflip=False)
    assert (dataset.native_size, dataset.image_size, len(dataset)) == (32, 32, 6)
    assert dataset[0][0].shape == dataset[1][0].shape == (3, 32, 32)
    assert torch.allclose(dataset[0][0][0], torch.ones(32, 32)) and dataset[0][0][1:].max() == -1  # red 1x1


def test_folder_of_disagreeing_sizes_asks_for_image_size(tmp_path):
    for side in (16, 24, 40, 48):
        Image.new("RGB", (side, side)).save(tmp_path / f"{side}.png")
    with pytest.raises(DatasetError, match="different sizes.*16-48 px.*pass --image_size") as caught:
        build_dataset(str(tmp_path))
    assert "\n" not in str(caught.value)
    dataset = build_dataset(str(tmp_path), image_size=32)
    assert len(dataset) == 4 and all(dataset[i][0].shape == (3, 32, 32) for i in range(4))


# ---- .npz edge cases -------------------------------------------------------------------------------------

IMAGES_4 = np.zeros((4, 8, 8, 3), np.uint8)
LABELS_4 = np.array([0, 1, 2, 1])


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ({"images": np.zeros((0, 32, 32, 3), np.uint8)}, "holds no images"),
        ({"images": np.zeros((0, 32, 32, 3), np.uint8), "labels": np.zeros(0, np.int64)}, "holds no images"),
        ({"images": np.zeros((4, 8, 0, 3), np.uint8)}, "holds no images"),
        ({"images": IMAGES_4, "labels": LABELS_4[:3]}, "expected 4 integers"),
        ({"images": IMAGES_4, "labels": LABELS_4.reshape(2, 2)}, "expected 4 integers"),
        ({"images": IMAGES_4, "labels": LABELS_4.astype(np.float32)}, "expected 4 integers"),
        ({"images": IMAGES_4, "labels": np.array([0, -1, 2, 1])}, "negative values"),
        ({"images": IMAGES_4, "labels": LABELS_4, "class_names": np.array(["a", "b"])}, "only 2 classes"),
        ({"images": IMAGES_4, "split": np.array([0, 1, 2, 0])}, "'split'"),
        ({"images": IMAGES_4, "split": np.array([0, 1])}, "'split'"),
        ({"images": IMAGES_4, "split": np.zeros(4, np.uint8), "test": True}, "no test images"),
    ],
)
def test_npz_edge_cases_are_one_line_errors(tmp_path, arrays, words):
    train = not arrays.pop("test", False)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=words) as caught:
        build_dataset(str(tmp_path / "bad.npz"), train=train)
    assert "\n" not in str(caught.value)


def test_truncated_npz_is_a_one_line_error(tmp_path):
    np.savez(tmp_path / "full.npz", images=np.zeros((64, 32, 32, 3), np.uint8))
    blob = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match="cannot read") as caught:
        build_dataset(str(tmp_path / "cut.npz"))
    assert "\n" not in str(caught.value)


def test_npz_split_selects_train_and_test(tmp_path):
    images = np.arange(5, dtype=np.uint8)[:, None, None].repeat(8, 1).repeat(8, 2)  # image i is all i
    np.savez(tmp_path / "split.npz", images=images, labels=np.arange(5), split=np.array([0, 1, 0, 0, 1]))
    train = build_dataset(str(tmp_path / "split.npz"), train=True)
    test = build_dataset(str(tmp_path / "split.npz"), train=False)
    assert train.images[:, 0, 0, 0].tolist() == [0, 2, 3] and train.labels.tolist() == [0, 2, 3]
    assert test.images[:, 0, 0, 0].tolist() == [1, 4] and test.labels.tolist() == [1, 4]
    assert train.num_classes == test.num_classes == 5


# ---- the embedded Fashion-MNIST demo ---------------------------------------------------------------------

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag"]
FASHION_CLASSES += ["Ankle boot"]


def test_fashion_demo_splits_classes_and_padding():
    train, test = build_dataset("fashion", hflip=False), build_dataset("fashion", train=False, hflip=False)
    assert (train.name, len(train), len(test), train.num_classes, test.num_classes) == ("fashion", 6000, 1000, 10, 10)
    assert (train.native_size, train.image_size) == (32, 32)
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == set(range(10))
    train_hashes = {image.numpy().tobytes() for image in train.images}
    assert not any(image.numpy().tobytes() in train_hashes for image in test.images)  # disjoint
    image, label = test[0]
    assert image.shape == (3, 32, 32) and 0 <= int(label) < 10
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grayscale
    for images in (train.images, test.images):  # a 2-pixel black frame around the 28x28 originals
        assert images[..., :2, :].max() == images[..., -2:, :].max() == 0
        assert images[..., :2].max() == images[..., -2:].max() == 0
        assert images[..., 2:30, 2:30].float().mean() > 40
    with np.load(REPO / "assets" / "fashion_mnist_demo.npz") as arrays:
        assert arrays["images"].shape == (7000, 32, 32) and arrays["images"].dtype == np.uint8
        assert arrays["class_names"].tolist() == FASHION_CLASSES
        assert arrays["split"].tolist() == [0] * 6000 + [1] * 1000


def load_fashion_script():
    spec = importlib.util.spec_from_file_location("make_fashion_demo", REPO / "assets" / "make_fashion_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = {1: 0x801, 3: 0x803}[array.ndim]
    header = b"".join(value.to_bytes(4, "big") for value in (magic, *array.shape))
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def test_make_fashion_demo_pads_and_splits(tmp_path, monkeypatch):
    script = load_fashion_script()
    monkeypatch.setattr(script, "SPLITS", {"train": 3, "t10k": 2})
    rng = np.random.default_rng(0)
    sources = {}
    for prefix, count in (("train", 5), ("t10k", 4)):
        sources[prefix] = rng.integers(1, 256, (count, 28, 28)).astype(np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", sources[prefix])
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)
    output = script.main(script.parse_args(["--source", str(tmp_path), "--output", str(tmp_path / "out.npz")]))
    with np.load(output) as arrays:
        images, labels, split = arrays["images"], arrays["labels"], arrays["split"]
        assert arrays["class_names"].tolist() == FASHION_CLASSES
    assert images.shape == (5, 32, 32) and split.tolist() == [0, 0, 0, 1, 1] and labels.tolist() == [0, 1, 2, 0, 1]
    np.testing.assert_array_equal(images[:, 2:30, 2:30], np.concatenate([sources["train"][:3], sources["t10k"][:2]]))
    assert images.sum() == images[:, 2:30, 2:30].sum()  # the frame is black
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.arange(4))  # a labels file where images belong
    with pytest.raises(SystemExit, match="not an idx file"):
        script.main(script.parse_args(["--source", str(tmp_path), "--output", str(tmp_path / "out.npz")]))


def test_load_image_rejects_a_folder(tmp_path):
    with pytest.raises(DatasetError, match="is a folder"):
        load_image(str(tmp_path), 32)


def test_download_scripts_reject_unusable_roots_and_sizes(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    root = str(tmp_path / "a_file")
    with pytest.raises(SystemExit, match="cannot create --root .* is a file") as caught:
        download_cifar.main(download_cifar.parse_args(["--root", root, "--archive", str(tmp_path / "x.tar.gz")]))
    assert "\n" not in str(caught.value)
    with pytest.raises(SystemExit, match="cannot create --root .* is a file"):
        download_faces.main(download_faces.parse_args(["--root", root, "--archive", str(tmp_path)]))
    with pytest.raises(SystemExit):
        download_faces.parse_args(["--size", "0"])
    assert "argument --size" in capsys.readouterr().err


@pytest.mark.parametrize("name, image_size", [("demo", None), ("demo", 24), ("fashion", 16), ("sines", None)])
def test_stack_items_equals_the_items_one_by_one(name, image_size, monkeypatch):
    """The stacked dataset the trainer keeps on the device holds exactly the DataLoader's items (batched resizes
    included), made in chunks; a dataset whose items flip at random is not in memory."""
    monkeypatch.setattr("engine.data.STACK_CHUNK", 300)  # several chunks and a partial last one
    dataset = build_dataset(name, image_size, hflip=False)
    assert dataset.in_memory
    if name != "sines":  # signals never flip
        assert not build_dataset(name, image_size, hflip=True).in_memory
    stacked = stack_items(dataset, torch.device("cpu"))
    one_by_one = [torch.stack([torch.as_tensor(item[k]) for item in dataset]) for k in range(len(stacked))]
    assert all(torch.equal(a, b) for a, b in zip(stacked, one_by_one))
    assert stacked_bytes(dataset) == sum(t.numel() * t.element_size() for t in stacked)


def test_float_images_with_errors_stack_item_by_item(tmp_path):
    images = np.random.default_rng(0).random((5, 3, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "f.npz", images=images, errors=images / 10)
    dataset = build_dataset(str(tmp_path / "f.npz"), 16, hflip=False)
    x, labels, sigma = stack_items(dataset, torch.device("cpu"))
    assert dataset.in_memory and x.shape == sigma.shape == (5, 3, 16, 16) and labels.shape == (5,)
    assert torch.equal(x[3], dataset[3][0]) and torch.equal(sigma[4], dataset[4][2])
