"""A GAN whose model overrides ``train_step`` (keras.io's guide GAN), trained by gradloop and by Keras ``fit``.

    gradloop        gradloop.Trainer(gan): the model's own train_step, gradloop's default steps_per_execution
    keras spe=1     gan.fit with the overridden train_step
    keras spe=32    the same with steps_per_execution=32

Every variant holds its own copy of the same GAN (same initial weights, same seed generator) and trains on the
same batches of mnist-sample's 5,000 digits (28x28, scaled to [0, 1]), batch 64. As ``gradloop bench`` does,
each variant is warmed up (traced, then timed once to plan about ``--seconds`` of steps), then the variants take
turns over ``--rounds`` rounds (in reverse order every other round); a rate is the median over rounds and
``gradloop / X`` the median of each round's paired ratio.

    PYTHONPATH=src .venv/bin/python benchmarks/gan_bench.py [--model dense|conv] [--seconds 3] [--rounds 5]

``--model dense``: the guide's GAN with Dense generator and discriminator (latent 64 -> 256 -> 784;
784 -> 256 -> 1); ``conv``: the guide's convolutional one at a quarter of its widths (16/32 filters).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gradloop.app import cpu  # noqa: E402

cpu.use_onednn()  # the CLI's kernels, chosen before TensorFlow is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gradloop import Trainer, data  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from guide_gan import GAN  # noqa: E402  (examples/guide_gan.py: the guide's GAN, as users train it)

BATCH, LATENT, SEED = 64, 64, 0
VARIANTS = ("keras spe=1", "keras spe=32", "gradloop")
WARMUP_STEPS = 2 * 32 + 1  # two full groups of 32 steps and a partial one: every function traced


def networks(kind: str) -> tuple[keras.Model, keras.Model]:
    """The discriminator and generator: Dense, or the guide's convolutions at a quarter of their widths."""
    if kind == "dense":
        discriminator = keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Flatten(),
                keras.layers.Dense(256),
                keras.layers.LeakyReLU(negative_slope=0.2),
                keras.layers.Dense(1),
            ],
            name="discriminator",
        )
        generator = keras.Sequential(
            [
                keras.Input((LATENT,)),
                keras.layers.Dense(256),
                keras.layers.LeakyReLU(negative_slope=0.2),
                keras.layers.Dense(28 * 28, activation="sigmoid"),
                keras.layers.Reshape((28, 28, 1)),
            ],
            name="generator",
        )
        return discriminator, generator
    discriminator = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, strides=2, padding="same"),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.Conv2D(32, 3, strides=2, padding="same"),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(1),
        ],
        name="discriminator",
    )
    generator = keras.Sequential(
        [
            keras.Input((LATENT,)),
            keras.layers.Dense(7 * 7 * 32),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.Reshape((7, 7, 32)),
            keras.layers.Conv2DTranspose(32, 4, strides=2, padding="same"),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.Conv2DTranspose(32, 4, strides=2, padding="same"),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.Conv2D(1, 7, padding="same", activation="sigmoid"),
        ],
        name="generator",
    )
    return discriminator, generator


def build_gan(kind: str, steps_per_execution: int) -> GAN:
    """The same GAN every call: Keras' seed fixes the initial weights."""
    keras.utils.set_random_seed(SEED)
    gan = GAN(*networks(kind), latent_dim=LATENT)
    gan.compile(
        keras.optimizers.Adam(3e-4),
        keras.optimizers.Adam(3e-4),
        keras.losses.BinaryCrossentropy(from_logits=True),
        steps_per_execution=steps_per_execution,
    )
    return gan


def images() -> np.ndarray:
    """mnist-sample's digits as whole batches, shuffled once: one slice per step, the same in every variant."""
    x = data.load_mnist_sample().x_train.astype("float32") / 255.0
    x = x[np.random.default_rng(SEED).permutation(len(x))]
    n = len(x) // BATCH * BATCH
    return x[:n].reshape(-1, BATCH, 28, 28, 1)


class Contender:
    """One variant: ``train(steps)`` trains ``steps`` batches (a dataset built beforehand, outside the timing)."""

    def __init__(self, name: str, kind: str, batches: tf.Tensor) -> None:
        self.name, self.batches = name, batches
        if name == "gradloop":
            self.model = build_gan(kind, 1)  # Trainer(model) takes its own steps_per_execution (32 by default)
            trainer = Trainer(self.model)
            self._fit = lambda ds: trainer.fit(ds, epochs=1, verbose=0)
        else:
            self.model = build_gan(kind, int(name.split("=")[1]))
            self._fit = lambda ds: self.model.fit(ds, epochs=1, verbose=0, shuffle=False)

    def dataset(self, steps: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices(self.batches).repeat().take(steps)

    def train(self, dataset: tf.data.Dataset, steps: int) -> float:
        """Samples per second over ``dataset``'s ``steps`` batches."""
        start = time.perf_counter()
        self._fit(dataset)
        return steps * BATCH / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("dense", "conv"), default="dense")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    batches = tf.constant(images())
    contenders = {name: Contender(name, args.model, batches) for name in VARIANTS}
    planned = {}
    for name, contender in contenders.items():
        print(f"warming up {name}", file=sys.stderr)
        warm = contender.dataset(WARMUP_STEPS)
        contender.train(warm, WARMUP_STEPS)  # traces
        steps = max(WARMUP_STEPS, int(contender.train(warm, WARMUP_STEPS) / BATCH * args.seconds))
        planned[name] = (contender.dataset(steps), steps)
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name in VARIANTS if r % 2 == 0 else reversed(VARIANTS):  # no variant always runs first
            print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr)
            rates[name].append(contenders[name].train(*planned[name]))
    print(f"GAN ({args.model}), batch {BATCH}, mnist-sample 28x28, {args.rounds} rounds of ~{args.seconds:g} s")
    print("| variant | samples/s (median) | all rounds | gradloop is (paired) |")
    print("| --- | --- | --- | --- |")
    for name in VARIANTS:
        paired = [g / x for g, x in zip(rates["gradloop"], rates[name])]
        ratio = "" if name == "gradloop" else f"{statistics.median(paired):.2f}x"
        rounds = ", ".join(f"{v:,.0f}" for v in rates[name])
        print(f"| {name} | {statistics.median(rates[name]):,.0f} | {rounds} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
