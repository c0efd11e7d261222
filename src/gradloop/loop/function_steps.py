"""gradloop's own step for from-scratch writers: several models, several optimizers, named values out.

    def gan_step(t, real_images):                       # t: the trainer; real_images: one batch as the data gives it
        noise = keras.random.normal((batch_size, latent_dim), seed=t.seed_generator)
        ... t.models["discriminator"](...) ... t.optimizers["discriminator"].apply(grads, variables) ...
        return {"d_loss": d_loss, "g_loss": g_loss}     # scalars by name

    trainer = gradloop.Trainer(
        models={"generator": generator, "discriminator": discriminator},
        optimizers={"generator": keras.optimizers.Adam(4e-4), "discriminator": keras.optimizers.Adam(3e-4)},
        train_step=gan_step,
    )
    trainer.fit(images, epochs=1).history               # {"d_loss": [epoch mean], "g_loss": [...], ...}

The trainer holds the models, their optimizers and one ``keras.random.SeedGenerator`` in a keras.Model,
:class:`StepFunctions`, whose ``train_step`` is

    values = train_step(trainer, batch)                 # the user's function, compiled
    for each name: mean[name].update_state(values[name])
    return {name: mean[name].result()}                  # the epoch's running means, as fit shows them

and trains it as any model with its own ``train_step``
(:class:`gradloop.loop.keras_steps.ModelStepTrainer`): fused groups of steps, ``strategy.run``, the NaN
guard on every value named ``*loss*``, checkpoints naming every optimizer and the seed generator, so
that the noise a resumed run draws is the noise the unbroken run drew.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf

from gradloop.errors import ConfigError
from gradloop.loop.compiled import CompileOptions
from gradloop.loop.keras_steps import ModelStepTrainer

StepFunction = Callable[[Any, Any], "dict[str, tf.Tensor]"]


class StepFunctions(keras.Model):
    """The keras.Model that a trainer of step functions trains: named models (``self.models``), their
    optimizers (``self.optimizers``), one seed generator, and a mean tracker per value a step returns.

    The trackers are made at the step's first trace, one per returned name; those of ``train_step``
    are ``metrics`` (reset every epoch and checkpointed, as Keras resets and gradloop saves a model's
    metrics). A ``test_step`` name that training also returns shares its tracker, as in Keras.
    """

    def __init__(
        self,
        models: Mapping[str, keras.Model],
        optimizers: Mapping[str, keras.optimizers.Optimizer],
        train_step: StepFunction,
        test_step: StepFunction | None,
        seed: int | None,
    ) -> None:
        super().__init__(name="step_functions")
        self.models = dict(models)
        self.optimizers = dict(optimizers)
        self.seed_generator = keras.random.SeedGenerator(seed)
        # Plain attributes, out of Keras' and TensorFlow's tracking: a tracker a test_step alone makes
        # must not become part of the checkpointed model (a resume into new objects has not traced it).
        object.__setattr__(self, "_functions", {"train_step": train_step, "test_step": test_step})
        object.__setattr__(self, "_means", {})
        object.__setattr__(self, "_train_names", [])
        object.__setattr__(self, "context", None)  # what the functions get as ``t``: the trainer, set by it

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self._means[name] for name in self._train_names]

    def reset_metrics(self) -> None:
        for mean in self._means.values():
            mean.reset_state()

    def describe_step(self, kind: str) -> str:
        """How errors name the user's function: ``the train_step gan_step(t, batch)``."""
        function = self._functions.get(kind)
        if function is None:
            return f"{type(self).__name__}.{kind}"
        return f"the {kind} {getattr(function, '__name__', repr(function))}(t, batch)"

    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        return self._run("train_step", data)

    def test_step(self, data: Any) -> dict[str, tf.Tensor]:
        if self._functions["test_step"] is None:
            raise ConfigError(
                "evaluating needs a test_step: give Trainer test_step=fn(t, batch) -> {name: scalar}, "
                "e.g. the losses of train_step without the updates"
            )
        return self._run("test_step", data)

    def _run(self, kind: str, data: Any) -> dict[str, tf.Tensor]:
        values = checked_values(self._functions[kind](self.context, data), self.describe_step(kind))
        for name, value in values.items():
            if name not in self._means:
                self._means[name] = keras.metrics.Mean(name=name)
            self._means[name].update_state(value)
        if kind == "train_step":
            self._train_names[:] = list(values)
        return {name: self._means[name].result() for name in values}


def checked_values(values: Any, where: str) -> dict[str, tf.Tensor]:
    """The step's dict of scalars by name, or a one-line error saying what it must return."""
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"{where} returned {type(values).__name__}; it must return a dict of scalars by name, "
            "e.g. {'d_loss': d_loss, 'g_loss': g_loss}"
        )
    checked = {}
    for name, value in values.items():
        try:
            tensor = tf.convert_to_tensor(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{where} returned {name!r}: {type(value).__name__}; its values must be scalars"
            ) from None
        if tensor.shape.rank != 0:
            raise ConfigError(
                f"{where} returned {name!r} of shape {tensor.shape}; its values must be scalars "
                "(a batch's mean: keras.ops.mean, or the loss function's result)"
            )
        checked[str(name)] = tensor
    return checked


class FunctionStepTrainer(ModelStepTrainer):
    """A :class:`gradloop.Trainer` of step functions; ``gradloop.Trainer(models=..., ...)`` makes one.

    ``models``: ``{name: keras.Model}``, each given once (a teacher that never trains is a model too).
    ``optimizers``: ``{name: optimizer}``, each the optimizer of the model of that name.
    ``train_step``: ``fn(t, batch) -> {name: scalar}``; ``t`` is this trainer (``t.models[name]``,
    ``t.optimizers[name]``, ``t.seed_generator``), ``batch`` one element of the data (a tensor for
    unlabeled images, an ``(x, y)`` tuple for labeled ones). It runs compiled (TensorFlow code only),
    so draw noise with ``keras.random.*(..., seed=t.seed_generator)``: the generator's state is
    checkpointed, and a resumed run draws what the unbroken one drew (``tf.random.*`` ops cannot).
    The history holds each value's epoch mean.
    ``test_step``: the same for ``evaluate`` and ``validation_data`` (optional; no updates in it).
    ``seed``: the seed generator's seed (None: drawn from ``keras.utils.set_random_seed``'s).
    ``options``, ``strategy``, ``nan_guard``: as for :class:`ModelStepTrainer` (the strategy by
    default the one whose scope built the models).
    """

    def __init__(
        self,
        model: Any = None,
        *,
        models: Mapping[str, keras.Model],
        optimizers: Mapping[str, keras.optimizers.Optimizer],
        train_step: StepFunction,
        test_step: StepFunction | None = None,
        seed: int | None = None,
        options: CompileOptions = CompileOptions(),
        strategy: tf.distribute.Strategy | None = None,
        nan_guard: Any = None,
    ) -> None:
        _check(model, models, optimizers, train_step, test_step)
        strategy = strategy or next(iter(models.values())).distribute_strategy
        with strategy.scope():
            container = StepFunctions(models, optimizers, train_step, test_step, seed)
        container.compile(optimizer=None, jit_compile=False)  # XLA only when options.jit_compile says so
        super().__init__(container, options=options, strategy=strategy, nan_guard=nan_guard)
        self.models, self.optimizers = dict(models), dict(optimizers)  # the checkpoint names them so
        self.seed_generator = container.seed_generator
        object.__setattr__(container, "context", self)

    def predict(self, data: Any, *, batch_size: int = 32, callbacks: Any = None) -> Any:
        raise ConfigError(
            "a Trainer of step functions holds several models and no one to predict with: call "
            "trainer.models[name].predict(...) (or Trainer(model, ...) for one)"
        )


def _check(model: Any, models: Any, optimizers: Any, train_step: Any, test_step: Any) -> None:
    """The constructor's arguments, each refused in one line saying what to give instead."""
    if model is not None:
        raise ConfigError("give Trainer models={name: model} or a model, not both")
    if not isinstance(models, Mapping) or not models:
        raise TypeError(f"models must be a dict {{name: keras.Model}}, got {type(models).__name__}")
    for name, value in models.items():
        if not isinstance(value, keras.Model):
            raise TypeError(f"models[{name!r}] must be a keras.Model, got {type(value).__name__}")
    seen: dict[int, str] = {}
    for name, value in models.items():
        if id(value) in seen:
            raise ConfigError(f"models {seen[id(value)]!r} and {name!r} are the same model: give each model once")
        seen[id(value)] = name
    if not isinstance(optimizers, Mapping) or not optimizers:
        raise TypeError(f"optimizers must be a dict {{model name: optimizer}}, got {type(optimizers).__name__}")
    given: dict[int, str] = {}
    for name, value in optimizers.items():
        if id(value) in given:  # an optimizer's slots are made for the one model it first updates
            raise ConfigError(f"optimizers {given[id(value)]!r} and {name!r} are the same: give each model its own")
        given[id(value)] = name
        if name not in models:
            raise ConfigError(
                f"optimizers names {name!r}, which is no model: name each optimizer after the model it trains "
                f"({', '.join(map(repr, models))})"
            )
        if not isinstance(value, keras.optimizers.Optimizer):
            raise TypeError(f"optimizers[{name!r}] must be a keras optimizer, got {type(value).__name__}")
    for kind, function in (("train_step", train_step), ("test_step", test_step)):
        if (function is not None and not callable(function)) or (kind == "train_step" and function is None):
            raise TypeError(f"{kind} must be a function fn(t, batch) -> {{name: scalar}}, got {function!r}")
