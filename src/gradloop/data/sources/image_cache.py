"""An image folder decoded once per run: its pixels in one file, read by row in every epoch after.

Decoding an image costs CPU in every epoch, on the same cores the training step
needs (docs/performance.md has the figures). So a run decodes its training and
validation images once, into its own folder, and every batch after gathers its
rows from that copy, mapped read-only: the operating system keeps what fits in
memory and reads the rest from disk, so a folder larger than memory still trains.

    RUN/cache/<split>-<key>.npy    row i: the split's image i, as the pipeline decodes it
                                   (uint8 when the files need no conversion, else float32)

The key hashes the paths, their sizes and modification times and the
preprocessing: a copy that matches is used again (a resume), others in the
folder are deleted. A copy is made only when half the disk's free space holds
it, so a data set near the disk's size keeps streaming from its files; it is
written under a temporary name and renamed, and a disk that fills up meanwhile
leaves the run streaming, said in a note. The batches are the very same pixels
either way, so a resume may read them from the copy or the files and still
end bit-identical. The run deletes the folder when it finishes.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gradloop.data.sources.images import ImageFiles
from gradloop.data.sources.prepared import RunData

SPLITS = ("train", "val")  # what a run reads every epoch; the test split is read once, by evaluate
DECODE_BATCH = 256  # images per decoding call while the copy is made
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def decode_once(data: RunData, folder: Path, *, notify: Callable[[str], None]) -> RunData:
    """``data`` with its image splits (training and validation) read from decoded copies in ``folder``,
    each made now unless a matching one is there; other data is returned as it is."""
    splits = {}
    for split in SPLITS:
        files = getattr(data, split)
        if isinstance(files, ImageFiles) and files.decoded is None and files.n:
            splits[split] = decoded(files, folder, name=split, notify=notify)
    return dataclasses.replace(data, **splits) if splits else data


def decoded(files: ImageFiles, folder: Path, *, name: str, notify: Callable[[str], None]) -> ImageFiles:
    """``files`` reading from ``folder/<name>-<key>.npy`` (see the module docstring), or ``files``
    themselves when the disk has no room for the copy."""
    folder = Path(folder)
    path = folder / f"{name}-{_key(files)}.npy"
    if not _matches(path, files):
        size = files.n * int(np.prod(files.element_shape)) * files.stored_dtype.itemsize
        folder.mkdir(exist_ok=True)
        for old in folder.glob(f"{name}-*.npy"):  # another data set's, or a copy left half-written
            old.unlink()
        free = shutil.disk_usage(folder).free
        if size > free // 2:
            notify(
                f"gradloop: note: the decoded {name} images would take {_mib(size)} and {folder} has "
                f"{_mib(free)} free; they are decoded from their files every epoch instead"
            )
            return files
        try:
            _write(files, path)
        except OSError as exc:
            if exc.errno not in _NO_SPACE:
                raise
            notify(
                f"gradloop: note: the disk filled up while decoding the {name} images into {folder} "
                f"({exc.strerror}); they are decoded from their files every epoch instead"
            )
            return files
    return ImageFiles(
        paths=files.paths,
        y=files.y,
        image_size=files.image_size,
        color_mode=files.color_mode,
        uniform=files.uniform,
        decoded=str(path),
    )


def remove(folder: Path) -> None:
    """Delete the run's decoded copies (a finished run reads its images no more)."""
    shutil.rmtree(folder, ignore_errors=True)


def _write(files: ImageFiles, path: Path) -> None:
    """Decode every image of ``files`` into a ``.npy`` file at ``path``: all of it, or nothing there."""
    import tensorflow as tf

    shape = (files.n, *files.element_shape)
    tmp = path.with_name(f"{path.stem}.partial.npy")
    try:
        with open(tmp, "wb") as file:
            header = {"descr": np.lib.format.dtype_to_descr(files.stored_dtype), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(file, header)
            file.flush()
            # Claim the space first: a disk too small fails here, before any decoding.
            os.posix_fallocate(file.fileno(), file.tell(), int(np.prod(shape)) * files.stored_dtype.itemsize)
            rows = 0
            try:
                for images in files.stored_batches(DECODE_BATCH):
                    file.write(np.ascontiguousarray(images.numpy(), dtype=files.stored_dtype).data)
                    rows += len(images)
            except tf.errors.InvalidArgumentError:
                files.check_decodable()  # a payload damaged mid-file: a DataError naming it
                raise
            if rows != files.n:
                raise OSError(errno.EIO, f"decoded {rows} of {files.n} images")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _matches(path: Path, files: ImageFiles) -> bool:
    """Whether ``path`` is a whole copy of ``files``' images (a file cut short by a crash is not)."""
    try:
        stored = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return False
    return stored.shape == (files.n, *files.element_shape) and stored.dtype == files.stored_dtype


def _key(files: ImageFiles) -> str:
    """A hash of what the copy's pixels depend on: each file (path, size, modification time) and how it is read."""
    digest = hashlib.sha256(repr((files.image_size, files.color_mode, files.uniform)).encode())
    for path in files.paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()[:16]


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"
