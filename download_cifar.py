"""Download CIFAR-10 with torchvision into <root>/cifar10, or install it from a local cifar-10-python.tar.gz.

python download_cifar.py --root data
python download_cifar.py --root data --archive ~/Downloads/cifar-10-python.tar.gz
"""

import argparse
from pathlib import Path

from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity, extract_archive

from engine.cli import InputError, check_output_dir
from engine.data import DatasetError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data", help="data folder; CIFAR-10 goes to <root>/cifar10")
    parser.add_argument(
        "--archive", default=None, help="local cifar-10-python.tar.gz to extract instead of downloading"
    )
    return parser.parse_args(argv)


def install_archive(archive: Path, folder: Path) -> None:
    """Check the official archive's md5 (as torchvision does) and extract it into folder."""
    if not archive.is_file():
        raise DatasetError(f"archive '{archive}' not found; pass the path of cifar-10-python.tar.gz")
    if not check_integrity(str(archive), CIFAR10.tgz_md5):
        raise DatasetError(
            f"'{archive}' is not the official cifar-10-python.tar.gz (md5 {CIFAR10.tgz_md5} expected); "
            f"get it from {CIFAR10.url}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    extract_archive(str(archive), str(folder))


def download(folder: Path) -> None:
    """Download both splits with torchvision (skipped when the files are already there and intact)."""
    try:
        for train in (True, False):
            CIFAR10(root=str(folder), train=train, download=True)
    except (OSError, RuntimeError) as error:  # URLError and HTTPError are OSErrors
        raise DatasetError(
            f"could not download CIFAR-10 ({error}); check the connection or pass "
            "--archive path/to/cifar-10-python.tar.gz"
        ) from error


def main(args: argparse.Namespace) -> Path:
    """Install CIFAR-10 into <root>/cifar10, check both splits and return that folder."""
    try:
        folder = check_output_dir(Path(args.root) / "cifar10", "--root")
        if args.archive:
            install_archive(Path(args.archive), folder)
        else:
            download(folder)
    except (DatasetError, InputError) as error:
        raise SystemExit(f"error: {error}") from None
    sizes = [len(CIFAR10(root=str(folder), train=train, download=False)) for train in (True, False)]
    print(f"CIFAR-10 ready in {folder}: {sizes[0]} train, {sizes[1]} test images (--dataset cifar10)")
    return folder


if __name__ == "__main__":
    main(parse_args())
