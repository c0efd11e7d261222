"""One variant of ``gradloop bench --data`` in a process of its own, so that its peak RSS is its own.

    python -m gradloop.bench.worker VARIANT CONFIG_JSON    (started by gradloop.bench.data_bench, not by hand)

The process sets itself up, then answers requests, one JSON line in and one out
(:mod:`gradloop.bench.protocol`), until its input ends; it trains only when asked, so the bench can time the
variants in turn, never two at once:

    set up                        -> {"n", "element_shape", "class_names", "parameters", "peak_rss_mib", ...}
    {"warm_up": steps}            -> {"seconds": ...}        trains the first ``steps`` batches of epoch 0
    {"epoch": e, "steps": s}      -> {"seconds": ..., "samples": ...}
    {"stop": true} or no input    -> {"peak_rss_mib": ..., "footprint_bytes": ...}, and exits
    a failure, at any point       -> {"error": "...", "kind": "DataError"}, and exits

The variants (``VARIANTS``):

    streamed     the image folder as ``gradloop train --data DIR`` reads it: ImageFiles, decoded once into a
                 scratch folder's copy (as into a run's cache/; from the files every epoch with --image-cache off)
    in memory    the same images decoded once into a float32 array (ArrayExamples), as a built-in data set is
    baseline     TensorFlow imported and the model built, no data: what any training process holds anyway

Both trainers are ``gradloop train``'s (``assemble.build_trainer``: the config's model,
optimizer, loss, metrics, steps per call), seeded alike, and each timed run starts
from the same initial weights and optimizer state, on the same batches (epoch
``e``'s order from the seed, as training draws it).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from gradloop.bench.memory import process_peak_rss_mib
from gradloop.bench.protocol import protocol_stream, reply

VARIANTS = ("streamed", "in memory", "baseline")
DECODE_BATCH = 1024  # images per batch when decoding the folder into memory


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    replies = protocol_stream()
    try:
        variant, values = argv[0], json.loads(argv[1])
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; one of {', '.join(VARIANTS)}")
        run = Run.start(variant, values)
        reply(replies, run.describe())
        for line in sys.stdin:
            request = json.loads(line)
            if request.get("stop"):
                break
            reply(replies, run.handle(request))
        reply(replies, run.finish())
        return 0
    except Exception as exc:  # sent to the bench, which raises it in the CLI's process
        if not _is_user_error(exc):
            traceback.print_exc()
        reply(replies, {"error": str(exc), "kind": type(exc).__name__})
        return 1


class Run:
    """A variant's trainer and data, set up once (``start``); ``handle`` trains when asked."""

    def __init__(self, variant: str, trainer: Any, data: Any, *, batch_size: int, seed: int) -> None:
        from gradloop.data import examples

        self.variant, self.trainer, self.data, self.batch_size = variant, trainer, data, batch_size
        # epoch -> its batches, drawn as train draws them (the baseline has none)
        self.epochs = None if variant == "baseline" else examples.epochs(data.train, batch_size=batch_size, seed=seed)
        self.initial: list[np.ndarray] = []
        self.decode_seconds: float | None = None  # reading the data before training: decoding it into memory or a copy

    @classmethod
    def start(cls, variant: str, values: dict[str, Any]) -> Run:
        """Read the data (in memory: decode it), then build train's trainer, seeded as train seeds it."""
        from gradloop.app import cpu

        cpu.import_tensorflow()
        import keras
        import tensorflow as tf

        from gradloop.app import assemble
        from gradloop.app.config import build_config
        from gradloop.data.examples import ArrayExamples
        from gradloop.data.sources import image_cache
        from gradloop.errors import ConfigError
        from gradloop.loop import step as step_lib

        config = build_config(values["config"])
        decode_seconds = None
        if variant == "baseline":
            data = no_examples(tuple(values["element_shape"]), tuple(values["class_names"]))
        else:
            data = assemble.load_data(config, notify=lambda line: print(line, file=sys.stderr))
            if data.kind != "images":
                raise ConfigError(
                    f"bench --data times images streamed from disk against held in memory, and "
                    f"{config.data} is {data.kind} data, read into memory anyway; pass a folder with "
                    "a sub-folder of images per class"
                )
            started = time.perf_counter()
            if variant == "in memory":
                data = dataclasses.replace(data, train=ArrayExamples(decode(data.train), data.train.y))
            elif config.image_cache != "off":  # as train reads a folder: decoded once into the run's folder
                scratch = tempfile.mkdtemp(prefix="gradloop-bench-")
                atexit.register(shutil.rmtree, scratch, ignore_errors=True)
                data = image_cache.decode_once(data, Path(scratch), notify=lambda line: print(line, file=sys.stderr))
            decode_seconds = time.perf_counter() - started
        keras.utils.set_random_seed(config.seed)  # the same initial weights in every process
        steps_per_epoch = max(1, -(-data.train.n // config.batch_size))
        trainer = assemble.build_trainer(
            config, tf.distribute.get_strategy(), data, step_lib.train_step, steps_per_epoch
        )
        run = cls(variant, trainer, data, batch_size=config.batch_size, seed=config.seed)
        run.decode_seconds = decode_seconds
        if variant != "baseline":
            trainer.build(run.epochs(0))  # the variables, before any training: each timed run starts from them
            run.initial = [v.numpy() for v in run.variables()]
        return run

    def describe(self) -> dict[str, Any]:
        from gradloop.app import cpu

        model = self.trainer.model
        train = self.data.train
        return {
            "n": train.n,
            "element_shape": list(train.element_shape),
            "class_names": list(self.data.class_names),
            "description": self.data.description,
            "model": model.name,
            "parameters": model.count_params(),
            "onednn_kernels": cpu.onednn_kernels(),
            "peak_rss_mib": process_peak_rss_mib(),  # set up, before any training: the baseline's figure
            "decode_seconds": self.decode_seconds,
        }

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        if "warm_up" in request:
            return {"seconds": self.train(0, int(request["warm_up"]))}
        steps = int(request["steps"])
        samples = min(steps * self.batch_size, self.data.train.n)
        return {"seconds": self.train(int(request["epoch"]), steps), "samples": samples}

    def train(self, epoch: int, steps: int) -> float:
        """Seconds of ``Trainer.fit`` on the first ``steps`` batches of ``epoch``, from the initial state."""
        from gradloop.loop.state import LoopState

        batches = self.epochs(epoch).take(steps)
        self.reset()
        start = time.perf_counter()
        self.trainer.fit(batches, epochs=1, verbose=0)
        seconds = time.perf_counter() - start
        self.trainer.state = LoopState()  # drop the next epoch's iterator fit made: nothing runs between requests
        return seconds

    def variables(self) -> list[Any]:
        """The model's weights and the optimizer's state (Adam: step count, and two slots per weight)."""
        return [*self.trainer.model.weights, *self.trainer.optimizer.variables]

    def reset(self) -> None:
        """Weights and optimizer state back to what they were before any training."""
        for variable, value in zip(self.variables(), self.initial):
            variable.assign(value)

    def finish(self) -> dict[str, Any]:
        return {
            "peak_rss_mib": process_peak_rss_mib(),
            "footprint_bytes": sum(_nbytes(v) for v in self.variables()),
            "weights_bytes": sum(_nbytes(v) for v in self.trainer.model.weights),
        }


def decode(files: Any) -> np.ndarray:
    """Every image of ``files`` (ImageFiles) decoded into one float32 array, in their order,
    exactly as streaming decodes them (``ImageFiles.batches``), with no second copy on the way."""
    x = np.empty((files.n, *files.element_shape), np.float32)
    at = 0
    for images, _ in files.batches(None, DECODE_BATCH):
        x[at : at + len(images)] = images.numpy()
        at += len(images)
    return x


def no_examples(element_shape: tuple[int, ...], class_names: tuple[str, ...]) -> Any:
    """A RunData of no examples, of the folder's image shape and classes: what the baseline's model is sized from."""
    from gradloop.data.examples import ArrayExamples
    from gradloop.data.sources.prepared import RunData

    train = ArrayExamples(np.zeros((0, *element_shape), np.float32), np.zeros(0, np.int64))
    return RunData(
        train=train,
        val=None,
        test=None,
        kind="images",
        description="no examples",
        task="classification",
        class_names=class_names,
        source_class_names=None,
        fingerprint={},
        preprocessing={},
    )


def _nbytes(variable: Any) -> int:
    return int(np.prod(variable.shape, dtype=np.int64)) * np.dtype(variable.dtype).itemsize


def _is_user_error(exc: Exception) -> bool:
    from gradloop.errors import GradloopError

    return isinstance(exc, (GradloopError, OSError))


if __name__ == "__main__":
    sys.exit(main())
