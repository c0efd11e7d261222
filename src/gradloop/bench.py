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

``--data DIR`` (:func:`run_data_bench`) times something else: gradloop's
``Trainer.fit`` on a folder of images streamed from disk, against the same
images decoded into memory, on the same model. Peak RSS is a process's
high-water mark, so each variant runs in a process of its own
(:mod:`gradloop.bench_worker`), and a third one measures the baseline:
TensorFlow imported and the model built, no data.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from gradloop import cpu, data, errors

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from gradloop.config import TrainConfig

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
    return Variant(lambda dataset: trainer.fit(dataset, epochs=1, verbose=0), model)


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
    return {f"gradloop / {name}": paired_ratio(ours, theirs) for name, theirs in rates.items() if name != "gradloop"}


def paired_ratio(ours: list[float], theirs: list[float]) -> float:
    """The median over rounds of ``ours[r] / theirs[r]``: two rates measured seconds apart."""
    return statistics.median(a / b for a, b in zip(ours, theirs))


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
    """A :mod:`gradloop.bench_worker` process running one variant: a JSON request in, a JSON reply out."""

    def __init__(self, variant: str, request: dict[str, Any]) -> None:
        self.variant = variant
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gradloop.bench_worker", variant, json.dumps(request)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
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
