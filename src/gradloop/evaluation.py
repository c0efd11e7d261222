"""``gradloop evaluate``: a saved run's model on a chosen data split.

Reports loss (mean over every sample), accuracy, per-class accuracy and the
confusion matrix (rows: true class, columns: predicted class), with classes
in the run's own order so that label ``i`` means ``classes[i]``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np

from gradloop import build, data, rundir
from gradloop.config import TrainConfig, build_config
from gradloop.data.splits import SPLITS
from gradloop.errors import ConfigError, DataError, RunDirError
from gradloop.rundir import RunDir



def run_config(info: dict[str, Any], run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The run's TrainConfig; a config that no longer validates means a damaged or foreign run.json."""
    try:
        config = build_config(info["config"])
    except ConfigError as exc:
        raise RunDirError(f"{Path(run_dir) / rundir.RUN_JSON} holds an invalid config ({exc}); the run directory is damaged") from None
    return dataclasses.replace(config, **overrides)


def load_model(run_dir: str | Path) -> keras.Model:
    path = Path(run_dir) / rundir.MODEL
    if not path.exists():
        raise RunDirError(f"{run_dir} has no model.keras; the run did not finish (train it again or resume it)")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a damaged archive
        raise RunDirError(f"cannot load {path}: {type(exc).__name__}; the file is damaged") from None


def _check_model_fits(model: keras.Model, config: TrainConfig, run_dir: str | Path) -> bool:
    """Whether the model takes flat images; a model that does not match run.json is refused."""
    try:
        inputs, outputs = model.input_shape, model.output_shape
    except (AttributeError, ValueError):  # a subclassed model that was saved unbuilt
        inputs = outputs = "unknown shapes"
    flat, image = (None, math.prod(data.IMAGE_SHAPE)), (None, *data.IMAGE_SHAPE, 1)
    if inputs not in (flat, image) or outputs != (None, len(config.classes)):
        raise RunDirError(
            f"{Path(run_dir) / rundir.MODEL} maps {inputs} to {outputs}, but run.json describes {len(config.classes)} "
            f"classes of 28x28 images; the model and run.json come from different runs"
        )
    return inputs == flat


def split_arrays(config: TrainConfig, split: str, *, notify=print) -> tuple[np.ndarray, np.ndarray, str]:
    """Images and labels of one split, with the run's classes selected and remapped: the
    splits training made (:func:`gradloop.build.load_splits`)."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    splits = build.load_splits(config, notify=notify)
    arrays = splits.get(split)
    if arrays is None and split == "test":
        raise DataError(f"{splits.source} has no test split; pass --data-dir with the t10k-* files or --split val")
    if arrays is None:
        raise DataError(f"{splits.source} has no training split, so no {split} split; use --split test")
    return (*arrays, splits.source)


def evaluate_run(
    run_dir: str | Path, *, dataset: str | None = None, data_dir: str | None = None, split: str = "test", notify=print
) -> dict[str, Any]:
    info = RunDir.open(run_dir).info
    # A new data set replaces the run's data entirely: --dataset alone must not read the run's --data-dir.
    overrides = {"dataset": dataset, "data_dir": data_dir} if (dataset or data_dir) else {}
    config = run_config(info, run_dir, **overrides)
    model = load_model(run_dir)
    flatten = _check_model_fits(model, config, run_dir)
    x, y, source = split_arrays(config, split, notify=notify)
    if len(y) == 0:
        raise DataError(f"the {split} split of {source} is empty (the run held out no validation data); use --split test")
    x = data.prepare_images(x, flatten=flatten)
    logits = model.predict(x, batch_size=1024, verbose=0)
    loss = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits))
    k = len(config.classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, logits.argmax(axis=1)), 1)
    support = confusion.sum(axis=1)
    return {
        "run_dir": str(run_dir),
        "split": split,
        "source": source,
        "n_samples": int(len(y)),
        "classes": list(config.classes),
        "loss": loss,
        "accuracy": float(np.trace(confusion) / max(len(y), 1)),
        "per_class_accuracy": {
            str(c): float(confusion[i, i] / support[i]) if support[i] else None for i, c in enumerate(config.classes)
        },
        "confusion_matrix": confusion.tolist(),
    }


def format_report(result: dict[str, Any]) -> str:
    classes = result["classes"]
    lines = [
        f"{result['split']} split of {result['source']}: {result['n_samples']:,} samples",
        f"loss {result['loss']:.4f}  accuracy {result['accuracy']:.4f}",
        "per-class accuracy: "
        + "  ".join(f"{c}: {a:.4f}" if a is not None else f"{c}: n/a" for c, a in result["per_class_accuracy"].items()),
        "confusion matrix (rows true, columns predicted):",
        "       " + "".join(f"{c:>7}" for c in classes),
    ]
    for c, row in zip(classes, result["confusion_matrix"]):
        lines.append(f"{c:>7}" + "".join(f"{v:>7}" for v in row))
    return "\n".join(lines)
