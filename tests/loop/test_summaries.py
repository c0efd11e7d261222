"""TensorBoard summaries: read back with TensorBoard's own EventAccumulator, values checked."""

from __future__ import annotations

import keras
import pytest
from tensorboard_events import read_scalars
from test_trainer import batches, make_trainer, toy_data, toy_model

from gradloop import CompileOptions
from gradloop.loop.summaries import TensorBoardSummaries, current_learning_rate


def test_epoch_and_batch_scalars_match_the_history_and_the_schedule(tmp_path):
    x, y = toy_data()  # 100 samples, batches of 32: 4 steps per epoch
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    trainer = make_trainer(toy_model(), keras.optimizers.SGD(schedule), options=CompileOptions(steps_per_execution=3))
    summaries = TensorBoardSummaries(tmp_path / "tb", every_steps=2)
    history = trainer.fit(
        batches(x, y), validation_data=batches(x[:40], y[:40]), epochs=2, callbacks=[summaries]
    ).history

    train, val = read_scalars(tmp_path / "tb" / "train"), read_scalars(tmp_path / "tb" / "validation")
    assert set(val) == {"epoch_loss", "epoch_accuracy"}
    assert {"epoch_loss", "epoch_accuracy", "epoch_learning_rate", "batch_loss", "batch_learning_rate"} <= set(train)
    for key in ("loss", "accuracy"):
        assert [s for s, _ in train[f"epoch_{key}"]] == [0, 1]
        assert [v for _, v in train[f"epoch_{key}"]] == pytest.approx(history[key], rel=1e-6)
        assert [v for _, v in val[f"epoch_{key}"]] == pytest.approx(history[f"val_{key}"], rel=1e-6)
    # Hooks run when a compiled call of 3 steps ends: steps 3, 4 | 7, 8; every 2 steps writes at each.
    batch_loss = dict(train["batch_loss"])
    assert sorted(batch_loss) == [3, 4, 7, 8]
    assert [batch_loss[4], batch_loss[8]] == pytest.approx(history["loss"], rel=1e-6)  # running mean at epoch end
    assert dict(train["batch_learning_rate"]) == pytest.approx({s: 0.1 * 0.5**s for s in (3, 4, 7, 8)}, rel=1e-6)
    assert [v for _, v in train["epoch_learning_rate"]] == pytest.approx([0.1 * 0.5**4, 0.1 * 0.5**8], rel=1e-6)


def test_batch_summaries_skip_to_the_next_multiple_of_every_steps(tmp_path):
    x, y = toy_data(320)  # 10 steps per epoch, one hook per step
    trainer = make_trainer(toy_model(), options=CompileOptions(steps_per_execution=1))
    trainer.fit(batches(x, y), epochs=3, callbacks=[TensorBoardSummaries(tmp_path, every_steps=4)])
    assert [s for s, _ in read_scalars(tmp_path / "train")["batch_loss"]] == [4, 8, 12, 16, 20, 24, 28]


def test_the_learning_rate_is_the_inner_optimizers_under_loss_scaling():
    optimizer = keras.mixed_precision.LossScaleOptimizer(keras.optimizers.Adam(3e-3))
    assert current_learning_rate(optimizer) == pytest.approx(3e-3)


def test_every_steps_must_be_positive():
    with pytest.raises(ValueError, match="every_steps"):
        TensorBoardSummaries("unused", every_steps=0)


def test_gradloop_train_writes_tensorboard_summaries_that_match_history_json(tiny_run):
    import json

    history = json.loads((tiny_run / "history.json").read_text())
    train = read_scalars(tiny_run / "tensorboard" / "train")
    val = read_scalars(tiny_run / "tensorboard" / "validation")
    assert [v for _, v in train["epoch_loss"]] == pytest.approx(history["train_loss"], rel=1e-6)
    assert [v for _, v in train["epoch_accuracy"]] == pytest.approx(history["train_accuracy"], rel=1e-6)
    assert [v for _, v in val["epoch_loss"]] == pytest.approx(history["val_loss"], rel=1e-6)
    assert [v for _, v in val["epoch_accuracy"]] == pytest.approx(history["val_accuracy"], rel=1e-6)
    # 1,250 samples in batches of 32: 40 steps per epoch in calls of 32, hooks after steps 32, 40, 72, 80;
    # summaries every 32 steps go to the first hook at or after 32 and 64.
    assert [s for s, _ in train["batch_loss"]] == [32, 72]
    assert [v for _, v in train["batch_learning_rate"]] == pytest.approx([1e-4, 1e-4])
