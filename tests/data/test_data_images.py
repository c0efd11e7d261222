"""Tests of gradloop.data.sources.images: class folders of real MNIST digits written here as PNG (and JPEG,
BMP, GIF)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from gradloop import data
from gradloop.data import examples, sources
from gradloop.data.sources import DataSpec, images, prepared
from gradloop.errors import ConfigError, DataError

NAMES = ("zero", "one", "two", "three")  # sorted: one, three, two, zero


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    raw = data.load_mnist_sample()  # sorted by label, 500 each
    return raw.x_train, raw.y_train


def write_classes(root, digits, *, per_class, classes=NAMES[:3], start=0, suffix=".png"):
    """``per_class`` images of digit ``d`` as ``root/NAMES[d]/NNNN.png``; returns {path: uint8 pixels}."""
    x, y = digits
    written = {}
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        rows = np.flatnonzero(y == NAMES.index(name))[start : start + per_class]
        for i, row in enumerate(rows):
            path = folder / f"{start + i:04d}{suffix}"
            Image.fromarray(x[row]).save(path)
            written[path] = x[row]
    return written


def load(root, **options) -> sources.Loaded:
    return images.load(DataSpec(str(root), **options))


def collect(dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
    return np.concatenate(xs), np.concatenate(ys)


def pixels_of(paths, written) -> np.ndarray:
    """The images at ``paths`` as the pipeline should give them: uint8 / 255, one channel."""
    return np.stack([written[Path(p)] for p in paths])[..., None].astype(np.float32) / 255


# ------------------------------------------------------------------- reading


def test_batches_are_the_pixels_over_255_in_the_order_asked(tmp_path, digits):
    written = write_classes(tmp_path, digits, per_class=20)
    loaded = load(tmp_path)
    files = loaded.train
    order = np.random.default_rng(3).permutation(files.n)
    dataset = files.batches(order, 7)
    assert dataset.cardinality().numpy() == 9  # ceil(60 / 7)
    x, y = collect(dataset)
    np.testing.assert_array_equal(x, pixels_of(files.paths[order], written))  # exact: PNG is lossless
    np.testing.assert_array_equal(y, files.y[order])
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (60, 28, 28, 1)


def test_natural_order_is_class_by_class_folders_sorted_files_sorted(tmp_path, digits):
    written = write_classes(tmp_path, digits, per_class=5)
    loaded = load(tmp_path)
    assert loaded.class_names == ("one", "two", "zero")
    assert [p.rsplit("/", 2)[1] for p in loaded.train.paths] == ["one"] * 5 + ["two"] * 5 + ["zero"] * 5
    assert list(loaded.train.paths) == sorted(loaded.train.paths)
    np.testing.assert_array_equal(loaded.train.y, np.repeat([0, 1, 2], 5))
    x, y = collect(loaded.train.batches(None, 4))
    np.testing.assert_array_equal(x, pixels_of(loaded.train.paths, written))
    np.testing.assert_array_equal(y, np.repeat([0, 1, 2], 5))


def test_epochs_read_each_epochs_own_permutation(tmp_path, digits):
    written = write_classes(tmp_path, digits, per_class=6)
    files = load(tmp_path).train
    epoch_data = examples.epochs(files, batch_size=5, seed=11)
    for epoch in (0, 3):
        order = np.random.default_rng((11, epoch)).permutation(files.n)
        x, y = collect(epoch_data(epoch))
        np.testing.assert_array_equal(x, pixels_of(files.paths[order], written))
        np.testing.assert_array_equal(y, files.y[order])


def test_test_folder_is_the_test_split_labelled_with_the_training_classes(tmp_path, digits):
    write_classes(tmp_path, digits, per_class=4)
    test_written = write_classes(tmp_path / "test", digits, per_class=3, classes=("two", "zero"), start=100)
    loaded = load(tmp_path)
    assert loaded.class_names == ("one", "two", "zero")  # "test" is no class
    assert loaded.train.n == 12 and loaded.test.n == 6
    np.testing.assert_array_equal(loaded.test.y, [1, 1, 1, 2, 2, 2])
    x, _ = collect(loaded.test.batches(None, 4))
    np.testing.assert_array_equal(x, pixels_of(loaded.test.paths, test_written))
    assert loaded.fingerprint["files"] == 18


def test_description_preprocessing_and_fingerprint(tmp_path, digits):
    write_classes(tmp_path, digits, per_class=4)
    loaded = load(tmp_path)
    assert loaded.kind == "images" and loaded.task == "classification"
    assert loaded.description == f"{tmp_path} (images: 12 files, 3 classes, 28x28 grayscale)"
    assert loaded.preprocessing == {"image_size": [28, 28], "color_mode": "grayscale"}
    before = loaded.fingerprint
    assert before == sources.file_fingerprint(sorted(tmp_path.rglob("*.png")), tmp_path)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "one" / "extra.png")
    assert load(tmp_path).fingerprint["files"] == 13 and load(tmp_path).fingerprint["sha256"] != before["sha256"]


def test_a_file_rewritten_at_the_same_size_changes_the_fingerprint(tmp_path, digits):
    """Sizes alone miss an image replaced by another of the same size: its modification time tells."""
    write_classes(tmp_path, digits, per_class=2)
    before = load(tmp_path).fingerprint
    file = sorted(tmp_path.rglob("*.png"))[0]
    stat = file.stat()
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same name, same size, rewritten later
    after = load(tmp_path).fingerprint
    assert after["sha256"] != before["sha256"] and (after["files"], after["bytes"]) == (
        before["files"],
        before["bytes"],
    )


@pytest.mark.parametrize(("color_mode", "channels"), [("grayscale", 1), ("rgb", 3), ("rgba", 4)])
@pytest.mark.parametrize("image_size", [None, (14, 20)])
def test_image_size_and_color_mode_give_the_shape_asked(tmp_path, digits, color_mode, channels, image_size):
    written = write_classes(tmp_path, digits, per_class=2)
    files = load(tmp_path, color_mode=color_mode, image_size=image_size).train
    height, width = image_size or (28, 28)
    assert files.element_shape == (height, width, channels)
    x, _ = collect(files.batches(None, 4))
    assert x.shape == (6, height, width, channels)
    gray = pixels_of(files.paths, written)
    if image_size:
        gray = tf.image.resize(gray, image_size, "bilinear").numpy()  # as Keras resizes
    for c in range(min(channels, 3)):
        np.testing.assert_allclose(x[..., c : c + 1], gray, atol=1e-6)
    if channels == 4:
        np.testing.assert_array_equal(x[..., 3], 1.0)  # gray has no alpha: opaque


def test_formats_decode_to_the_same_pixels(tmp_path, digits):
    x = digits[0][:2]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    Image.fromarray(x[0]).save(tmp_path / "a" / "img.bmp")
    Image.fromarray(x[0]).save(tmp_path / "a" / "img.gif")
    Image.fromarray(x[0]).save(tmp_path / "b" / "img.jpg", quality=95)
    Image.fromarray(x[1]).save(tmp_path / "b" / "img.PNG")  # suffixes in any case
    loaded = load(tmp_path, color_mode="rgb")  # a GIF decodes to RGB
    got, _ = collect(loaded.train.batches(None, 4))
    assert [p.rsplit(".", 1)[1] for p in loaded.train.paths] == ["bmp", "gif", "PNG", "jpg"]  # sorted by path
    expect = np.repeat(np.stack([x[0], x[0], x[1], x[0]]).astype(np.float32)[..., None] / 255, 3, axis=-1)
    np.testing.assert_array_equal(got[:3], expect[:3])  # lossless
    np.testing.assert_allclose(got[3], expect[3], atol=0.1)  # JPEG is lossy


def test_color_conversions(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    Image.fromarray(rgba).save(tmp_path / "a" / "rgba.png")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "b" / "rgb.png")
    scaled = rgba.astype(np.float32) / 255
    as_rgba, _ = collect(load(tmp_path).train.batches(None, 2))  # any alpha: rgba by default
    np.testing.assert_array_equal(as_rgba[0], scaled)
    np.testing.assert_array_equal(as_rgba[1], np.concatenate([scaled[..., :3], np.ones((6, 5, 1), np.float32)], -1))
    as_rgb, _ = collect(load(tmp_path, color_mode="rgb").train.batches(None, 2))
    np.testing.assert_array_equal(as_rgb, np.stack([scaled[..., :3]] * 2))  # alpha dropped
    as_gray, _ = collect(load(tmp_path, color_mode="grayscale").train.batches(None, 2))
    np.testing.assert_allclose(as_gray[0], scaled[..., :3] @ np.array([[0.2989], [0.5870], [0.1140]]), atol=1e-6)


@pytest.mark.parametrize(
    ("extra", "color_mode"),
    [
        ({}, "grayscale"),
        ({"rgb.png": "RGB"}, "rgb"),
        ({"pic.gif": "L"}, "rgb"),  # TensorFlow decodes every GIF to RGB
        ({"rgb.jpg": "RGB", "la.png": "LA"}, "rgba"),  # any alpha
        ({"rgba.png": "RGBA"}, "rgba"),
    ],
    ids=["gray", "one rgb", "gif", "gray with alpha", "rgba"],
)
def test_defaults_are_read_from_the_headers(tmp_path, digits, extra, color_mode):
    write_classes(tmp_path, digits, per_class=2)
    for name, mode in extra.items():
        Image.new(mode, (28, 28)).save(tmp_path / "one" / name)
    loaded = load(tmp_path)
    assert loaded.preprocessing == {"image_size": [28, 28], "color_mode": color_mode}
    assert loaded.train.element_shape == (28, 28, images.CHANNELS[color_mode])


def test_images_of_different_sizes_need_image_size(tmp_path, digits):
    write_classes(tmp_path, digits, per_class=2)
    Image.new("L", (30, 20)).save(tmp_path / "two" / "wide.png")
    with pytest.raises(ConfigError) as error:
        load(tmp_path)
    message = str(error.value)
    assert "one/0000.png is 28x28" in message and "two/wide.png is 20x30" in message and "--image-size H,W" in message
    files = load(tmp_path, image_size=(24, 24)).train
    x, _ = collect(files.batches(None, 8))
    assert x.shape == (7, 24, 24, 1)


def test_fitted_preprocessing_and_a_runs_class_names_are_followed(tmp_path, digits):
    write_classes(tmp_path, digits, per_class=2, classes=("two", "zero"))
    spec = DataSpec(
        str(tmp_path),
        image_size=(7, 7),
        color_mode="rgba",  # the run's fitted values win
        fitted={"image_size": [14, 14], "color_mode": "rgb"},
        class_names=("one", "three", "two", "zero"),
    )
    loaded = images.load(spec)
    assert loaded.class_names == ("one", "three", "two", "zero")
    np.testing.assert_array_equal(loaded.train.y, [2, 2, 3, 3])
    assert loaded.preprocessing == {"image_size": [14, 14], "color_mode": "rgb"}
    assert collect(loaded.train.batches(None, 4))[0].shape == (4, 14, 14, 3)


# -------------------------------------------------------------------- errors


def add_image(path, mode="L", size=(28, 28), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path, format=fmt)


def truncated(path, fmt):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(path, format=fmt)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def only_one_class(root):
    for name in ("two", "zero"):
        for path in (root / name).iterdir():
            path.unlink()
        (root / name).rmdir()


def only_test_folder(root):
    classes = list(root.iterdir())
    (root / "test").mkdir()
    for folder in classes:
        folder.rename(root / "test" / folder.name)


BAD_FOLDERS = [  # make a good folder bad; the error and what its message says
    pytest.param(lambda r: (r / "four").mkdir(), DataError, r"class folder \S+/four holds no images", id="empty class"),
    pytest.param(only_one_class, DataError, r"one class folder \(one\).*at least 2", id="one class"),
    pytest.param(
        lambda r: [p.rename(p.with_suffix(".txt")) for p in r.rglob("*.png")],
        DataError,
        r"hold no images \(PNG, JPEG, BMP or GIF\)",
        id="no images",
    ),
    pytest.param(only_test_folder, DataError, "holds no class folders besides test/", id="only test/"),
    pytest.param(
        lambda r: add_image(r / "test" / "x.png"),
        DataError,
        "test holds no class folders; put the test images in one sub-folder per class",
        id="test/ flat",
    ),
    pytest.param(
        lambda r: add_image(r / "test" / "seven" / "a.png"),
        DataError,
        r"test has class folders the training folder lacks \(seven\)",
        id="test/ extra class",
    ),
    pytest.param(
        lambda r: (r / "one" / "notes.png").write_text("not an image\n"),
        DataError,
        "one/notes.png is not an image",
        id="text named .png",
    ),
    pytest.param(
        lambda r: (r / "one" / "x.png").write_bytes((r / "one" / "0000.png").read_bytes()[:20]),
        DataError,
        "one/x.png: damaged image header",
        id="header cut",
    ),
    *(
        pytest.param(
            lambda r, f=fmt, s=suffix: truncated(r / "one" / f"x{s}", f),
            DataError,
            rf"one/x{suffix}: damaged image, TensorFlow cannot decode it \(.+\); replace or delete it",
            id=f"truncated {fmt}",
        )
        for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg"), ("GIF", ".gif"), ("BMP", ".bmp"))
    ),
    pytest.param(
        lambda r: add_image(r / "one" / "x.jpg", fmt="TIFF"),
        DataError,
        "x.jpg is a TIFF image, which TensorFlow does not decode",
        id="tiff named .jpg",
    ),
    pytest.param(
        lambda r: add_image(r / "one" / "p.bmp", mode="P"), DataError, "p.bmp is a palette BMP", id="palette bmp"
    ),
    pytest.param(
        lambda r: add_image(r / "one" / "z.png", size=(9, 9)),
        ConfigError,
        r"differ in size .*9x9\); pass --image-size H,W",
        id="sizes differ",
    ),
]


@pytest.mark.parametrize(("spoil", "error_type", "message"), BAD_FOLDERS)
def test_bad_folders_fail_with_one_line(tmp_path, digits, spoil, error_type, message):
    write_classes(tmp_path, digits, per_class=2)
    spoil(tmp_path)
    with pytest.raises(error_type, match=message) as error:
        load(tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"class_names": ("one", "two")}, r"class folders the run was not trained on \(zero\)"),
        ({"color_mode": "cmyk"}, "--color-mode cmyk is not one of grayscale, rgb, rgba"),
        ({"task": "regression"}, "its task is classification; drop --task regression"),
    ],
    ids=["unknown class", "color mode", "regression"],
)
def test_bad_options_fail_with_one_line(tmp_path, digits, options, message):
    write_classes(tmp_path, digits, per_class=2)
    with pytest.raises((DataError, ConfigError), match=message) as error:
        load(tmp_path, **options)
    assert "\n" not in str(error.value)


def test_trailing_bytes_after_the_end_marker_are_no_damage(tmp_path, digits):
    written = write_classes(tmp_path, digits, per_class=2)
    path = tmp_path / "one" / "0000.png"
    path.write_bytes(path.read_bytes() + b"appended by some tool" * 50)
    x, _ = collect(load(tmp_path).train.batches(None, 6))
    np.testing.assert_array_equal(x[0, ..., 0], written[path] / np.float32(255))


def test_a_payload_damaged_mid_file_is_named_by_check_decodable(tmp_path, digits):
    write_classes(tmp_path, digits, per_class=3)
    path = tmp_path / "two" / "0001.png"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 8] = bytes(8)  # the header and the end are intact
    path.write_bytes(bytes(raw))
    files = load(tmp_path).train  # the scan passes it
    with pytest.raises(tf.errors.InvalidArgumentError):
        collect(files.batches(None, 4))
    with pytest.raises(DataError, match=r"two/0001.png: damaged image, TensorFlow cannot decode it") as error:
        files.check_decodable()
    assert "\n" not in str(error.value)
    files.subset(np.array([0, 1, 2])).check_decodable()  # the others decode


# ----------------------------------------------------------- as a run uses it


def test_load_run_data_selects_classes_and_splits_image_files(tmp_path, digits):
    written = write_classes(tmp_path, digits, per_class=25, classes=NAMES)
    write_classes(tmp_path / "test", digits, per_class=5, classes=NAMES, start=200)
    run = prepared.load_run_data(DataSpec(str(tmp_path)), classes=None, val_fraction=0.2, seed=0)
    assert run.class_names == ("one", "three", "two", "zero") and run.kind == "images"
    assert (run.train.n, run.val.n, run.test.n) == (80, 20, 20)
    assert isinstance(run.train, images.ImageFiles) and isinstance(run.val, images.ImageFiles)
    assert not set(run.train.paths) & set(run.val.paths)
    x, y = collect(run.val.batches(None, 8))
    np.testing.assert_array_equal(x, pixels_of(run.val.paths, written))
    np.testing.assert_array_equal(y, [run.class_names.index(p.rsplit("/", 2)[1]) for p in run.val.paths])

    chosen = prepared.load_run_data(DataSpec(str(tmp_path)), classes=["zero", "one"], val_fraction=0.2, seed=0)
    assert chosen.class_names == ("zero", "one") and (chosen.train.n, chosen.val.n, chosen.test.n) == (40, 10, 10)
    for split in (chosen.train, chosen.val, chosen.test):
        np.testing.assert_array_equal(split.y, [chosen.class_names.index(p.rsplit("/", 2)[1]) for p in split.paths])
    _, y = collect(chosen.train.batches(None, 16))
    np.testing.assert_array_equal(y, chosen.train.y)  # the assigned labels are the ones batched


def assert_restores_exactly(saved_from, restored_into, order, folder: Path) -> None:
    """An iterator of ``saved_from`` checkpointed after 4 of its 12 batches of 8, restored into a new
    pipeline of ``restored_into`` (as a resumed process builds), gives the very same 8 batches after."""
    iterator = iter(saved_from.batches(order, 8))
    for _ in range(4):
        next(iterator)
    saved = tf.train.Checkpoint(iterator=iterator).write(str(folder / "it"))
    rest = [(x.numpy(), y.numpy()) for x, y in iterator]
    restored = iter(restored_into.batches(order, 8))
    tf.train.Checkpoint(iterator=restored).read(saved).assert_consumed()
    again = [(x.numpy(), y.numpy()) for x, y in restored]
    assert len(again) == len(rest) == 12 - 4
    for (x0, y0), (x1, y1) in zip(rest, again):
        np.testing.assert_array_equal(x0, x1)
        np.testing.assert_array_equal(y0, y1)


def test_a_restored_iterator_checkpoint_continues_exactly(tmp_path, digits):
    write_classes(tmp_path, digits, per_class=30)
    files = load(tmp_path).train
    assert_restores_exactly(files, files, np.random.default_rng(5).permutation(files.n), tmp_path / "ckpt")
    size = sum(f.stat().st_size for f in (tmp_path / "ckpt").iterdir())
    assert size < 8 * 28 * 28 * 4  # a position, not decoded images buffered ahead


def test_image_files_hold_paths_and_read_pixels_only_when_iterated(tmp_path, digits):
    written = write_classes(tmp_path, digits, per_class=500, classes=NAMES)  # 2,000 images
    files = load(tmp_path).train
    assert (
        set(vars(files)) == {"paths", "y", "image_size", "color_mode", "uniform", "decoded"} and files.decoded is None
    )
    assert files.paths.dtype.kind == "U" and files.y.dtype == np.int64
    dataset = files.batches(None, 100)
    first = Path(files.paths[0])
    Image.fromarray(255 - written[first]).save(first)  # changed after the dataset was built
    x, _ = next(iter(dataset))
    np.testing.assert_array_equal(x[0, ..., 0], (255 - written[first]) / np.float32(255))


def test_uniform_folders_decode_a_batch_at_once_to_the_very_same_pixels(tmp_path, digits):
    write_classes(tmp_path, digits, per_class=40, classes=NAMES)
    files = load(tmp_path).train
    assert files.uniform  # all 28x28 grayscale PNGs
    general = images.ImageFiles(paths=files.paths, y=files.y, image_size=files.image_size, color_mode=files.color_mode)
    order = np.random.default_rng(0).permutation(files.n)
    for (x, y), (x_general, y_general) in zip(files.batches(order, 32), general.batches(order, 32)):
        np.testing.assert_array_equal(x.numpy(), x_general.numpy())
        np.testing.assert_array_equal(y.numpy(), y_general.numpy())
    Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(tmp_path / NAMES[0] / "colour.png")
    assert not load(tmp_path).train.uniform  # an RGB file among gray ones: converted image by image


def test_image_files_checks_its_arguments():
    with pytest.raises(DataError, match="one label per path"):
        images.ImageFiles(paths=np.array(["a", "b"]), y=np.zeros(3, np.int64), image_size=(2, 2), color_mode="rgb")
    with pytest.raises(ConfigError, match="image_size must be two positive sizes"):
        images.ImageFiles(paths=np.array(["a"]), y=np.zeros(1, np.int64), image_size=(0, 2), color_mode="rgb")
    files = images.ImageFiles(paths=np.array(["a"]), y=np.zeros(1, np.int64), image_size=(2, 2), color_mode="rgb")
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        files.batches(None, 0)
    with pytest.raises(DataError, match="0 images"):
        files.batches(np.array([], np.int64), 4)
