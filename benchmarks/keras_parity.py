"""The reference recipe trained by gradloop and by Keras ``fit``, side by side.

Same data (mnist-sample, classes 0,1,2, the same seeded split and the same
per-epoch shuffled batches), same initial weights, same optimizer; then both
models are scored on real held-out digits (the MNIST test set in
../shared/data/mnist). Prints per-epoch losses and the held-out accuracies.

    .venv/bin/python benchmarks/keras_parity.py [--epochs 10] [--seed 42]

FUSED=0 uses Keras' own Adam update in gradloop too (then the two agree to
float32 rounding); the default uses gradloop's fused Adam kernel.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import gradloop  # noqa: E402
from gradloop import Trainer, data  # noqa: E402
from gradloop.app.assemble import prepare_data  # noqa: E402
from gradloop.app.config import TrainConfig  # noqa: E402
from gradloop.app.models import build_model  # noqa: E402
from gradloop.app.specs import builtin_spec, model_spec  # noqa: E402

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    config = TrainConfig(dataset="mnist-sample", epochs=args.epochs, seed=args.seed)
    prepared = prepare_data(
        builtin_spec(config), flatten=config.model == "mlp", batch_size=config.batch_size, notify=print
    )
    test = data.load_idx_dir(SHARED_MNIST)
    xt, yt = data.select_classes(test.x_test, test.y_test, config.classes)
    xt = data.prepare_images(xt, flatten=True)

    def epoch_data(epoch: int):
        """Epoch ``epoch``'s batches, shuffled by numpy so both engines see the same order
        (Keras' fit iterates a dataset an extra time, which would shift tf.data's reshuffles)."""
        x, y = prepared.train
        order = np.random.default_rng(config.seed + epoch).permutation(len(x))
        return data.make_dataset(x[order], y[order], batch_size=config.batch_size, shuffle=False)

    val = data.make_dataset(*prepared.val, batch_size=config.batch_size, shuffle=False)

    def fresh_model():
        keras.utils.set_random_seed(config.seed)
        return build_model(model_spec(config), prepared.train[0].shape[1:], len(config.classes))

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    fused = os.environ.get("FUSED", "1") == "1"
    ours, theirs = fresh_model(), fresh_model()
    trainer = Trainer(
        ours,
        optimizer=keras.optimizers.Adam(config.lr),
        loss=loss,
        metrics=["accuracy"],
        options=gradloop.CompileOptions(fused_optimizer=fused),
    )
    theirs.compile(optimizer=keras.optimizers.Adam(config.lr), loss=loss, metrics=["accuracy"])
    h_ours: dict[str, list[float]] = {}
    h_theirs: dict[str, list[float]] = {}
    for epoch in range(config.epochs):
        for history, logs in (
            (h_ours, trainer.fit(epoch_data(epoch), validation_data=val, epochs=1, verbose=0).history),
            (h_theirs, theirs.fit(epoch_data(epoch), validation_data=val, epochs=1, verbose=0).history),
        ):
            for key, values in logs.items():
                history.setdefault(key, []).extend(values)

    print(f"{'epoch':>5} {'gradloop loss':>14} {'keras loss':>11} {'gradloop val_acc':>17} {'keras val_acc':>14}")
    for e in range(config.epochs):
        print(
            f"{e + 1:>5} {h_ours['loss'][e]:>14.5f} {h_theirs['loss'][e]:>11.5f} "
            f"{h_ours['val_accuracy'][e]:>17.4f} {h_theirs['val_accuracy'][e]:>14.4f}"
        )
    for name, model in (("gradloop", ours), ("keras fit", theirs)):
        acc = float(np.mean(model.predict(xt, verbose=0).argmax(1) == yt))
        print(f"{name}: held-out MNIST test accuracy (classes 0,1,2, {len(yt):,} digits): {acc:.4f}")


if __name__ == "__main__":
    main()
