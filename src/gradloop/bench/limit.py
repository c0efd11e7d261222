"""The machine's limit for a workload: how many samples per second its matmuls and convolutions alone allow.

The limit is the model's matmul and convolution FLOPs per training sample (``Workload.flops_per_sample``)
against the FLOP/s this machine reaches on exactly those products: per layer the forward product and the
weight gradient, and the input gradient for every layer but the first (nothing needs the gradient of the data).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache

from gradloop.bench.workload import Workload


def limit_flops_per_second(work: Workload, seconds: float = 1.0) -> float:
    """FLOP/s of the training step's matmuls and convolutions alone, at this batch size."""
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(0)
    b = work.batch_size
    operands = [(rng.normal((b, *i)), rng.normal(kernel), rng.normal((b, *o))) for i, kernel, o in work.products()]
    products = _products()
    products(tf.constant(10), operands).numpy()
    n = 50
    while True:
        start = time.perf_counter()
        products(tf.constant(n), operands).numpy()
        elapsed = time.perf_counter() - start
        if elapsed > seconds / 4 or n > 10**6:
            break
        n *= 4
    return n * b * work.flops_per_sample() / elapsed


@cache
def _products() -> Callable:
    """A compiled function that runs ``n`` times a training step's matmuls and convolutions
    (see ``Workload.flops_per_sample``); each layer's operands are (input, kernel, output gradient)."""
    import tensorflow as tf

    def conv_products(a, w, g, first):
        strides = [1, 1, 1, 1]
        total = tf.nn.conv2d(a, w, strides, "VALID")[0, 0, 0, 0]  # forward
        total += tf.raw_ops.Conv2DBackpropFilter(  # weight gradient
            input=a, filter_sizes=tf.shape(w), out_backprop=g, strides=strides, padding="VALID"
        )[0, 0, 0, 0]
        if not first:  # input gradient
            total += tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(a), filter=w, out_backprop=g, strides=strides, padding="VALID"
            )[0, 0, 0, 0]
        return total

    def matmul_products(a, w, g, first):
        total = tf.matmul(a, w)[0, 0]  # forward
        total += tf.matmul(a, g, transpose_a=True)[0, 0]  # weight gradient
        if not first:
            total += tf.matmul(g, w, transpose_b=True)[0, 0]  # input gradient
        return total

    @tf.function(reduce_retracing=True)
    def products(n, operands):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            for layer, (a, w, g) in enumerate(operands):
                total += (conv_products if len(w.shape) == 4 else matmul_products)(a, w, g, layer == 0)
        return total

    return products
