"""What a step works with: a Keras model compiled for a custom loop.

Keras' ``model.compile`` gathers a model, optimizer, loss and metrics and
``fit`` runs them; here the gathering is :class:`CompiledModel` and the loop
is :class:`gradloop.loop.trainer.Trainer`, its subclass. The loss and metrics are
Keras' own (``model.compile`` is called with them), so sample weights, several
outputs, ``loss_weights`` and the names in the history are exactly ``fit``'s.
A step function (:mod:`gradloop.loop.step`) sees these parts as ``trainer.model``,
``trainer.optimizer``, ``trainer.compute_loss`` and the metrics; the loop
calls ``build``, ``make_iterator``, ``reset_metrics``, ``results`` and the
compiled functions that ``build`` makes (as Keras' ``make_train_function``,
from :mod:`gradloop.loop.compiled_steps`, on XLA where :mod:`gradloop.loop.xla`
says), and hands ``model`` to the callbacks.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from gradloop.loop import compiled_steps, distribute, in_memory, optimizer_kernels, xla
from gradloop.loop import step as step_lib
from gradloop.loop.accepted import MAX_INT32
from gradloop.loop.compiled_steps import MultiStepFn

# A loss, or one per output (a list, or a dict by output name), as model.compile takes it.
LossSpec = Any
# Metrics as model.compile takes them: a list, or a list/dict of them per output.
MetricsSpec = "Sequence[keras.metrics.Metric | str] | Mapping[str, Any] | None"


@dataclass(frozen=True)
class CompileOptions:
    """Choices that change the compiled function; changing one means a new trace.

    ``steps_per_execution``: steps run inside one compiled call (a
    ``tf.while_loop`` over the iterator), like Keras' ``steps_per_execution``
    and Orbit's ``steps_per_loop``. Callbacks' batch hooks run once per call.
    ``jit_compile``: XLA. None (the default): in a ``fit`` of at least
    ``XLA_AUTO_MIN_STEPS`` steps (:mod:`gradloop.loop.xla`), a group of steps on in-memory data
    (:class:`gradloop.loop.in_memory.InMemory`) is one XLA computation, gathers
    included, falling back to TensorFlow's graph, with a warning, when XLA
    cannot compile it (an op it lacks); an epoch's partial last batch, shorter
    fits, and steps on datasets run on the graph. True: XLA for every in-memory
    group, the partial batch's too, and for each step on a dataset, no
    fall-back. False: no XLA.
    ``fused_optimizer``: run Keras Adam's and SGD-with-momentum's update on
    TensorFlow's fused kernels (same formula; see :mod:`gradloop.loop.optimizer_kernels`).
    ``planned_steps``: the fit length the XLA default decides for; None (the default): the
    fit's own ``epochs * steps per epoch``. A caller that times a short fit as a longer run's
    start (bench) gives the longer run's length, so that the short fit computes as that run would.
    """

    steps_per_execution: int = 32
    jit_compile: bool | None = None
    fused_optimizer: bool = True
    planned_steps: int | None = None

    def __post_init__(self) -> None:
        spe = self.steps_per_execution
        if isinstance(spe, bool) or not isinstance(spe, int) or not 1 <= spe <= MAX_INT32:  # an int32 tensor
            raise ValueError(f"steps_per_execution must be an integer from 1 to {MAX_INT32}, got {spe!r}")
        if self.jit_compile not in (None, True, False):
            raise ValueError(
                f"jit_compile must be None (XLA where it compiles), True or False, got {self.jit_compile!r}"
            )
        planned = self.planned_steps
        if planned is not None and (isinstance(planned, bool) or not isinstance(planned, int) or planned < 1):
            raise ValueError(f"planned_steps must be None (the fit's own length) or an integer >= 1, got {planned!r}")


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
        self.compile_args = dict(
            loss=loss, loss_weights=loss_weights, metrics=_listed(metrics), weighted_metrics=_listed(weighted_metrics)
        )
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
        groups run on XLA (:func:`gradloop.loop.xla.xla_by_default`), decided for
        ``options.planned_steps`` when given, else for ``total_steps``. Decided on the fit's whole
        length, a resumed fit's too, so that a resume computes on what the unstopped run did."""
        if self.options.jit_compile is None:
            planned = self.options.planned_steps
            self._xla_groups = xla.xla_by_default(self.model, planned if planned is not None else total_steps)

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
            loss *= tf.cast(
                context.num_replicas_in_sync * local / distribute.global_batch_size(_first(y_pred)), loss.dtype
            )
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
        """``run(iterator, num_steps)`` over the training step (see
        :func:`~gradloop.loop.compiled_steps.make_multi_step`); on in-memory data (an
        :class:`~gradloop.loop.in_memory.Position` for an iterator), the group of steps gathers its
        batches by index and is XLA-compiled (see :func:`~gradloop.loop.compiled_steps.make_in_memory_steps`)."""
        one_step = compiled_steps.make_one_step(self._train_step, self, self.update_metrics, self._class_weight)
        jit_compile = self.options.jit_compile
        on_dataset = compiled_steps.make_multi_step(
            one_step, self.results, jit_compile=jit_compile, strategy=self.strategy
        )
        in_memory_steps = compiled_steps.make_in_memory_steps(
            one_step, self.results, jit_compile=jit_compile, xla_groups=lambda: self._xla_groups
        )

        def run(iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            if isinstance(iterator, in_memory.Position):
                return in_memory_steps(iterator, int(num_steps))
            return on_dataset(iterator, num_steps)

        # Traces of every compiled function behind it (tf.function's counter, as for the other functions).
        run.experimental_get_tracing_count = lambda: (
            on_dataset.experimental_get_tracing_count() + in_memory_steps.experimental_get_tracing_count()
        )
        return run

    def make_test_function(self) -> MultiStepFn:
        """``run(iterator, num_steps)`` over the inference step: forward pass and loss, no update."""
        one_step = compiled_steps.make_one_step(step_lib.test_step, self, self.update_metrics)
        return compiled_steps.make_multi_step(
            one_step, self.results, jit_compile=self.options.jit_compile, strategy=self.strategy
        )

    def make_predict_function(self) -> Callable[[Any, tf.Tensor], tuple[tf.Tensor, list[tf.Tensor]]]:
        """``run(iterator, num_steps) -> (steps done, [each output of those steps, concatenated])``.

        Inputs are the batches' ``x`` (a ``(x, y)`` batch's ``y`` is ignored), run in
        inference mode; under a strategy each output is this process's replicas' parts
        joined in their order, which is the data's (a multi-worker job: each worker's share)."""
        return compiled_steps.make_predict_steps(
            self.model, self._outputs, jit_compile=self.options.jit_compile, strategy=self.strategy
        )

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


def _warn_if_steps_are_overridden(model: keras.Model) -> None:
    """A model's own ``train_step``/``test_step`` is ``model.fit``'s; here the step is ``train_step=``."""
    for name in ("train_step", "test_step"):
        if getattr(type(model), name, None) is not getattr(keras.Model, name, None):
            warnings.warn(
                f"{type(model).__name__}.{name} is not used: gradloop runs its own step; pass yours as "
                "Trainer(train_step=step_fn) (see gradloop.loop.step)",
                stacklevel=3,
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
