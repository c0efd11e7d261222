"""Tests of gradloop.data.sources.image_cache: an image folder decoded once into a run's folder, on real
MNIST digits."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from test_data_images import assert_restores_exactly, collect, digits, load, write_classes  # noqa: F401  (digits: a fixture)
from test_disk_full import mounted_tmpfs

from gradloop.data.sources import DataSpec, image_cache, prepared
from gradloop.errors import DataError


def cached(files, folder, said=None):
    return image_cache.decoded(files, folder, name="train", notify=(said if said is not None else []).append)


@pytest.mark.parametrize("kind", ["uniform", "converted"])
def test_the_copy_gives_the_very_same_batches_as_the_files(tmp_path, digits, kind):
    write_classes(tmp_path / "data", digits, per_class=30)
    if kind == "converted":  # an RGB image among gray ones: each image converted, the copy holds float32
        Image.fromarray(np.full((28, 28, 3), 90, np.uint8)).save(tmp_path / "data" / "one" / "rgb.png")
    files = load(tmp_path / "data").train
    copy = cached(files, tmp_path / "cache")
    assert copy.decoded is not None and files.decoded is None
    assert np.load(copy.decoded, mmap_mode="r").dtype == (np.uint8 if kind == "uniform" else np.float32)
    for order, batch_size in ((None, 7), (np.random.default_rng(1).permutation(files.n), 8), (np.arange(5)[::-1], 32)):
        x, y = collect(files.batches(order, batch_size))
        x_copy, y_copy = collect(copy.batches(order, batch_size))
        assert x.dtype == x_copy.dtype == np.float32 and x.shape == x_copy.shape
        np.testing.assert_array_equal(x, x_copy)
        np.testing.assert_array_equal(y, y_copy)


def test_a_matching_copy_is_used_again_and_a_changed_file_makes_a_new_one(tmp_path, digits):
    written = write_classes(tmp_path / "data", digits, per_class=20)
    files = load(tmp_path / "data").train
    first = cached(files, tmp_path / "cache").decoded
    made = os.stat(first).st_mtime_ns
    assert (
        cached(files, tmp_path / "cache").decoded == first and os.stat(first).st_mtime_ns == made
    )  # not decoded again

    path = next(iter(written))
    Image.fromarray(255 - written[path]).save(path)  # the same size, other pixels: a new modification time
    again = cached(load(tmp_path / "data").train, tmp_path / "cache")
    assert again.decoded != first and not os.path.exists(first)  # the stale copy is deleted
    x, _ = collect(again.batches(None, 64))
    row = list(again.paths).index(str(path))
    np.testing.assert_array_equal(x[row, ..., 0], (255 - written[path]) / np.float32(255))


def test_a_copy_cut_short_is_made_again(tmp_path, digits):
    write_classes(tmp_path / "data", digits, per_class=20)
    files = load(tmp_path / "data").train
    copy = cached(files, tmp_path / "cache").decoded
    with open(copy, "r+b") as file:
        file.truncate(os.path.getsize(copy) - 100)  # as a crash mid-write would leave it without the rename
    again = cached(files, tmp_path / "cache")
    assert again.decoded == copy and os.path.getsize(copy) == 128 + files.n * 28 * 28
    np.testing.assert_array_equal(collect(again.batches(None, 16))[0], collect(files.batches(None, 16))[0])


def test_only_the_runs_splits_of_images_are_decoded(tmp_path, digits):
    write_classes(tmp_path / "data", digits, per_class=20)
    write_classes(tmp_path / "data" / "test", digits, per_class=5, start=100)
    data = prepared.load_run_data(DataSpec(str(tmp_path / "data")), classes=None, val_fraction=0.25, seed=0)
    decoded = image_cache.decode_once(data, tmp_path / "cache", notify=[].append)
    assert decoded.train.decoded and decoded.val.decoded and decoded.test.decoded is None  # evaluate reads test once
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == ["train", "val"]
    image_cache.remove(tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_an_iterator_checkpoint_restores_across_the_copy_and_the_files(tmp_path, digits):
    write_classes(tmp_path / "data", digits, per_class=30)
    files = load(tmp_path / "data").train
    copy = cached(files, tmp_path / "cache")
    order = np.random.default_rng(5).permutation(files.n)
    for saved_from, restored_into in ((files, copy), (copy, files)):  # a resumed process may read the other way
        assert_restores_exactly(saved_from, restored_into, order, tmp_path / "ckpt")


def test_a_damaged_image_found_while_decoding_is_named_and_leaves_no_copy(tmp_path, digits):
    written = write_classes(tmp_path / "data", digits, per_class=20)
    files = load(tmp_path / "data").train
    path = sorted(written)[7]
    data = bytearray(path.read_bytes())
    data[60:90] = b"\x00" * 30  # the header and the end stay whole: the scan passes, decoding fails
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{path}: damaged image"):
        cached(files, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB tmpfs."""
    with mounted_tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


def test_a_copy_larger_than_half_the_free_disk_is_not_made(tmp_path, small_disk, digits):
    write_classes(tmp_path / "data", digits, per_class=300)  # 900 x 784 bytes: 0.67 MiB, more than half of 1 MiB
    files = load(tmp_path / "data").train
    said = []
    assert cached(files, small_disk / "cache", said) is files
    assert len(said) == 1 and "decoded from their files every epoch" in said[0] and "0.7 MiB" in said[0]
    assert list((small_disk / "cache").iterdir()) == []


def test_a_disk_that_fills_while_the_copy_is_made_leaves_the_files_read(tmp_path, small_disk, digits, monkeypatch):
    write_classes(tmp_path / "data", digits, per_class=600)  # 1.35 MiB: no room on the 1 MiB disk
    files = load(tmp_path / "data").train
    free = image_cache.shutil.disk_usage(small_disk).free
    # The disk is real and too small; only its free space is misread, as when another writer fills it meanwhile.
    monkeypatch.setattr(image_cache.shutil, "disk_usage", lambda path: type("usage", (), {"free": 10 * free})())
    said = []
    assert cached(files, small_disk / "cache", said) is files
    assert len(said) == 1 and "the disk filled up" in said[0]
    assert list((small_disk / "cache").iterdir()) == []  # no part of the copy left behind
