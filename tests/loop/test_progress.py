"""Progress on the terminal: the figures of a line, and plain lines each tenth of an epoch in a log file."""

from __future__ import annotations

import io

from gradloop.loop import progress


def test_a_line_shows_the_loss_first_and_validation_last_but_not_the_training_time():
    logs = {"val_accuracy": 0.5, "accuracy": 0.75, "train_time": 3.0, "val_loss": 0.25, "loss": 0.125}
    assert progress.format_logs(logs) == "loss 0.1250  accuracy 0.7500  val_loss 0.2500  val_accuracy 0.5000"


def test_a_log_file_gets_a_line_each_tenth_of_an_epoch_and_one_per_epoch():
    out = io.StringIO()
    bar = progress.Progress(batch_size=8, stream=out, bar=False)
    bar.set_params({"steps": 20, "epochs": 2})
    bar.on_epoch_begin(0)
    for step in range(20):
        bar.on_train_batch_end(step, {"loss": 1.0 / (step + 1)})
    bar.on_epoch_end(0, {"loss": 0.5, "train_time": 2.0})
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines[:-1]] == [f"epoch 1 step {s}/20" for s in range(2, 20, 2)]
    assert lines[-1] == "epoch 1/2  loss 0.5000  2.0s  80 samples/s"  # 20 steps of 8 in 2 s
