"""The XLA policy: when a group of steps on in-memory data runs as one XLA computation.

``CompileOptions(jit_compile=...)`` chooses:

    True    XLA for every in-memory group (a partial last batch's too), no fall-back
    False   TensorFlow's graph, always
    None    XLA for the full batches' groups of a long fit of a model without convolutions
            (xla_by_default), on the graph when XLA refuses to compile the step (falls_back)

XLA's compile costs more than the graph's trace and saves a little on every step, so it pays
only over a long fit; its CPU convolutions are far slower than oneDNN's. The measurements behind
the threshold and the convolution rule are in docs/performance.md ("In-memory data").
"""

from __future__ import annotations

import warnings

import keras
import tensorflow as tf

# The fit length from which XLA's saving per step outweighs its longer compile (docs/performance.md
# records the measurements, and each move of this number).
XLA_AUTO_MIN_STEPS = 1536

# What TensorFlow raises when XLA cannot compile a function (or a step failed: see _xla_refused).
XLA_ERRORS = (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError)


def xla_by_default(model: keras.Model, total_steps: int | None) -> bool:
    """Whether ``jit_compile=None`` runs a fit of ``total_steps`` steps of ``model`` on in-memory data on XLA."""
    long_fit = total_steps is not None and total_steps >= XLA_AUTO_MIN_STEPS
    return long_fit and not _has_convolutions(model)


def group_on_xla(jit_compile: bool | None, xla_groups: bool, *, partial: bool) -> bool:
    """Whether a group runs on XLA, given the fit's decision ``xla_groups``: under the default an
    epoch's partial last batch (one step an epoch) stays on the graph, whose trace costs a fraction
    of XLA's compile for its shape."""
    return xla_groups and not (partial and jit_compile is None)


def falls_back(exc: tf.errors.OpError, jit_compile: bool | None) -> bool:
    """After ``exc`` from a group on XLA: whether it runs on the graph instead (XLA refused to compile
    it, under the default), with a warning saying so; False: ``exc`` is the caller's to raise."""
    if jit_compile or not _xla_refused(exc):
        return False
    warnings.warn(
        f"XLA cannot compile this training step ({_first_line(exc)}); it runs on TensorFlow's "
        "graph instead (CompileOptions(jit_compile=False) says so up front)",
        stacklevel=3,
    )
    return True


def _has_convolutions(model: keras.Model) -> bool:
    """Whether any of the model's layers (nested ones too) is one of Keras' convolutions."""
    names = (name for name in dir(keras.layers) if "Conv" in name and name[0].isupper())
    convolutions = tuple(getattr(keras.layers, name) for name in names)
    return any(isinstance(layer, convolutions) for layer in model._flatten_layers(include_self=False))


def _xla_refused(exc: tf.errors.OpError) -> bool:
    """Whether TensorFlow's error says XLA could not compile the function (not that a step failed)."""
    return any(words in exc.message for words in ("XLA", "xla", "compile", "Compil"))


def _first_line(exc: tf.errors.OpError) -> str:
    lines = [line.strip() for line in exc.message.strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]
