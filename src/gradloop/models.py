"""Model builders for the CLI; the library takes any Keras model.

``dtype`` is a Keras dtype policy for the hidden layers (``"mixed_float16"``:
float16 arithmetic, float32 variables); the logits layer then stays float32,
so the softmax and the loss see full-precision numbers.
"""

from __future__ import annotations

from typing import Sequence

import keras


def build_mlp(input_dim: int, hidden: Sequence[int], n_classes: int, *, dtype: str | None = None) -> keras.Model:
    """The tutorial's MLP: Dense+ReLU layers, then ``n_classes`` logits (no softmax:
    the loss takes logits, which is numerically safer)."""
    inputs = keras.Input(shape=(input_dim,), name="pixels")
    x = inputs
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"dense_{i}", dtype=dtype)(x)
    outputs = keras.layers.Dense(n_classes, name="logits", dtype=_logits_dtype(dtype))(x)
    return keras.Model(inputs, outputs, name="mlp")


def build_cnn(image_shape: Sequence[int], n_classes: int, *, dtype: str | None = None) -> keras.Model:
    """A small CNN for 28x28x1 images: two conv blocks, then ``n_classes`` logits."""
    inputs = keras.Input(shape=tuple(image_shape), name="image")
    x = keras.layers.Conv2D(32, 3, activation="relu", dtype=dtype)(inputs)
    x = keras.layers.MaxPooling2D(dtype=dtype)(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", dtype=dtype)(x)
    x = keras.layers.MaxPooling2D(dtype=dtype)(x)
    x = keras.layers.Flatten(dtype=dtype)(x)
    x = keras.layers.Dense(128, activation="relu", dtype=dtype)(x)
    outputs = keras.layers.Dense(n_classes, name="logits", dtype=_logits_dtype(dtype))(x)
    return keras.Model(inputs, outputs, name="cnn")


def _logits_dtype(dtype: str | None) -> str | None:
    return None if dtype is None else "float32"
