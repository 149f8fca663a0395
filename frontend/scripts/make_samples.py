"""Write the demo's bundled sample pictures: frontend/public/examples/<class>.png, 32x32 CIFAR-10 images.

They come from the repository's embedded dataset (assets/cifar10_demo.npz, CIFAR-10 by Krizhevsky, Nair and
Hinton, see assets/README.md): the first image of each chosen class. Run once; the PNGs are committed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("ship", "horse", "automobile", "frog")


def main() -> None:
    data = np.load(REPO / "assets" / "cifar10_demo.npz")
    names = [str(name) for name in data["class_names"]]
    out_dir = REPO / "frontend" / "public" / "examples"  # not "samples/": the root .gitignore ignores those
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in CLASSES:
        index = int(np.flatnonzero(data["labels"] == names.index(name))[0])
        Image.fromarray(data["images"][index]).save(out_dir / f"{name}.png", optimize=True)
        print(f"{name}: image {index} of assets/cifar10_demo.npz")


if __name__ == "__main__":
    main()
