"""``gradloop train --profile``: where a training step's time goes.

The tutorial's phases are timed by difference, on a copy of the model and
optimizer (so the run itself is untouched), each stage a compiled loop over
the same batches like the real fused step:

    input           x, y = next(iterator)
    forward+loss    + y_pred = model(x); loss = loss_fn(y, y_pred)
    gradient        + grads = tape.gradient(loss, variables)
    update          + optimizer.apply_gradients(grads)
    metrics         + loss tracker and metric updates

A stage's cost is its loop time minus the previous stage's. Each stage keeps
a tiny use of its result so that the graph optimiser cannot prune it away.
"""

from __future__ import annotations

import time

import keras
import tensorflow as tf

from gradloop.loop.trainer import Trainer

PHASES = ("input", "forward+loss", "gradient", "update", "metrics")


def _clone(trainer: Trainer) -> Trainer:
    model = keras.models.clone_model(trainer.model)
    model.set_weights(trainer.model.get_weights())
    optimizer = trainer.optimizer.__class__.from_config(trainer.optimizer.get_config())
    args = tf.nest.map_structure(  # fresh metric objects: the run's keep their sums
        lambda m: m.__class__.from_config(m.get_config()) if isinstance(m, keras.metrics.Metric) else m,
        trainer.compile_args,
    )
    return Trainer(model, optimizer=optimizer, options=trainer.options, **args)


def _stage_fn(t: Trainer, depth: int):
    """A compiled loop running the first ``depth`` phases on each batch."""
    variables = t.model.trainable_variables

    def phases(x, y) -> tf.Tensor:
        keep = tf.cast(tf.reshape(x, [-1])[0], tf.float32)
        if depth < 2:
            return keep
        with tf.GradientTape() as tape:
            y_pred = t.model(x, training=True)
            loss = t.compute_loss(y, y_pred)
        keep += tf.cast(loss, tf.float32)
        if depth < 3:
            return keep
        grads = tape.gradient(loss, variables)
        keep += tf.add_n([tf.cast(tf.reshape(g, [-1])[0], tf.float32) for g in grads])
        if depth >= 4:
            t.optimizer.apply_gradients(zip(grads, variables))
        if depth >= 5:
            t.update_metrics(loss, y, y_pred)
        return keep

    @tf.function
    def run(iterator, n):
        keep = tf.constant(0.0)
        for _ in tf.range(n):
            keep += phases(*next(iterator))
        return keep

    return run


def profile_phases(
    trainer: Trainer, dataset: tf.data.Dataset, *, steps: int = 60, repeats: int = 3
) -> dict[str, float]:
    """Seconds per step of each phase (minimum over ``repeats``), on a copy of the trainer."""
    t = _clone(trainer)
    t.build(dataset)
    data = dataset.repeat()
    totals = []
    for depth in range(1, len(PHASES) + 1):
        run = _stage_fn(t, depth)
        iterator = iter(data)
        run(iterator, tf.constant(2)).numpy()  # trace
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            run(iterator, tf.constant(steps)).numpy()
            best = min(best, time.perf_counter() - start)
        totals.append(best / steps)
    phases = {PHASES[0]: totals[0]}
    for i in range(1, len(PHASES)):
        phases[PHASES[i]] = max(totals[i] - totals[i - 1], 0.0)
    return phases


def format_profile(phases: dict[str, float], batch_size: int) -> str:
    total = sum(phases.values())
    lines = [f"{'phase':<14}{'ms/step':>9}{'share':>8}"]
    for name, seconds in phases.items():
        lines.append(f"{name:<14}{seconds * 1e3:>9.3f}{seconds / total:>8.1%}")
    lines.append(f"{'step':<14}{total * 1e3:>9.3f}{1:>8.0%}   ({batch_size / total:,.0f} samples/s)")
    return "\n".join(lines)
