"""What a step works with: a Keras model compiled for a custom loop.

Keras' ``model.compile`` gathers a model, optimizer, loss and metrics and
``fit`` runs them; here the gathering is :class:`CompiledModel` and the loop
is :class:`gradloop.loop.trainer.Trainer`, its subclass. The loss and metrics are
Keras' own (``model.compile`` is called with them), so sample weights, several
outputs, ``loss_weights`` and the names in the history are exactly ``fit``'s.
A step function (:mod:`gradloop.loop.step`) sees these parts as ``trainer.model``,
``trainer.optimizer``, ``trainer.compute_loss`` and the metrics; the loop
calls ``build``, ``make_iterator``, ``reset_metrics``, ``results`` and the
compiled functions that ``build`` makes (as Keras' ``make_train_function``),
and hands ``model`` to the callbacks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import keras
import tensorflow as tf

from gradloop.loop import distribute
from gradloop.loop import in_memory
from gradloop.loop import optimizer_kernels
from gradloop.loop import step as step_lib

# run(iterator, num_steps) -> (steps done, {metric name: running result})
MultiStepFn = Callable[[Any, tf.Tensor], "tuple[tf.Tensor, dict[str, tf.Tensor]]"]
# A loss, or one per output (a list, or a dict by output name), as model.compile takes it.
LossSpec = Any
# Metrics as model.compile takes them: a list, or a list/dict of them per output.
MetricsSpec = "Sequence[keras.metrics.Metric | str] | Mapping[str, Any] | None"


# Compiling a group with XLA costs about half a second more than tracing it for the graph (the
# reference MLP) and saves a fraction of a millisecond per step: by default a fit shorter than this
# stays on the graph (docs/performance.md).
XLA_AUTO_MIN_STEPS = 1536


@dataclass(frozen=True)
class CompileOptions:
    """Choices that change the compiled function; changing one means a new trace.

    ``steps_per_execution``: steps run inside one compiled call (a
    ``tf.while_loop`` over the iterator), like Keras' ``steps_per_execution``
    and Orbit's ``steps_per_loop``. Callbacks' batch hooks run once per call.
    ``jit_compile``: XLA. None (the default): in a ``fit`` of at least
    ``XLA_AUTO_MIN_STEPS`` steps, a group of steps on in-memory data
    (:class:`gradloop.loop.in_memory.InMemory`) is one XLA computation, gathers
    included, falling back to TensorFlow's graph, with a warning, when XLA
    cannot compile it (an op it lacks); an epoch's partial last batch, shorter
    fits, and steps on datasets run on the graph. True: XLA for every in-memory
    group, the partial batch's too, and for each step on a dataset, no
    fall-back. False: no XLA.
    ``fused_optimizer``: run Keras Adam's and SGD-with-momentum's update on
    TensorFlow's fused kernels (same formula; see :mod:`gradloop.loop.optimizer_kernels`).
    """

    steps_per_execution: int = 32
    jit_compile: bool | None = None
    fused_optimizer: bool = True

    def __post_init__(self) -> None:
        spe = self.steps_per_execution
        # The count travels as an int32 tensor, and tf.constant(2**32, tf.int32) silently wraps to 0.
        if isinstance(spe, bool) or not isinstance(spe, int) or not 1 <= spe < 2**31:
            raise ValueError(f"steps_per_execution must be an integer from 1 to {2**31 - 1}, got {spe!r}")
        if self.jit_compile not in (None, True, False):
            raise ValueError(f"jit_compile must be None (XLA where it compiles), True or False, got {self.jit_compile!r}")


class CompiledModel:
    """Model, optimizer, loss, metrics and strategy, and the step functions compiled from them once.

    ``loss``, ``loss_weights``, ``metrics``, ``weighted_metrics``: as ``model.compile``
    takes them (one per output as a list or dict; ``"accuracy"`` chosen to fit
    the loss; ``metrics`` ignore sample weights, ``weighted_metrics`` apply them).
    ``train_step`` replaces the step (the contract: :mod:`gradloop.loop.step`).
    ``options``: steps per compiled call, XLA, fused optimizer kernels (:class:`CompileOptions`).
    ``strategy``: a ``tf.distribute.Strategy`` whose ``scope()`` built the model;
    the loss is then averaged over the global batch and datasets are distributed.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        optimizer: keras.optimizers.Optimizer,
        loss: LossSpec,
        metrics: MetricsSpec = (),
        loss_weights: Any = None,
        weighted_metrics: MetricsSpec = None,
        train_step: step_lib.StepFn | None = None,
        options: CompileOptions = CompileOptions(),
        strategy: tf.distribute.Strategy | None = None,
    ) -> None:
        if not isinstance(model, keras.Model):
            raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")
        from gradloop.loop.keras_steps import refuse_own_compile  # imports this module

        refuse_own_compile(model)  # a GAN's compile(d_optimizer, ...) is the user's to call
        self.model = model
        self.strategy = strategy or tf.distribute.get_strategy()
        self.optimizer = keras.optimizers.get(optimizer)
        self.loss = loss if isinstance(loss, (list, tuple, dict)) else keras.losses.get(loss)
        self.compile_args = dict(loss=loss, loss_weights=loss_weights, metrics=_listed(metrics),
                                 weighted_metrics=_listed(weighted_metrics))
        with self.strategy.scope():  # metric variables aggregate across replicas
            # Keras' own loss and metrics: fit's weighting, per-output losses, "accuracy" and names.
            # auto_scale_loss=False: a mixed-precision optimizer is the caller's choice, as the step's is.
            model.compile(optimizer=self.optimizer, auto_scale_loss=False, **self.compile_args)
            # float64 sums: a restore splits a summed metric evenly over the replicas, unlike the split
            # the run had; in float64 that other order's rounding stays far below the float32 result's.
            self.loss_tracker = keras.metrics.Mean(name="loss", dtype="float64")
        self.options = options
        self._train_step = train_step or step_lib.train_step
        self._class_weight: dict[int, float] | None = None
        self._train_fn = self._test_fn = self._predict_fn = None
        self._outputs = None  # the model's output structure, of tf.TensorSpec with an unknown batch size
        self._metrics_built = False
        self._xla_groups = options.jit_compile is True  # in-memory groups on XLA (fit decides for None)
        _warn_if_steps_are_overridden(model)

    def plan_steps(self, total_steps: int | None) -> None:
        """Before a fit of ``total_steps`` steps: with ``jit_compile=None``, whether its in-memory step
        groups run on XLA: in a long fit (where the compile pays off) of a model without convolutions
        (XLA's CPU convolutions are far slower than oneDNN's). Decided on the fit's whole length, a
        resumed fit's too, so that a resume computes on what the unstopped run did."""
        if self.options.jit_compile is None:
            self._xla_groups = xla_by_default(self.model, total_steps)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """The metrics the results come from: Keras' compiled metrics and per-output
        losses and the layers' own, without Keras' loss tracker (``loss_tracker`` replaces it)."""
        keras_tracker = getattr(self.model, "_loss_tracker", None)
        return [m for m in self.model.metrics if m is not keras_tracker]

    @property
    def flat_metrics(self) -> list[keras.metrics.Metric]:
        """Each metric on its own (Keras' compiled metrics unpacked; once built), in the results' order."""
        flat = []
        for metric in self.metrics:
            inner = getattr(metric, "metrics", None)
            flat.extend(inner if isinstance(inner, list) else [metric])
        return flat

    @property
    def metric_names(self) -> list[str]:
        """The results' names besides ``loss`` (known once ``build`` has seen a batch)."""
        return [name for name in self.results() if name != "loss"]

    def compute_loss(
        self, y: Any, y_pred: Any, sample_weight: Any = None, *, x: Any = None, training: bool = True
    ) -> tf.Tensor:
        """Keras' loss of the batch (``model.compute_loss``: each output's loss, ``loss_weights``,
        sample weights, ``model.losses``; a model's own ``compute_loss`` too); under a strategy,
        this replica's share of the global batch's loss (the gradient all-reduce sums shares),
        exact for losses that average over the batch (Keras' default reduction)."""
        loss = self.model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            # Keras divides each replica's batch mean by the replica count, which is the global
            # mean only when the batch splits evenly; weigh it by the replica's share of the batch.
            local = _batch_size(y_pred)
            loss *= tf.cast(context.num_replicas_in_sync * local / distribute.global_batch_size(_first(y_pred)), loss.dtype)
        return loss

    def build(self, data: tf.data.Dataset) -> None:
        """Create the variables (model, optimizer, metrics) eagerly, once, from ``data``'s first batch.

        ``fit`` calls it; call it first to restore a checkpoint into the variables.
        """
        has_targets = keras.utils.unpack_x_y_sample_weight(in_memory.element_structure(data))[1] is not None
        if self._outputs is not None and (self._metrics_built or not has_targets):
            return
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(in_memory.first_batch(data))
        with self.strategy.scope():
            y_pred = self.model(x)
            if self._outputs is None:
                distribute.check_in_scope(self.strategy, self.model.trainable_variables, "model")
                self.optimizer.build(self.model.trainable_variables)
                if self.options.fused_optimizer:
                    optimizer_kernels.use_fused_kernels(self.optimizer)
            if y is not None:
                # Keras makes its loss's and metrics' variables on their first batch (with targets: a
                # predict may come first): here, in scope and outside any compiled function, so that
                # they are made once and mirrored.
                self.model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
                self.model.compute_metrics(x, y, y_pred, sample_weight)
                self.reset_metrics()
                self._metrics_built = True
        if self._outputs is None:
            # Only the rank is fixed: a model of variable-length sequences predicts other lengths too.
            self._outputs = tf.nest.map_structure(lambda t: tf.TensorSpec([None] * len(t.shape), t.dtype), y_pred)
            self._train_fn = self.make_train_function()
            self._test_fn = self.make_test_function()
            self._predict_fn = self.make_predict_function()

    def set_class_weight(self, class_weight: Mapping[int, float] | None) -> None:
        """Weigh each training sample by its class (``fit(class_weight=...)``), as Keras does;
        the training function is traced again when the weights change."""
        class_weight = None if class_weight is None else {int(k): float(v) for k, v in class_weight.items()}
        if class_weight != self._class_weight:
            self._class_weight = class_weight
            if self._train_fn is not None:
                self._train_fn = self.make_train_function()

    def make_train_function(self) -> MultiStepFn:
        """``run(iterator, num_steps)`` over the training step (see :meth:`_make_multi_step`); on
        in-memory data (an :class:`~gradloop.loop.in_memory.Position` for an iterator), the group of steps
        gathers its batches by index and is XLA-compiled (see :meth:`_make_in_memory_steps`)."""
        on_dataset = self._make_multi_step(self._train_step, class_weight=self._class_weight)
        in_memory_steps = self._make_in_memory_steps(self._train_step, class_weight=self._class_weight)

        def run(iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            if isinstance(iterator, in_memory.Position):
                return in_memory_steps(iterator, int(num_steps))
            return on_dataset(iterator, num_steps)

        # Traces of every compiled function behind it (tf.function's counter, as for the other functions).
        run.experimental_get_tracing_count = lambda: (
            on_dataset.experimental_get_tracing_count() + in_memory_steps.experimental_get_tracing_count())
        return run

    def make_test_function(self) -> MultiStepFn:
        """``run(iterator, num_steps)`` over the inference step: forward pass and loss, no update."""
        return self._make_multi_step(step_lib.test_step)

    def _make_multi_step(self, step_fn: step_lib.StepFn, class_weight: Mapping[int, float] | None = None) -> MultiStepFn:
        """Build ``run(iterator, num_steps) -> (steps_done, metric results)``, compiled once.

            for _ in range(num_steps):
                x, y, sample_weight = next(iterator)  # stop early when the epoch's data runs out
                loss, y_pred = step_fn(trainer, x, y[, sample_weight])
                update metrics
            return steps done, {metric name: running result}

        ``num_steps`` must be a tensor: a Python int would retrace per value. An
        epoch with a smaller last batch has an unknown batch dimension in its
        element spec, so that batch runs through the same trace. The results come back with
        the count, so reporting them costs no further call per group of steps.
        """
        one_step = self._one_step(step_fn, class_weight)
        if self.options.jit_compile:
            one_step = tf.function(one_step, jit_compile=True)
        if distribute.is_distributed(self.strategy):
            replica_step = one_step
            one_step = lambda x, y, w: self.strategy.run(replica_step, args=(x, y, w))  # noqa: E731

        def train_on(batch: Any, done: tf.Tensor, carry: tuple) -> tuple:
            one_step(*keras.utils.unpack_x_y_sample_weight(batch))
            return carry

        @tf.function
        def run(iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            done, _ = _for_batches(iterator, num_steps, train_on, ())
            return done, self.results()

        return run

    def _one_step(self, step_fn: step_lib.StepFn, class_weight: Mapping[int, float] | None) -> Callable:
        """``one_step(x, y, sample_weight)``: the step, then the metrics; class weights applied first."""
        weigh = None if class_weight is None else _class_weights(class_weight)

        def one_step(x: Any, y: Any, sample_weight: Any) -> None:
            if weigh is not None:  # on each replica's part of the batch, its own labels
                sample_weight = weigh(y, sample_weight)
            loss, y_pred = step_lib.call_step(step_fn, self, x, y, sample_weight)
            self.update_metrics(loss, y, y_pred, sample_weight, x=x)

        return one_step

    def _make_in_memory_steps(self, step_fn: step_lib.StepFn, class_weight: Mapping[int, float] | None) -> Callable:
        """``run(position, num_steps) -> (steps done, metric results)`` on in-memory data, the
        TensorFlow counterpart of a ``jax.lax.scan`` over steps:

            for i in range(num_steps):     # one compiled call; XLA compiles it whole
                x, y, w = gather batch (first + i) of the epoch's order from the tensors
                one_step(x, y, w)

        A batch's shape is static (XLA compiles one shape), so the full batches run in one
        call and a partial last batch in a call compiled for its size (under the default, on the
        graph). Without XLA (``jit_compile=False``, or XLA failing to compile a group under the
        default) the same function runs on the graph.
        """
        one_step = self._one_step(step_fn, class_weight)
        xla_refused = False
        groups: dict[tuple[int, int, bool], Callable] = {}

        def group(batch_size: int, size: int, xla: bool) -> Callable:
            """The compiled steps over batches of ``size`` rows (``batch_size`` but in a partial last batch)."""
            if (batch_size, size, xla) not in groups:

                def steps(tensors: Any, order: tf.Tensor, first: tf.Tensor, num_steps: tf.Tensor) -> dict[str, tf.Tensor]:
                    step = first
                    while step < first + num_steps:  # not tf.range: XLA would compile once per count
                        batch = in_memory.gather_batch(tensors, order, step, batch_size, size)
                        one_step(*keras.utils.unpack_x_y_sample_weight(batch))
                        step += 1
                    return self.results()

                groups[batch_size, size, xla] = tf.function(steps, jit_compile=xla)
            return groups[batch_size, size, xla]

        def call(size: int, position: in_memory.Position, num_steps: int) -> dict[str, tf.Tensor]:
            nonlocal xla_refused
            epoch = position.epoch
            b = epoch.data.batch_size
            args = (epoch.data.tensors, epoch.order, tf.constant(position.step, tf.int32), tf.constant(num_steps, tf.int32))
            # A partial last batch is one step an epoch: by default it runs on the graph, whose trace
            # costs a fraction of XLA's compile for its shape.
            partial_on_graph = size != b and self.options.jit_compile is None
            if not self._xla_groups or xla_refused or partial_on_graph:
                return group(b, size, False)(*args)
            try:
                return group(b, size, True)(*args)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as exc:
                if self.options.jit_compile or not _xla_refused(exc):
                    raise
                xla_refused = True  # nothing ran: XLA refuses to compile before the first step
                warnings.warn(f"XLA cannot compile this training step ({_first_line(exc)}); it runs on TensorFlow's "
                              "graph instead (CompileOptions(jit_compile=False) says so up front)", stacklevel=2)
                return group(b, size, False)(*args)

        def run(position: in_memory.Position, num_steps: int) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            epoch, results, done = position.epoch, None, 0
            b = epoch.data.batch_size
            full = min(position.step + num_steps, epoch.stop, epoch.data.n // b) - position.step  # steps of whole batches
            if full > 0:
                results = call(b, position, full)
                position.step += full
                done += full
            if done < num_steps and position.step < epoch.stop:  # the epoch's partial last batch
                results = call(epoch.batch_size_at(position.step), position, 1)
                position.step += 1
                done += 1
            return tf.constant(done), results if results is not None else self.results()

        run.experimental_get_tracing_count = lambda: sum(g.experimental_get_tracing_count() for g in groups.values())
        return run

    def make_predict_function(self) -> Callable[[Any, tf.Tensor], "tuple[tf.Tensor, list[tf.Tensor]]"]:
        """``run(iterator, num_steps) -> (steps done, [each output of those steps, concatenated])``.

        Inputs are the batches' ``x`` (a ``(x, y)`` batch's ``y`` is ignored), run in
        inference mode; under a strategy each output is this process's replicas' parts
        joined in their order, which is the data's (a multi-worker job: each worker's share)."""
        flat_specs = tf.nest.flatten(self._outputs)

        def one_step(x: Any) -> list[tf.Tensor]:
            return tf.nest.flatten(self.model(x, training=False))

        if self.options.jit_compile:
            one_step = tf.function(one_step, jit_compile=True)
        if distribute.is_distributed(self.strategy):
            replica_step = one_step

            def one_step(x: Any) -> list[tf.Tensor]:
                outputs = self.strategy.run(replica_step, args=(x,))
                return [tf.concat(self.strategy.experimental_local_results(o), axis=0) for o in outputs]

        def predict_on(batch: Any, done: tf.Tensor, arrays: list[tf.TensorArray]) -> list[tf.TensorArray]:
            x, _, _ = keras.utils.unpack_x_y_sample_weight(batch)
            return [a.write(done, o) for a, o in zip(arrays, one_step(x))]

        @tf.function
        def run(iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
            arrays = [tf.TensorArray(s.dtype, size=0, dynamic_size=True, infer_shape=False, element_shape=s.shape)
                      for s in flat_specs]
            done, arrays = _for_batches(iterator, num_steps, predict_on, arrays)
            return done, [a.concat() for a in arrays]

        return run

    def update_metrics(self, loss: tf.Tensor, y: Any, y_pred: Any, sample_weight: Any = None, *, x: Any = None) -> None:
        """Accumulate one batch: the loss weighted by batch size (so the epoch
        figure is the mean over samples, as Keras reports it), then Keras' metrics
        (``model.compute_metrics``: ``metrics`` unweighted, ``weighted_metrics`` with ``sample_weight``).

        ``loss`` is this replica's share of the global-batch mean, so the tracker
        adds ``loss * global`` to its total and the local sample count to its count;
        summed over replicas that is exactly the global batch's mean."""
        local = _batch_size(y_pred)
        share = tf.cast(loss, tf.float32) * distribute.global_batch_size(_first(y_pred))
        self.loss_tracker.update_state(tf.math.divide_no_nan(share, local), sample_weight=local)
        self.model.compute_metrics(x, y, y_pred, sample_weight)

    def make_iterator(self, data: tf.data.Dataset | in_memory.Epoch):
        """An iterator over ``data``, distributed over the strategy's replicas:
        what ``fit`` runs on, and what a checkpoint restores a position into.
        In-memory data on one replica: a :class:`~gradloop.loop.in_memory.Position` in it."""
        if isinstance(data, in_memory.Epoch) and not distribute.is_distributed(self.strategy):
            return in_memory.Position(data)
        return distribute.make_iterator(self.strategy, in_memory.as_dataset(data))

    def reset_metrics(self) -> None:
        for metric in (self.loss_tracker, *self.metrics):
            metric.reset_state()

    def results(self) -> dict[str, tf.Tensor]:
        """The running loss and metrics, by name as Keras names them (in a compiled step group too)."""
        results = {"loss": tf.cast(self.loss_tracker.result(), tf.float32)}
        for metric in self.metrics:
            value = metric.result()
            results.update(value if isinstance(value, dict) else {metric.name: value})
        return results


def _for_batches(iterator, num_steps: tf.Tensor, body: Callable, carry: Any) -> tuple[tf.Tensor, Any]:
    """In a compiled function: ``for each of up to num_steps batches: carry = body(batch, index, carry)``,
    stopping early when the iterator runs out; returns (batches done, carry)."""
    done = tf.constant(0, tf.int32)
    for _ in tf.range(num_steps):
        batch = iterator.get_next_as_optional()
        if not batch.has_value():
            break
        carry = body(batch.get_value(), done, carry)
        done += 1
    return done, carry


def xla_by_default(model: keras.Model, total_steps: int | None) -> bool:
    """Whether ``jit_compile=None`` runs a fit of ``total_steps`` steps of ``model`` on in-memory data on XLA."""
    long_fit = total_steps is not None and total_steps >= XLA_AUTO_MIN_STEPS
    return long_fit and not _has_convolutions(model)


def _has_convolutions(model: keras.Model) -> bool:
    """Whether any of the model's layers (nested ones too) is one of Keras' convolutions."""
    convolutions = tuple(getattr(keras.layers, name) for name in dir(keras.layers) if "Conv" in name and name[0].isupper())
    return any(isinstance(layer, convolutions) for layer in model._flatten_layers(include_self=False))


def _xla_refused(exc: tf.errors.OpError) -> bool:
    """Whether TensorFlow's error says XLA could not compile the function (not that a step failed)."""
    return any(words in exc.message for words in ("XLA", "xla", "compile", "Compil"))


def _first_line(exc: tf.errors.OpError) -> str:
    lines = [line.strip() for line in exc.message.strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:200]


def _warn_if_steps_are_overridden(model: keras.Model) -> None:
    """A model's own ``train_step``/``test_step`` is ``model.fit``'s; here the step is ``train_step=``."""
    for name in ("train_step", "test_step"):
        if getattr(type(model), name, None) is not getattr(keras.Model, name, None):
            warnings.warn(
                f"{type(model).__name__}.{name} is not used: gradloop runs its own step; pass yours as "
                "Trainer(train_step=step_fn) (see gradloop.loop.step)", stacklevel=3,
            )


def _listed(metrics: MetricsSpec) -> Any:
    """``metrics`` as ``model.compile`` takes them: a list, or a structure per output."""
    if metrics is None or isinstance(metrics, (dict, list)):
        return metrics
    return list(metrics)


def _first(y: Any) -> tf.Tensor:
    return tf.nest.flatten(y)[0]


def _batch_size(y: Any) -> tf.Tensor:
    return tf.cast(tf.shape(_first(y))[0], tf.float32)


def _class_weights(class_weight: Mapping[int, float]) -> Callable[[Any, Any], tf.Tensor]:
    """``(y, sample_weight) -> the weight of each sample's class``, read from ``y`` as Keras reads
    it: class indices, or one-hot rows (their argmax); a class without a weight weighs 1."""
    if not class_weight or min(class_weight) < 0:
        raise ValueError(f"class_weight must map class indices 0, 1, ... to weights, got {class_weight!r}")
    # One more entry, 1.0, for every class above the largest given.
    table = tf.constant([class_weight.get(c, 1.0) for c in range(max(class_weight) + 1)] + [1.0], tf.float32)

    def weigh(y: Any, sample_weight: Any) -> tf.Tensor:
        if sample_weight is not None:
            raise ValueError("the data has sample weights and class_weight was given: give one or the other")
        if tf.nest.is_nested(y):
            raise ValueError("class_weight works for a model with one output; give each sample a weight instead")
        if y.shape.rank >= 2 and y.shape[-1] != 1:
            classes = tf.argmax(y, axis=-1, output_type=tf.int32)
        else:
            classes = tf.cast(tf.round(tf.reshape(y, [-1]) if y.shape.rank >= 2 else y), tf.int32)
        return tf.gather(table, tf.clip_by_value(classes, 0, len(table) - 1))

    return weigh
