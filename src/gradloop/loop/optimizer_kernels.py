"""Keras optimizers' per-variable update on TensorFlow's fused training kernels.

Keras 3 writes Adam's update as about ten separate tensor ops per variable
(each a pass over memory, each a kernel launch); TensorFlow ships the same
update as one multi-threaded kernel, ``ResourceApplyAdam``. For the reference
MLP at batch 32 the update is a third of the step, so this is the largest
single speed-up available on a CPU. Only ``update_step`` (one variable's
arithmetic) is replaced; everything around it stays Keras': loss-scale
unscaling, clipping, weight decay, gradient accumulation, EMA, constraints
and the ``iterations`` counter. The formulas are the same:

    Adam:          alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)
                   m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2); w -= alpha m / (sqrt(v) + eps)
    SGD momentum:  a = momentum a - lr g; w += a   (nesterov: w += momentum a - lr g)

Anything else (AMSGrad, sparse gradients, a subclass that overrides
``update_step``, a distribution strategy) keeps Keras' own update.
"""

from __future__ import annotations

import types

import keras
import tensorflow as tf

_KERAS_UPDATE = {
    keras.optimizers.Adam: keras.optimizers.Adam.update_step,
    keras.optimizers.SGD: keras.optimizers.SGD.update_step,
}


def _handle(variable) -> tf.Tensor:
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def _adam_update(self, gradient, variable, learning_rate):
    if isinstance(gradient, tf.IndexedSlices):
        return keras.optimizers.Adam.update_step(self, gradient, variable, learning_rate)
    dtype = variable.dtype
    index = self._get_variable_index(variable)
    step = tf.cast(self.iterations + 1, dtype)
    tf.raw_ops.ResourceApplyAdam(
        var=_handle(variable),
        m=_handle(self._momentums[index]),
        v=_handle(self._velocities[index]),
        beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step),
        beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
        lr=tf.cast(learning_rate, dtype),
        beta1=tf.cast(self.beta_1, dtype),
        beta2=tf.cast(self.beta_2, dtype),
        epsilon=tf.cast(self.epsilon, dtype),
        grad=tf.cast(gradient, dtype),
    )


def _sgd_update(self, gradient, variable, learning_rate):
    if isinstance(gradient, tf.IndexedSlices):
        return keras.optimizers.SGD.update_step(self, gradient, variable, learning_rate)
    dtype = variable.dtype
    tf.raw_ops.ResourceApplyKerasMomentum(
        var=_handle(variable),
        accum=_handle(self.momentums[self._get_variable_index(variable)]),
        lr=tf.cast(learning_rate, dtype),
        grad=tf.cast(gradient, dtype),
        momentum=tf.cast(self.momentum, dtype),
        use_nesterov=bool(self.nesterov),
    )


def use_fused_kernels(optimizer: keras.optimizers.Optimizer) -> bool:
    """Switch ``optimizer`` (built) to the fused kernel where the maths is the same.

    Returns whether it did. Call outside any ``tf.function``.
    """
    for cls, keras_update in _KERAS_UPDATE.items():
        if isinstance(optimizer, cls) and type(optimizer).update_step is keras_update:
            break
    else:
        return False
    if getattr(optimizer, "amsgrad", False) or getattr(optimizer, "momentum", None) == 0:
        return False  # AMSGrad has no fused kernel; plain SGD is a single op already
    if tf.distribute.has_strategy():  # called inside the trainer's strategy scope
        return False
    fused = _adam_update if isinstance(optimizer, keras.optimizers.Adam) else _sgd_update
    optimizer.update_step = types.MethodType(fused, optimizer)
    return True
