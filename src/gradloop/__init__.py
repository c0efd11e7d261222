"""gradloop: the custom TensorFlow/Keras training loop, written once and correctly.

    trainer = gradloop.Trainer(model, optimizer=..., loss=..., metrics=["accuracy"])
    history = trainer.fit(train_ds, validation_data=val_ds, epochs=10)

    gan = gradloop.Trainer(models={"generator": g, "discriminator": d},   # several models: a step function
                           optimizers={"generator": ..., "discriminator": ...}, train_step=gan_step)

TensorFlow is imported lazily, so ``gradloop --help`` and argument errors are instant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradloop.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DiskFullError,
    GradloopError,
    RunDirError,
    TrainingError,
)

__version__ = "0.1.0"
__all__ = [
    "Trainer",
    "CompileOptions",
    "InMemory",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DiskFullError",
    "GradloopError",
    "RunDirError",
    "TrainingError",
    "__version__",
]

if TYPE_CHECKING:
    from gradloop.loop.compiled import CompileOptions
    from gradloop.loop.in_memory import InMemory
    from gradloop.loop.trainer import Trainer


def __getattr__(name: str) -> Any:
    if name == "Trainer":
        from gradloop.loop.trainer import Trainer

        return Trainer
    if name == "CompileOptions":
        from gradloop.loop.compiled import CompileOptions

        return CompileOptions
    if name == "InMemory":
        from gradloop.loop.in_memory import InMemory

        return InMemory
    raise AttributeError(f"module 'gradloop' has no attribute {name!r}")
