"""A folder of class folders of images, streamed from disk: ``--data DIR``.

    DIR/<class>/.../<image>          training images, one sub-folder per class (any depth below it)
    DIR/test/<class>/.../<image>     the test split, when DIR has a ``test`` folder
    DIR/<image>, DIR/test/<image>    images without labels (no class folders): the task is "none"

The layout of ``keras.utils.image_dataset_from_directory``: class names are the
sub-folder names, sorted (label ``i`` is the ``i``-th), files are PNG, JPEG,
BMP or GIF by suffix (``sources.IMAGE_SUFFIXES``, any case), hidden entries
and other files are skipped, and the natural order is class by class, files
sorted by path. Our choice beyond Keras: a top-level folder named exactly
``test`` is no class but the test split, with the same class folders inside
(a class really called "test" must be renamed).

Only paths and labels are held in memory; pixels are decoded per batch, in the
tf.data pipeline (:class:`ImageFiles`). :func:`load` reads each file's header
(Pillow: size, colour mode, format) and last bytes, never its pixels, so a
large folder loads in seconds and a file that is no image, truncated or of a
format TensorFlow cannot decode is refused up front, by name. A payload
damaged in the middle passes that scan; TensorFlow then fails mid-epoch and
:meth:`ImageFiles.check_decodable` names the file.

    image size    --image-size H,W, else the images' own size when they all agree
    colour mode   --color-mode, else what the images are: all grayscale -> grayscale,
                  any with alpha -> rgba, else rgb
    pixels        float32 in [0, 1] (uint8 / 255, as MNIST's), resized bilinearly (as Keras)

Both are the run's ``preprocessing``; evaluate passes it back as
``spec.fitted`` and new images are read exactly so.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradloop.data.sources import COLOR_MODES, UNLABELED, DataSpec, Loaded, file_fingerprint
from gradloop.data.sources.image_folder import (
    TEST_FOLDER,
    _check_image_size,
    _class_files,
    _class_names,
    _common_color,
    _common_size,
    _decode_failure,
    _has_class_folders,
    _Header,
    _images_in,
    _images_under,
    _read_header,
    _undecodable,
    _unlabelled_test,
)
from gradloop.errors import ConfigError, DataError

if TYPE_CHECKING:
    import tensorflow as tf

CHANNELS = {"grayscale": 1, "rgb": 3, "rgba": 4}


class ImageFiles:
    """Examples on disk: ``paths`` (str) and labels ``y`` (int64; None: no labels) in memory, pixels read per batch.

    Each example is ``load_image(path)``: a float32 ``image_size + (channels,)`` array
    in [0, 1]. ``batches(order, b)`` reads the files in ``order`` on tf.data's
    threads, in that order, and its iterator checkpoints as a position alone;
    without labels its batches are ``(images,)``, as ``model.fit(x)`` gives them.
    ``decoded``: a ``.npy`` file holding every example already decoded, row ``i``
    for ``paths[i]`` (:mod:`gradloop.data.sources.image_cache` makes it); batches then
    gather their rows from it instead of decoding files, to the very same pixels.
    """

    def __init__(
        self,
        *,
        paths: np.ndarray,
        y: np.ndarray | None,
        image_size: tuple[int, int],
        color_mode: str,
        uniform: bool = False,
        decoded: str | None = None,
    ) -> None:
        paths, y = np.asarray(paths, dtype=str), None if y is None else np.asarray(y)
        if paths.ndim != 1 or (y is not None and y.shape != paths.shape):
            raise DataError(f"ImageFiles needs one label per path, got {paths.shape} paths and {y.shape} labels")
        _check_image_size(image_size)
        if color_mode not in CHANNELS:
            raise ConfigError(f"color_mode {color_mode!r} is not one of {', '.join(COLOR_MODES)}")
        self.paths, self.y = paths, y
        self.image_size, self.color_mode = (int(image_size[0]), int(image_size[1])), color_mode
        # Every file a PNG or JPEG of this size whose pixels decode to these channels as they are: each
        # image is then decoded as it is and the batch converted to float once (what a 2-core machine
        # spends per image counts: docs/performance.md), with the very same pixels.
        self.uniform = uniform
        self.decoded = decoded

    @property
    def n(self) -> int:
        return len(self.paths)

    @property
    def element_shape(self) -> tuple[int, ...]:
        return (*self.image_size, CHANNELS[self.color_mode])

    @property
    def stored_dtype(self) -> np.dtype:
        """What a decoded copy holds per pixel: the files' own uint8 when they need no conversion, else the
        float32 result."""
        return np.dtype(np.uint8 if self.uniform else np.float32)

    def subset(self, rows: np.ndarray) -> ImageFiles:
        return ImageFiles(
            paths=self.paths[rows],
            y=None if self.y is None else self.y[rows],
            image_size=self.image_size,
            color_mode=self.color_mode,
            uniform=self.uniform,
        )

    def batches(self, order: np.ndarray | None, batch_size: int) -> tf.data.Dataset:
        """The (images, labels) batches of the examples in ``order`` (None: the natural order).

            from_tensor_slices(paths[order] or order, y[order]) -> batch -> map(read the batch) -> prefetch

        A batch is read by decoding its files, or by gathering its rows from
        ``decoded``; both pipelines have the same stages, so an iterator checkpoint
        of one restores into the other. Reading runs in parallel but hands the
        batches on in order. The iterator's checkpoint is symbolic (its position,
        not the images buffered ahead): a restored iterator reads them again.
        """
        import tensorflow as tf

        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        rows = np.arange(self.n) if order is None else np.asarray(order, dtype=np.int64)
        if len(rows) == 0:
            raise DataError("cannot build a pipeline over 0 images; pass a non-empty split")
        sources = rows if self.decoded is not None else self.paths[rows]
        read = self._gather_batch() if self.decoded is not None else self._decode_batch(as_stored=False)
        # Decoding wants the cores; gathering rows is cheap, and more threads would only compete with the step.
        parallel = 1 if self.decoded is not None else tf.data.AUTOTUNE
        if self.y is None:
            sliced = tf.data.Dataset.from_tensor_slices(sources).batch(int(batch_size))
            sliced = sliced.map(lambda batch: (read(batch),), num_parallel_calls=parallel, deterministic=True)
        else:
            sliced = tf.data.Dataset.from_tensor_slices((sources, self.y[rows])).batch(int(batch_size))
            sliced = sliced.map(
                lambda batch, labels: (read(batch), labels), num_parallel_calls=parallel, deterministic=True
            )
        batches = sliced.prefetch(tf.data.AUTOTUNE).apply(
            tf.data.experimental.assert_cardinality(math.ceil(len(rows) / batch_size))
        )
        options = tf.data.Options()
        options.experimental_symbolic_checkpoint = True
        return batches.with_options(options)

    def stored_batches(self, batch_size: int) -> tf.data.Dataset:
        """Every example in the natural order, decoded, as a decoded copy stores them (``stored_dtype``), in batches."""
        import tensorflow as tf

        read = self._decode_batch(as_stored=True)
        return (
            tf.data.Dataset.from_tensor_slices(self.paths)
            .batch(int(batch_size))
            .map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(1)
        )

    def _decode_batch(self, *, as_stored: bool):
        """``paths -> images`` of a batch: float32 in [0, 1], or ``stored_dtype`` (``as_stored``)."""
        import tensorflow as tf

        shape, image_size, color_mode = self.element_shape, self.image_size, self.color_mode
        if self.uniform:

            def decode(path: tf.Tensor) -> tf.Tensor:
                image = tf.io.decode_image(tf.io.read_file(path), channels=shape[-1], expand_animations=False)
                return tf.ensure_shape(image, shape)

            def read(paths: tf.Tensor) -> tf.Tensor:
                images = tf.map_fn(decode, paths, fn_output_signature=tf.TensorSpec(shape, tf.uint8))
                return images if as_stored else _to_float(images)
        else:

            def read(paths: tf.Tensor) -> tf.Tensor:
                return tf.map_fn(
                    lambda path: load_image(path, image_size=image_size, color_mode=color_mode),
                    paths,
                    fn_output_signature=tf.TensorSpec(shape, tf.float32),
                )

        return read

    @functools.cached_property
    def _stored(self) -> np.ndarray:
        """The decoded copy, mapped read-only, once: the operating system keeps what fits of it in memory and
        reads the rest from disk (a mapping per epoch would count its pages in the RSS once per epoch)."""
        return np.load(self.decoded, mmap_mode="r", allow_pickle=False)

    def _gather_batch(self):
        """``rows -> images`` of a batch, gathered from the decoded copy."""
        import tensorflow as tf

        stored, shape, dtype = self._stored, self.element_shape, self.stored_dtype

        def read(rows: tf.Tensor) -> tf.Tensor:
            # stateful=False: the copy never changes, so tf.data may checkpoint and restore the pipeline.
            images = tf.numpy_function(lambda r: stored[r], [rows], tf.as_dtype(dtype), stateful=False)
            images = tf.ensure_shape(images, (None, *shape))
            return _to_float(images) if dtype == np.uint8 else images

        return read

    def check_decodable(self) -> None:
        """Raise a one-line DataError naming the first file TensorFlow cannot decode; return if all decode.

        For a caller whose training stopped on ``tf.errors.InvalidArgumentError``:
        a payload damaged mid-file passes the header scan, and TensorFlow's own
        message names no file. Decodes every file, so it takes about an epoch.
        """
        for path in self.paths:
            reason = _decode_failure(path)
            if reason is not None:
                raise _undecodable(path, reason)


def load_image(path: tf.Tensor, *, image_size: tuple[int, int], color_mode: str) -> tf.Tensor:
    """One image file as float32 ``(H, W, channels)`` in [0, 1] (a GIF: its first frame)."""
    import tensorflow as tf

    image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)  # uint8, 1 to 4 channels
    image = _to_channels(tf.cast(image, tf.float32) / 255.0, CHANNELS[color_mode])
    size = tf.constant(image_size, tf.int32)
    same_size = tf.reduce_all(tf.shape(image)[:2] == size)
    image = tf.cond(same_size, lambda: image, lambda: tf.image.resize(image, size, "bilinear"))
    return tf.ensure_shape(image, (*image_size, CHANNELS[color_mode]))


def _to_float(images: tf.Tensor) -> tf.Tensor:
    """uint8 pixels as float32 in [0, 1], as MNIST's are scaled."""
    import tensorflow as tf

    return tf.cast(images, tf.float32) / 255.0


def _to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """``image`` (gray, gray+alpha, RGB or RGBA, as decoded) with ``channels`` channels: colour to
    gray by luminance, gray to colour by copying, alpha dropped, or added as opaque."""
    import tensorflow as tf

    def convert(decoded: int):
        def branch() -> tf.Tensor:
            color = image[..., :1] if decoded <= 2 else image[..., :3]
            if channels == 1:
                return color if decoded <= 2 else tf.image.rgb_to_grayscale(color)
            rgb = tf.image.grayscale_to_rgb(color) if decoded <= 2 else color
            if channels == 3:
                return rgb
            alpha = image[..., decoded - 1 :] if decoded in (2, 4) else tf.ones_like(image[..., :1])
            return tf.concat([rgb, alpha], axis=-1)

        return branch

    return tf.switch_case(tf.shape(image)[-1] - 1, [convert(c) for c in (1, 2, 3, 4)])


def load(spec: DataSpec) -> Loaded:
    """The folder's training (and test) images as :class:`ImageFiles`: see the module docstring."""
    root = Path(spec.path)
    labelled = _has_class_folders(root) or not _images_in(root)  # images directly in it, and no class folder: none
    if spec.task is not None and not labelled:
        raise ConfigError(
            f"--task {spec.task} says what to predict, but {root} holds images without class folders "
            "(no labels); put them in one sub-folder per class, or drop --task"
        )
    if spec.task not in (None, "classification"):
        raise ConfigError(
            f"{root} is a folder of class folders, so its task is classification; drop --task {spec.task}"
        )
    if spec.color_mode is not None and spec.color_mode not in CHANNELS:
        raise ConfigError(f"--color-mode {spec.color_mode} is not one of {', '.join(COLOR_MODES)}")
    if labelled:
        train = _class_files(root, root)
        test = _class_files(root / TEST_FOLDER, root) if (root / TEST_FOLDER).is_dir() else None
        names = _class_names(root, train, test, spec.class_names)
    else:
        train, test, names = {"": _images_in(root)}, _unlabelled_test(root), None
    headers = {path: _read_header(path) for files in (train, test or {}) for paths in files.values() for path in paths}
    fitted = spec.fitted or {}
    image_size = tuple(fitted.get("image_size") or spec.image_size or _common_size(root, headers))
    color_mode = fitted.get("color_mode") or spec.color_mode or _common_color(headers)
    train_files, test_files = (
        None if files is None else _image_files(files, names, image_size, color_mode, headers)
        for files in (train, test)
    )
    height, width = train_files.image_size
    classes = f"{len(train)} classes" if labelled else "no labels"
    return Loaded(
        train=train_files,
        test=test_files,
        kind="images",
        task="classification" if labelled else UNLABELED,
        class_names=names,
        description=f"{root} (images: {len(headers):,} files, {classes}, {height}x{width} {color_mode})",
        fingerprint=file_fingerprint(list(headers), root),
        preprocessing={"image_size": [height, width], "color_mode": color_mode},
    )


def images_under(folder: str | Path) -> list[Path]:
    """Every image file in ``folder`` or below it, at any depth, sorted: a class folder's search
    (hidden entries and other files skipped), for new images to predict on."""
    return _images_under(Path(folder))


def read_images(paths: list[Path], *, fitted: dict[str, Any]) -> ImageFiles:
    """``paths`` read as a run read its training images (``fitted``: its preprocessing, the image size
    and colour mode), all labelled 0: each file's header checked as :func:`load` checks it, the
    pixels decoded per batch. For new images to predict on."""
    paths = [Path(path) for path in paths]
    headers = {path: _read_header(path) for path in paths}
    return _image_files({"": paths}, ("",), tuple(fitted["image_size"]), fitted["color_mode"], headers)


def _image_files(
    files: dict[str, list[Path]],
    names: tuple[str, ...] | None,
    image_size: tuple[int, ...],
    color_mode: str,
    headers: dict[Path, _Header],
) -> ImageFiles:
    """The files of each class folder, labelled with the class's index in ``names`` (None: unlabelled), in the
    natural order."""
    uniform = all(
        headers[path].size == tuple(image_size) and headers[path].plain_channels == CHANNELS[color_mode]
        for class_paths in files.values()
        for path in class_paths
    )
    paths = [str(path) for class_paths in files.values() for path in class_paths]
    labels = None
    if names is not None:
        index = {name: i for i, name in enumerate(names)}
        labels = np.array([index[name] for name, class_paths in files.items() for _ in class_paths], dtype=np.int64)
    return ImageFiles(
        paths=np.array(paths, dtype=str), y=labels, image_size=image_size, color_mode=color_mode, uniform=uniform
    )
