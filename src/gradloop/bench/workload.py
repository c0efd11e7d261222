"""What a bench times: the data, the batch size and the model, described once (``Workload.layers()``) so that
every variant and every peer framework builds the same network from it.

The model is the reference MLP of ``hidden`` or the bench CNN (``BENCH_CNN_LAYERS``: conv 32, pool, conv 64,
pool, then the logits). The bench CNN is not :func:`gradloop.app.models.build_cnn` (``gradloop train
--model cnn``), which has a dense layer of 128 before its logits: the bench CNN is the classic Keras example's
convolutions without dropout, and small enough for every peer to rebuild layer by layer. ``bench --model cnn``
times the bench CNN; ``bench --data`` trains ``gradloop train``'s own model, and so ``build_cnn`` there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from gradloop import data

if TYPE_CHECKING:
    import keras
    import tensorflow as tf


@dataclass(frozen=True)
class Layer:
    """One layer of a bench model, as every framework builds it. ``dense`` and ``conv`` (3x3, no padding)
    have ``units`` outputs (filters), Glorot-uniform weights and zero biases; ``pool`` is 2x2 max pooling."""

    kind: str  # "dense", "conv", "pool" or "flatten"
    units: int = 0
    relu: bool = False


# The bench CNN before its logits layer: the classic Keras example's convolutions, without dropout.
BENCH_CNN_LAYERS = (
    Layer("conv", 32, relu=True),
    Layer("pool"),
    Layer("conv", 64, relu=True),
    Layer("pool"),
    Layer("flatten"),
)


@dataclass(frozen=True)
class Workload:
    """The data (``x``, ``y``), batch size, model and learning rate that every variant trains."""

    x: np.ndarray
    y: np.ndarray
    batch_size: int
    hidden: tuple[int, ...]
    n_classes: int
    lr: float = 1e-4
    seed: int = 0
    kind: str = "mlp"  # the MLP of ``hidden``, or "cnn": the bench CNN (x holds images: height, width, channels)

    def dataset(self, steps: int) -> tf.data.Dataset:
        """``steps`` batches of the shuffled training data, reshuffled at each pass
        (and so in another order each time the dataset is iterated)."""
        return self._shuffled.repeat().take(steps)

    @cached_property
    def _shuffled(self) -> tf.data.Dataset:  # one copy of the data in tensors, shared by every dataset
        return data.make_dataset(self.x, self.y, batch_size=self.batch_size, shuffle=True, seed=self.seed)

    @cached_property
    def in_memory(self) -> Any:
        """The data as gradloop's in-memory source (``gradloop.InMemory``): tensors held once, shared by every use."""
        from gradloop import InMemory

        return InMemory(self.x, self.y, batch_size=self.batch_size, seed=self.seed)

    def in_memory_epochs(self, steps: int) -> tuple[Callable[[int], Any], int]:
        """``steps`` batches of ``in_memory`` as ``fit`` takes them: ``epoch -> its batches`` and the number of
        epochs (the last one cut short), each epoch reshuffled as the dataset's passes are."""
        per_epoch = self.in_memory.steps
        epochs = -(-steps // per_epoch)
        last = steps - (epochs - 1) * per_epoch
        return (lambda epoch: self.in_memory(epoch).take(last if epoch == epochs - 1 else per_epoch)), epochs

    def samples(self, steps: int) -> int:
        """Samples in the first ``steps`` batches (each pass ends with a partial batch)."""
        n, b = len(self.x), self.batch_size
        per_pass = -(-n // b)
        full_passes, rest = divmod(steps, per_pass)
        return full_passes * n + min(rest * b, n)

    def settings(self) -> dict[str, Any]:
        """Everything but the data, as JSON: what a peer process needs besides the arrays."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("x", "y")}

    def layers(self) -> tuple[Layer, ...]:
        """The model, from input to logits: what ``model()`` and every peer build."""
        if self.kind == "cnn":
            body = BENCH_CNN_LAYERS
        else:
            body = tuple(Layer("dense", units, relu=True) for units in self.hidden)
        return (*body, Layer("dense", self.n_classes))

    def describe(self) -> str:
        if self.kind == "cnn":
            return f"CNN conv32-pool-conv64-pool -> {self.n_classes}"
        return f"MLP {'-'.join(map(str, self.hidden))} -> {self.n_classes}"

    def model(self, *, seeded: bool = True) -> keras.Model:
        """The model of ``layers()``, with Keras' initial weights: seeded, the same in every variant. A peer on
        JAX builds it unseeded and sets the weights: Keras' seeding imports TensorFlow wherever it is installed."""
        import keras

        if seeded:
            keras.utils.set_random_seed(self.seed)
        inputs = keras.Input(self.x.shape[1:])
        h = inputs
        for layer in self.layers():
            activation = "relu" if layer.relu else None
            if layer.kind == "dense":
                h = keras.layers.Dense(layer.units, activation=activation)(h)
            elif layer.kind == "conv":
                h = keras.layers.Conv2D(layer.units, 3, activation=activation)(h)
            elif layer.kind == "pool":
                h = keras.layers.MaxPooling2D()(h)
            else:
                h = keras.layers.Flatten()(h)
        return keras.Model(inputs, h)

    def shapes(self) -> list[tuple[Layer, tuple[int, ...], tuple[int, ...]]]:
        """Each layer with the shape of one sample going in and coming out."""
        shape, shapes = tuple(self.x.shape[1:]), []
        for layer in self.layers():
            if layer.kind == "dense":
                out = (layer.units,)
            elif layer.kind == "conv":
                out = (shape[0] - 2, shape[1] - 2, layer.units)
            elif layer.kind == "pool":
                out = (shape[0] // 2, shape[1] // 2, shape[2])
            else:
                out = (math.prod(shape),)
            shapes.append((layer, shape, out))
            shape = out
        return shapes

    def products(self) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Per dense or conv layer: the shapes of one sample's input, of the kernel, and of its output."""
        kernels = {"dense": lambda i, layer: (i[0], layer.units), "conv": lambda i, layer: (3, 3, i[2], layer.units)}
        return [(i, kernels[layer.kind](i, layer), o) for layer, i, o in self.shapes() if layer.kind in kernels]

    def flops_per_sample(self) -> int:
        """Matmul and convolution FLOPs of one training sample, 2 per multiply-add: forward and
        weight gradient for each layer, input gradient for all but the first."""
        forward = [2 * math.prod(out) * math.prod(kernel[:-1]) for _, kernel, out in self.products()]
        return 2 * sum(forward) + sum(forward[1:])


def keras_loss() -> keras.losses.Loss:
    """The loss every Keras-built variant trains with: sparse cross-entropy on the logits."""
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
