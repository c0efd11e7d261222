"""The IDX reader: the format of the MNIST and Fashion-MNIST downloads, read as untrusted input.

The files come from the network, from Debian packages and from users'
folders, so a malformed file ends in one ``DataError`` that says what is wrong
and how to fix it, never in a reshape error ten frames deep or in a huge
allocation requested by a lying header. A folder without IDX files goes to
the npz reader, so that ``--data-dir`` takes either layout.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from gradloop.data.builtin.npz import _find_npz, load_npz
from gradloop.data.builtin.raw import _CHUNK_BYTES, _MAX_PAYLOAD_BYTES, RawData, _checked_split
from gradloop.errors import ConfigError, DataError

# (images, labels) file names of each split, without the optional ".gz".
_IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08


def read_idx(path: str | os.PathLike, *, max_items: int | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped or not) into a uint8 array.

    Gzip is detected by its 1f 8b magic, not by the file name, because mirrors
    disagree on whether the files are stored compressed. The payload must be
    exactly as long as the header declares; it is read in bounded chunks, so a
    header claiming gigabytes over a tiny payload fails fast instead of
    allocating. ``max_items`` returns only the first items, but the whole file
    is still validated.
    """
    if max_items is not None and max_items < 0:
        raise ConfigError(f"max_items must be >= 0, got {max_items}; pass None to read every item")
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            if not is_gzip:
                return _parse_idx(raw, path, max_items)
            with gzip.GzipFile(fileobj=raw) as stream:
                return _parse_idx(stream, path, max_items)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file; check the path") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read the file ({exc}); re-download it") from exc


def _parse_idx(stream: BinaryIO, path: Path, max_items: int | None) -> np.ndarray:
    magic = stream.read(4)
    if not magic:
        raise DataError(f"{path}: the file is empty; pass an MNIST IDX file")
    if len(magic) < 4:
        raise DataError(f"{path}: {len(magic)} bytes is too short for an IDX header; pass an MNIST IDX file")
    zero_a, zero_b, dtype_code, ndim = magic
    if zero_a or zero_b:
        raise DataError(
            f"{path}: not an IDX file (magic 0x{magic.hex()}, expected 0x00000801 for labels "
            "or 0x00000803 for images); pass MNIST IDX files"
        )
    if dtype_code != _IDX_UBYTE:
        raise DataError(
            f"{path}: IDX data type 0x{dtype_code:02x} is not supported, only 0x08 (unsigned byte) "
            "as in MNIST; pass MNIST IDX files"
        )
    if ndim not in (1, 3):
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected 1 (labels) or 3 (images); pass MNIST files")
    header = stream.read(4 * ndim)
    if len(header) < 4 * ndim:
        raise DataError(f"{path}: the IDX header is truncated; re-download the file")
    dims = struct.unpack(f">{ndim}I", header)
    if 0 in dims:
        raise DataError(f"{path}: the IDX header declares an empty shape {dims}; pass a non-empty IDX file")
    declared = math.prod(dims)
    if declared > _MAX_PAYLOAD_BYTES:
        raise DataError(
            f"{path}: the IDX header declares shape {dims} ({declared:,} bytes), over the "
            f"{_MAX_PAYLOAD_BYTES:,}-byte limit; the file is corrupt or not MNIST-style data"
        )
    n_items = dims[0] if max_items is None else min(dims[0], max_items)
    item_bytes = declared // dims[0]
    payload = _read_payload(stream, path, declared, keep=n_items * item_bytes)
    return np.frombuffer(payload, dtype=np.uint8).reshape((n_items, *dims[1:]))


def _read_payload(stream: BinaryIO, path: Path, declared: int, *, keep: int) -> bytearray:
    """Read at most ``declared + 1`` bytes in chunks, keeping the first ``keep`` of them."""
    kept = bytearray()
    total = 0
    while chunk := stream.read(min(_CHUNK_BYTES, declared + 1 - total)):
        if len(kept) < keep:
            kept += chunk[: keep - len(kept)]
        total += len(chunk)
    if total < declared:
        raise DataError(
            f"{path}: truncated: the header declares {declared:,} data bytes but only {total:,} "
            "follow; re-download the file"
        )
    if total > declared:
        raise DataError(
            f"{path}: more data follows the {declared:,} bytes the header declares; the file is corrupt, re-download it"
        )
    return kept


def load_idx_dir(directory: str | os.PathLike) -> RawData:
    """Load a folder laid out like the MNIST / Fashion-MNIST downloads.

    Either split may be absent (a folder with just the t10k files is a valid
    test set), but half a split is an error rather than silently ignored.
    A folder without IDX files may hold a Keras-style ``.npz`` instead.
    """
    folder = Path(directory)
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"data folder {folder} {state}; pass --data-dir a folder holding the MNIST IDX files")
    pairs = {split: _find_idx_pair(folder, *names) for split, names in _IDX_SPLITS.items()}
    if pairs["train"] is None and pairs["test"] is None:
        return load_npz(_find_npz(folder))
    x_train, y_train = _read_idx_split(*pairs["train"]) if pairs["train"] else (None, None)
    x_test, y_test = _read_idx_split(*pairs["test"]) if pairs["test"] else (None, None)
    return RawData(x_train, y_train, x_test, y_test, source=f"{folder} (IDX)")


def _find_idx_pair(folder: Path, images_name: str, labels_name: str) -> tuple[Path, Path] | None:
    images, labels = _find_idx_file(folder, images_name), _find_idx_file(folder, labels_name)
    if (images is None) != (labels is None):
        found, missing = (images, labels_name) if labels is None else (labels, images_name)
        raise DataError(
            f"{folder}: {found.name} is there but {missing}[.gz] is missing; put both files of the split in the folder"
        )
    return None if images is None else (images, labels)


def _find_idx_file(folder: Path, name: str) -> Path | None:
    return next((folder / n for n in (name + ".gz", name) if (folder / n).is_file()), None)


def _read_idx_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = read_idx(images_path), read_idx(labels_path)
    _expect_idx_rank(images_path, images, 3, "image")
    _expect_idx_rank(labels_path, labels, 1, "label")
    return _checked_split(images, labels, f"{images_path.name} / {labels_path.name}")


def _expect_idx_rank(path: Path, array: np.ndarray, ndim: int, kind: str) -> None:
    if array.ndim != ndim:
        raise DataError(
            f"{path.name}: not an IDX {kind} file (magic 0x{0x800 | array.ndim:08x}, "
            f"expected 0x{0x800 | ndim:08x}); pass the four MNIST IDX files"
        )
