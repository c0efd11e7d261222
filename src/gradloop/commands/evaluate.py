"""``gradloop evaluate``: a saved run's model on a chosen data split.

Reports loss (mean over every sample), accuracy, per-class accuracy and the
confusion matrix (rows: true class, columns: predicted class), with classes
in the run's own order so that label ``i`` means ``classes[i]``. A model that
brings its own steps (a GAN, an autoencoder on data without labels) is scored
by its own ``test_step`` (Keras' default one on labelled data), and the report
is what it logs (:func:`own_step_scores`); the model is loaded by
:func:`gradloop.commands.run_model.load_model`.

The parser imports this module: Keras, scikit-learn and the model builders are imported by the
functions that use them, after ``run`` has imported TensorFlow (:func:`gradloop.app.cpu.import_tensorflow`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradloop import cli, data
from gradloop.app import cpu
from gradloop.app.config import TrainConfig, build_config
from gradloop.commands import run_model
from gradloop.commands.run_model import load_model  # the one loader: predict, report and export call it here
from gradloop.data import sources
from gradloop.data.builtin.splits import SPLITS
from gradloop.data.examples import Examples
from gradloop.data.sources import UNLABELED
from gradloop.errors import ConfigError, DataError, RunDirError
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder
from gradloop.run import schema as run_schema

if TYPE_CHECKING:
    import keras


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help="evaluate a run's model on a data split")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--dataset", help="data set to evaluate on (default: the run's)")
    parser.add_argument("--data-dir", metavar="DIR", help="folder of IDX files or an mnist.npz")
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="other data of the kind the run trained on (--data): all of it, or its test split with --split test",
    )
    parser.add_argument("--split", choices=SPLITS, default="test", help="default test")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    cli.add_trust_code(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    cpu.import_tensorflow()
    result = evaluate_run(
        args.run_dir,
        dataset=args.dataset,
        data_dir=args.data_dir,
        data_path=args.data,
        split=args.split,
        notify=cli.to_stderr,
        trust_code=args.trust_code,
    )
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


class NoTestStep(ConfigError):
    """The model has no test_step of its own and the data no labels for Keras' default one: nothing to
    evaluate (``gradloop report`` says so on the page, in place of the evaluation)."""


def run_config(info: dict[str, Any], run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The run's TrainConfig; a config that no longer validates means a damaged or foreign run.json."""
    try:
        config = build_config(info["config"])
    except ConfigError as exc:
        raise RunDirError(
            f"{Path(run_dir) / run_files.RUN_JSON} holds an invalid config ({exc}); the run directory is damaged"
        ) from None
    return dataclasses.replace(config, **overrides)


def _check_model_fits(model: keras.Model, config: TrainConfig, run_dir: str | Path) -> bool:
    """Whether the model takes flat images; a model that does not match run.json is refused."""
    try:
        inputs, outputs = model.input_shape, model.output_shape
    except (AttributeError, ValueError):  # a subclassed model that was saved unbuilt
        inputs = outputs = "unknown shapes"
    flat, image = (None, math.prod(data.IMAGE_SHAPE)), (None, *data.IMAGE_SHAPE, 1)
    if inputs not in (flat, image) or outputs != (None, len(config.classes)):
        raise RunDirError(
            f"{Path(run_dir) / run_files.MODEL} maps {inputs} to {outputs}, but run.json describes "
            f"{len(config.classes)} "
            f"classes of 28x28 images; the model and run.json come from different runs"
        )
    return inputs == flat


def split_arrays(config: TrainConfig, split: str, *, notify=print) -> tuple[np.ndarray, np.ndarray, str]:
    """Images and labels of one split, with the run's classes selected and remapped: the
    splits training made (:func:`gradloop.app.assemble.load_splits`)."""
    from gradloop.app import assemble, specs

    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    splits = assemble.load_splits(specs.builtin_spec(config), notify=notify)
    arrays = splits.get(split)
    if arrays is None and split == "test":
        raise DataError(f"{splits.source} has no test split; pass --data-dir with the t10k-* files or --split val")
    if arrays is None:
        raise DataError(f"{splits.source} has no training split, so no {split} split; use --split test")
    return (*arrays, splits.source)


def evaluate_run(
    run_dir: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    data_path: str | None = None,
    split: str = "test",
    notify=print,
    keep_predictions: bool = False,
    trust_code: bool = False,
) -> dict[str, Any]:
    """The run's model on ``split`` of its data (or of other data: a built-in ``dataset``/``data_dir``,
    or ``data_path`` of the kind the run trained on, read with the run's preprocessing).
    ``keep_predictions``: a regression's result also holds ``predicted`` and ``true`` (for plots).
    ``trust_code``: the run's own code may run (:func:`load_model`, and a data function run.json names)."""
    from gradloop.app import assemble, models

    info = run_folder.RunDir.open(run_dir).info
    config = run_config(info, run_dir)
    if config.data is None and data_path is None:
        return _evaluate_builtin(
            run_dir, info, dataset=dataset, data_dir=data_dir, split=split, notify=notify, trust_code=trust_code
        )
    if dataset or data_dir:
        raise ConfigError(
            f"run {run_dir} trained on --data {config.data}; evaluate it on --data PATH, not --dataset/--data-dir"
        )
    if config.data is None:
        raise ConfigError(
            f"run {run_dir} trained on a built-in data set; evaluate it with --dataset/--data-dir, not --data"
        )
    if data_path is None and (info.get("data") or {}).get("kind") == "function" and not trust_code:
        raise RunDirError(
            f"run {run_dir} trained on the data function {config.data}, which reading its data runs: code "
            f"run.json names, which gradloop runs only if you trust where the run came from; then pass "
            f"{run_schema.TRUST_CODE}, or score data of yours with --data PATH"
        )
    examples, source, split = own_data(config, info, run_dir, data_path=data_path, split=split, notify=notify)
    model = load_model(run_dir, trust_code=trust_code, input_shape=examples.element_shape)
    result = {
        "run_dir": str(run_dir),
        "split": split,
        "source": source,
        "n_samples": int(examples.n),
        "task": info.get("task", "classification"),
    }
    if run_model.brings_own_steps(model, info):
        return {**result, **own_step_scores(model, examples, run_dir, info, source=source, trust_code=trust_code)}
    models.check_model_fits(
        model,
        input_shape=examples.element_shape,
        n_outputs=info.get("n_outputs") or len(info["classes"]),
        task=info.get("task"),
    )
    labels, outputs = predictions(model, examples)
    loss = assemble.build_loss(config, info.get("task", "classification"), model)
    if result["task"] == "regression":
        scores = regression_scores(labels, outputs, loss)
        if not keep_predictions:
            scores = {k: v for k, v in scores.items() if k not in ("predicted", "true")}
        return {**result, **scores}
    return {**result, **classification_scores(labels, outputs, loss, info["classes"])}


def own_step_scores(
    model: keras.Model, examples: Examples, run_dir: str | Path, info: dict[str, Any], *, source: str, trust_code: bool
) -> dict[str, Any]:
    """What the model's ``test_step`` logs over ``examples`` (Keras' default test_step for a model without
    its own, on labelled data), through :class:`gradloop.loop.keras_steps.ModelStepTrainer`, as
    ``model.evaluate(return_dict=True)`` gives them: ``{"step": ..., "logs": {name: value}}``."""
    from gradloop.loop import keras_steps

    batches = examples.batches(None, 256)
    own = keras_steps.overrides(model, "test_step")
    if not own and len(batches.element_spec) < 2:  # (x,): no labels for Keras' default test_step to compare
        raise NoTestStep(
            f"{type(model).__name__} has no test_step of its own, and {source} has no labels for Keras' default "
            "one to compare its outputs with; give the model a test_step, or evaluate it on labelled data"
        )
    model = run_model.compiled(model, run_dir, info, trust_code=trust_code, input_shape=examples.element_shape)
    logs = keras_steps.ModelStepTrainer(model).evaluate(batches)
    return {"step": "test_step" if own else "Keras' default test_step", "logs": {k: float(v) for k, v in logs.items()}}


def predictions(model: keras.Model, examples: Examples) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the model's outputs, batch by batch from one pass: a data function's dataset may
    give its examples in another order each pass."""
    from gradloop.app import models

    return models.run_over(model, examples.batches(None, 256))


def own_data(
    config: TrainConfig, info: dict[str, Any], run_dir: str | Path, *, data_path: str | None, split: str, notify
) -> tuple[Examples, str, str]:
    """``split`` of the run's own data (refused when it changed since training), or all of
    ``data_path`` (its test split with ``split="test"``, when it has one); and which it was."""
    from gradloop.app import assemble, specs

    if data_path is not None and sources.kind_of(data_path) != (info.get("data") or {}).get("kind"):
        raise ConfigError(
            f"run {run_dir} trained on {(info.get('data') or {}).get('kind')} data and --data {data_path} "
            f"holds {sources.kind_of(data_path)} data; evaluate it on data of the run's kind"
        )
    if data_path is not None and split != "test":
        raise ConfigError(
            f"--data {data_path} is scored whole (or its test split, the default); "
            f"drop --split {split}, which picks a split of the run's own data"
        )
    recorded = info.get("data") or {}
    other = dataclasses.replace(config, data=data_path, val_fraction=0.0) if data_path else config
    fitted = recorded.get("preprocessing")
    class_names = tuple(recorded["source_classes"]) if recorded.get("source_classes") else None
    if info.get("task") == UNLABELED:  # load_data refuses data without labels to evaluate against: here the step
        spec = specs.data_spec(other, fitted=fitted, class_names=class_names)
        data = assemble.load_run_data(
            spec, classes=other.classes, val_fraction=other.val_fraction, seed=other.seed, notify=notify
        )
    else:
        data = assemble.load_data(other, notify=notify, fitted=fitted, class_names=class_names)
    if data_path is None and recorded.get("fingerprint") and recorded["fingerprint"] != data.fingerprint:
        raise DataError(
            f"the data in {config.data} changed since run {run_dir} trained on it "
            f"({sources.describe_change(recorded['fingerprint'], data.fingerprint)}); put it back, or pass --data PATH"
        )
    if data_path is not None:
        if split == "test" and data.test is not None:
            return data.test, data.description, "test"
        return data.train, data.description, "all"
    examples = data.split(split)
    if examples is None:
        raise DataError(f"{data.description} has no {split} split; use --split val, or --data PATH")
    if examples.n == 0:
        raise DataError(
            f"the {split} split of {data.description} is empty (the run held out no validation data); use --split test"
        )
    return examples, data.description, split


def classification_scores(y: np.ndarray, outputs: np.ndarray, loss: keras.losses.Loss, classes: list) -> dict[str, Any]:
    """Loss (mean over every sample), accuracy, per-class accuracy and the confusion matrix (rows
    true, columns predicted), classes in the run's order."""
    import sklearn.metrics

    k = len(classes)
    confusion = sklearn.metrics.confusion_matrix(y, outputs.argmax(axis=1), labels=np.arange(k))
    support = confusion.sum(axis=1)
    return {
        "classes": list(classes),
        "loss": float(loss(y, outputs)),
        "accuracy": float(np.trace(confusion) / max(len(y), 1)),
        "per_class_accuracy": {
            str(c): float(confusion[i, i] / support[i]) if support[i] else None for i, c in enumerate(classes)
        },
        "confusion_matrix": confusion.tolist(),
    }


def regression_scores(y: np.ndarray, outputs: np.ndarray, loss: keras.losses.Loss) -> dict[str, Any]:
    """Loss, mean absolute error, root mean squared error and R^2 (scikit-learn's, over all outputs)."""
    import sklearn.metrics

    predicted = outputs.reshape(y.shape) if outputs.size == y.size else outputs
    return {
        "loss": float(loss(y, outputs)),
        "mae": float(sklearn.metrics.mean_absolute_error(y, predicted)),
        "rmse": float(np.sqrt(sklearn.metrics.mean_squared_error(y, predicted))),
        "r2": float(sklearn.metrics.r2_score(y, predicted)),
        "predicted": predicted.reshape(len(y), -1)[:, 0].tolist(),
        "true": y.reshape(len(y), -1)[:, 0].tolist(),
    }


def _evaluate_builtin(
    run_dir: str | Path,
    info: dict[str, Any],
    *,
    dataset: str | None,
    data_dir: str | None,
    split: str,
    notify,
    trust_code: bool,
) -> dict[str, Any]:
    import keras

    # A new data set replaces the run's data entirely: --dataset alone must not read the run's --data-dir.
    overrides = {"dataset": dataset, "data_dir": data_dir} if (dataset or data_dir) else {}
    config = run_config(info, run_dir, **overrides)
    model = load_model(run_dir, trust_code=trust_code)
    flatten = _check_model_fits(model, config, run_dir)
    x, y, source = split_arrays(config, split, notify=notify)
    if len(y) == 0:
        raise DataError(
            f"the {split} split of {source} is empty (the run held out no validation data); use --split test"
        )
    x = data.prepare_images(x, flatten=flatten)
    from gradloop.app import models

    _, logits = models.run_over(model, data.make_dataset(x, y, batch_size=1024, shuffle=False))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    scores = classification_scores(y, logits, loss, list(config.classes))
    return {
        "run_dir": str(run_dir),
        "split": split,
        "source": source,
        "n_samples": int(len(y)),
        "task": "classification",
        **scores,
    }


def format_report(result: dict[str, Any]) -> str:
    head = f"{result['split']} split of {result['source']}: {result['n_samples']:,} samples"
    if "logs" in result:  # the model's own test_step: whatever it logs
        return f"{head}\n{result['step']}: " + "  ".join(f"{k} {v:.4f}" for k, v in result["logs"].items())
    if result.get("task") == "regression":
        return (
            f"{head}\nloss {result['loss']:.4f}  mae {result['mae']:.4f}  "
            f"rmse {result['rmse']:.4f}  r2 {result['r2']:.4f}"
        )
    classes = [str(c) for c in result["classes"]]
    width = max(7, *(len(c) + 2 for c in classes))
    lines = [
        head,
        f"loss {result['loss']:.4f}  accuracy {result['accuracy']:.4f}",
        "per-class accuracy: "
        + "  ".join(f"{c}: {a:.4f}" if a is not None else f"{c}: n/a" for c, a in result["per_class_accuracy"].items()),
        "confusion matrix (rows true, columns predicted):",
        " " * width + "".join(f"{c:>{width}}" for c in classes),
    ]
    for c, row in zip(classes, result["confusion_matrix"]):
        lines.append(f"{c:>{width}}" + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)
