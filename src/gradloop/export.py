"""``gradloop export RUN_DIR``: the run's model as a TensorFlow SavedModel for serving.

    model = keras.models.load_model(RUN_DIR/model.keras)
    model.export(OUT)        # Keras 3: inference only, endpoint ``serve``, signature ``serving_default``

The SavedModel holds the forward pass in inference mode (dropout off,
BatchNorm frozen) and no training state, which is what TensorFlow Serving,
``tf.saved_model.load`` and TFLite converters want. It returns the model's
logits; apply softmax for probabilities.
"""

from __future__ import annotations

from pathlib import Path

from gradloop import evaluation, rundir
from gradloop.errors import RunDirError


def export_saved_model(run_dir: str | Path, *, out: str | Path | None = None) -> Path:
    """Export ``RUN_DIR/model.keras`` to ``out`` (default ``RUN_DIR/saved_model``), which must not exist yet."""
    model = evaluation.load_model(run_dir)
    out_dir = Path(out) if out else Path(run_dir) / rundir.SAVED_MODEL
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise RunDirError(f"{out_dir} already exists and is not empty; remove it or pass another --out")
    try:
        model.export(str(out_dir), format="tf_saved_model", verbose=False)
    except OSError as exc:
        raise RunDirError(f"cannot write SavedModel to {out_dir}: {exc.strerror or exc}; pass another --out") from None
    return out_dir
