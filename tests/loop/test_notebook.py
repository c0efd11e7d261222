"""Trainer.fit in a real Jupyter kernel: the progress bar is a widget and the history figure shows inline."""

from __future__ import annotations

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")

CELLS = [
    """import keras, numpy as np, tensorflow as tf
import gradloop
from gradloop.pages import plots
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 4)).astype("float32")
y = (x[:, 0] > 0).astype("int64")
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
trainer = gradloop.Trainer(model, optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           metrics=["accuracy"], options=gradloop.CompileOptions(steps_per_execution=2))""",
    "history = trainer.fit(data, validation_data=data, epochs=2)",
    "plots.history_figure(history)",
]
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.mark.slow
def test_fit_draws_a_widget_bar_and_the_history_figure_shows_inline(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    fit_outputs, figure_outputs = notebook.cells[1].outputs, notebook.cells[2].outputs
    assert not [o for cell in notebook.cells for o in cell.outputs if o.output_type == "error"]
    assert sum(WIDGET in o.get("data", {}) for o in fit_outputs) == 2  # one bar per epoch
    text = "".join(o.get("text", "") for o in fit_outputs if o.output_type == "stream")
    assert "epoch 1/2" in text and "epoch 2/2" in text and "val_accuracy" in text  # and a summary line each
    assert any("image/png" in o.get("data", {}) for o in figure_outputs)
