"""``gradloop bench``: training throughput of the same loop written six ways.

In one process, on the same model, data, batch size and initial weights:

    eager           the tutorial's loop as written (GradientTape per batch, eager)
    tf.function     the tutorial's step under @tf.function, one call per batch
    keras spe=1     model.fit
    keras spe=32    model.fit with steps_per_execution=32
    gradloop        Trainer.fit with its defaults (fused steps, fused optimizer kernels)
    gradloop --jit  the same, XLA-compiled; timed only when asked for

Each variant is warmed up (traced) first, then timed for about ``seconds``;
the variants take turns over ``rounds`` rounds (in reverse order every other
round) and the median counts. A shared machine's speed swings between
rounds, so the ratios are paired: ``gradloop / X`` is the median over rounds
of that round's gradloop rate over that round's X rate, two measurements
taken seconds apart rather than two medians possibly taken at different speeds.

The limit is the model's matmul FLOPs per training sample against the FLOP/s
this machine reaches on exactly those matmuls: per Dense layer the forward
product and the weight gradient, and the input gradient for every layer but
the first (nothing needs the gradient of the data).

TensorFlow and Keras are imported by the functions that build and time the
variants, not with this module: the CLI lists ``VARIANTS`` in its help and
checks ``--variants`` against them, which must not wait for TensorFlow.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from functools import cache, cached_property
from typing import TYPE_CHECKING, Callable

import numpy as np

from gradloop import cpu, data

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

# Every variant bench can time, in the order it reports them; it times all but XLA's unless told otherwise.
VARIANTS = ("eager", "tf.function", "keras spe=1", "keras spe=32", "gradloop", "gradloop --jit")
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v != "gradloop --jit")


@dataclass(frozen=True)
class Workload:
    x: np.ndarray
    y: np.ndarray
    batch_size: int
    hidden: tuple[int, ...]
    n_classes: int
    lr: float = 1e-4
    seed: int = 0

    def dataset(self, steps: int) -> tf.data.Dataset:
        """``steps`` batches of the shuffled training data, reshuffled at each pass
        (and so in another order each time the dataset is iterated)."""
        return self._shuffled.repeat().take(steps)

    @cached_property
    def _shuffled(self) -> tf.data.Dataset:  # one copy of the data in tensors, shared by every dataset
        return data.make_dataset(self.x, self.y, batch_size=self.batch_size, shuffle=True, seed=self.seed)

    def samples(self, steps: int) -> int:
        """Samples in the first ``steps`` batches (each pass ends with a partial batch)."""
        n, b = len(self.x), self.batch_size
        per_pass = -(-n // b)
        full_passes, rest = divmod(steps, per_pass)
        return full_passes * n + min(rest * b, n)

    def model(self) -> keras.Model:
        import keras

        keras.utils.set_random_seed(self.seed)
        inputs = keras.Input((self.x.shape[1],))
        h = inputs
        for units in self.hidden:
            h = keras.layers.Dense(units, activation="relu")(h)
        return keras.Model(inputs, keras.layers.Dense(self.n_classes)(h))

    def layer_dims(self) -> list[tuple[int, int]]:
        dims = [self.x.shape[1], *self.hidden, self.n_classes]
        return list(zip(dims, dims[1:]))

    def flops_per_sample(self) -> int:
        """Matmul FLOPs of one training sample, 2 per multiply-add: forward and
        weight gradient for each layer, input gradient for all but the first."""
        products = [2 * a * b for a, b in self.layer_dims()]
        return 2 * sum(products) + sum(products[1:])


def _loss() -> keras.losses.Loss:
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@dataclass(frozen=True)
class Variant:
    """One way to train: ``run(dataset)`` trains ``model`` on every batch of ``dataset``
    (a fresh iterator each call). The dataset is built once, outside the timing, as the
    tutorial builds its own: building it (tensors and a traced function) is set-up, not training."""

    run: Callable[[tf.data.Dataset], object]
    model: keras.Model


def tutorial_loop(work: Workload, compiled: bool) -> Variant:
    """The tutorial's loop, verbatim in spirit: eager, or with the step under tf.function."""
    import keras
    import tensorflow as tf

    model, optimizer, loss_fn = work.model(), keras.optimizers.Adam(work.lr), _loss()
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
    model.compile(optimizer=keras.optimizers.Adam(work.lr), loss=_loss(), metrics=["accuracy"],
                  steps_per_execution=steps_per_execution)
    return Variant(lambda dataset: model.fit(dataset, epochs=1, verbose=0, shuffle=False), model)


def gradloop_fit(work: Workload, *, jit_compile: bool = False) -> Variant:
    import keras

    from gradloop import CompileOptions, Trainer

    model = work.model()
    trainer = Trainer(model, optimizer=keras.optimizers.Adam(work.lr), loss=_loss(), metrics=["accuracy"],
                      options=CompileOptions(jit_compile=jit_compile))
    return Variant(lambda dataset: trainer.fit(dataset, epochs=1), model)


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


def matmul_flops_per_second(work: Workload, seconds: float = 1.0) -> float:
    """FLOP/s of the training step's matmuls alone, at this batch size."""
    import tensorflow as tf

    matmuls = _matmuls()
    b = work.batch_size
    rng = tf.random.Generator.from_seed(0)
    weights = [rng.normal((i, o)) for i, o in work.layer_dims()]
    acts = [rng.normal((b, i)) for i, _ in work.layer_dims()]
    grads = [rng.normal((b, o)) for _, o in work.layer_dims()]
    matmuls(tf.constant(10), weights, acts, grads).numpy()
    n = 50
    while True:
        start = time.perf_counter()
        matmuls(tf.constant(n), weights, acts, grads).numpy()
        elapsed = time.perf_counter() - start
        if elapsed > seconds / 4 or n > 10**6:
            break
        n *= 4
    return n * b * work.flops_per_sample() / elapsed


@cache
def _matmuls() -> Callable:
    """A compiled function that runs ``n`` times a training step's matmuls (see ``Workload.flops_per_sample``)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def matmuls(n, weights, acts, grads):
        total = tf.constant(0.0)
        for _ in tf.range(n):
            for layer, (w, a, g) in enumerate(zip(weights, acts, grads)):
                total += tf.matmul(a, w)[0, 0]                      # forward
                total += tf.matmul(a, g, transpose_a=True)[0, 0]    # weight gradient
                if layer:
                    total += tf.matmul(g, w, transpose_b=True)[0, 0]  # input gradient
        return total

    return matmuls


def run_bench(work: Workload, *, variants=DEFAULT_VARIANTS, seconds: float = 3.0, rounds: int = 3,
              progress: Callable[[str], None] = lambda s: None) -> dict:
    """Throughput (samples/s) of each variant, medians over interleaved rounds."""
    runs, steps, datasets = {}, {}, {}
    warmup = 2 * 32 + 1
    warmup_data = work.dataset(warmup)
    memory: dict[str, float | None] = {}
    for name in variants:
        progress(f"warming up {name}")
        with PeakRSS() as rss:  # building and tracing count towards the variant's memory
            runs[name] = build_variant(name, work).run
            runs[name](warmup_data)
        memory[name] = rss.mib
        start = time.perf_counter()
        runs[name](warmup_data)
        rate = warmup / (time.perf_counter() - start)
        steps[name] = max(warmup, int(rate * seconds))
        datasets[name] = work.dataset(steps[name])
    rates: dict[str, list[float]] = {name: [] for name in variants}
    limits: list[float] = []
    for r in range(rounds):
        for name in variants if r % 2 == 0 else reversed(variants):  # no variant always runs first
            progress(f"round {r + 1}/{rounds}: {name}")
            with PeakRSS() as rss:
                start = time.perf_counter()
                runs[name](datasets[name])
                elapsed = time.perf_counter() - start
            rates[name].append(work.samples(steps[name]) / elapsed)
            memory[name] = rss.mib if memory[name] is None or rss.mib is None else max(memory[name], rss.mib)
        progress(f"round {r + 1}/{rounds}: the matmul limit")  # in every round, so it sees the same load
        limits.append(matmul_flops_per_second(work) / work.flops_per_sample())
    limit = statistics.median(limits)
    results = {name: statistics.median(v) for name, v in rates.items()}
    return {
        "batch_size": work.batch_size,
        "n_train": int(len(work.x)),
        "model": f"MLP {'-'.join(map(str, work.hidden))} -> {work.n_classes}",
        "flops_per_sample": work.flops_per_sample(),
        "onednn_kernels": cpu.onednn_kernels(),
        "limit_samples_per_s": limit,
        "variants": {
            name: {
                "samples_per_s": results[name],
                "all_rounds": rates[name],
                "share_of_limit": results[name] / limit,
                "peak_rss_mib": memory[name],
            }
            for name in variants
        },
        "ratios": paired_ratios(rates),
    }


def paired_ratios(rates: dict[str, list[float]]) -> dict[str, float]:
    """``gradloop / X``: the median over rounds of the two rates measured in that round."""
    ours = rates.get("gradloop")
    if ours is None:
        return {}
    return {
        f"gradloop / {name}": statistics.median(a / b for a, b in zip(ours, theirs))
        for name, theirs in rates.items()
        if name != "gradloop"
    }


def _kernels(onednn: bool | None) -> str:
    return "kernels unknown" if onednn is None else f"{cpu.KERNEL_NAMES[onednn]} kernels"


def format_table(result: dict) -> str:
    lines = [
        f"{result['model']}, batch {result['batch_size']}, {result['n_train']:,} training samples; "
        f"limit {result['limit_samples_per_s']:,.0f} samples/s ({result['flops_per_sample'] / 1e6:.2f} MFLOP/sample); "
        f"{_kernels(result['onednn_kernels'])}",
        f"{'variant':<16}{'samples/s':>12}{'share of limit':>16}{'peak RSS MiB':>14}{'gradloop is':>13}",
    ]
    for name, v in result["variants"].items():
        mem = "n/a" if v["peak_rss_mib"] is None else f"{v['peak_rss_mib']:.0f}"
        ratio = result["ratios"].get(f"gradloop / {name}")
        ratio = "" if ratio is None else f"{ratio:.2f}x"
        lines.append(f"{name:<16}{v['samples_per_s']:>12,.0f}{v['share_of_limit']:>15.1%}{mem:>14}{ratio:>13}")
    rounds = len(next(iter(result["variants"].values()))["all_rounds"])
    lines.append(f"samples/s: median of {rounds} rounds; gradloop is: median of the {rounds} per-round ratios")
    return "\n".join(lines)
