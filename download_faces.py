"""Download FFHQ at 64x64 from the Hugging Face hub (or convert local files) into <root>/ffhq_64/*.png.

python download_faces.py --root data
python download_faces.py --root data --archive ffhq-64x64.zip    # zip, tar, folder or parquet file(s)
"""

import argparse
import io
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageOps
from tqdm import tqdm

from engine.cli import InputError, check_output_dir, positive_int
from engine.data import IMAGE_EXTENSIONS, DatasetError, to_rgb

# A public dataset repo holding one ffhq-64x64.zip (70,000 PNGs, about 880 MB)
DEFAULT_REPO_ID = "Dmini/FFHQ-64x64"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data", help="data folder; images go to <root>/ffhq_64")
    parser.add_argument("--repo_id", default=DEFAULT_REPO_ID, help="Hugging Face dataset repo to download")
    parser.add_argument("--archive", default=None, help="local zip/tar/folder/parquet to convert instead")
    parser.add_argument("--size", type=positive_int, default=64, help="output resolution (center crop + resize)")
    parser.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False)
    return parser.parse_args(argv)


def download_snapshot(repo_id: str) -> Path:
    """Download a dataset repo into the Hugging Face cache and return its local folder."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=repo_id, repo_type="dataset"))
    except Exception as error:  # network, auth and missing-repo errors all end here
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise DatasetError(
            f"could not download '{repo_id}' from the Hugging Face hub ({reason}); check the connection "
            "or pass --archive with a local zip/tar/folder of FFHQ images"
        ) from error


def is_image_name(name: str) -> bool:
    """An image file name, not macOS resource-fork junk (__MACOSX/, ._name)."""
    base = name.rsplit("/", 1)[-1]
    return name.lower().endswith(IMAGE_EXTENSIONS) and "__MACOSX" not in name and not base.startswith("._")


def iter_parquet_blobs(path: Path) -> Iterator[bytes]:
    """Image bytes from a parquet file (Hugging Face `datasets` layout: {"bytes": ..., "path": ...})."""
    try:
        import pyarrow.parquet as parquet
    except ImportError as error:
        raise DatasetError(
            f"'{path.name}' is a parquet file, which needs pyarrow (pip install pyarrow); "
            "or pass --archive with a zip/tar/folder of images"
        ) from error
    for batch in parquet.ParquetFile(path).iter_batches(batch_size=256):
        for row in batch.to_pylist():
            values = [value.get("bytes") if isinstance(value, dict) else value for value in row.values()]
            blob = next((value for value in values if isinstance(value, bytes)), None)  # first image column
            if blob is not None:
                yield blob


def iter_file_blobs(path: Path) -> Iterator[bytes]:
    """Image bytes held by one file: an image, a zip or tar archive of images, or a parquet file."""
    name = path.name.lower()
    if is_image_name(name):
        yield path.read_bytes()
    elif name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for member in sorted(archive.namelist()):
                if is_image_name(member):
                    yield archive.read(member)
    elif name.endswith(TAR_SUFFIXES):
        with tarfile.open(path) as archive:
            members = sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)
            for member in members:
                if is_image_name(member.name):
                    yield archive.extractfile(member).read()
    elif name.endswith(".parquet"):
        yield from iter_parquet_blobs(path)


def iter_image_blobs(source: Path) -> Iterator[bytes]:
    """Image bytes from a file or, recursively and in sorted order, from every file under a folder."""
    if source.is_file():
        yield from iter_file_blobs(source)
    elif source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            yield from iter_file_blobs(path)
    else:
        raise DatasetError(f"'{source}' does not exist; pass --archive with a zip/tar/folder/parquet of images")


def convert_images(source: Path, folder: Path, size: int) -> tuple[int, int]:
    """Write each image in source as a size x size RGB PNG (00000.png...); returns (written, skipped)."""
    folder.mkdir(parents=True)
    written = skipped = 0
    for blob in tqdm(iter_image_blobs(source), desc="converting", unit="img"):
        try:
            with Image.open(io.BytesIO(blob)) as image:
                square = ImageOps.fit(to_rgb(image), (size, size), Image.Resampling.LANCZOS)
        except Exception:  # a corrupt file in the archive is skipped, not fatal
            skipped += 1
            continue
        square.save(folder / f"{written:05d}.png")
        written += 1
    return written, skipped


def fill_folder(args: argparse.Namespace) -> Path:
    """Fill <root>/ffhq_64 with PNGs from the hub or from --archive and return that folder."""
    folder = check_output_dir(Path(args.root) / "ffhq_64", "--root")
    if folder.is_dir() and any(folder.iterdir()) and not args.overwrite:
        raise DatasetError(f"'{folder}' already exists and is not empty; pass --overwrite to rebuild it")
    source = Path(args.archive) if args.archive else download_snapshot(args.repo_id)
    partial = folder.with_name(folder.name + ".partial")  # an interrupted run never looks complete
    shutil.rmtree(partial, ignore_errors=True)
    try:
        written, skipped = convert_images(source, partial, args.size)
        if written == 0:
            raise DatasetError(
                f"no readable images in '{source}' (looked for jpg/png/webp/bmp files, zip/tar archives "
                "and parquet files); pass --archive with a folder or archive of images"
            )
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    print(f"wrote {written} {args.size}x{args.size} images to {folder} ({skipped} unreadable skipped)")
    return folder


def main(args: argparse.Namespace) -> Path:
    try:
        return fill_folder(args)
    except (DatasetError, InputError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main(parse_args())
