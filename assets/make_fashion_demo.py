"""Build assets/fashion_mnist_demo.npz (`--dataset fashion`) from the Fashion-MNIST idx files.

python assets/make_fashion_demo.py                                   # Debian: apt-get install dataset-fashion-mnist
python assets/make_fashion_demo.py --source path/to/fashion-mnist    # the four *-ubyte.gz files from Zalando

Keeps the first 6,000 training and the first 1,000 test images, pads each 28x28 image with 2 black pixels per
side to 32x32 and writes `images` (uint8 (N, 32, 32)), `labels` (int64), `class_names` and `split` (0 = train,
1 = test) with np.savez_compressed (the same idx files give the same arrays).
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"  # where the dataset-fashion-mnist package installs the files
OUTPUT = Path(__file__).resolve().parent / "fashion_mnist_demo.npz"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
SPLITS = {"train": 6000, "t10k": 1000}  # idx file prefix -> images kept from the start of that split
PAD_PIXELS = 2  # 28 + 2 + 2 = 32, a size both backbones accept
IDX_MAGIC = {1: 0x801, 3: 0x803}  # dimensions -> magic number of an idx file of unsigned bytes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=DEBIAN_FOLDER, help="folder holding the four *-ubyte.gz idx files")
    parser.add_argument("--output", default=str(OUTPUT))
    return parser.parse_args(argv)


def read_idx(path: Path, dims: int, count: int) -> np.ndarray:
    """The first `count` items of a gzipped idx file of unsigned bytes with `dims` dimensions."""
    try:
        with gzip.open(path, "rb") as file:
            head = file.read(4 + 4 * dims)
            magic, *shape = (int.from_bytes(head[i : i + 4], "big") for i in range(0, len(head), 4))
            if magic != IDX_MAGIC[dims] or shape[0] < count:
                raise ValueError(f"'{path}' is not an idx file of {dims}-d bytes with at least {count} items")
            item_bytes = int(np.prod(shape[1:], dtype=np.int64))
            data = np.frombuffer(file.read(count * item_bytes), dtype=np.uint8)
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read '{path}' ({error}); pass --source with the Fashion-MNIST idx files") from None
    return data.reshape(count, *shape[1:])


def build_arrays(source: Path) -> dict[str, np.ndarray]:
    """images, labels, class_names and split of the demo subset."""
    images, labels, split = [], [], []
    for index, (prefix, count) in enumerate(SPLITS.items()):
        pixels = read_idx(source / f"{prefix}-images-idx3-ubyte.gz", 3, count)  # (count, 28, 28)
        images.append(np.pad(pixels, ((0, 0), (PAD_PIXELS, PAD_PIXELS), (PAD_PIXELS, PAD_PIXELS))))
        labels.append(read_idx(source / f"{prefix}-labels-idx1-ubyte.gz", 1, count).astype(np.int64))
        split.append(np.full(count, index, dtype=np.uint8))
    return {
        "images": np.concatenate(images),
        "labels": np.concatenate(labels),
        "class_names": np.array(CLASS_NAMES),
        "split": np.concatenate(split),
    }


def main(args: argparse.Namespace) -> Path:
    try:
        arrays = build_arrays(Path(args.source))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    output = Path(args.output)
    np.savez_compressed(output, **arrays)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB, {len(arrays['images'])} images)")
    return output


if __name__ == "__main__":
    main(parse_args())
