"""A Keras model's own train_step under gradloop.Trainer(model): what model.fit computes, with gradloop's
machinery (steps per execution, checkpoints, the NaN guard); each against model.fit on the same initial
weights, seed generators and data order (Keras' own optimizers: no fused kernels)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from guide_gan import GAN  # examples/guide_gan.py: the guide's GAN, as users train it with --model

from gradloop import CompileOptions, ConfigError, Trainer
from gradloop.loop.keras_steps import ModelStepTrainer

N, SIDE, LATENT, CLASSES, BATCH = 192, 8, 8, 3, 32  # 6 steps an epoch


def images(n: int = N, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, SIDE, SIDE, 1)).astype("float32")


def labels(n: int = N, seed: int = 1) -> np.ndarray:
    return keras.utils.to_categorical(np.random.default_rng(seed).integers(0, CLASSES, n), CLASSES).astype("float32")


def options(spe: int) -> CompileOptions:
    return CompileOptions(steps_per_execution=spe, fused_optimizer=False)


# --------------------------------------------------------------------- the guide's GAN's networks (keras.io, shrunk)


def discriminator(channels: int = 1, dropout: float = 0.0) -> keras.Model:
    layers = [
        keras.Input((SIDE, SIDE, channels)),
        keras.layers.Conv2D(8, 3, strides=2, padding="same"),
        keras.layers.LeakyReLU(negative_slope=0.2),
    ]
    layers += [keras.layers.Dropout(dropout)] if dropout else []
    layers += [keras.layers.GlobalMaxPooling2D(), keras.layers.Dense(1)]
    return keras.Sequential(layers, name="discriminator")


def generator(inputs: int = LATENT, batch_norm: bool = False) -> keras.Model:
    layers = [keras.Input((inputs,)), keras.layers.Dense(4 * 4 * 8), keras.layers.LeakyReLU(negative_slope=0.2)]
    layers += [keras.layers.BatchNormalization()] if batch_norm else []
    layers += [
        keras.layers.Reshape((4, 4, 8)),
        keras.layers.Conv2DTranspose(8, 4, strides=2, padding="same"),
        keras.layers.LeakyReLU(negative_slope=0.2),
        keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid"),
    ]
    return keras.Sequential(layers, name="generator")


def guide_gan(seed: int = 0) -> GAN:
    keras.utils.set_random_seed(seed)
    gan = GAN(discriminator(), generator(), LATENT)
    gan.compile(
        keras.optimizers.Adam(3e-3), keras.optimizers.Adam(3e-3), keras.losses.BinaryCrossentropy(from_logits=True)
    )
    return gan


# --------------------------------------------------------------------- DCGAN, conditional GAN, SimSiam, WGAN-GP


class DCGAN(GAN):
    """keras.io's DCGAN step: the models in training mode (the critic's Dropout draws, the generator's
    BatchNormalization keeps moving statistics)."""

    def train_step(self, real_images):
        batch_size = tf.shape(real_images)[0]
        noise = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        combined = tf.concat([self.generator(noise, training=True), real_images], axis=0)
        labels = tf.concat([tf.ones((batch_size, 1)), tf.zeros((batch_size, 1))], axis=0)
        with tf.GradientTape() as tape:
            d_loss = self.loss_fn(labels, self.discriminator(combined, training=True))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply(grads, self.discriminator.trainable_weights)
        noise = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            fake = self.discriminator(self.generator(noise, training=True), training=True)
            g_loss = self.loss_fn(tf.zeros((batch_size, 1)), fake)
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply(grads, self.generator.trainable_weights)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}


def dcgan(seed: int = 0) -> DCGAN:
    keras.utils.set_random_seed(seed)
    gan = DCGAN(discriminator(dropout=0.2), generator(batch_norm=True), LATENT)
    gan.compile(
        keras.optimizers.Adam(2e-3, beta_1=0.5),
        keras.optimizers.Adam(2e-3, beta_1=0.5),
        keras.losses.BinaryCrossentropy(from_logits=True),
    )
    return gan


class ConditionalGAN(GAN):
    """keras.io's conditional GAN: (image, one-hot label) batches; the label goes into the generator's
    input and into the critic's channels."""

    def train_step(self, data):
        real_images, one_hot = data
        image_labels = tf.repeat(tf.repeat(one_hot[:, None, None, :], SIDE, axis=1), SIDE, axis=2)
        batch_size = tf.shape(real_images)[0]
        noise = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        generated = self.generator(tf.concat([noise, one_hot], axis=1))
        fake = tf.concat([generated, image_labels], -1)
        real = tf.concat([real_images, image_labels], -1)
        labels = tf.concat([tf.ones((batch_size, 1)), tf.zeros((batch_size, 1))], axis=0)
        with tf.GradientTape() as tape:
            d_loss = self.loss_fn(labels, self.discriminator(tf.concat([fake, real], axis=0)))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply(grads, self.discriminator.trainable_weights)
        noise = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            fake = tf.concat([self.generator(tf.concat([noise, one_hot], axis=1)), image_labels], -1)
            g_loss = self.loss_fn(tf.zeros((batch_size, 1)), self.discriminator(fake))
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply(grads, self.generator.trainable_weights)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}


def conditional_gan(seed: int = 0) -> ConditionalGAN:
    keras.utils.set_random_seed(seed)
    gan = ConditionalGAN(discriminator(channels=1 + CLASSES), generator(inputs=LATENT + CLASSES), LATENT)
    gan.compile(
        keras.optimizers.Adam(3e-3), keras.optimizers.Adam(3e-3), keras.losses.BinaryCrossentropy(from_logits=True)
    )
    return gan


class SimSiam(keras.Model):
    """A SimSiam-style step: two augmented views of each image (flips and noise drawn from a SeedGenerator),
    an encoder and a predictor, negative cosine similarity against the other view's stopped encoding."""

    def __init__(self):
        super().__init__()
        self.encoder = keras.Sequential(
            [
                keras.Input((SIDE, SIDE, 1)),
                keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(8),
            ],
            name="encoder",
        )
        self.predictor = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(8)], name="predictor"
        )
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.seed_generator = keras.random.SeedGenerator(7)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def augment(self, x):
        flip = keras.random.uniform((tf.shape(x)[0], 1, 1, 1), seed=self.seed_generator) < 0.5
        x = tf.where(flip, tf.reverse(x, axis=[2]), x)
        return x + 0.1 * keras.random.normal(tf.shape(x), seed=self.seed_generator)

    def train_step(self, x):
        def distance(p, z):
            return -tf.reduce_mean(
                tf.reduce_sum(tf.math.l2_normalize(p, 1) * tf.math.l2_normalize(tf.stop_gradient(z), 1), 1)
            )

        one, two = self.augment(x), self.augment(x)
        with tf.GradientTape() as tape:
            z1, z2 = self.encoder(one, training=True), self.encoder(two, training=True)
            p1, p2 = self.predictor(z1, training=True), self.predictor(z2, training=True)
            loss = distance(p1, z2) / 2 + distance(p2, z1) / 2
        variables = self.encoder.trainable_variables + self.predictor.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def simsiam(seed: int = 0) -> SimSiam:
    keras.utils.set_random_seed(seed)
    model = SimSiam()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return model


class WGANGP(GAN):
    """keras.io's WGAN-GP: the critic trained ``d_steps`` times per generator step, a gradient penalty
    from a tape nested in the critic's tape; the step returns raw losses (the last batch's, in the history)."""

    d_steps, gp_weight = 2, 10.0

    def train_step(self, real_images):
        batch_size = tf.shape(real_images)[0]
        for _ in range(self.d_steps):
            noise = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
            with tf.GradientTape() as tape:
                fake = self.generator(noise, training=True)
                d_cost = tf.reduce_mean(self.discriminator(fake, training=True)) - tf.reduce_mean(
                    self.discriminator(real_images, training=True)
                )
                alpha = keras.random.uniform((batch_size, 1, 1, 1), seed=self.seed_generator)
                interpolated = real_images + alpha * (fake - real_images)
                with tf.GradientTape() as gp_tape:
                    gp_tape.watch(interpolated)
                    pred = self.discriminator(interpolated, training=True)
                grads = gp_tape.gradient(pred, [interpolated])[0]
                norm = tf.sqrt(tf.reduce_sum(tf.square(grads), axis=[1, 2, 3]))
                d_loss = d_cost + self.gp_weight * tf.reduce_mean((norm - 1.0) ** 2)
            d_gradient = tape.gradient(d_loss, self.discriminator.trainable_variables)
            self.d_optimizer.apply(d_gradient, self.discriminator.trainable_variables)
        noise = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            g_loss = -tf.reduce_mean(self.discriminator(self.generator(noise, training=True), training=True))
        g_gradient = tape.gradient(g_loss, self.generator.trainable_variables)
        self.g_optimizer.apply(g_gradient, self.generator.trainable_variables)
        return {"d_loss": d_loss, "g_loss": g_loss}


def wgan_gp(seed: int = 0) -> WGANGP:
    keras.utils.set_random_seed(seed)
    gan = WGANGP(discriminator(), generator(), LATENT)
    gan.compile(
        keras.optimizers.Adam(2e-4, beta_1=0.5, beta_2=0.9), keras.optimizers.Adam(2e-4, beta_1=0.5, beta_2=0.9), None
    )
    return gan


class Regressor(keras.Model):
    """The guide's first example: its own train_step and test_step over compiled loss and metrics."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(y=y, y_pred=y_pred)
        self.optimizer.apply(tape.gradient(loss, self.trainable_variables), self.trainable_variables)
        for metric in self.metrics:
            metric.update_state(loss) if metric.name == "loss" else metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, y = data
        y_pred = self(x, training=False)
        loss = self.compute_loss(y=y, y_pred=y_pred)
        for metric in self.metrics:
            metric.update_state(loss) if metric.name == "loss" else metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}


def regressor(seed: int = 0, cls=Regressor) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIDE,))
    model = cls(inputs, keras.layers.Dense(1)(keras.layers.Dense(8, activation="relu")(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    return model


def table():
    x = np.random.default_rng(2).normal(size=(N, SIDE)).astype("float32")
    return x, (x[:, :2].sum(axis=1, keepdims=True) ** 2).astype("float32")


def unlabeled():
    return tf.data.Dataset.from_tensor_slices(images()).batch(BATCH)


def with_labels():
    return tf.data.Dataset.from_tensor_slices((images(), labels())).batch(BATCH)


def regression():
    return tf.data.Dataset.from_tensor_slices(table()).batch(BATCH)


# name: (build the compiled model, data, validation data)
CASES = {
    "guide_gan": (guide_gan, unlabeled, None),
    "dcgan": (dcgan, unlabeled, None),
    "conditional_gan": (conditional_gan, with_labels, None),
    "simsiam": (simsiam, unlabeled, None),
    "wgan_gp": (wgan_gp, unlabeled, None),
    "own_train_and_test_step": (regressor, regression, regression),
    "keras_default_steps": (lambda: regressor(cls=keras.Model), regression, regression),
}
_REFERENCE: dict[str, tuple] = {}


def reference(name: str) -> tuple[dict, list]:
    """model.fit's history and final weights, once per case."""
    if name not in _REFERENCE:
        build, data, validation = CASES[name]
        model = build()
        history = model.fit(data(), validation_data=validation and validation(), epochs=2, shuffle=False, verbose=0)
        _REFERENCE[name] = history.history, model.get_weights(), [v.numpy() for v in model.non_trainable_variables]
    return _REFERENCE[name]


@pytest.mark.parametrize("spe", [1, 32])
@pytest.mark.parametrize("name", list(CASES))
def test_the_models_own_step_computes_what_model_fit_computes(name, spe):
    build, data, validation = CASES[name]
    model = build()
    trainer = Trainer(model, options=options(spe))
    assert isinstance(trainer, ModelStepTrainer)
    history = trainer.fit(data(), validation_data=validation and validation(), epochs=2, verbose=0).history
    theirs, weights, non_trainable = reference(name)
    assert set(history) - {"train_time"} == set(theirs)
    for key, values in theirs.items():
        assert history[key] == pytest.approx(values, rel=1e-5, abs=1e-7), key
    for ours, expected in zip(model.get_weights(), weights):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)
    for ours, expected in zip(model.non_trainable_variables, non_trainable):  # BatchNorm statistics, seed states
        np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- exact resume


class Halt(Exception):
    pass


class HaltAt(keras.callbacks.Callback):
    """Stop the process's training after (epoch, step), once the checkpoint of that step is written."""

    def __init__(self, trainer, epoch: int, step: int) -> None:
        super().__init__()
        self.trainer, self.at = trainer, (epoch, step)

    def on_train_batch_end(self, batch, logs=None):
        if (self.trainer.state.epoch, self.trainer.state.step) == self.at:
            raise Halt


def test_a_two_optimizer_gan_stopped_mid_epoch_and_resumed_into_new_objects_is_bit_identical(tmp_path):
    from gradloop.loop.callbacks.checkpointing import Checkpointing
    from gradloop.loop.checkpoint import RunCheckpoint

    def fit(trainer, **kwargs):
        return trainer.fit(unlabeled(), epochs=2, end_groups_every=2, verbose=0, **kwargs).history

    straight = guide_gan()
    expected = fit(Trainer(straight, options=options(4)))

    stopped = guide_gan()
    trainer = Trainer(stopped, options=options(4))
    checkpoint = RunCheckpoint(tmp_path, trainer)
    with pytest.raises(Halt):
        fit(trainer, callbacks=[Checkpointing(checkpoint, every_steps=2), HaltAt(trainer, 1, 2)])
    resumed = guide_gan(seed=5)  # other initial weights: everything comes from the checkpoint
    trainer = Trainer(resumed, options=options(4))
    checkpoint = RunCheckpoint(tmp_path, trainer)
    state = checkpoint.restore(unlabeled())
    assert (state.epoch, state.step) == (1, 2)
    history = fit(trainer, initial_state=state, callbacks=[Checkpointing(checkpoint, every_steps=2)])
    assert {k: v for k, v in history.items() if k != "train_time"} == {
        k: v for k, v in expected.items() if k != "train_time"
    }
    for ours, theirs in zip(resumed.variables, straight.variables):  # weights and the seed generator's state
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    for name in ("d_optimizer", "g_optimizer"):
        for ours, theirs in zip(getattr(resumed, name).variables, getattr(straight, name).variables):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_the_checkpoint_names_every_optimizer_and_seed_generator(tmp_path):
    from gradloop.loop.checkpoint import RunCheckpoint

    gan = dcgan()
    trainer = Trainer(gan, options=options(4))
    trainer.build(unlabeled())
    checkpoint = RunCheckpoint(tmp_path, trainer)
    checkpoint.save(trainer.state)
    bundle = checkpoint._bundle  # a checkpoint stores each variable once, under its first path (model/d_optimizer/...)
    assert set(bundle.optimizers) == {"optimizer", "d_optimizer", "g_optimizer"}
    assert bundle.optimizers["d_optimizer"] is gan.d_optimizer and bundle.optimizers["g_optimizer"] is gan.g_optimizer
    assert set(bundle.seed_generators) == {
        "seed_generator",
        "layer_4.seed_generator",
    }  # the GAN's, the critic's Dropout's
    keys = set(tf.train.load_checkpoint(checkpoint.latest).get_variable_to_shape_map())
    assert any("moving_mean" in k for k in keys) and any(k.startswith("model/g_optimizer/") for k in keys)
    assert len([k for k in keys if k.startswith("metrics/")]) == 4  # the two trackers' totals and counts


# --------------------------------------------------------------------- bad steps, one line each


class Returning(keras.Model):
    """A step returning whatever ``self.result`` makes of the batch."""

    def __init__(self, result, **kwargs):
        super().__init__(**kwargs)
        self.result = result
        self.dense = keras.layers.Dense(1)
        self.extra = keras.layers.Dense(1, name="extra")

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(x) - y))
        variables = self.trainable_variables if self.result == "no_gradient" else self.dense.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        if self.result == "tensor":
            return loss
        if self.result == "vector":
            return {"loss": tf.square(self(x) - y)}
        if self.result == "numpy":
            return {"loss": float(np.mean(loss))}
        if self.result == "nan":
            return {"loss": loss / 0.0 * 0.0}
        return {"loss": loss}


def returning(result) -> Trainer:
    keras.utils.set_random_seed(0)
    model = Returning(result)
    model(tf.zeros((1, SIDE)))
    model.extra(tf.zeros((1, SIDE)))
    model.compile(optimizer="sgd")
    return Trainer(model, options=options(4))


@pytest.mark.parametrize(
    "result, message",
    [
        ("tensor", r"^Returning.train_step returned \w*Tensor; it must return a dict of scalars by name"),
        ("vector", r"^Returning.train_step returned 'loss' of shape \(None, 1\); its values must be scalars"),
        (
            "numpy",
            r"^Returning.train_step runs compiled \(inside tf.function, as in model.fit\), "
            r"where tensors have no values",
        ),
        ("no_gradient", r"^Returning.train_step: .*extra.* got no gradient"),
    ],
)
def test_a_step_of_the_wrong_shape_is_one_line(result, message):
    with pytest.raises(ConfigError, match=message) as error:
        returning(result).fit(regression(), verbose=0)
    assert "\n" not in str(error.value)


def test_a_variable_the_step_never_updates_is_named_in_a_warning():
    with pytest.warns(
        UserWarning, match=r"train_step gives none of the model's optimizers .*extra.*: they never train"
    ):
        returning("ok").fit(regression(), verbose=0)


def test_every_logged_loss_is_guarded_against_nan():
    from gradloop import TrainingError
    from gradloop.loop.callbacks.nan_guard import StopOnNonFiniteLoss

    guard = StopOnNonFiniteLoss(steps_per_epoch=6)
    keras.utils.set_random_seed(0)
    model = Returning("nan")
    model.compile(optimizer="sgd")
    trainer = Trainer(model, options=options(4), nan_guard=guard)
    with pytest.raises(TrainingError, match=r"became nan at step 1 \(epoch 1, step 1 of 6\)"):
        trainer.fit(regression(), callbacks=[guard], verbose=0)


def test_an_uncompiled_model_and_options_that_belong_in_compile_are_refused():
    with pytest.raises(ConfigError, match=r"^GAN is not compiled: call model.compile\(...\) first"):
        Trainer(GAN(discriminator(), generator(), LATENT))
    with pytest.raises(ConfigError, match=r"^Trainer\(model\) runs the model's own train_step .*metrics belong"):
        Trainer(guide_gan(), metrics=["accuracy"])


def test_gradloops_own_step_refuses_a_model_whose_compile_takes_other_arguments():
    with pytest.raises(
        ConfigError, match=r"^GAN.compile takes its own arguments \(d_optimizer, g_optimizer, loss_fn\)"
    ):
        Trainer(GAN(discriminator(), generator(), LATENT), optimizer="adam", loss="mse")


def test_evaluate_and_predict_run_the_models_own_steps_as_keras_does():
    model = regressor()
    trainer = Trainer(model, options=options(4))
    x, _ = table()
    ours = trainer.evaluate(regression())
    assert ours == pytest.approx(model.evaluate(regression(), return_dict=True, verbose=0), rel=1e-6)
    np.testing.assert_array_equal(trainer.predict(x, batch_size=BATCH), model.predict(x, batch_size=BATCH, verbose=0))
