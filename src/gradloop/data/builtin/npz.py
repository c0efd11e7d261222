"""The Keras-style ``.npz`` reader, read as untrusted input.

An npz is a zip of ``.npy`` files: it can carry pickles, whose loading runs
arbitrary code, and both the ``.npy`` headers and the zip entries can lie
about sizes. So object arrays are refused from their header, and every
declared size is checked against the bytes really stored before anything is
allocated. A malformed archive ends in one ``DataError`` that says what is
wrong and how to fix it.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from gradloop.data.builtin.raw import _MAX_PAYLOAD_BYTES, RawData, _checked_split
from gradloop.errors import DataError

_DEFLATE_MAX_RATIO = 1032  # deflate's best case (zlib's documentation): no member expands more


def load_npz(path: str | os.PathLike) -> RawData:
    """Load a Keras-style npz (x_train, y_train, x_test, y_test); either split may be absent.

    Pickles are never loaded: an npz can carry object arrays whose unpickling
    runs arbitrary code, so object arrays are refused from their header. Each
    array's header is checked against the bytes the archive really holds
    before anything of the size it declares is allocated.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            magic = file.read(6)
        if magic == b"\x93NUMPY":
            raise DataError(
                f"{path}: holds a single array, not an .npz archive; save it with np.savez(x_train=..., ...)"
            )
        if magic[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
            raise DataError(f"{path}: not a readable .npz archive (not a zip file); pass a Keras-style mnist.npz")
        archive = zipfile.ZipFile(path)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file; check the path") from exc
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc}); pass a Keras-style mnist.npz") from exc
    with archive:
        x_train, y_train = _read_npz_split(archive, path, "train")
        x_test, y_test = _read_npz_split(archive, path, "test")
        if x_train is None and x_test is None:
            keys = sorted({name.removesuffix(".npy") for name in archive.namelist()})
            raise DataError(
                f"{path}: has none of x_train/y_train/x_test/y_test (keys: {', '.join(keys) or 'none'}); "
                "save a Keras-style mnist.npz"
            )
    return RawData(x_train, y_train, x_test, y_test, source=str(path))


def _read_npz_split(archive: zipfile.ZipFile, path: Path, split: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    x_key, y_key = f"x_{split}", f"y_{split}"
    names = set(archive.namelist())
    present = [key for key in (x_key, y_key) if key + ".npy" in names or key in names]
    if not present:
        return None, None
    if len(present) == 1:
        missing = y_key if present == [x_key] else x_key
        raise DataError(f"{path}: has {present[0]} but no {missing}; save both arrays of the split")
    images, labels = read_npz_array(archive, path, x_key), read_npz_array(archive, path, y_key)
    if labels.dtype.kind not in "ui":
        raise DataError(f"{path}: {y_key} has dtype {labels.dtype}; labels must be integers 0..9")
    return _checked_split(_as_uint8_pixels(images, path, x_key), labels, f"{path.name} {split}")


def read_npz_array(archive: zipfile.ZipFile, path: Path, key: str) -> np.ndarray:
    """One member, read through numpy's .npy reader once its header and zip entry are checked."""
    info = archive.getinfo(key + ".npy" if key + ".npy" in archive.namelist() else key)
    ratio = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: _DEFLATE_MAX_RATIO}.get(info.compress_type)
    if ratio is None or info.flag_bits & 0x1:
        how = "is encrypted" if info.flag_bits & 0x1 else f"uses zip compression method {info.compress_type}"
        raise DataError(f"{path}: array {key!r} {how}; save the file with np.savez or np.savez_compressed")
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member)
            else:
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member)
            if dtype.hasobject:
                raise DataError(
                    f"{path}: array {key!r} holds Python objects, which gradloop never unpickles; "
                    "save plain numeric arrays"
                )
            # The zip's own size fields can lie too: the bytes really on disk, times the best
            # ratio the compression method reaches, bound what the member can hold.
            stored = min(info.file_size, min(info.compress_size, path.stat().st_size) * ratio)
            declared = math.prod(shape) * dtype.itemsize
            if declared > min(stored, _MAX_PAYLOAD_BYTES):
                raise DataError(
                    f"{path}: array {key!r} declares shape {shape} ({declared:,} bytes) but at most {stored:,} "
                    "bytes are stored; the file is corrupt, re-create it"
                )
            member.seek(0)  # read_array reads the header again, from the start
            return np.lib.format.read_array(member, allow_pickle=False)
    except DataError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read array {key!r} ({exc}); re-create the file") from exc


def _as_uint8_pixels(images: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Accept other numeric dtypes only when every value is a valid 0..255 pixel."""
    if images.dtype == np.uint8:
        return images
    if images.dtype.kind not in "uif":
        raise DataError(f"{path}: {key} has dtype {images.dtype}; store pixels as uint8")
    if images.dtype.kind == "f":
        if not np.isfinite(images).all():
            raise DataError(f"{path}: {key} contains NaN or infinite pixels; store pixels as uint8 0..255")
        if (images != np.floor(images)).any():
            raise DataError(
                f"{path}: {key} has fractional pixels (already scaled to [0, 1]?); store pixels as uint8 0..255"
            )
    if images.size and (images.min() < 0 or images.max() > 255):
        raise DataError(
            f"{path}: {key} has pixels in [{images.min()}, {images.max()}], outside 0..255; store pixels as uint8"
        )
    return images.astype(np.uint8)


def _find_npz(folder: Path) -> Path:
    if (folder / "mnist.npz").is_file():
        return folder / "mnist.npz"
    archives = sorted(p for p in folder.glob("*.npz") if p.is_file())
    if len(archives) == 1:
        return archives[0]
    if archives:
        raise DataError(
            f"{folder} holds several .npz files ({', '.join(p.name for p in archives)}); "
            "keep one, or name the one to use mnist.npz"
        )
    raise DataError(
        f"{folder} holds no MNIST data; expected train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz] "
        "and/or the t10k pair, or a mnist.npz"
    )
