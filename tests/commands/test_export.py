"""gradloop export: the SavedModel serves the same logits as the Keras model, on real digits."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradloop import data
from gradloop.app.config import build_config
from gradloop.cli import main
from gradloop.commands.evaluate import split_arrays
from gradloop.commands.export import export_saved_model
from gradloop.run.folder import RunDir


@pytest.fixture(scope="module")
def real_digits(tiny_run) -> np.ndarray:
    """The run's 250 validation digits (real MNIST), scaled and flattened as in training."""
    config = build_config(RunDir.open(tiny_run).info["config"])
    x, _, _ = split_arrays(config, "val", notify=lambda line: None)
    return data.prepare_images(x, flatten=True)


def test_the_saved_model_serves_the_keras_models_logits(tiny_run, real_digits, tmp_path):
    out = export_saved_model(tiny_run, out=tmp_path / "served")
    model = keras.models.load_model(tiny_run / "model.keras")
    expected = model.predict(real_digits, batch_size=256, verbose=0)
    assert expected.shape == (250, 3)

    served = tf.saved_model.load(str(out))
    np.testing.assert_allclose(served.serve(tf.constant(real_digits)).numpy(), expected, rtol=1e-5, atol=1e-6)
    signature = served.signatures["serving_default"]
    (input_name,) = signature.structured_input_signature[1]  # the model's Input name, "pixels"
    (outputs,) = signature(**{input_name: tf.constant(real_digits[:7])}).values()
    np.testing.assert_allclose(outputs.numpy(), expected[:7], rtol=1e-5, atol=1e-6)
    assert (outputs.numpy().argmax(axis=1) == expected[:7].argmax(axis=1)).all()


def test_an_existing_export_is_refused_and_kept(tiny_run, tmp_path, capsys):
    out = tmp_path / "served"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    assert main(["export", str(tiny_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gradloop: error: ") and err.count("\n") == 1 and "already exists" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_cli_export_defaults_to_the_run_directory(tiny_run, capsys):
    assert main(["export", str(tiny_run)]) == 0
    assert (tiny_run / "saved_model" / "saved_model.pb").exists()
    assert "serving_default" in capsys.readouterr().out


def test_a_run_without_a_model_is_one_line(tmp_path, capsys):
    (tmp_path / "run.json").write_text('{"config": {}}')
    assert main(["export", str(tmp_path)]) == 2
    assert "has no model.keras" in capsys.readouterr().err
