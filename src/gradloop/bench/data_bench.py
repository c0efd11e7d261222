"""``gradloop bench --data DIR``: ``Trainer.fit`` on a folder of images streamed from disk, against the same
images decoded into memory, on the same model: ``gradloop train``'s own (with ``--model cnn``,
:func:`gradloop.app.models.build_cnn`, not the bench CNN).

Peak RSS is a process's high-water mark, so each variant runs in a process of its own
(:mod:`gradloop.bench.worker`), and a third one measures the baseline: TensorFlow imported and the model
built, no data.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING

from gradloop import errors
from gradloop.bench.protocol import VariantProcess
from gradloop.bench.runner import kernels_named, paired_ratio

if TYPE_CHECKING:
    from gradloop.app.config import TrainConfig

# The variants of ``bench --data``, in the order they report; the baseline is measured besides.
DATA_VARIANTS = ("streamed", "in memory")
STREAMED_RATIO = "streamed / in memory"
FLOAT32_BYTES = 4


def run_data_bench(
    config: TrainConfig, *, seconds: float = 3.0, rounds: int = 3, progress: Callable[[str], None] = lambda s: None
) -> dict:
    """Samples/s and peak RSS of ``Trainer.fit`` on ``config.data``'s training images, streamed and in memory.

        start a process per variant; each loads the folder (in memory: decodes it), builds train's trainer
        baseline: a third process imports TensorFlow and builds the model, no data; its peak RSS
        warm up each (trace, then time the same batches once more: how many steps ``seconds`` takes)
        for each round, in turn (reversed every other round): train epoch r's first `steps` batches
        from the same initial state; samples / seconds
        peak RSS of each process (also as it was before training), and the model's footprint
        (weights + optimizer state)

    The ratio is paired, as in :func:`gradloop.bench.runner.run_bench`: the median of each round's
    streamed / in-memory rate.
    A timed run is at most one epoch, and pays what an epoch's start pays (filling the stream; gathering
    the epoch's order in memory); only one process trains at a time, the others wait on their input.
    """
    request = {"config": config.to_dict()}
    workers: dict[str, VariantProcess] = {}
    try:
        progress(f"starting a process per variant ({', '.join(DATA_VARIANTS)}); in memory decodes every image first")
        workers = {name: VariantProcess(name, request) for name in DATA_VARIANTS}
        described = {name: worker.reply() for name, worker in workers.items()}
        about = described["streamed"]
        if any(d[k] != about[k] for d in described.values() for k in ("n", "element_shape", "class_names")):
            raise errors.DataError(
                f"{config.data} changed while the bench read it; run it again on a folder left alone"
            )
        progress("measuring the baseline: TensorFlow imported and the model built, no data")
        workers["baseline"] = VariantProcess(
            "baseline", {**request, "element_shape": about["element_shape"], "class_names": about["class_names"]}
        )
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
            name: {
                "samples_per_s": statistics.median(all_rounds[name]),
                "all_rounds": all_rounds[name],
                "peak_rss_mib": finished[name]["peak_rss_mib"],
                "setup_peak_rss_mib": described[name]["peak_rss_mib"],  # data read, model built, not trained
                "decode_seconds": described[name]["decode_seconds"],
            }  # reading the images before training
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
    """``run_data_bench``'s result as the table ``gradloop bench --data`` prints."""
    v, shape = result["variants"], result["element_shape"]
    streamed_rss = v["streamed"]["peak_rss_mib"]
    rounds = len(v["streamed"]["all_rounds"])
    below = "below" if result["streamed_rss_below_bound"] else "NOT below"
    lines = [
        f"{result['model']}, batch {result['batch_size']}, on {result['description']}: "
        f"{result['n_train']:,} training images, {result['steps_per_round']} steps per timed run; "
        f"{kernels_named(result['onednn_kernels'])}",
        f"{'variant':<12}{'samples/s':>12}{'peak RSS MiB':>14}{'before training':>17}{'streamed is':>13}",
        *(
            f"{name:<12}{v[name]['samples_per_s']:>12,.0f}{v[name]['peak_rss_mib']:>14.0f}"
            f"{v[name]['setup_peak_rss_mib']:>17.0f}{_streamed_is(result, name):>13}"
            for name in DATA_VARIANTS
        ),
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
