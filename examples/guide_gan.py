"""keras.io's GAN (the end-to-end example of "Customizing what happens in fit()"), as a model file that
``gradloop train --model`` trains exactly as ``model.fit`` would: the model's own ``compile`` with two
optimizers, its own ``train_step``, noise drawn from a ``SeedGenerator`` (so a resumed run draws the same
noise), unlabeled images.

    gradloop train --dataset mnist-sample --model examples/guide_gan.py:build --val-fraction 0 --epochs 20

``build`` sizes both networks from the data (Dense layers over its values, any shape); a config file's
``model_args:`` sets ``latent_dim``, ``units`` and ``lr``. The GAN has no ``get_config``, so gradloop keeps
its weights and this file, and rebuilds it through ``build`` for ``evaluate``, ``predict`` and ``export``.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class GAN(keras.Model):
    """The guide's GAN; ``compile`` passes Keras' own arguments (``steps_per_execution``) on."""

    def __init__(self, discriminator, generator, latent_dim):
        super().__init__()
        self.discriminator = discriminator
        self.generator = generator
        self.latent_dim = latent_dim
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.seed_generator = keras.random.SeedGenerator(1337)

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer, g_optimizer, loss_fn, **kwargs):
        super().compile(**kwargs)
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn

    def train_step(self, real_images):
        if isinstance(real_images, tuple):
            real_images = real_images[0]
        # Sample random points in the latent space and decode them to fake images
        batch_size = tf.shape(real_images)[0]
        random_latent_vectors = keras.random.normal(shape=(batch_size, self.latent_dim), seed=self.seed_generator)
        generated_images = self.generator(random_latent_vectors)

        # Combine them with real images; assemble labels discriminating real from fake images
        combined_images = tf.concat([generated_images, real_images], axis=0)
        labels = tf.concat([tf.ones((batch_size, 1)), tf.zeros((batch_size, 1))], axis=0)
        # Add random noise to the labels - important trick!
        labels += 0.05 * keras.random.uniform(tf.shape(labels), seed=self.seed_generator)

        # Train the discriminator
        with tf.GradientTape() as tape:
            predictions = self.discriminator(combined_images)
            d_loss = self.loss_fn(labels, predictions)
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply(grads, self.discriminator.trainable_weights)

        # Train the generator (without updating the discriminator), labelling its images "real"
        random_latent_vectors = keras.random.normal(shape=(batch_size, self.latent_dim), seed=self.seed_generator)
        misleading_labels = tf.zeros((batch_size, 1))
        with tf.GradientTape() as tape:
            predictions = self.discriminator(self.generator(random_latent_vectors))
            g_loss = self.loss_fn(misleading_labels, predictions)
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply(grads, self.generator.trainable_weights)

        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}


def networks(input_shape, latent_dim: int, units: int) -> tuple[keras.Model, keras.Model]:
    """The discriminator (an image -> one logit) and the generator (latent_dim numbers -> an image in [0, 1])."""
    input_shape = tuple(input_shape)
    discriminator = keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(units),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.Dense(1),
        ],
        name="discriminator",
    )
    generator = keras.Sequential(
        [
            keras.Input((latent_dim,)),
            keras.layers.Dense(units),
            keras.layers.LeakyReLU(negative_slope=0.2),
            keras.layers.Dense(math.prod(input_shape), activation="sigmoid"),
            keras.layers.Reshape(input_shape),
        ],
        name="generator",
    )
    return discriminator, generator


def uncompiled(input_shape, latent_dim: int = 16, units: int = 32) -> GAN:
    return GAN(*networks(input_shape, latent_dim, units), latent_dim=latent_dim)


def build(input_shape, latent_dim: int = 16, units: int = 32, lr: float = 3e-4) -> GAN:
    """The GAN compiled as the guide compiles it: Adam for each network, binary cross-entropy on logits."""
    gan = uncompiled(input_shape, latent_dim, units)
    gan.compile(
        d_optimizer=keras.optimizers.Adam(lr),
        g_optimizer=keras.optimizers.Adam(lr),
        loss_fn=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    return gan
