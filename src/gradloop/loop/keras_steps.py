"""The model's own steps: a Keras model that brings its ``train_step`` trains as ``model.fit`` trains it.

    gan.compile(d_optimizer=..., g_optimizer=..., loss_fn=...)   # the user's compile, its own arguments
    trainer = gradloop.Trainer(gan)                              # no optimizer=, no loss=: the model's steps
    trainer.fit(images, epochs=10).history                       # {"d_loss": [...], "g_loss": [...]}, as fit's

One compiled call runs a group of ``steps_per_execution`` steps, each as Keras runs it:

    for each batch of the group:
        logs = strategy.run(model.train_step, batch)    # mean over replicas, as Keras reduces them
        NaN guard on every value whose name holds "loss"
    if the logs' names are model.metrics' names: logs = the metrics' results   (Keras' rule)

``model.metrics`` are reset at each epoch's start; ``evaluate`` runs ``model.test_step`` and
``predict`` ``model.predict_step`` (Keras' defaults unless the model overrides them). The loop
around it (epochs, validation, callbacks, checkpoints) is :class:`gradloop.loop.trainer.Trainer`'s.
A checkpoint names every optimizer the model holds (``model.d_optimizer`` too) and every
``keras.random.SeedGenerator``, so a resumed run draws the same noise (see :func:`checkpoint_parts`).
"""

from __future__ import annotations

import contextlib
import inspect
import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf

from gradloop.errors import ConfigError, listed
from gradloop.loop import distribute, in_memory, release
from gradloop.loop.compiled import CompileOptions
from gradloop.loop.compiled_steps import class_weights
from gradloop.loop.state import LoopState
from gradloop.loop.trainer import Trainer


def overrides(model: keras.Model, name: str) -> bool:
    """Whether ``model``'s class defines its own ``name`` (``"train_step"``, ``"compile"``, ...)."""
    return getattr(type(model), name, None) is not getattr(keras.Model, name, None)


def refuse_own_compile(model: keras.Model) -> None:
    """gradloop's own step compiles the model with ``optimizer=`` and ``loss=``; a ``compile`` that takes
    other arguments (a GAN's ``compile(d_optimizer, g_optimizer, loss_fn)``) is the user's to call."""
    if not overrides(model, "compile"):
        return
    parameters = inspect.signature(type(model).compile).parameters
    named = {
        name: p for name, p in parameters.items() if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    takes_keras = {"optimizer", "loss"} <= set(parameters) or any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    required = [name for name, p in named.items() if p.default is p.empty and name not in ("optimizer", "loss")]
    if takes_keras and not required:
        return
    own = ", ".join(named)
    raise ConfigError(
        f"{type(model).__name__}.compile takes its own arguments ({own}): call model.compile({own}) yourself and "
        "give the compiled model alone, Trainer(model), to train it with its own train_step"
    )


def tracked_optimizers(model: keras.Model) -> dict[str, keras.optimizers.Optimizer]:
    """Every optimizer ``model`` holds, by attribute name: ``model.optimizer`` and those kept as attributes
    (in a dict attribute: ``optimizers.generator``)."""
    found = {"optimizer": model.optimizer} if model.optimizer is not None else {}
    for name, value in vars(model).items():
        if name.startswith("_self_"):  # TensorFlow's tracking tables, which list the attributes again
            continue
        items = value.items() if isinstance(value, Mapping) else [(None, value)]  # self.optimizers = {name: ...}
        for key, item in items:
            if isinstance(item, keras.optimizers.Optimizer) and all(item is not o for o in found.values()):
                found[name.lstrip("_") + ("" if key is None else f".{key}")] = item
    return found


def tracked_seed_generators(model: keras.Model) -> dict[str, keras.random.SeedGenerator]:
    """Every ``keras.random.SeedGenerator`` of ``model`` and its layers, by a name that a model of the same
    architecture built again gives it too: its attribute (``seed_generator``), in the model's n-th layer
    ``layer_n.seed_generator`` (layers' own names carry a per-process counter)."""
    found: dict[str, keras.random.SeedGenerator] = {}
    for index, layer in enumerate(model._flatten_layers(include_self=True)):
        # Public attributes first (``self.seed_generator``), then Keras' own list of the layer's generators.
        attributes = sorted(vars(layer).items(), key=lambda item: item[0].startswith("_"))
        for attribute, value in attributes:
            items = list(enumerate(value)) if isinstance(value, (list, tuple)) else [(None, value)]
            for position, item in items:
                if isinstance(item, keras.random.SeedGenerator) and all(item is not g for g in found.values()):
                    name = attribute.lstrip("_") + ("" if position is None else f".{position}")
                    found[f"{'' if layer is model else f'layer_{index}.'}{name}"] = item
    return found


def checkpoint_parts(trainer: Any) -> dict[str, Any]:
    """What a checkpoint of ``trainer`` names besides gradloop's usual bundle: for a model's own step, its
    optimizers by attribute name and its seed generators' states (empty for gradloop's own step)."""
    if not isinstance(trainer, ModelStepTrainer):
        return {}
    return {
        "optimizers": dict(trainer.optimizers),
        "seed_generators": {name: generator.state for name, generator in trainer.seed_generators.items()},
    }


class ModelStepTrainer(Trainer):
    """A :class:`Trainer` whose steps are the model's own; ``gradloop.Trainer(model)`` without
    ``optimizer=`` and ``loss=`` makes one.

    ``model``: compiled by its user (``model.compile(...)``, or the model's own ``compile``).
    ``options``: steps per compiled call; ``jit_compile`` None follows the model's own
    ``jit_compile`` (Keras' choice at compile), True/False override it. ``strategy``: as for
    :class:`Trainer` (by default the one whose scope built the model, as Keras takes it).
    ``nan_guard``: a :class:`gradloop.loop.callbacks.nan_guard.StopOnNonFiniteLoss` whose
    variables record the first step where a logged value named ``*loss*`` is not finite;
    put the guard itself in ``fit``'s callbacks.
    """

    def __init__(
        self,
        model: keras.Model,
        *,
        optimizer: Any = None,
        loss: Any = None,
        metrics: Any = (),
        loss_weights: Any = None,
        weighted_metrics: Any = None,
        train_step: Any = None,
        options: CompileOptions = CompileOptions(),
        strategy: tf.distribute.Strategy | None = None,
        nan_guard: Any = None,
    ) -> None:
        if not isinstance(model, keras.Model):
            raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")
        given = [
            name
            for name, value in (
                ("optimizer", optimizer),
                ("loss", loss),
                ("metrics", metrics),
                ("loss_weights", loss_weights),
                ("weighted_metrics", weighted_metrics),
                ("train_step", train_step),
            )
            if value is not None and value != ()
        ]
        if given:
            raise ConfigError(
                f"Trainer(model) runs the model's own train_step with what its compile() gave it; "
                f"{', '.join(given)} belong in model.compile(...), or give optimizer= and loss= both"
            )
        name = type(model).__name__
        if not model.compiled:
            raise ConfigError(
                f"{name} is not compiled: call model.compile(...) first (its own compile, if it has one), "
                "or give Trainer optimizer= and loss= to train it with gradloop's step"
            )
        self.model, self.options = model, options
        self.strategy = strategy or model.distribute_strategy
        self.optimizers = tracked_optimizers(model)
        self.seed_generators = tracked_seed_generators(model)
        if not self.optimizers:
            raise ConfigError(
                f"{name} holds no optimizer: give model.compile an optimizer (or keep yours as an attribute)"
            )
        self.optimizer = model.optimizer or next(iter(self.optimizers.values()))  # the one fit finalizes (EMA)
        self.loss_tracker = None  # the model's own metrics hold its losses
        self.nan_guard = nan_guard
        self.state = LoopState()
        self._class_weight: dict[int, float] | None = None
        self._train_fn = self._test_fn = self._predict_fn = None
        self._outputs = None
        self._xla_groups = False  # in-memory data runs as a dataset here: no gathered groups
        self._jit = bool(model.jit_compile) if options.jit_compile is None else options.jit_compile
        self._steps_done = tf.Variable(0, dtype=tf.int64, trainable=False)  # the NaN guard's step number
        self._inference = False

    # ------------------------------------------------------------------ what the loop calls

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        """``model.metrics``: what Keras resets every epoch and reads the epoch's logs from."""
        return list(self.model.metrics)

    def reset_metrics(self) -> None:
        self.model.reset_metrics()

    def results(self) -> dict[str, tf.Tensor]:
        return _flat(self.model.get_metrics_result())

    def make_iterator(self, data: tf.data.Dataset | in_memory.Epoch):
        """Arrays in memory (``InMemory``) run as their dataset: the model's step takes whole batches."""
        return distribute.make_iterator(self.strategy, in_memory.as_dataset(data))

    def build(self, data: tf.data.Dataset) -> None:
        """Make the compiled functions; for training, trace the training one (no step runs) so that the
        optimizers' and metrics' variables exist, as a checkpoint restores into them. The step's errors
        (numpy inside it, a dict it does not return, a variable without a gradient) are raised here."""
        if self._train_fn is None:
            self._train_fn = self.make_train_function()
            self._test_fn = self._make_steps(self.model.test_step, "test_step")
        if not self._inference and not self._train_fn.traced:
            if distribute.is_distributed(self.strategy):
                # As fit does under a strategy: the optimizer's and compiled metrics' variables made before the
                # trace, not inside strategy.run, where their initializers are left unfed (cond/Placeholder).
                with self.strategy.scope():
                    self.model._symbolic_build(data_batch=next(iter(in_memory.as_dataset(data).take(1))))
            iterator = self.make_iterator(data)
            try:
                self._train_fn.trace(iterator)
            finally:
                release.release_iterator(iterator)
            self._warn_of_unoptimized()
            self._warn_of_stateful_random()

    def make_train_function(self) -> Callable:
        return self._make_steps(self.model.train_step, "train_step", class_weight=self._class_weight, train=True)

    def make_test_function(self) -> Callable:
        return self._make_steps(self.model.test_step, "test_step")

    def evaluate(self, data: tf.data.Dataset, *, callbacks: Any = None) -> dict[str, float]:
        """``model.test_step`` over ``data``, as ``model.evaluate``: the metrics reset first, then the
        last step's logs (the metrics' results when their names match, Keras' rule)."""
        with self._for_inference():
            return super().evaluate(data, callbacks=callbacks)

    def predict(self, data: Any, *, batch_size: int = 32, callbacks: Any = None) -> Any:
        """``model.predict_step`` over ``data``, outputs joined, as ``model.predict``."""
        with self._for_inference():
            if not isinstance(data, tf.data.Dataset):
                data = tf.data.Dataset.from_tensor_slices((data,)).batch(batch_size)
            if self._predict_fn is None:
                structure = _traced(tf.function(self.model.predict_step), "predict_step", data.element_spec)
                self._outputs = tf.nest.map_structure(
                    lambda t: tf.TensorSpec([None] * len(t.shape), t.dtype), structure
                )
                self._predict_fn = self.make_predict_function()
            return super().predict(data, batch_size=batch_size, callbacks=callbacks)

    def _train_epoch(self, steps: int | None, callbacks, end_groups_every: int | None) -> dict[str, float]:
        """Trainer's epoch, with the NaN guard's step count set to the epoch's first step."""
        self._steps_done.assign(self.state.epoch * (steps or 0) + self.state.step)
        return super()._train_epoch(steps, callbacks, end_groups_every)

    def _warn_of_unoptimized(self) -> None:
        """Once traced: name the trainable variables that no optimizer of the model updates (Keras is silent)."""
        updated = {id(v) for o in self.optimizers.values() for v in getattr(o, "_trainable_variables", None) or []}
        if not updated:
            return
        left = [v.path for v in self.model.trainable_variables if id(v) not in updated]
        if left:
            warnings.warn(
                f"{_where(self.model, 'train_step')} gives none of the model's optimizers {listed(left, 3)}: they "
                "never train; apply gradients to them, or make them non-trainable",
                stacklevel=3,
            )

    def _warn_of_stateful_random(self) -> None:
        """Once traced: a step drawing from ``tf.random.*`` (a state no checkpoint holds) cannot resume exactly."""
        if self._train_fn.stateful_random:
            warnings.warn(
                f"{_where(self.model, 'train_step')} draws from stateful random ops "
                f"({', '.join(self._train_fn.stateful_random)}, from tf.random.*): a resumed run draws other numbers "
                "than an unbroken one; draw with keras.random.* and seed=a keras.random.SeedGenerator to resume "
                "bit-exactly",
                stacklevel=3,
            )

    @contextlib.contextmanager
    def _for_inference(self):
        previous, self._inference = self._inference, True
        try:
            yield
        finally:
            self._inference = previous

    # ------------------------------------------------------------------ the compiled functions

    def _make_steps(self, step_method: Callable, name: str, *, class_weight=None, train: bool = False) -> _Steps:
        """``run(iterator, num_steps) -> (steps done, logs)`` over the model's ``step_method``:

            logs = step(next batch)                       # at least one batch
            for the rest of num_steps, while batches remain: logs = step(next batch)
            return done, model.metrics' results if their names are the logs' names, else logs

        The step runs as Keras runs it: not converted by autograph, under ``strategy.run``, the
        logs averaged over replicas, XLA-compiled when ``jit_compile``."""
        model, strategy, where = self.model, self.strategy, _where(self.model, name)
        weigh = None if class_weight is None else class_weights(class_weight)

        @tf.autograph.experimental.do_not_convert
        def replica_step(data: Any) -> dict[str, Any]:
            if weigh is not None:
                x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
                data = (x, y, weigh(y, sample_weight))
            return _checked_logs(step_method(data), where)

        def one_step(data: Any) -> dict[str, Any]:
            logs = strategy.run(replica_step, args=(data,))
            if distribute.is_distributed(strategy):
                logs = tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), logs)
            if train:
                self._steps_done.assign_add(1)
                if self.nan_guard is not None:
                    _watch_losses(self.nan_guard, logs, self._steps_done)
            return logs

        # Traced once and called at both places below, as Keras' one_step_on_data is: inlined, the step
        # would be traced (and its graph optimized) twice. On XLA as a whole, as Keras compiles it: a
        # compiled step inside a plain function is one more function call a step.
        one_step = tf.function(
            tf.autograph.experimental.do_not_convert(one_step), reduce_retracing=True, jit_compile=self._jit
        )

        @tf.function
        def run(iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
            logs = one_step(iterator.get_next())  # OutOfRangeError when no batch is left: no step ran
            done = tf.constant(1, tf.int32)
            for _ in tf.range(num_steps - 1):
                batch = iterator.get_next_as_optional()
                if not batch.has_value():
                    break
                logs = one_step(batch.get_value())
                done += 1
            metric_logs = model.get_metrics_result()
            return done, _flat(metric_logs if set(logs) == set(metric_logs) else logs)

        return _Steps(run, where)

    def make_predict_function(self) -> Callable:
        """``run(iterator, num_steps) -> (steps done, [each output, concatenated])`` over ``model.predict_step``."""
        model, strategy = self.model, self.strategy
        flat_specs = tf.nest.flatten(self._outputs)

        @tf.autograph.experimental.do_not_convert
        def replica_step(data: Any) -> list[tf.Tensor]:
            return tf.nest.flatten(model.predict_step(data))

        def one_step(data: Any) -> list[tf.Tensor]:
            outputs = strategy.run(replica_step, args=(data,))
            if not distribute.is_distributed(strategy):
                return outputs
            return [tf.concat(strategy.experimental_local_results(o), axis=0) for o in outputs]

        @tf.function
        def run(iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
            arrays = [
                tf.TensorArray(s.dtype, size=0, dynamic_size=True, infer_shape=False, element_shape=s.shape)
                for s in flat_specs
            ]
            done = tf.constant(0, tf.int32)
            for _ in tf.range(num_steps):
                batch = iterator.get_next_as_optional()
                if not batch.has_value():
                    break
                arrays = [a.write(done, o) for a, o in zip(arrays, one_step(batch.get_value()))]
                done += 1
            return done, [a.concat() for a in arrays]

        return run


class _Steps:
    """A compiled group of the model's steps; its first trace turns the step's mistakes into one-line errors."""

    def __init__(self, run: Any, where: str) -> None:
        self.run, self.where, self.traced = run, where, False
        self.stateful_random: list[str] = []  # the traced graph's stateful random ops, by type

    def trace(self, iterator) -> None:
        """Trace for ``iterator``'s batches without running a step (creates the variables the step makes)."""
        with _step_errors(self.where):
            concrete = self.run.get_concrete_function(iterator, tf.TensorSpec([], tf.int32))
        self.traced = True
        self.stateful_random = stateful_random_ops(concrete.graph)

    def __call__(self, iterator, num_steps: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        try:
            with _step_errors(self.where) if not self.traced else contextlib.nullcontext():
                done, logs = self.run(iterator, num_steps)
        except tf.errors.OutOfRangeError:
            return tf.constant(0), {}
        self.traced = True
        return done, logs

    def experimental_get_tracing_count(self) -> int:
        return self.run.experimental_get_tracing_count()


# Ops that draw from a state of their own (tf.random.*, seeded or not): no checkpoint holds it. keras.random.*
# draws with stateless ops from a SeedGenerator's state, which checkpoints hold.
_STATEFUL_RANDOM = {"Multinomial", "ParameterizedTruncatedNormal", "RandomGamma", "RandomPoisson", "RandomPoissonV2"}
_STATEFUL_RANDOM |= {"RandomShuffle", "RandomStandardNormal", "RandomUniform", "RandomUniformInt", "TruncatedNormal"}


def stateful_random_ops(graph: tf.Graph) -> list[str]:
    """The stateful random ops in ``graph`` and the functions it calls (loop bodies, XLA-compiled steps)."""
    definition = graph.as_graph_def()
    nodes = [*definition.node, *(node for function in definition.library.function for node in function.node_def)]
    return sorted({node.op for node in nodes if node.op in _STATEFUL_RANDOM})


def _where(model: keras.Model, name: str) -> str:
    """How errors name the model's step: ``GAN.train_step``, or what the model says (a step function's name)."""
    describe = getattr(model, "describe_step", None)
    return describe(name) if describe is not None else f"{type(model).__name__}.{name}"


@contextlib.contextmanager
def _step_errors(where: str):
    """Around a trace of the model's step: Python-only code in it, and Keras' warning that a variable
    gets no gradient, become one-line :class:`ConfigError`\\ s."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except Exception as exc:  # autograph re-raises the step's own errors as errors of its own kind
            text = str(exc)
            ours = re.search(r"ConfigError: (.*)", text)
            if isinstance(exc, ConfigError) or ours:
                raise ConfigError(ours.group(1).strip() if ours else text) from None
            python_only = (AttributeError, NotImplementedError, TypeError, tf.errors.OperatorNotAllowedInGraphError)
            if not isinstance(exc, python_only) or not re.search(r"numpy|symbolic|SymbolicTensor|not allowed", text):
                raise
            raise ConfigError(
                f"{where} runs compiled (inside tf.function, as in model.fit), where tensors have no values yet: "
                f"{_last_line(text)}; use TensorFlow or keras.ops instead of numpy (or .numpy()) in it"
            ) from None
    for warning in caught:
        text = str(warning.message)
        if text.startswith("Gradients do not exist for variables"):
            found = re.search(r"variables (\[.*\]) when minimizing", text, re.DOTALL)
            names = re.findall(r"path=([^,\s>]+)|'([^']+)'", found.group(1) if found else text)
            names = [a or b for a, b in names] or ["some variables"]
            raise ConfigError(
                f"{where}: {listed(names, 3)} got no gradient (the loss does not depend on them): take them out "
                "of the variables given to the optimizer, or make them non-trainable"
            )
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _traced(function: Any, where: str, spec: Any) -> Any:
    """``function``'s output structure for inputs of ``spec``, from a trace (nothing runs)."""
    with _step_errors(where):
        return function.get_concrete_function(spec).structured_outputs


def _checked_logs(logs: Any, where: str) -> dict[str, Any]:
    """The step's dict of scalars, or a one-line error saying what the step must return."""
    if not isinstance(logs, dict):
        raise ConfigError(
            f"{where} returned {type(logs).__name__}; it must return a dict of scalars by name, "
            "e.g. {'loss': self.loss_tracker.result()}, as model.fit expects"
        )
    checked = {}
    for key, value in logs.items():
        if isinstance(value, dict):
            checked[key] = _checked_logs(value, where)
            continue
        try:
            tensor = tf.convert_to_tensor(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} returned {key!r}: {type(value).__name__}; its values must be scalars") from None
        if tensor.shape.rank != 0:
            raise ConfigError(
                f"{where} returned {key!r} of shape {tensor.shape}; its values must be scalars (a "
                "metric's result, or a mean)"
            )
        checked[key] = tensor
    return checked


def _flat(logs: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts' entries at the top, as Keras' logs flatten them."""
    flat: dict[str, Any] = {}
    for key, value in logs.items():
        flat.update(_flat(value) if isinstance(value, dict) else {key: value})
    return flat


def _watch_losses(guard: Any, logs: dict[str, Any], step: tf.Variable) -> None:
    """Record in ``guard``'s variables the first step where a value named ``*loss*`` is not finite."""
    losses = [tf.cast(v, tf.float32) for k, v in _flat(logs).items() if "loss" in k]
    if not losses:
        return
    value = losses[0]
    for loss in reversed(losses):  # the first non-finite one
        value = tf.where(tf.math.is_finite(loss), value, loss)
    bad = tf.logical_and(guard.first_bad_step < 0, tf.logical_not(tf.reduce_all(tf.math.is_finite(tf.stack(losses)))))
    guard.first_bad_step.assign(tf.where(bad, tf.cast(step, tf.int64), guard.first_bad_step))
    guard.first_bad_loss.assign(tf.where(bad, value, guard.first_bad_loss))


def _last_line(text: str) -> str:
    """The error's own words: autograph puts the traceback of the user's code before them."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "an error")[:200]
