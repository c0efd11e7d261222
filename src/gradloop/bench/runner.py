"""``gradloop bench``: training throughput of the same loop written six ways, and by its peers.

In one process, on the same model, data, batch size and initial weights:

    eager           the tutorial's loop as written (GradientTape per batch, eager)
    tf.function     the tutorial's step under @tf.function, one call per batch
    keras spe=1     model.fit
    keras spe=32    model.fit with steps_per_execution=32
    gradloop        Trainer.fit with gradloop train's defaults on in-memory data (gradloop.InMemory:
                    step groups gathering their batches by index; XLA-compiled where a 10-epoch run
                    of this data would be; fused optimizer kernels)
    gradloop --jit  the same, always on XLA; timed only when asked for

and, with ``--peers`` or by name, the same training in other frameworks, each in a
process of its own so that their backends do not collide (:mod:`gradloop.bench.peers`):
Keras ``fit`` on JAX (spe=1 and spe=32), a ``jax.jit`` step, the same step run 32 at a
time by ``jax.lax.scan``, and a PyTorch loop; each only where its package is installed.

The model is the reference MLP or, with ``--model cnn``, bench's CNN (conv 32, pool,
conv 64, pool, dense), both described once by ``Workload.layers()``, from which every
framework builds it.

Each variant is warmed up (traced) first, then timed for about ``seconds``;
the variants take turns over ``rounds`` rounds (in reverse order every other
round) and the median counts. A shared machine's speed swings between
rounds, so the ratios are paired: ``gradloop / X`` is the median over rounds
of that round's gradloop rate over that round's X rate, two measurements
taken seconds apart rather than two medians possibly taken at different speeds.

The limit is the model's matmul and convolution FLOPs per training sample against
the FLOP/s this machine reaches on exactly those products: per layer the forward
product and the weight gradient, and the input gradient for every layer but
the first (nothing needs the gradient of the data).

TensorFlow and Keras are imported by the functions that build and time the
variants, not with this module: the CLI lists ``VARIANTS`` in its help and
checks ``--variants`` against them, which must not wait for TensorFlow.

``--data DIR`` (:func:`run_data_bench`) times something else: gradloop's
``Trainer.fit`` on a folder of images streamed from disk, against the same
images decoded into memory, on the same model. Peak RSS is a process's
high-water mark, so each variant runs in a process of its own
(:mod:`gradloop.bench.worker`), and a third one measures the baseline:
TensorFlow imported and the model built, no data.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from gradloop import data, errors
from gradloop.app import cpu
from gradloop.app.config import DEFAULT_EPOCHS

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from gradloop.app.config import TrainConfig

# The variants this process times, in the order bench reports them.
IN_PROCESS = ("eager", "tf.function", "keras spe=1", "keras spe=32", "gradloop", "gradloop --jit")
# The peers, each timed in a process of its own (gradloop.bench.peers), with the package each needs.
PEERS = {"keras-jax spe=1": "jax", "keras-jax spe=32": "jax", "jax jit": "jax", "jax scan": "jax", "torch": "torch"}
PEERS_INSTALL = "pip install 'gradloop[peers]'"  # the extra that brings every peer's package
# Every variant bench can time; it times the in-process ones but XLA's unless told otherwise.
VARIANTS = (*IN_PROCESS, *PEERS)
DEFAULT_VARIANTS = tuple(v for v in IN_PROCESS if v != "gradloop --jit")
TRAIN_EPOCHS = DEFAULT_EPOCHS  # gradloop train's default: the run whose XLA choice bench's "gradloop" makes


def choose_variants(names: Sequence[str] | None, *, peers: bool = False) -> tuple[tuple[str, ...], dict[str, str]]:
    """The variants to time, and the peers left out with the reason: ``names`` (default
    ``DEFAULT_VARIANTS``), then with ``peers`` every other peer whose package is installed.
    A name bench does not know, or a named peer whose package is missing, is a ConfigError."""
    chosen = list(dict.fromkeys(DEFAULT_VARIANTS if names is None else names))
    unknown = [name for name in chosen if name not in VARIANTS]
    if unknown:
        raise errors.ConfigError(f"unknown bench variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    for name in chosen:
        if name in PEERS and not _installed(PEERS[name]):
            raise errors.ConfigError(f"bench variant {name!r} needs {PEERS[name]}, which is not installed; "
                                     f"install the peers with: {PEERS_INSTALL}")
    skipped = {}
    for name in PEERS if peers else ():
        if name in chosen:
            continue
        if _installed(PEERS[name]):
            chosen.append(name)
        else:
            skipped[name] = f"{PEERS[name]} is not installed ({PEERS_INSTALL})"
    return tuple(chosen), skipped


def _installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (a peer's framework takes seconds to import)."""
    return importlib.util.find_spec(package) is not None


@dataclass(frozen=True)
class Layer:
    """One layer of a bench model, as every framework builds it. ``dense`` and ``conv`` (3x3, no padding)
    have ``units`` outputs (filters), Glorot-uniform weights and zero biases; ``pool`` is 2x2 max pooling."""

    kind: str  # "dense", "conv", "pool" or "flatten"
    units: int = 0
    relu: bool = False


# bench's CNN before its logits layer: the classic Keras example's convolutions, without dropout.
CNN_LAYERS = (Layer("conv", 32, relu=True), Layer("pool"), Layer("conv", 64, relu=True), Layer("pool"),
              Layer("flatten"))


@dataclass(frozen=True)
class Workload:
    x: np.ndarray
    y: np.ndarray
    batch_size: int
    hidden: tuple[int, ...]
    n_classes: int
    lr: float = 1e-4
    seed: int = 0
    kind: str = "mlp"  # the MLP of ``hidden``, or "cnn": bench's CNN (x holds images: height, width, channels)

    def dataset(self, steps: int) -> tf.data.Dataset:
        """``steps`` batches of the shuffled training data, reshuffled at each pass
        (and so in another order each time the dataset is iterated)."""
        return self._shuffled.repeat().take(steps)

    @cached_property
    def _shuffled(self) -> tf.data.Dataset:  # one copy of the data in tensors, shared by every dataset
        return data.make_dataset(self.x, self.y, batch_size=self.batch_size, shuffle=True, seed=self.seed)

    @cached_property
    def in_memory(self) -> Any:
        """The data as gradloop's in-memory source (``gradloop.InMemory``): tensors held once, shared by every use."""
        from gradloop import InMemory

        return InMemory(self.x, self.y, batch_size=self.batch_size, seed=self.seed)

    def in_memory_epochs(self, steps: int) -> tuple[Callable[[int], Any], int]:
        """``steps`` batches of ``in_memory`` as ``fit`` takes them: ``epoch -> its batches`` and the number of
        epochs (the last one cut short), each epoch reshuffled as the dataset's passes are."""
        per_epoch = self.in_memory.steps
        epochs = -(-steps // per_epoch)
        last = steps - (epochs - 1) * per_epoch
        return (lambda epoch: self.in_memory(epoch).take(last if epoch == epochs - 1 else per_epoch)), epochs

    def samples(self, steps: int) -> int:
        """Samples in the first ``steps`` batches (each pass ends with a partial batch)."""
        n, b = len(self.x), self.batch_size
        per_pass = -(-n // b)
        full_passes, rest = divmod(steps, per_pass)
        return full_passes * n + min(rest * b, n)

    def settings(self) -> dict[str, Any]:
        """Everything but the data, as JSON: what a peer process needs besides the arrays."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("x", "y")}

    def layers(self) -> tuple[Layer, ...]:
        """The model, from input to logits: what ``model()`` and every peer build."""
        body = CNN_LAYERS if self.kind == "cnn" else tuple(Layer("dense", units, relu=True) for units in self.hidden)
        return (*body, Layer("dense", self.n_classes))

    def describe(self) -> str:
        if self.kind == "cnn":
            return f"CNN conv32-pool-conv64-pool -> {self.n_classes}"
        return f"MLP {'-'.join(map(str, self.hidden))} -> {self.n_classes}"

    def model(self, *, seeded: bool = True) -> keras.Model:
        """The model of ``layers()``, with Keras' initial weights: seeded, the same in every variant. A peer on
        JAX builds it unseeded and sets the weights: Keras' seeding imports TensorFlow wherever it is installed."""
        import keras

        if seeded:
            keras.utils.set_random_seed(self.seed)
        inputs = keras.Input(self.x.shape[1:])
        h = inputs
        for layer in self.layers():
            activation = "relu" if layer.relu else None
            if layer.kind == "dense":
                h = keras.layers.Dense(layer.units, activation=activation)(h)
            elif layer.kind == "conv":
                h = keras.layers.Conv2D(layer.units, 3, activation=activation)(h)
            elif layer.kind == "pool":
                h = keras.layers.MaxPooling2D()(h)
            else:
                h = keras.layers.Flatten()(h)
        return keras.Model(inputs, h)

    def shapes(self) -> list[tuple[Layer, tuple[int, ...], tuple[int, ...]]]:
        """Each layer with the shape of one sample going in and coming out."""
        shape, shapes = tuple(self.x.shape[1:]), []
        for layer in self.layers():
            if layer.kind == "dense":
                out = (layer.units,)
            elif layer.kind == "conv":
                out = (shape[0] - 2, shape[1] - 2, layer.units)
            elif layer.kind == "pool":
                out = (shape[0] // 2, shape[1] // 2, shape[2])
            else:
                out = (math.prod(shape),)
            shapes.append((layer, shape, out))
            shape = out
        return shapes

    def products(self) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Per dense or conv layer: the shapes of one sample's input, of the kernel, and of its output."""
        kernels = {"dense": lambda i, layer: (i[0], layer.units), "conv": lambda i, layer: (3, 3, i[2], layer.units)}
        return [(i, kernels[layer.kind](i, layer), o) for layer, i, o in self.shapes() if layer.kind in kernels]

    def flops_per_sample(self) -> int:
        """Matmul and convolution FLOPs of one training sample, 2 per multiply-add: forward and
        weight gradient for each layer, input gradient for all but the first."""
        forward = [2 * math.prod(out) * math.prod(kernel[:-1]) for _, kernel, out in self.products()]
        return 2 * sum(forward) + sum(forward[1:])


def keras_loss() -> keras.losses.Loss:
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@dataclass(frozen=True)
class Variant:
    """One way to train: ``run(data)`` trains ``model`` on every batch of ``data``, made by
    ``data(work, steps)``: ``steps`` batches (a fresh iterator each call). The data is made once,
    outside the timing, as the tutorial builds its own: building it (tensors and a traced function)
    is set-up, not training."""

    run: Callable[[Any], object]
    model: keras.Model
    data: Callable[[Workload, int], Any] = Workload.dataset


def tutorial_loop(work: Workload, compiled: bool) -> Variant:
    """The tutorial's loop, verbatim in spirit: eager, or with the step under tf.function."""
    import keras
    import tensorflow as tf

    model, optimizer, loss_fn = work.model(), keras.optimizers.Adam(work.lr), keras_loss()
    train_acc = keras.metrics.Accuracy()

    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply_gradients(zip(grads, model.trainable_weights))
        train_acc.update_state(y, tf.argmax(logits, axis=1))
        return loss

    step = tf.function(step) if compiled else step

    def run(dataset: tf.data.Dataset) -> None:
        for x, y in dataset:
            step(x, y)
        train_acc.result().numpy()
        train_acc.reset_state()

    return Variant(run, model)


def keras_fit(work: Workload, steps_per_execution: int) -> Variant:
    import keras

    model = work.model()
    model.compile(optimizer=keras.optimizers.Adam(work.lr), loss=keras_loss(), metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    return Variant(lambda dataset: model.fit(dataset, epochs=1, verbose=0, shuffle=False), model)


def gradloop_fit(work: Workload, *, jit_compile: bool | None = None) -> Variant:
    """``gradloop train``'s loop on in-memory data (:class:`gradloop.InMemory`); ``jit_compile=None``: as
    its default decides for a run of ``TRAIN_EPOCHS`` epochs of this data (a timed run is far shorter)."""
    import keras

    from gradloop import CompileOptions, Trainer

    class TrainerOfTheRun(Trainer):
        def plan_steps(self, total_steps: int | None) -> None:
            super().plan_steps(TRAIN_EPOCHS * work.in_memory.steps)

    model = work.model()
    trainer = TrainerOfTheRun(model, optimizer=keras.optimizers.Adam(work.lr), loss=keras_loss(), metrics=["accuracy"],
                              options=CompileOptions(jit_compile=jit_compile))
    return Variant(lambda data: trainer.fit(data[0], epochs=data[1], verbose=0), model, data=Workload.in_memory_epochs)


def build_variant(name: str, work: Workload) -> Variant:
    return {
        "eager": lambda: tutorial_loop(work, compiled=False),
        "tf.function": lambda: tutorial_loop(work, compiled=True),
        "keras spe=1": lambda: keras_fit(work, 1),
        "keras spe=32": lambda: keras_fit(work, 32),
        "gradloop": lambda: gradloop_fit(work),
        "gradloop --jit": lambda: gradloop_fit(work, jit_compile=True),
    }[name]()


class PeakRSS:
    """Peak resident memory above the level at entry (Linux).

    The kernel keeps the peak (``VmHWM``) and resets it on request
    (``/proc/self/clear_refs``), so no sampling thread runs beside the timed
    code. ``mib`` is None where that is not available.
    """

    def __enter__(self) -> "PeakRSS":
        self.base = _rss() if _reset_peak() else None
        self.peak = None
        return self

    def __exit__(self, *exc) -> None:
        self.peak = _status_kib("VmHWM") if self.base is not None else None

    @property
    def mib(self) -> float | None:
        if self.base is None or self.peak is None:
            return None
        return max(self.peak * 1024 - self.base, 0) / 2**20


def peak_rss_mib() -> float | None:
    """This process's peak resident memory since it started or since the last ``PeakRSS`` began (Linux)."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib / 1024


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size to the current one
        return True
    except OSError:
        return False


def _rss() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def limit_flops_per_second(work: Workload, seconds: float = 1.0) -> float:
    """FLOP/s of the training step's matmuls and convolutions alone, at this batch size."""
    import tensorflow as tf

    rng = tf.random.Generator.from_seed(0)
    b = work.batch_size
    operands = [(rng.normal((b, *i)), rng.normal(kernel), rng.normal((b, *o))) for i, kernel, o in work.products()]
    products = _products()
    products(tf.constant(10), operands).numpy()
    n = 50
    while True:
        start = time.perf_counter()
        products(tf.constant(n), operands).numpy()
        elapsed = time.perf_counter() - start
        if elapsed > seconds / 4 or n > 10**6:
            break
        n *= 4
    return n * b * work.flops_per_sample() / elapsed


@cache
def _products() -> Callable:
    """A compiled function that runs ``n`` times a training step's matmuls and convolutions
    (see ``Workload.flops_per_sample``); each layer's operands are (input, kernel, output gradient)."""
    import tensorflow as tf

    def conv_products(a, w, g, first):
        strides = [1, 1, 1, 1]
        total = tf.nn.conv2d(a, w, strides, "VALID")[0, 0, 0, 0]  # forward
        total += tf.raw_ops.Conv2DBackpropFilter(  # weight gradient
            input=a, filter_sizes=tf.shape(w), out_backprop=g, strides=strides, padding="VALID")[0, 0, 0, 0]
        if not first:  # input gradient
            total += tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(a), filter=w, out_backprop=g, strides=strides, padding="VALID")[0, 0, 0, 0]
        return total

    def matmul_products(a, w, g, first):
        total = tf.matmul(a, w)[0, 0]  # forward
        total += tf.matmul(a, g, transpose_a=True)[0, 0]  # weight gradient
        if not first:
            total += tf.matmul(g, w, transpose_b=True)[0, 0]  # input gradient
        return total

    @tf.function(reduce_retracing=True)
    def products(n, operands):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            for layer, (a, w, g) in enumerate(operands):
                total += (conv_products if len(w.shape) == 4 else matmul_products)(a, w, g, layer == 0)
        return total

    return products


WARMUP_STEPS = 2 * 32 + 1  # two full groups of 32 steps and a partial one: every function traced
CHECKED_SAMPLES = 8  # the samples whose logits, from the initial weights, each peer must reproduce


def run_bench(work: Workload, *, variants=DEFAULT_VARIANTS, seconds: float = 3.0, rounds: int = 3,
              skipped: dict[str, str] | None = None, progress: Callable[[str], None] = lambda s: None) -> dict:
    """Throughput (samples/s) of each variant, medians over interleaved rounds.

        start a process per peer; each checks that its model gives bench's Keras model's logits
        warm up each variant (trace, then time the same steps once more: how many steps ``seconds`` takes)
        for each round, in turn (reversed every other round): each variant trains its steps; the limit
        peak RSS of each (in-process: above the process as the variant started; peers: their processes too)
    """
    contenders: dict[str, _InProcess | PeerProcess] = {}
    peers = [name for name in variants if name in PEERS]
    files = None
    try:
        if peers:
            files = PeerFiles(work)
            progress(f"starting a process per peer ({', '.join(peers)})")
            contenders.update({name: PeerProcess(name, work, files) for name in peers})
            expected = files.first_logits
            for name in peers:
                contenders[name].check(expected)
        contenders = {name: contenders.get(name) or _InProcess(name, work) for name in variants}  # in their order
        if any(isinstance(contender, _InProcess) for contender in contenders.values()):
            work.dataset(1)  # the data's tensors, shared by the in-process variants: no one variant's memory
            if any(name.startswith("gradloop") for name in contenders):
                work.in_memory  # gradloop's own copy of them, shared by its variants, made before their memory counts
        for name, contender in contenders.items():
            progress(f"warming up {name}")
            contender.plan(max(WARMUP_STEPS, int(contender.warm_up(WARMUP_STEPS) * seconds)))
        rates: dict[str, list[float]] = {name: [] for name in variants}
        limits: list[float] = []
        for r in range(rounds):
            for name in variants if r % 2 == 0 else reversed(variants):  # no variant always runs first
                progress(f"round {r + 1}/{rounds}: {name}")
                rates[name].append(contenders[name].run())
            progress(f"round {r + 1}/{rounds}: the limit")  # in every round, so it sees the same load
            limits.append(limit_flops_per_second(work) / work.flops_per_sample())
        memory = {name: contender.finish() for name, contender in contenders.items()}
    except BaseException:
        for contender in contenders.values():
            contender.close(kill=True)
        raise
    finally:
        if files is not None:
            files.remove()
    for contender in contenders.values():
        contender.close()
    limit = statistics.median(limits)
    results = {name: statistics.median(v) for name, v in rates.items()}
    return {
        "batch_size": work.batch_size,
        "n_train": int(len(work.x)),
        "model": work.describe(),
        "flops_per_sample": work.flops_per_sample(),
        "onednn_kernels": cpu.onednn_kernels(),
        "limit_samples_per_s": limit,
        "limit_of": "matmuls and convolutions" if work.kind == "cnn" else "matmuls",
        "variants": {
            name: {
                "samples_per_s": results[name],
                "all_rounds": rates[name],
                "share_of_limit": results[name] / limit,
                **memory[name],
            }
            for name in variants
        },
        "ratios": paired_ratios(rates),
        "skipped": dict(skipped or {}),
    }


class _InProcess:
    """A variant timed in this process: ``warm_up`` builds and traces it; ``run`` trains its planned steps once."""

    def __init__(self, name: str, work: Workload) -> None:
        self.name, self.work = name, work
        self.peak_rss_mib: float | None = None

    def warm_up(self, steps: int) -> float:
        """Build and trace the variant on ``steps`` batches, then train them again: steps per second."""
        with PeakRSS() as rss:  # building and tracing count towards the variant's memory
            variant = build_variant(self.name, self.work)
            self._train, self._data = variant.run, variant.data
            dataset = self._data(self.work, steps)
            self._train(dataset)
        self._note(rss.mib)
        start = time.perf_counter()
        self._train(dataset)
        return steps / (time.perf_counter() - start)

    def plan(self, steps: int) -> None:
        self.steps, self.dataset = steps, self._data(self.work, steps)  # built once, outside the timing

    def run(self) -> float:
        """Samples per second over the planned steps."""
        with PeakRSS() as rss:
            start = time.perf_counter()
            self._train(self.dataset)
            elapsed = time.perf_counter() - start
        self._note(rss.mib)
        return self.work.samples(self.steps) / elapsed

    def _note(self, mib: float | None) -> None:
        self.peak_rss_mib = mib if self.peak_rss_mib is None or mib is None else max(self.peak_rss_mib, mib)

    def finish(self) -> dict[str, Any]:
        return {"peak_rss_mib": self.peak_rss_mib, "process_peak_rss_mib": None}

    def close(self, *, kill: bool = False) -> None:
        pass


class PeerFiles:
    """The workload as files for the peer processes: the arrays as .npy (not JSON), and the
    initial weights of bench's Keras model, which every peer starts from."""

    def __init__(self, work: Workload) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="gradloop-bench-")
        self.folder = Path(self._folder.name)
        np.save(self.folder / "x.npy", work.x)
        np.save(self.folder / "y.npy", work.y)
        model = work.model()
        np.savez(self.folder / "weights.npz", *model.get_weights())
        self.first_logits = np.asarray(model(work.x[:CHECKED_SAMPLES]))

    def remove(self) -> None:
        self._folder.cleanup()


class PeerProcess:
    """A :mod:`gradloop.bench.peers` process training one peer: ``run`` asks it to train its planned steps."""

    def __init__(self, name: str, work: Workload, files: PeerFiles) -> None:
        self.name = name
        env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}  # the CPU, as every variant
        if name.startswith("keras-jax"):
            env["KERAS_BACKEND"] = "jax"  # read once, when Keras is imported
        request = {"folder": str(files.folder), "workload": work.settings()}
        self.worker = _Worker(name, request, module="gradloop.bench.peers", env=env)

    def check(self, expected: np.ndarray) -> None:
        """Wait for its set-up; refuse a peer whose model does not compute bench's Keras model."""
        reply = self.worker.reply()
        self.framework = reply["framework"]
        logits = np.asarray(reply["first_logits"], np.float32)
        if logits.shape != expected.shape or not np.allclose(logits, expected, rtol=1e-3, atol=1e-4):
            worst = np.max(np.abs(logits - expected)) if logits.shape == expected.shape else "n/a"
            raise RuntimeError(f"bench's {self.name} peer computes other logits than bench's Keras model from the "
                               f"same weights (largest difference {worst}): its model is not the same")

    def warm_up(self, steps: int) -> float:
        self.worker.ask(steps=steps)  # compiles
        timed = self.worker.ask(steps=steps)
        return timed["steps"] / timed["seconds"]

    def plan(self, steps: int) -> None:
        self.steps = steps

    def run(self) -> float:
        timed = self.worker.ask(steps=self.steps)
        return timed["samples"] / timed["seconds"]

    def finish(self) -> dict[str, Any]:
        last = self.worker.finish()
        return {"peak_rss_mib": last["added_rss_mib"], "process_peak_rss_mib": last["peak_rss_mib"],
                "framework": self.framework}

    def close(self, *, kill: bool = False) -> None:
        self.worker.close(kill=kill)


def paired_ratios(rates: dict[str, list[float]]) -> dict[str, float]:
    """``gradloop / X``: the median over rounds of the two rates measured in that round."""
    ours = rates.get("gradloop")
    if ours is None:
        return {}
    return {f"gradloop / {name}": paired_ratio(ours, theirs) for name, theirs in rates.items() if name != "gradloop"}


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median over rounds of ``ours[r] / theirs[r]``: two rates measured seconds apart."""
    return statistics.median(a / b for a, b in zip(ours, theirs))


def _kernels(onednn: bool | None) -> str:
    return "kernels unknown" if onednn is None else f"{cpu.KERNEL_NAMES[onednn]} kernels"


def format_table(result: dict) -> str:
    variants = result["variants"]
    width = max(len("variant"), *map(len, variants)) + 2
    lines = [
        f"{result['model']}, batch {result['batch_size']}, {result['n_train']:,} training samples; "
        f"limit {result['limit_samples_per_s']:,.0f} samples/s ({result['flops_per_sample'] / 1e6:.2f} MFLOP/sample "
        f"in {result['limit_of']}); "
        f"{_kernels(result['onednn_kernels'])}",
        f"{'variant':<{width}}{'samples/s':>10}{'range':>16}{'share of limit':>16}{'peak RSS MiB':>14}"
        f"{'process MiB':>13}{'gradloop is':>13}",
    ]
    for name, v in variants.items():
        low, high = min(v["all_rounds"]), max(v["all_rounds"])
        ratio = result["ratios"].get(f"gradloop / {name}")
        lines.append(f"{name:<{width}}{v['samples_per_s']:>10,.0f}{f'{low:,.0f}-{high:,.0f}':>16}"
                     f"{v['share_of_limit']:>15.1%}{_mib(v['peak_rss_mib']):>14}"
                     f"{_mib(v.get('process_peak_rss_mib'), '') :>13}{'' if ratio is None else f'{ratio:.2f}x':>13}")
    rounds = len(next(iter(variants.values()))["all_rounds"])
    lines.append(f"samples/s: median of {rounds} rounds, and the slowest and fastest; gradloop is: median of the "
                 f"{rounds} per-round ratios")
    lines.append("peak RSS: above the process as the variant started (this process: TensorFlow, the data and the "
                 "variants before it; a peer's: its framework and the data); process: a peer's whole process")
    frameworks: dict[str, list[str]] = {}
    for name, v in variants.items():
        if "framework" in v:
            frameworks.setdefault(v["framework"], []).append(name)
    if frameworks:
        lines.append("peers, each in a process of its own, on the CPU: "
                     + "; ".join(f"{', '.join(names)}: {framework}" for framework, names in frameworks.items()))
    if result.get("skipped"):
        lines.append("skipped: " + "; ".join(f"{name}: {why}" for name, why in result["skipped"].items()))
    return "\n".join(lines)


def _mib(value: float | None, missing: str = "n/a") -> str:
    return missing if value is None else f"{value:.0f}"


# --------------------------------------------------------------------- --data: streamed vs. in memory

# The variants of ``bench --data``, in the order they report; the baseline is measured besides.
DATA_VARIANTS = ("streamed", "in memory")
STREAMED_RATIO = "streamed / in memory"
FLOAT32_BYTES = 4


def run_data_bench(config: TrainConfig, *, seconds: float = 3.0, rounds: int = 3,
                   progress: Callable[[str], None] = lambda s: None) -> dict:
    """Samples/s and peak RSS of ``Trainer.fit`` on ``config.data``'s training images, streamed and in memory.

        start a process per variant; each loads the folder (in memory: decodes it), builds train's trainer
        baseline: a third process imports TensorFlow and builds the model, no data; its peak RSS
        warm up each (trace, then time the same batches once more: how many steps ``seconds`` takes)
        for each round, in turn (reversed every other round): train epoch r's first `steps` batches
        from the same initial state; samples / seconds
        peak RSS of each process (also as it was before training), and the model's footprint
        (weights + optimizer state)

    The ratio is paired, as in :func:`run_bench`: the median of each round's streamed / in-memory rate.
    A timed run is at most one epoch, and pays what an epoch's start pays (filling the stream; gathering
    the epoch's order in memory); only one process trains at a time, the others wait on their input.
    """
    request = {"config": config.to_dict()}
    workers: dict[str, _Worker] = {}
    try:
        progress(f"starting a process per variant ({', '.join(DATA_VARIANTS)}); in memory decodes every image first")
        workers = {name: _Worker(name, request) for name in DATA_VARIANTS}
        described = {name: worker.reply() for name, worker in workers.items()}
        about = described["streamed"]
        if any(d[k] != about[k] for d in described.values() for k in ("n", "element_shape", "class_names")):
            raise errors.DataError(f"{config.data} changed while the bench read it; run it again on a folder "
                                   "left alone")
        progress("measuring the baseline: TensorFlow imported and the model built, no data")
        workers["baseline"] = _Worker("baseline", {**request, "element_shape": about["element_shape"],
                                                   "class_names": about["class_names"]})
        baseline_rss = workers["baseline"].reply()["peak_rss_mib"]
        workers["baseline"].finish()

        n, b = about["n"], config.batch_size
        steps_per_epoch = math.ceil(n / b)
        warmup = min(2 * config.steps_per_execution + 1, steps_per_epoch)  # full step groups and a partial one
        rates = {}
        for name in DATA_VARIANTS:
            progress(f"warming up {name}")
            workers[name].ask(warm_up=warmup)  # traces the step
            rates[name] = min(warmup * b, n) / workers[name].ask(warm_up=warmup)["seconds"]
        steps = min(max(1, math.ceil(max(rates.values()) * seconds / b)), steps_per_epoch)
        all_rounds: dict[str, list[float]] = {name: [] for name in DATA_VARIANTS}
        for r in range(rounds):
            for name in DATA_VARIANTS if r % 2 == 0 else reversed(DATA_VARIANTS):  # neither always runs first
                progress(f"round {r + 1}/{rounds}: {name}")
                timed = workers[name].ask(epoch=r + 1, steps=steps)
                all_rounds[name].append(timed["samples"] / timed["seconds"])
        finished = {name: workers[name].finish() for name in DATA_VARIANTS}
    except BaseException:
        for worker in workers.values():
            worker.close(kill=True)
        raise
    for worker in workers.values():
        worker.close()

    decoded, footprint = n * math.prod(about["element_shape"]) * FLOAT32_BYTES, finished["streamed"]["footprint_bytes"]
    bound = (decoded + footprint) / 2**20 + baseline_rss
    return {
        "data": config.data,
        "description": about["description"],
        "model": f"{about['model']}, {about['parameters']:,} parameters",
        "parameters": about["parameters"],
        "batch_size": b,
        "n_train": n,
        "element_shape": about["element_shape"],
        "steps_per_round": steps,
        "onednn_kernels": about["onednn_kernels"],
        "variants": {
            name: {"samples_per_s": statistics.median(all_rounds[name]), "all_rounds": all_rounds[name],
                   "peak_rss_mib": finished[name]["peak_rss_mib"],
                   "setup_peak_rss_mib": described[name]["peak_rss_mib"],  # data read, model built, not trained
                   "decode_seconds": described[name]["decode_seconds"]}  # reading the images before training
            for name in DATA_VARIANTS
        },
        "ratios": {STREAMED_RATIO: paired_ratio(all_rounds["streamed"], all_rounds["in memory"])},
        "decoded_bytes": decoded,
        "decoded_mib": decoded / 2**20,
        "footprint_bytes": footprint,
        "footprint_mib": footprint / 2**20,
        "baseline_rss_mib": baseline_rss,
        "rss_bound_mib": bound,
        "streamed_rss_below_bound": finished["streamed"]["peak_rss_mib"] < bound,
    }


def format_data_table(result: dict) -> str:
    v, shape = result["variants"], result["element_shape"]
    streamed_rss = v["streamed"]["peak_rss_mib"]
    rounds = len(v["streamed"]["all_rounds"])
    below = "below" if result["streamed_rss_below_bound"] else "NOT below"
    lines = [
        f"{result['model']}, batch {result['batch_size']}, on {result['description']}: "
        f"{result['n_train']:,} training images, {result['steps_per_round']} steps per timed run; "
        f"{_kernels(result['onednn_kernels'])}",
        f"{'variant':<12}{'samples/s':>12}{'peak RSS MiB':>14}{'before training':>17}{'streamed is':>13}",
        *(f"{name:<12}{v[name]['samples_per_s']:>12,.0f}{v[name]['peak_rss_mib']:>14.0f}"
          f"{v[name]['setup_peak_rss_mib']:>17.0f}{_streamed_is(result, name):>13}" for name in DATA_VARIANTS),
        f"{'baseline':<12}{'':>12}{result['baseline_rss_mib']:>14.0f}"
        "   (TensorFlow imported and the model built, no data)",
        f"decoding before training: streamed {v['streamed']['decode_seconds']:.1f} s (into a copy on disk, "
        f"unless --image-cache off), in memory {v['in memory']['decode_seconds']:.1f} s (into an array)",
        f"decoded images: {result['n_train']:,} x {' x '.join(map(str, shape))} x {FLOAT32_BYTES} bytes = "
        f"{result['decoded_mib']:.1f} MiB; "
        f"model footprint (weights + optimizer state): {result['footprint_mib']:.1f} MiB",
        f"streamed peak RSS {streamed_rss:.0f} MiB is {below} decoded + footprint + baseline = "
        f"{result['decoded_mib']:.1f} + {result['footprint_mib']:.1f} + {result['baseline_rss_mib']:.0f} = "
        f"{result['rss_bound_mib']:.0f} MiB",
        f"samples/s: median of {rounds} rounds; streamed is: median of the {rounds} per-round ratios; "
        "peak RSS: each variant's own process; before training: once it had read (in memory: decoded) the images "
        "and built the model",
    ]
    return "\n".join(lines)


def _streamed_is(result: dict, name: str) -> str:
    return "" if name == "streamed" else f"{result['ratios'][STREAMED_RATIO]:.2f}x"


class _Worker:
    """A process running one variant (``module``: :mod:`gradloop.bench.worker` or :mod:`gradloop.bench.peers`):
    a JSON request in, a JSON reply out."""

    def __init__(self, variant: str, request: dict[str, Any], *, module: str = "gradloop.bench.worker",
                 env: dict[str, str] | None = None) -> None:
        self.variant = variant
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, variant, json.dumps(request)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )

    def ask(self, **request: Any) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self.reply()

    def reply(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the bench's {self.variant} process ended (exit status {self.process.wait()}) "
                               "without answering; its error is above")
        reply = json.loads(line)
        if "error" in reply:
            raise _worker_error(self.variant, reply["kind"], reply["error"])
        return reply

    def finish(self) -> dict[str, Any]:
        """Its last reply (peak RSS, footprint), once it has stopped training for good."""
        return self.ask(stop=True)

    def close(self, *, kill: bool = False) -> None:
        """Wait for it to exit (``kill``: end it now, as when the bench failed or was interrupted)."""
        if kill and self.process.poll() is None:
            self.process.kill()
        try:
            self.process.stdin.close()
        except OSError:  # a broken pipe: it has gone already
            pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def _worker_error(variant: str, kind: str, message: str) -> Exception:
    """A worker's failure, raised here as it would have been raised in this process."""
    known = getattr(errors, kind, None)
    if isinstance(known, type) and issubclass(known, errors.GradloopError):
        return known(message)
    if kind in ("OSError", "FileNotFoundError", "PermissionError", "NotADirectoryError", "IsADirectoryError"):
        return OSError(message)
    return RuntimeError(f"the bench's {variant} process failed: {kind}: {message}")
