"""``gradloop predict RUN_DIR INPUT``: a run's model on new inputs, one CSV row per input.

    inputs  = INPUT read as the run read its training data     the data package's readers, with the
                                                                run's preprocessing from run.json
    outputs = models.run_over(batches of inputs)               compiled; image files decoded per batch
    rows    = id, predicted class, p_<class> for each class    softmax of the logits (classification)
            | id, predicted value(s)                           (regression)
            | id, out_0 .. out_k                               (data without labels: a model's own
                                                                predict_step, its outputs flattened)

INPUT is of the kind the run trained on:

    image folder run     a folder of images (at any depth, sorted) or image files: the run's size and
                         colour mode, pixels scaled to [0, 1]                      id: file (path in INPUT)
    CSV run              a CSV with the feature columns (others, the target too, are left out): the
                         run's categories, fill values and standardisation         id: row (as a spreadsheet numbers it)
    arrays or function   an .npz (x, else x_test, else x_train), a folder of .npy files or an .npy:
                         uint8 scaled as the run's were                            id: index (from 0)
    built-in data set    28x28 images: image files, uint8 arrays or an IDX file   id: file or index

TensorFlow is imported by :func:`predict_run` alone, so that a bad ``--out`` is refused at once.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from gradloop import atomic, cli
from gradloop.app import cpu
from gradloop.commands import run_model
from gradloop.data.builtin import idx
from gradloop.data.builtin.prepare import prepare_images
from gradloop.data.examples import ArrayExamples, Examples
from gradloop.data.sources import IMAGE_SUFFIXES, arrays, images, table
from gradloop.data.sources.prepared import standardize
from gradloop.errors import ConfigError, DataError, RunDirError, listed
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder

BATCH_SIZE = 256
_IDX_NAME = re.compile(r".*-idx[1-9]-ubyte(\.gz)?", re.IGNORECASE)  # an MNIST download: t10k-images-idx3-ubyte.gz
# What a run predicts on, by the kind of data it trained on (a data function's examples come as arrays).
ACCEPTS = {
    "images": ("images",),
    "csv": ("csv",),
    "arrays": ("arrays",),
    "function": ("arrays",),
    "builtin": ("images", "arrays", "idx"),
}
_INPUT_KINDS = {"images": "images", "csv": "a CSV table", "arrays": "arrays", "idx": "an IDX file"}
_RUN_KINDS = {
    "images": "a folder of images",
    "csv": "a CSV table",
    "arrays": "arrays",
    "function": "a data function",
    "builtin": "a built-in data set of 28x28 images",
}
MNIST_IMAGES = {"image_size": [28, 28], "color_mode": "grayscale"}  # how a built-in data set's images are read
_IMAGE_KINDS = "PNG, JPEG, BMP or GIF"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        help="a run's model on new inputs: a CSV row per input with the "
        "predicted class and each class's probability, or the predicted "
        "values",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="of the kind the run trained on: image files or a folder of them, a CSV table, an .npz or .npy of x",
    )
    parser.add_argument("--out", metavar="FILE.csv", help="write the CSV there (default: standard output)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--batch-size", type=cli.integer, default=BATCH_SIZE, help="inputs per batch (default 256)")
    cli.add_trust_code(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    # TensorFlow only once predict_run runs: a bad --out is refused at once
    if args.out is not None:
        check_out(args.out, overwrite=args.overwrite)
    elif args.overwrite:
        raise ConfigError("--overwrite replaces an existing --out file; drop it, or pass --out FILE.csv")
    cpu.import_tensorflow()
    predictions = predict_run(
        args.run_dir, args.inputs, batch_size=args.batch_size, notify=cli.to_stderr, trust_code=args.trust_code
    )
    try:
        write_predictions(predictions, args.out, overwrite=args.overwrite)
    except BrokenPipeError:  # the reader of standard output stopped (| head): what it read is what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush fails no more
        return 0
    if args.out is not None:
        print(f"gradloop: wrote {args.out} ({len(predictions.ids):,} rows)")
    return 0


@dataclass(frozen=True, eq=False)
class Inputs:
    """New examples as the run's model takes them (``flatten``: reshaped to one axis first, for a
    built-in run's MLP), and what names each: ``ids``, in the column ``id_name``."""

    examples: Examples
    ids: list[str]
    id_name: str  # file, row or index
    description: str
    flatten: bool = False
    notes: tuple[str, ...] = ()  # told once the predictions are made: an error before them stays the one line

    @property
    def element_shape(self) -> tuple[int, ...]:
        shape = self.examples.element_shape
        return (int(np.prod(shape)),) if self.flatten else tuple(shape)

    def batches(self, batch_size: int):
        """The examples' ``x`` alone, in order, batch by batch (a tf.data.Dataset)."""
        batches = self.examples.batches(None, batch_size)
        if not self.flatten:
            return batches.map(lambda x, _: x)
        import tensorflow as tf

        return batches.map(lambda x, _: tf.reshape(x, (tf.shape(x)[0], -1)))


@dataclass(frozen=True, eq=False)
class Predictions:
    """One row per input: its id, then the predicted class and ``values``, each class's probability
    (``probabilities`` False: the model's scores, its loss reading neither logits nor probabilities),
    or, for a regression (``classes`` None), the predicted values."""

    id_name: str
    ids: list[str]
    values: np.ndarray  # (n, classes or outputs), float32
    classes: list[str] | None
    predicted: np.ndarray | None = None  # each row's class index (the model's largest output)
    probabilities: bool = True
    named_outputs: bool = False  # a model's own predict_step on data without labels: out_0..out_k

    @property
    def header(self) -> list[str]:
        if self.named_outputs:
            return [self.id_name, *(f"out_{i}" for i in range(self.values.shape[1]))]
        if self.classes is None:
            k = self.values.shape[1]
            return [self.id_name, *(["predicted"] if k == 1 else [f"predicted_{i}" for i in range(k)])]
        prefix = "p_" if self.probabilities else "score_"
        return [self.id_name, "predicted", *(prefix + name for name in self.classes)]

    def rows(self) -> Iterator[list[str]]:
        for i, values in enumerate(self.values):
            cells = [str(v) for v in values]  # a float32's shortest text that reads back as the same float32
            yield [self.ids[i], *([] if self.classes is None else [self.classes[self.predicted[i]]]), *cells]


def predict_run(
    run_dir: str | Path,
    inputs: Sequence[str],
    *,
    batch_size: int = BATCH_SIZE,
    notify: Callable[[str], object] = print,
    trust_code: bool = False,
) -> Predictions:
    """The run's model on ``inputs`` (paths), read as the module docstring says; ``trust_code``: the
    run's own code may run (:func:`gradloop.commands.evaluate.load_model`)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    from gradloop.app import assemble, models
    from gradloop.commands import evaluate as evaluation

    info = run_folder.RunDir.open(run_dir).info
    config = evaluation.run_config(info, run_dir)
    task = info.get("task", "classification")
    new = read_inputs(info, inputs, run_dir=run_dir, flatten=config.model == "mlp")
    rebuilt = trust_code and not run_model.serialized(info, run_dir)
    trained = run_model.trained_input_shape(run_dir, info) if rebuilt else None
    if trained is not None and trained != tuple(new.element_shape):  # before the model is built for them
        raise DataError(
            f"{new.description} holds examples of shape {tuple(new.element_shape)}, but the run's model takes "
            f"{trained}; give examples of the shape it trained on"
        )
    model = evaluation.load_model(run_dir, trust_code=trust_code, input_shape=trained)
    _check_takes(model, new)
    classes = [str(c) for c in info["classes"]] if task == "classification" else None
    if run_model.brings_own_steps(model, info):
        outputs = _own_step_outputs(model, new, run_dir, info, batch_size=batch_size, trust_code=trust_code)
        if task != "classification":  # no class scores: the outputs' values, flattened, as they are
            for note in new.notes:
                notify(note)
            return Predictions(new.id_name, new.ids, outputs, None, named_outputs=task != "regression")
    else:
        models.check_model_fits(
            model, input_shape=new.element_shape, n_outputs=info.get("n_outputs") or len(classes), task=task
        )
        outputs = models.run_over(model, new.batches(batch_size))[1].astype(np.float32).reshape(len(new.ids), -1)
    loss = assemble.build_loss(config, task, model)  # as training chose it: does the model give logits?
    for note in new.notes:
        notify(note)
    if classes is None:
        return Predictions(new.id_name, new.ids, outputs, None)
    from_logits = loss.get_config().get("from_logits")
    values = softmax(outputs) if from_logits else outputs
    return Predictions(
        new.id_name, new.ids, values, classes, predicted=outputs.argmax(axis=1), probabilities=from_logits is not None
    )


def _own_step_outputs(
    model: Any, inputs: Inputs, run_dir: str | Path, info: dict[str, Any], *, batch_size: int, trust_code: bool
) -> np.ndarray:
    """The model's ``predict_step`` (its ``call`` unless it overrides it) over the inputs, through
    :class:`gradloop.loop.keras_steps.ModelStepTrainer`, as ``model.predict``: each output flattened
    to one row per input, several outputs side by side."""
    from gradloop.loop import keras_steps

    model = run_model.compiled(model, run_dir, info, trust_code=trust_code)  # built for the shape it trained on
    batches = inputs.batches(batch_size).map(lambda x: (x,))  # (x,): the batch structure model.predict gives
    try:
        predicted = keras_steps.ModelStepTrainer(model).predict(batches)
    except NotImplementedError:  # Keras' Model.call: the model defines no forward pass
        raise ConfigError(
            f"{type(model).__name__} defines neither call() nor predict_step(): it has no output to predict; "
            "give it a call() (a GAN's generator, say) or a predict_step"
        ) from None
    import tensorflow as tf

    pieces = [np.asarray(o, dtype=np.float32).reshape(len(inputs.ids), -1) for o in tf.nest.flatten(predicted)]
    return np.concatenate(pieces, axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Each row's probabilities, computed in float64 (shifted by its largest logit, so nothing overflows)."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------- reading the inputs


def input_kind(paths: Sequence[str]) -> str:
    """What ``paths`` hold (images, csv, arrays or idx), told from the paths (and a folder's listing)."""
    for path in paths:
        if not Path(path).exists():
            raise DataError(
                f"{path}: no such file or folder; pass image files or a folder of them, a CSV table, "
                "or an .npz or .npy of x"
            )
    if len(paths) > 1:
        other = next((p for p in paths if not _is_image_file(Path(p))), None)
        if other is not None:
            raise ConfigError(
                f"{other} is no image file ({_IMAGE_KINDS}); pass several image files, or one folder or file"
            )
        return "images"
    path = Path(paths[0])
    if path.is_dir():
        return "arrays" if any(path.glob("*.npy")) else "images"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".npz", ".npy"):
        return "arrays"
    if suffix in IMAGE_SUFFIXES:
        return "images"
    if _IDX_NAME.fullmatch(path.name):
        return "idx"
    raise DataError(
        f"{path}: a {suffix or 'suffix-less'} file is no input gradloop predicts on; pass image files "
        f"({_IMAGE_KINDS}) or a folder of them, a .csv, or an .npz or .npy of x"
    )


def read_inputs(info: dict[str, Any], paths: Sequence[str], *, run_dir: str | Path, flatten: bool) -> Inputs:
    """``paths`` read as the run (``info``: its run.json) read its training data; ``flatten``: the
    run's model is an MLP (a built-in run's MLP takes flat images)."""
    recorded = info.get("data") or {}
    run_kind = recorded.get("kind") or ("builtin" if info["config"].get("data") is None else None)
    if run_kind not in ACCEPTS:
        raise RunDirError(
            f"{Path(run_dir) / run_files.RUN_JSON} records no kind of data the run trained on; "
            "the run directory is damaged"
        )
    kind = input_kind(paths)
    if kind not in ACCEPTS[run_kind]:
        wanted = " or ".join(_INPUT_KINDS[k] for k in ACCEPTS[run_kind])
        raise ConfigError(
            f"run {run_dir} trained on {_RUN_KINDS[run_kind]}, and {paths[0]} holds {_INPUT_KINDS[kind]}; "
            f"pass {wanted}, of the kind it trained on"
        )
    fitted = recorded.get("preprocessing") or {}
    if kind == "images":
        return _image_inputs(
            paths, fitted if run_kind == "images" else MNIST_IMAGES, flatten=run_kind == "builtin" and flatten
        )
    if kind == "csv":
        return _table_inputs(paths[0], fitted)
    if kind == "idx":
        x, where = idx.read_idx(paths[0]), str(paths[0])
    else:
        x, where = arrays.read_x(paths[0])
    if run_kind == "builtin":
        x = _mnist_pixels(x, where, flatten)
    else:
        x = arrays.features(x, fitted, where)
    return Inputs(ArrayExamples(x, np.zeros(len(x), np.int64)), [str(i) for i in range(len(x))], "index", where)


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def _image_inputs(paths: Sequence[str], fitted: dict[str, Any], *, flatten: bool) -> Inputs:
    """A folder's images (ids: their paths in it) or image files (ids: their paths as given)."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        folder = Path(paths[0])
        files = images.images_under(folder)
        if not files:
            raise DataError(
                f"{folder} holds no images ({_IMAGE_KINDS}) at any depth; pass a folder of images, or image files"
            )
        ids = [file.relative_to(folder).as_posix() for file in files]
    else:
        files, ids = [Path(p) for p in paths], [str(p) for p in paths]
    return Inputs(images.read_images(files, fitted=fitted), ids, "file", str(paths[0]), flatten=flatten)


def _table_inputs(path: str, fitted: dict[str, Any]) -> Inputs:
    x, rows, left_out = table.read_features(path, fitted)
    named = listed([repr(c) for c in left_out], 10)
    notes = (
        (
            f"gradloop: note: {path}: {named} {'is no feature' if len(left_out) == 1 else 'are no features'} "
            "of the run; left out",
        )
        if left_out
        else ()
    )
    examples = ArrayExamples(x, np.zeros(len(x), np.int64))
    if isinstance(fitted.get("standardize"), dict):
        examples = standardize(examples, fitted["standardize"])
    return Inputs(examples, [str(r) for r in rows], "row", str(path), notes=notes)


def _mnist_pixels(x: np.ndarray, where: str, flatten: bool) -> np.ndarray:
    """A built-in data set's images as its runs take them: 28x28 uint8 pixels, scaled, flat for an MLP."""
    if x.dtype != np.uint8 or x.shape[1:] not in ((28, 28), (28, 28, 1), (784,)):
        raise DataError(
            f"{where} holds {x.dtype} examples of shape {x.shape[1:]}, and the run trained on 28x28 uint8 "
            "images; give those (shape (N, 28, 28))"
        )
    return prepare_images(x.reshape(len(x), 28, 28), flatten=flatten)


def _check_takes(model: Any, inputs: Inputs) -> None:
    """Refuse examples of another shape than the model's input, naming the file (a model whose input
    shape is unknown is checked by calling it: ``models.check_model_fits``)."""
    try:
        taken = tuple(model.inputs[0].shape)[1:]
    except (AttributeError, ValueError, IndexError, TypeError):
        return
    shape = inputs.element_shape
    if len(taken) != len(shape) or any(a is not None and a != b for a, b in zip(taken, shape)):
        raise DataError(
            f"{inputs.description} holds examples of shape {shape}, but the run's model takes {taken}; "
            "give examples of the shape it trained on"
        )


# --------------------------------------------------------------------- writing the rows


def check_out(out: str | Path, *, overwrite: bool) -> Path:
    """The file ``--out`` names, refused before any work when it cannot be written or would replace
    an earlier file without ``overwrite``."""
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out {out} is a folder; pass a file name, e.g. {path / 'predictions.csv'}")
    if not path.parent.is_dir():
        state = "is not a folder" if path.parent.exists() else "does not exist"
        raise ConfigError(f"--out {out}: {path.parent} {state}; create the folder or pass another --out")
    if path.exists() and not overwrite:
        raise ConfigError(f"--out {out} already exists; pass --overwrite to replace it, or another --out")
    return path


def write_csv(predictions: Predictions, file: TextIO) -> None:
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow(predictions.header)
    writer.writerows(predictions.rows())


def write_predictions(predictions: Predictions, out: str | Path | None, *, overwrite: bool = False) -> None:
    """The CSV to standard output, or to ``out``: whole or not at all, checked again first (the file
    may have appeared while the model ran)."""
    if out is None:
        write_csv(predictions, sys.stdout)
        return
    path = check_out(out, overwrite=overwrite)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as file:
            write_csv(predictions, file)

    atomic.write_atomically(path, write)
