"""Fashion-MNIST as a folder of class folders of PNG files, for ``--data OUT`` (streamed from disk).

    .venv/bin/python benchmarks/make_image_folders.py OUT [--limit N] [--source DIR]

writes OUT/<class>/<index>.png (the training split) and OUT/test/<class>/<index>.png,
<index> being the image's row in its IDX file, zero-padded so that a folder's sorted
order is the file's order. Class folders are named as Fashion-MNIST's labels are
("T-shirt/top" as T-shirt_top): gradloop numbers them in sorted order, so label i
here is not Fashion-MNIST's label i. The IDX files come from Debian's package
(``apt-get install dataset-fashion-mnist``) unless --source names another folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gradloop.data import DEBIAN_FASHION_MNIST, load_idx_dir

CLASS_NAMES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")


def write_split(images: np.ndarray, labels: np.ndarray, folder: Path) -> int:
    """Each image as ``folder/<class>/<row>.png``; returns how many were written."""
    for label in np.unique(labels):  # only the classes present: an empty class folder is an error
        (folder / CLASS_NAMES[label]).mkdir(parents=True, exist_ok=True)
    for row, (image, label) in enumerate(zip(images, labels)):
        Image.fromarray(image).save(folder / CLASS_NAMES[label] / f"{row:05d}.png")
    return len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the folder to write (created; files of the same name are replaced)")
    parser.add_argument("--limit", type=int, default=None, help="at most N images of each split (default: all)")
    parser.add_argument("--source", type=Path, default=DEBIAN_FASHION_MNIST, help="folder of Fashion-MNIST's IDX files")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be a positive number of images per split, got {args.limit}")
    if not args.source.is_dir():
        parser.error(f"{args.source} does not exist; apt-get install dataset-fashion-mnist, or pass --source DIR")

    raw = load_idx_dir(args.source)
    start = time.perf_counter()
    n_train = write_split(raw.x_train[: args.limit], raw.y_train[: args.limit], args.out)
    n_test = write_split(raw.x_test[: args.limit], raw.y_test[: args.limit], args.out / "test")
    seconds = time.perf_counter() - start
    print(
        f"wrote {n_train:,} training and {n_test:,} test PNGs to {args.out} in {seconds:.1f} s "
        f"({(n_train + n_test) / seconds:,.0f} files/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
