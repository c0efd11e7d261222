"""Wall time of Trainer.fit on a user's autotuned tf.data pipeline, with finished
iterators deleted on gradloop's release thread (the default) and on the training
thread (what Keras' fit and a hand-written loop do), in one process, alternating.

    .venv/bin/python benchmarks/iterator_release.py [--epochs 8] [--rounds 6]

Deleting an autotuned iterator can wait for tf.data's tuner thread (see
gradloop.loop.release); the wait is intermittent, so compare medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import tensorflow as tf

from gradloop import Trainer, data
from gradloop.loop import release


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    raw = data.load_dataset("mnist-sample", None, notify=lambda s: None)
    x, y = data.select_classes(raw.x_train, raw.y_train, (0, 1, 2))
    x = data.prepare_images(x, flatten=True)
    (x_train, y_train), (x_val, y_val) = data.split_train_val(x, y, val_fraction=1 / 6, seed=0)

    def pipeline(images, labels, shuffle: bool) -> tf.data.Dataset:  # the tf.data guide's pipeline
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        ds = ds.shuffle(len(images)) if shuffle else ds
        return ds.batch(32).prefetch(tf.data.AUTOTUNE)

    train, val = pipeline(x_train, y_train, True), pipeline(x_val, y_val, False)

    def on_this_thread(iterator) -> None:
        """Not handed over: the iterator dies where the trainer drops it, on this thread."""

    release_thread = release.release_iterator
    trainers = {}
    for mode in ("release thread", "training thread"):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((784,)),
                *(keras.layers.Dense(u, activation="relu") for u in (512, 256, 128)),
                keras.layers.Dense(3),
            ]
        )
        trainers[mode] = Trainer(
            model,
            optimizer=keras.optimizers.Adam(1e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        trainers[mode].fit(train, validation_data=val, epochs=1, verbose=0)  # trace outside the timing

    wall: dict[str, list[float]] = {mode: [] for mode in trainers}
    training: dict[str, list[float]] = {mode: [] for mode in trainers}
    try:
        for r in range(args.rounds):
            for mode in trainers if r % 2 == 0 else reversed(list(trainers)):
                release.release_iterator = release_thread if mode == "release thread" else on_this_thread
                start = time.perf_counter()
                history = trainers[mode].fit(train, validation_data=val, epochs=args.epochs, verbose=0).history
                wall[mode].append(time.perf_counter() - start)
                training[mode].append(sum(history["train_time"]))
    finally:
        release.release_iterator = release_thread
    for mode in trainers:
        print(
            f"{mode:16s} fit wall time median {statistics.median(wall[mode]):6.2f} s "
            f"(training passes {statistics.median(training[mode]):5.2f} s); rounds: "
            + " ".join(f"{w:.2f}" for w in wall[mode])
        )
    ratios = [b / a for a, b in zip(wall["release thread"], wall["training thread"])]
    print(
        f"deleting on the training thread takes {statistics.median(ratios):.2f}x the wall time "
        "(median of paired rounds)"
    )


if __name__ == "__main__":
    main()
