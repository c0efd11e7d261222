"""What every reader shares: the ``RawData`` it returns and the checks each split passes.

A module of its own so that the image shape, the class count and the limits
on untrusted input are stated once, and a new reader depends on this module
rather than on another reader.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradloop.errors import DataError

IMAGE_SHAPE = (28, 28)
N_CLASSES = 10
_MAX_PAYLOAD_BYTES = 2**31  # far above MNIST's 47 MB; anything bigger is a lying header
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays field by field is ambiguous
class RawData:
    """Images as uint8 (N, 28, 28) and labels as int64 (N,), as read from the source.

    A split is None when the source does not have it: mnist-sample has no test
    split, a folder holding only the t10k files has no training split.
    """

    x_train: np.ndarray | None
    y_train: np.ndarray | None
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    source: str


def _checked_split(images: np.ndarray, labels: np.ndarray, origin: str) -> tuple[np.ndarray, np.ndarray]:
    """The shape checks every loader shares; returns labels as int64."""
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{origin}: images have shape {images.shape}, expected (N, 28, 28); pass 28x28 images")
    if labels.ndim != 1:
        raise DataError(f"{origin}: labels have shape {labels.shape}, expected (N,); pass one label per image")
    if len(images) != len(labels):
        raise DataError(f"{origin}: {len(images)} images but {len(labels)} labels; pass matching files")
    if len(images) == 0:
        raise DataError(f"{origin}: the split holds no samples; pass a non-empty data set")
    if labels.min() < 0 or labels.max() >= N_CLASSES:
        raise DataError(
            f"{origin}: labels range from {labels.min()} to {labels.max()}, outside 0..{N_CLASSES - 1}; "
            "pass a 10-class MNIST-style data set"
        )
    return images, labels.astype(np.int64)
