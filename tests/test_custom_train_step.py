"""A Keras model's own train_step under gradloop.Trainer(model): what model.fit computes, with gradloop's
machinery (steps per execution, checkpoints, the NaN guard); each against model.fit on the same initial
weights, seed generators and data order (Keras' own optimizers: no fused kernels)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradloop import CompileOptions, ConfigError, Trainer
from gradloop.loop.keras_steps import ModelStepTrainer

N, SIDE, LATENT, CLASSES, BATCH = 192, 8, 8, 3, 32  # 6 steps an epoch


def images(n: int = N, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(n, SIDE, SIDE, 1)).astype("float32")


def labels(n: int = N, seed: int = 1) -> np.ndarray:
    return keras.utils.to_categorical(np.random.default_rng(seed).integers(0, CLASSES, n), CLASSES).astype("float32")


def options(spe: int) -> CompileOptions:
    return CompileOptions(steps_per_execution=spe, fused_optimizer=False)


# --------------------------------------------------------------------- the guide's GAN (keras.io, shrunk)


def discriminator(channels: int = 1, dropout: float = 0.0) -> keras.Model:
    layers = [keras.Input((SIDE, SIDE, channels)), keras.layers.Conv2D(8, 3, strides=2, padding="same"),
              keras.layers.LeakyReLU(negative_slope=0.2)]
    layers += [keras.layers.Dropout(dropout)] if dropout else []
    layers += [keras.layers.GlobalMaxPooling2D(), keras.layers.Dense(1)]
    return keras.Sequential(layers, name="discriminator")


def generator(inputs: int = LATENT, batch_norm: bool = False) -> keras.Model:
    layers = [keras.Input((inputs,)), keras.layers.Dense(4 * 4 * 8), keras.layers.LeakyReLU(negative_slope=0.2)]
    layers += [keras.layers.BatchNormalization()] if batch_norm else []
    layers += [keras.layers.Reshape((4, 4, 8)), keras.layers.Conv2DTranspose(8, 4, strides=2, padding="same"),
               keras.layers.LeakyReLU(negative_slope=0.2), keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")]
    return keras.Sequential(layers, name="generator")


class GAN(keras.Model):
    """The guide's end-to-end GAN: its own compile, two optimizers, unlabeled images, noise from a SeedGenerator."""

    def __init__(self, discriminator, generator, latent_dim=LATENT):
        super().__init__()
        self.discriminator, self.generator, self.latent_dim = discriminator, generator, latent_dim
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.seed_generator = keras.random.SeedGenerator(1337)

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker]

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer, self.g_optimizer, self.loss_fn = d_optimizer, g_optimizer, loss_fn

    def train_step(self, real_images):
        if isinstance(real_images, tuple):
            real_images = real_images[0]
        batch_size = tf.shape(real_images)[0]
        noise = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        combined = tf.concat([self.generator(noise), real_images], axis=0)
        labels = tf.concat([tf.ones((batch_size, 1)), tf.zeros((batch_size, 1))], axis=0)
        labels += 0.05 * keras.random.uniform(tf.shape(labels), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            d_loss = self.loss_fn(labels, self.discriminator(combined))
        grads = tape.gradient(d_loss, self.discriminator.trainable_weights)
        self.d_optimizer.apply(grads, self.discriminator.trainable_weights)
        noise = keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            g_loss = self.loss_fn(tf.zeros((batch_size, 1)), self.discriminator(self.generator(noise)))
        grads = tape.gradient(g_loss, self.generator.trainable_weights)
        self.g_optimizer.apply(grads, self.generator.trainable_weights)
        self.d_loss_tracker.update_state(d_loss)
        self.g_loss_tracker.update_state(g_loss)
        return {"d_loss": self.d_loss_tracker.result(), "g_loss": self.g_loss_tracker.result()}


def guide_gan(seed: int = 0) -> GAN:
    keras.utils.set_random_seed(seed)
    gan = GAN(discriminator(), generator())
    gan.compile(keras.optimizers.Adam(3e-3), keras.optimizers.Adam(3e-3), keras.losses.BinaryCrossentropy(from_logits=True))
    return gan
