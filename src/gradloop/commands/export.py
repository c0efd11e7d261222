"""``gradloop export RUN_DIR``: the run's model as a TensorFlow SavedModel for serving.

    model = keras.models.load_model(RUN_DIR/model.keras)     # or rebuilt: gradloop.commands.run_model
    model.export(OUT)        # Keras 3: inference only, endpoint ``serve``, signature ``serving_default``

The SavedModel holds the forward pass in inference mode (dropout off,
BatchNorm frozen) and no training state, which is what TensorFlow Serving,
``tf.saved_model.load`` and TFLite converters want. It returns the model's
logits; apply softmax for probabilities. A table's standardisation is built in
(the model takes raw feature values); images are taken as the run read them:
its size and colour mode, pixels scaled to [0, 1].
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gradloop import cli
from gradloop.app import cpu
from gradloop.commands import evaluate as evaluation
from gradloop.commands import run_model
from gradloop.errors import ConfigError, RunDirError
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder

if TYPE_CHECKING:
    import keras


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help="export a run's model as a TensorFlow SavedModel for serving")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/saved_model); must not exist")
    cli.add_trust_code(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    cpu.import_tensorflow()
    path = export_saved_model(args.run_dir, out=args.out, trust_code=args.trust_code)
    print(f"gradloop: wrote SavedModel {path} (signature serving_default)")
    return 0


def export_saved_model(run_dir: str | Path, *, out: str | Path | None = None, trust_code: bool = False) -> Path:
    """Export ``RUN_DIR/model.keras`` to ``out`` (default ``RUN_DIR/saved_model``), which must not exist yet.
    ``trust_code``: the run's own code may run (:func:`gradloop.commands.evaluate.load_model`)."""
    info = run_folder.RunDir.open(run_dir).info
    out_dir = Path(out) if out else run_files.own_path(run_dir, run_files.SAVED_MODEL)
    shape = (
        None if run_model.serialized(info, run_dir) or not trust_code else run_model.trained_input_shape(run_dir, info)
    )
    model = with_standardization(evaluation.load_model(run_dir, trust_code=trust_code, input_shape=shape), info)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RunDirError(f"{out_dir} already exists and is not empty; remove it or pass another --out")
    try:
        model.export(str(out_dir), format="tf_saved_model", verbose=False)
    except OSError as exc:
        raise RunDirError(f"cannot write SavedModel to {out_dir}: {exc.strerror or exc}; pass another --out") from None
    except NotImplementedError:  # Keras' Model.call: a GAN's model trains two others and is called by neither
        raise ConfigError(
            f"{type(model).__name__} defines no call(), so it has no forward pass to serve; export a model whose "
            "call() is its inference (a GAN's generator, say)"
        ) from None
    return out_dir


def with_standardization(model: keras.Model, info: dict) -> keras.Model:
    """A table's run standardises its features with the training split's statistics: the exported
    model does it first, so that it serves raw feature values (text columns one-hot encoded)."""
    import keras

    stats = ((info.get("data") or {}).get("preprocessing") or {}).get("standardize")
    if not isinstance(stats, dict):
        return model
    inputs = keras.Input(model.input_shape[1:], name="features")
    std = np.asarray(stats["std"], dtype=np.float64)
    standardized = keras.layers.Normalization(mean=stats["mean"], variance=(std**2).tolist(), name="standardize")(
        inputs
    )
    return keras.Model(inputs, model(standardized), name=f"{model.name}_standardized")
