"""gradloop.Trainer(models=..., optimizers=..., train_step=fn): a step function over several models and
optimizers computes what the same step written as a keras.Model train_step override computes under gradloop,
resumes bit for bit, and refuses bad input in one line."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_custom_train_step import Halt, HaltAt  # stop a fit once the checkpoint of a step is written

from gradloop import CompileOptions, ConfigError, Trainer
from gradloop.loop.function_steps import FunctionStepTrainer

N, SIDE, LATENT, BATCH, SEED = 192, 8, 8, 32, 1337  # 6 steps an epoch
loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)


def options(spe: int) -> CompileOptions:
    return CompileOptions(steps_per_execution=spe, fused_optimizer=False)


def unlabeled() -> tf.data.Dataset:
    images = np.random.default_rng(0).uniform(size=(N, SIDE, SIDE, 1)).astype("float32")
    return tf.data.Dataset.from_tensor_slices(images).batch(BATCH)


def models(seed: int = 0) -> tuple[keras.Model, keras.Model]:
    """The guide's discriminator and generator, shrunk; the same initial weights for the same seed."""
    keras.utils.set_random_seed(seed)
    discriminator = keras.Sequential(
        [
            keras.Input((SIDE, SIDE, 1)),
            keras.layers.Conv2D(8, 3, strides=2, padding="same"),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.GlobalMaxPooling2D(),
            keras.layers.Dense(1),
        ],
        name="discriminator",
    )
    generator = keras.Sequential(
        [
            keras.Input((LATENT,)),
            keras.layers.Dense(4 * 4 * 8),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.Reshape((4, 4, 8)),
            keras.layers.Conv2DTranspose(8, 4, strides=2, padding="same"),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid"),
        ],
        name="generator",
    )
    return generator, discriminator


def adversarial_step(generator, discriminator, d_optimizer, g_optimizer, seed_generator, real_images):
    """The guide's GAN step, noise from ``seed_generator``: both forms below run exactly this."""
    batch_size = tf.shape(real_images)[0]
    noise = keras.random.normal((batch_size, LATENT), seed=seed_generator)
    combined = tf.concat([generator(noise), real_images], axis=0)
    labels = tf.concat([tf.ones((batch_size, 1)), tf.zeros((batch_size, 1))], axis=0)
    labels += 0.05 * keras.random.uniform(tf.shape(labels), seed=seed_generator)
    with tf.GradientTape() as tape:
        d_loss = loss_fn(labels, discriminator(combined))
    grads = tape.gradient(d_loss, discriminator.trainable_weights)
    d_optimizer.apply(grads, discriminator.trainable_weights)
    noise = keras.random.normal((batch_size, LATENT), seed=seed_generator)
    with tf.GradientTape() as tape:
        g_loss = loss_fn(tf.zeros((batch_size, 1)), discriminator(generator(noise)))
    grads = tape.gradient(g_loss, generator.trainable_weights)
    g_optimizer.apply(grads, generator.trainable_weights)
    return {"d_loss": d_loss, "g_loss": g_loss}


def gan_step(t, real_images):
    return adversarial_step(
        t.models["generator"],
        t.models["discriminator"],
        t.optimizers["discriminator"],
        t.optimizers["generator"],
        t.seed_generator,
        real_images,
    )


def functional_gan(spe: int = 4, seed: int = 0, **kwargs) -> FunctionStepTrainer:
    generator, discriminator = models(seed)
    return Trainer(
        models={"generator": generator, "discriminator": discriminator},
        optimizers={"generator": keras.optimizers.Adam(3e-3), "discriminator": keras.optimizers.Adam(3e-3)},
        train_step=gan_step,
        seed=SEED,
        options=options(spe),
        **kwargs,
    )


class GAN(keras.Model):
    """The same GAN as keras.io writes it: a train_step override, a mean tracker per loss."""

    def __init__(self, generator, discriminator):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.seed_generator = keras.random.SeedGenerator(SEED)

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer, g_optimizer):
        super().compile(jit_compile=False)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

    def train_step(self, real_images):
        logs = adversarial_step(
            self.generator, self.discriminator, self.d_optimizer, self.g_optimizer, self.seed_generator, real_images
        )
        self.d_loss_tracker.update_state(logs["d_loss"])
        self.g_loss_tracker.update_state(logs["g_loss"])
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}


def subclassed_gan(seed: int = 0) -> GAN:
    gan = GAN(*models(seed))
    gan.compile(keras.optimizers.Adam(3e-3), keras.optimizers.Adam(3e-3))
    return gan


def without_time(history: dict) -> dict:
    return {k: v for k, v in history.items() if k != "train_time"}


@pytest.mark.parametrize("spe", [1, 32])
def test_the_step_function_computes_bit_for_bit_what_the_train_step_override_computes(spe):
    gan = subclassed_gan()
    theirs = Trainer(gan, options=options(spe)).fit(unlabeled(), epochs=2, verbose=0).history
    trainer = functional_gan(spe)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = trainer.fit(unlabeled(), epochs=2, verbose=0).history
    assert not [w for w in caught if "stateful random" in str(w.message)]
    assert set(ours) == {"d_loss", "g_loss", "train_time"}
    assert without_time(ours) == without_time(theirs)
    for name in ("generator", "discriminator"):
        for ours_v, theirs_v in zip(trainer.models[name].variables, getattr(gan, name).variables):
            np.testing.assert_array_equal(ours_v.numpy(), theirs_v.numpy())
    for name, optimizer in (("generator", gan.g_optimizer), ("discriminator", gan.d_optimizer)):
        for ours_v, theirs_v in zip(trainer.optimizers[name].variables, optimizer.variables):
            np.testing.assert_array_equal(ours_v.numpy(), theirs_v.numpy())
    np.testing.assert_array_equal(trainer.seed_generator.state.numpy(), gan.seed_generator.state.numpy())


# --------------------------------------------------------------------- exact resume


def test_stopped_mid_epoch_and_resumed_into_new_objects_is_bit_identical(tmp_path):
    from gradloop.loop.callbacks.checkpointing import Checkpointing
    from gradloop.loop.checkpoint import RunCheckpoint

    def fit(trainer, **kwargs):
        return trainer.fit(unlabeled(), epochs=2, end_groups_every=2, verbose=0, **kwargs).history

    straight = functional_gan()
    expected = fit(straight)

    trainer = functional_gan()
    checkpoint = RunCheckpoint(tmp_path, trainer)
    with pytest.raises(Halt):
        fit(trainer, callbacks=[Checkpointing(checkpoint, every_steps=2), HaltAt(trainer, 1, 2)])
    bundle = checkpoint._bundle
    assert set(bundle.optimizers) == {"generator", "discriminator"} and "seed_generator" in bundle.seed_generators

    resumed = functional_gan(seed=5)  # other initial weights: everything comes from the checkpoint
    checkpoint = RunCheckpoint(tmp_path, resumed)
    state = checkpoint.restore(unlabeled())
    assert (state.epoch, state.step) == (1, 2)
    history = fit(resumed, initial_state=state, callbacks=[Checkpointing(checkpoint, every_steps=2)])
    assert without_time(history) == without_time(expected)
    for name in ("generator", "discriminator"):
        for ours, theirs in zip(resumed.models[name].variables, straight.models[name].variables):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
        for ours, theirs in zip(resumed.optimizers[name].variables, straight.optimizers[name].variables):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_array_equal(resumed.seed_generator.state.numpy(), straight.seed_generator.state.numpy())


# --------------------------------------------------------------------- validation


def test_a_test_step_validates_and_evaluates_and_without_one_evaluate_says_so():
    def critic_step(t, real_images):
        scores = t.models["discriminator"](real_images)
        return {"d_loss": loss_fn(tf.zeros_like(scores), scores)}

    trainer = functional_gan(test_step=critic_step)
    history = trainer.fit(unlabeled(), validation_data=unlabeled(), epochs=1, verbose=0).history
    images = np.concatenate(list(unlabeled().as_numpy_iterator()))
    scores = trainer.models["discriminator"](images).numpy()
    batches = [loss_fn(np.zeros_like(s), s).numpy() for s in np.split(scores, N // BATCH)]
    assert history["val_d_loss"][0] == pytest.approx(np.mean(batches), rel=1e-5)
    assert trainer.evaluate(unlabeled()) == {"d_loss": pytest.approx(history["val_d_loss"][0], rel=1e-6)}
    with pytest.raises(ConfigError, match=r"^evaluating needs a test_step: give Trainer test_step=") as error:
        functional_gan().evaluate(unlabeled())
    assert "\n" not in str(error.value)


# --------------------------------------------------------------------- a step drawing from tf.random


def test_a_step_drawing_from_tf_random_is_warned_once_naming_the_fix():
    def noisy_step(t, real_images):
        noise = tf.random.normal((tf.shape(real_images)[0], LATENT))
        with tf.GradientTape() as tape:
            g_loss = loss_fn(
                tf.ones((tf.shape(real_images)[0], 1)), t.models["discriminator"](t.models["generator"](noise))
            )
        variables = t.models["generator"].trainable_weights
        t.optimizers["generator"].apply(tape.gradient(g_loss, variables), variables)
        return {"g_loss": g_loss}

    generator, discriminator = models()
    trainer = Trainer(
        models={"generator": generator, "discriminator": discriminator},
        optimizers={"generator": keras.optimizers.Adam(1e-3)},
        train_step=noisy_step,
        options=options(4),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(unlabeled(), epochs=2, verbose=0)
    messages = [str(w.message) for w in caught if "stateful random" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert messages[0].startswith(
        "the train_step noisy_step(t, batch) draws from stateful random ops (RandomStandardNormal, from tf.random.*)"
    )
    assert "keras.random.* and seed=a keras.random.SeedGenerator" in messages[0]


# --------------------------------------------------------------------- bad input, one line each


def returning(value):
    def step(t, real_images):
        adversarial_step(
            t.models["generator"],
            t.models["discriminator"],
            t.optimizers["discriminator"],
            t.optimizers["generator"],
            t.seed_generator,
            real_images,
        )
        return value(real_images)

    return step


@pytest.mark.parametrize(
    "value, message",
    [
        (lambda x: tf.reduce_mean(x), r"^the train_step step\(t, batch\) returned \w*Tensor; it must return a dict"),
        (lambda x: [tf.reduce_mean(x)], r"^the train_step step\(t, batch\) returned list; it must return a dict"),
        (lambda x: {"loss": tf.reduce_mean(x, axis=[1, 2, 3])}, r"returned 'loss' of shape \(None,\); .*scalars"),
    ],
    ids=["tensor", "list", "vector"],
)
def test_a_step_returning_other_than_named_scalars_is_one_line(value, message):
    generator, discriminator = models()
    trainer = Trainer(
        models={"generator": generator, "discriminator": discriminator},
        optimizers={"generator": keras.optimizers.Adam(), "discriminator": keras.optimizers.Adam()},
        train_step=returning(value),
    )
    with pytest.raises(ConfigError, match=message) as error:
        trainer.fit(unlabeled(), verbose=0)
    assert "\n" not in str(error.value)


def test_an_optimizer_named_for_no_model_and_a_model_given_twice_are_one_line():
    generator, discriminator = models()
    with pytest.raises(ConfigError, match=r"^optimizers names 'critic', which is no model: name each") as error:
        Trainer(
            models={"generator": generator, "discriminator": discriminator},
            optimizers={"critic": keras.optimizers.Adam()},
            train_step=gan_step,
        )
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match=r"^models 'generator' and 'critic' are the same model: give each") as error:
        Trainer(
            models={"generator": generator, "critic": generator},
            optimizers={"generator": keras.optimizers.Adam()},
            train_step=gan_step,
        )
    assert "\n" not in str(error.value)
