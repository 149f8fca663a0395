"""Datasets, transforms, loaders and the two download scripts, on real CIFAR-10 images, offline."""

import io
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import download_cifar
import download_faces
from engine.data import DatasetError, build_dataset, load_image

SHARED_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10_train_subset.npz"


@pytest.fixture(scope="module")
def cifar() -> dict[str, np.ndarray]:
    """The first 64 shared CIFAR-10 training images (uint8 (N, 32, 32, 3)) and labels."""
    with np.load(SHARED_NPZ) as arrays:
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


def test_demo_dataset_is_the_first_shared_images(cifar):
    dataset = build_dataset("demo", hflip=False)
    image, label = dataset[5]
    assert (len(dataset), dataset.name, dataset.num_classes) == (1000, "demo", 10)
    assert (dataset.native_size, dataset.image_size) == (32, 32)
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1 and image.min() < -0.5 and image.max() > 0.5
    assert torch.allclose(image, to_signed(cifar["images"][5]), atol=1e-6)
    assert label.dtype == torch.int64 and int(label) == cifar["labels"][5]


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


def test_shared_npz_by_path():
    dataset = build_dataset(str(SHARED_NPZ), image_size=16)
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
    with pytest.raises(DatasetError, match="no readable images"):
        download_faces.main(args)
    assert not (tmp_path / "ffhq_64").exists() and not (tmp_path / "ffhq_64.partial").exists()

    def offline(**kwargs):
        raise OSError("Connection refused")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    with pytest.raises(DatasetError, match="Connection refused.*--archive"):
        download_faces.main(download_faces.parse_args(["--root", str(tmp_path)]))
    (tmp_path / "ffhq_64").mkdir()
    (tmp_path / "ffhq_64" / "00000.png").write_bytes(b"old")
    with pytest.raises(DatasetError, match="--overwrite"):
        download_faces.main(args)


def test_download_cifar_errors_offline(tmp_path, monkeypatch):
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"not the real archive")
    with pytest.raises(DatasetError, match="not the official"):
        download_cifar.main(download_cifar.parse_args(["--archive", str(bad), "--root", str(tmp_path)]))
    with pytest.raises(DatasetError, match="not found"):
        download_cifar.main(
            download_cifar.parse_args(["--archive", str(tmp_path / "no.tar.gz"), "--root", str(tmp_path)])
        )

    def offline(**kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(download_cifar, "CIFAR10", offline)
    with pytest.raises(DatasetError, match="could not download.*--archive"):
        download_cifar.main(download_cifar.parse_args(["--root", str(tmp_path)]))
