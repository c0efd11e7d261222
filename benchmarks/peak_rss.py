"""Issue 19: whole-process peak RSS of training the reference MLP on Fashion-MNIST's 50,000 training images,
Keras ``fit`` on TensorFlow against gradloop (``Trainer.fit`` on ``InMemory``, on XLA and on the graph).

Each way runs in a fresh process of its own (this file with ``--way``), from the same arrays and initial
weights, for 2 epochs at batch 32, and reports ``ru_maxrss`` (``gradloop.bench.memory.process_peak_rss_mib``,
as bench's ``--data`` workers do): everything the process held at its peak (Python, TensorFlow, the data, the
model, compiled code). Rounds alternate the ways.

    .venv/bin/python benchmarks/peak_rss.py [--rounds 3] [--batch-size 32] [--epochs 2]

Needs Debian's dataset-fashion-mnist (as bench's --dataset fashion_mnist).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

WAYS = ("keras", "gradloop xla", "gradloop graph")


def train(way: str, batch_size: int, epochs: int) -> None:
    from gradloop.app import cpu

    cpu.import_tensorflow()
    import keras

    import gradloop
    from gradloop import data
    from gradloop.app import models
    from gradloop.bench.memory import process_peak_rss_mib

    raw = data.load_dataset("fashion_mnist", notify=lambda line: None)
    x = (raw.x_train[:50000].reshape(50000, -1) / 255).astype("float32")
    y = raw.y_train[:50000].astype("int64")
    keras.utils.set_random_seed(0)
    model = models.build_mlp(784, (512, 256, 128), 10)  # gradloop train's reference MLP
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if way == "keras":
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss, metrics=["accuracy"], steps_per_execution=32)
        model.fit(data.make_dataset(x, y, batch_size=batch_size, shuffle=True, seed=0), epochs=epochs, verbose=0)
    else:
        trainer = gradloop.Trainer(
            model,
            optimizer=keras.optimizers.Adam(1e-4),
            loss=loss,
            metrics=["accuracy"],
            options=gradloop.CompileOptions(jit_compile=way == "gradloop xla"),
        )
        trainer.fit(gradloop.InMemory(x, y, batch_size=batch_size, seed=0), epochs=epochs, verbose=0)
    print(int(process_peak_rss_mib()))  # whole MiB, rounded down


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)  # one way, in this process
    args = parser.parse_args()
    if args.way:
        train(args.way, args.batch_size, args.epochs)
        return
    peaks: dict[str, list[int]] = {way: [] for way in WAYS}
    for round_ in range(args.rounds):
        for way in WAYS if round_ % 2 == 0 else reversed(WAYS):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--way",
                    way,
                    "--batch-size",
                    str(args.batch_size),
                    "--epochs",
                    str(args.epochs),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            peaks[way].append(int(out.split()[-1]))
            print(f"round {round_ + 1}/{args.rounds}: {way}: {peaks[way][-1]} MiB", file=sys.stderr, flush=True)
    keras_peak = statistics.median(peaks["keras"])
    print(
        f"peak RSS of a whole process, reference MLP, Fashion-MNIST 50,000 rows, batch {args.batch_size}, "
        f"{args.epochs} epochs (median of {args.rounds} rounds)"
    )
    print(f"{'way':16s} {'MiB':>6s} {'range':>11s} {'of Keras':>9s}")
    for way in WAYS:
        peak = statistics.median(peaks[way])
        print(f"{way:16s} {peak:6.0f} {min(peaks[way]):5d}-{max(peaks[way]):<5d} {peak / keras_peak:8.2f}x")


if __name__ == "__main__":
    main()
