"""An image folder's layout and its files' headers, read without decoding a pixel.

    _has_class_folders, _class_files, _class_names    which sub-folders are classes, their files and names
    _read_header, _common_size, _common_color         each file's size, colour mode and format (Pillow), and
                                                      whether its last bytes end it whole
    _decode_failure, _undecodable                     why TensorFlow could not decode a file, in one line

:mod:`gradloop.data.sources.images` reads a folder with these before anything is decoded, so that a file that is
no image, truncated or of a format TensorFlow cannot decode is refused up front, by name.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from gradloop.data.sources import IMAGE_SUFFIXES
from gradloop.errors import ConfigError, DataError, tensorflow_reason

TEST_FOLDER = "test"
_DECODED_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "WEBP")  # what tf.io.decode_image reads (MPO: a camera's JPEG)
_GRAY_MODES = ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_ENDINGS = {"PNG": b"IEND\xaeB`\x82", "JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "GIF": b";"}  # a whole file ends so
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
_KINDS = "PNG, JPEG, BMP or GIF"


def _has_class_folders(root: Path) -> bool:
    return any(e.is_dir() and not e.name.startswith(".") and e.name != TEST_FOLDER for e in root.iterdir())


def _images_in(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (hidden ones skipped), sorted: unlabelled examples."""
    return sorted(
        e for e in folder.iterdir() if e.is_file() and not e.name.startswith(".") and e.suffix.lower() in IMAGE_SUFFIXES
    )


def _unlabelled_test(root: Path) -> dict[str, list[Path]] | None:
    """The images directly in ``root/test``, the test split of unlabelled images; None without the folder."""
    folder = root / TEST_FOLDER
    if not folder.is_dir():
        return None
    if _has_class_folders(folder):
        raise DataError(
            f"{folder} has class folders, but {root} has none (its images have no labels); "
            "put the test images directly in test/, or the training images in class folders"
        )
    images = _images_in(folder)
    if not images:
        raise DataError(f"{folder} holds no images ({_KINDS}); add some or remove the folder")
    return {"": images}


def _class_files(folder: Path, root: Path) -> dict[str, list[Path]]:
    """Each class folder's image files, classes and files sorted; the top-level ``test`` is no class."""
    classes = sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and not (folder == root and entry.name == TEST_FOLDER)
    )
    if not classes and folder == root:
        raise DataError(f"{root} holds no class folders besides test/; put one sub-folder of images per class in it")
    if not classes:
        raise DataError(
            f"{folder} holds no class folders; put the test images in one sub-folder per class, as in {root}"
        )
    files = {name: _images_under(folder / name) for name in classes}
    if not any(files.values()):
        raise DataError(
            f"the class folders in {folder} hold no images ({_KINDS}); put each class's images in its folder"
        )
    for name, paths in files.items():
        if not paths:
            raise DataError(f"class folder {folder / name} holds no images ({_KINDS}); add some or remove the folder")
    return files


def _images_under(folder: Path) -> list[Path]:
    found = []
    for parent, folders, names in os.walk(folder):
        folders[:] = [f for f in folders if not f.startswith(".")]
        found += [Path(parent, n) for n in names if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found)


def _class_names(
    root: Path, train: dict[str, list[Path]], test: dict[str, list[Path]] | None, known: tuple[str, ...] | None
) -> tuple[str, ...]:
    """The sorted class folder names, or the classes a finished run knows (then every folder must be one)."""
    if known is not None:
        unknown = [name for name in {**train, **(test or {})} if name not in known]
        if unknown:
            raise DataError(
                f"{root} has class folders the run was not trained on ({', '.join(unknown[:5])}); "
                f"its classes are {', '.join(known[:20])}: remove the others"
            )
        return tuple(known)
    if len(train) == 1:
        raise DataError(
            f"{root} has one class folder ({next(iter(train))}), and a classifier needs at least 2; "
            "add a folder of images per class"
        )
    extra = [name for name in test or {} if name not in train]
    if extra:
        raise DataError(
            f"{root / TEST_FOLDER} has class folders the training folder lacks ({', '.join(extra[:5])}); "
            f"give test/ only classes of {root}"
        )
    return tuple(train)


class _Header(NamedTuple):
    """What a file's header tells: its size (H, W) and whether it is grayscale, rgb or rgba."""

    size: tuple[int, int]
    color: str
    plain_channels: int | None = None  # a PNG or JPEG that decodes as it is to 1, 3 or 4 channels (None: other)


def _read_header(path: Path) -> _Header:
    """Size and colours from the header; refuses a file that is no image, truncated or undecodable.

    Reads the header and the last bytes only. A file that does not end as its
    format does (or whose BMP pixels are short) is decoded by TensorFlow to be
    sure: trailing data after the end marker is legal.
    """
    try:
        file = open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot open it ({exc.strerror}); make it readable or remove it") from None
    try:
        with file:
            with Image.open(file) as image:
                kind, mode, (width, height), info, tile = image.format, image.mode, image.size, image.info, image.tile
            length = file.seek(0, os.SEEK_END)
            file.seek(max(0, length - 16))
            tail = file.read()
    except UnidentifiedImageError:
        if _starts_as_image(path):
            raise DataError(f"{path}: damaged image header (Pillow cannot read it); replace or delete it") from None
        raise DataError(
            f"{path} is not an image (Pillow cannot tell its format); delete it or move it out of the class folder"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: damaged image header ({exc}); replace or delete it") from None
    if kind not in _DECODED_FORMATS:
        raise DataError(f"{path} is a {kind} image, which TensorFlow does not decode; convert it to PNG or delete it")
    if kind == "BMP" and mode in ("1", "P"):
        raise DataError(
            f"{path} is a palette BMP, which TensorFlow decodes without its palette; save it as a 24-bit BMP or a PNG"
        )
    if not _looks_whole(kind, tail, length, tile, height):
        reason = _decode_failure(str(path))
        if reason is not None:
            raise _undecodable(path, reason)
    alpha = mode in _ALPHA_MODES or ("transparency" in info and kind != "GIF")  # TF decodes a GIF to RGB
    color = "rgba" if alpha else "grayscale" if mode in _GRAY_MODES and kind != "GIF" else "rgb"
    plain = {"L": 1, "RGB": 3, "RGBA": 4}.get(mode) if kind in ("PNG", "JPEG") and "transparency" not in info else None
    return _Header((height, width), color, plain)


def _starts_as_image(path: Path) -> bool:
    """Whether the file begins with a PNG, JPEG, GIF or BMP signature (then it is a damaged image, not another file)."""
    with open(path, "rb") as file:
        start = file.read(8)
    return start.startswith(_SIGNATURES)


def _looks_whole(kind: str, tail: bytes, length: int, tile: list, height: int) -> bool:
    """Whether the file ends where its format says (cheap: most truncated files fail this)."""
    if kind in _ENDINGS:
        return tail.endswith(_ENDINGS[kind])
    if kind == "BMP" and tile and tile[0][0] == "raw":
        offset, stride = tile[0][2], tile[0][3][1]
        return length >= offset + stride * height
    return kind == "WEBP"  # a RIFF container: TensorFlow checks its sizes


def _decode_failure(path: str) -> str | None:
    """TensorFlow's reason for not decoding the file at ``path`` (first line), or None when it decodes."""
    import tensorflow as tf

    try:
        tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except tf.errors.OpError as exc:
        return (tensorflow_reason(exc, first_line=True) or type(exc).__name__).rstrip(".")
    return None


def _undecodable(path: str | Path, reason: str) -> DataError:
    return DataError(f"{path}: damaged image, TensorFlow cannot decode it ({reason}); replace or delete it")


def _common_size(root: Path, headers: dict[Path, _Header]) -> tuple[int, int]:
    """The images' size (H, W) when they all agree; else an error naming two files of different sizes."""
    first, header = next(iter(headers.items()))
    for path, other in headers.items():
        if other.size != header.size:
            raise ConfigError(
                f"the images in {root} differ in size ({first.relative_to(root)} is {_hw(header.size)}, "
                f"{path.relative_to(root)} is {_hw(other.size)}); pass --image-size H,W to resize them all"
            )
    return header.size


def _common_color(headers: dict[Path, _Header]) -> str:
    colors = {header.color for header in headers.values()}
    return "rgba" if "rgba" in colors else "rgb" if "rgb" in colors else "grayscale"


def _check_image_size(image_size: Any) -> None:
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in image_size)
    ):
        raise ConfigError(f"image_size must be two positive sizes (H, W), got {image_size!r}")


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
