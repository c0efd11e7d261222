"""``gradloop bench``: training throughput of the ways to train (:mod:`gradloop.bench.runner`), or, with
``--data``, images streamed from disk against held in memory (:mod:`gradloop.bench.data_bench`).

The parser reads the variants' names from :mod:`gradloop.bench.names`, which imports no TensorFlow;
the runners are imported by ``run``. Each batch size's table prints as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable

from gradloop import cli
from gradloop.app import cpu
from gradloop.app.config import MODELS, TrainConfig, build_config
from gradloop.app.config_values import parse_int_list
from gradloop.bench import names
from gradloop.errors import ConfigError


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="training throughput: eager, tf.function, Keras fit, gradloop and, "
        "with --peers, Keras on JAX, JAX and PyTorch loops; or, with --data, "
        "images streamed from disk against held in memory",
    )
    cli.add_config_flags(parser, ("dataset", "data_dir", "classes", "hidden"))  # as for train
    parser.add_argument(
        "--data",
        metavar="DIR",
        help="a folder of class folders of images: time training on them streamed from disk and "
        "decoded into memory, each in its own process",
    )
    # the built-in models only: bench builds no model of the user's
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="mlp",
        help="the model (default mlp: the MLP of --hidden); cnn: without --data, bench's CNN (conv 32, "
        "pool, conv 64, pool, dense), with --data, train's",
    )
    parser.add_argument(
        "--batch-size", default=str(TrainConfig.batch_size), help="one or more, e.g. 32,256 (default %(default)s)"
    )
    parser.add_argument(
        "--seconds", type=cli.number, default=3.0, help="timed seconds per variant per round (default 3)"
    )
    parser.add_argument(
        "--rounds", type=cli.integer, default=3, help="interleaved rounds; the median counts (default 3)"
    )
    parser.add_argument(
        "--variants",
        help=f"comma-separated subset of: {', '.join(names.VARIANTS)} (default: {', '.join(names.DEFAULT_VARIANTS)})",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help=f"also time every peer whose package is installed ({', '.join(names.PEERS)}), each in a "
        f"process of its own; the others are listed as skipped ({names.PEERS_INSTALL})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    return parser


def run(args: argparse.Namespace) -> int:
    batch_sizes = parse_int_list("batch-size", args.batch_size)
    chosen = [v.strip() for v in args.variants.split(",")] if args.variants else None
    variants, skipped = names.choose_variants(chosen, peers=args.peers)
    if not 0 < args.seconds < float("inf") or args.rounds < 1:  # nan fails the comparison too
        raise ConfigError("--seconds must be > 0 and --rounds >= 1")
    if args.data is not None:
        return _run_data(args, batch_sizes)
    if args.model == "cnn" and args.hidden is not None:
        raise ConfigError(
            "--hidden sizes the MLP's layers, and bench's CNN has fixed ones; drop --hidden or --model cnn"
        )
    configs = [
        build_config(
            dataset=args.dataset,
            data_dir=args.data_dir,
            classes=args.classes,
            hidden=args.hidden,
            model=args.model,
            batch_size=b,
        )
        for b in batch_sizes
    ]
    cpu.import_tensorflow()
    from gradloop.app import assemble, specs
    from gradloop.bench import runner
    from gradloop.bench.workload import Workload

    first = configs[0]
    prepared = assemble.prepare_data(
        specs.builtin_spec(first), flatten=first.model == "mlp", batch_size=first.batch_size, notify=cli.to_stderr
    )
    works = (
        Workload(
            *prepared.train,
            batch_size=config.batch_size,
            hidden=config.hidden,
            n_classes=len(config.classes),
            lr=config.lr,
            seed=config.seed,
            kind=config.model,
        )
        for config in configs
    )
    results = (
        runner.run_bench(
            work, variants=variants, seconds=args.seconds, rounds=args.rounds, skipped=skipped, progress=_progress
        )
        for work in works
    )
    return _print(results, runner.format_table, args.json)


def _run_data(args: argparse.Namespace, batch_sizes: tuple[int, ...]) -> int:
    """``bench --data``: streamed against in memory. Its processes import TensorFlow; this one need not."""
    if args.variants or args.peers:
        flag = "--variants" if args.variants else "--peers"
        raise ConfigError(
            f"{flag} picks among the bench's ways to train; with --data, bench times "
            "streamed and in-memory data; drop one of them"
        )
    from gradloop.data import sources

    # before build_config reads it (a CSV's "pass --target" names a flag bench does not have); --data with
    # --dataset or --data-dir is build_config's refusal
    kind = "images" if args.dataset or args.data_dir else sources.kind_of(args.data)
    if kind != "images":
        what = {"csv": "a CSV table", "arrays": "arrays", "function": "a data function"}[kind]
        raise ConfigError(
            f"bench --data times image folders; {args.data} is {what}, read into memory whole with "
            "nothing to stream: pass a folder of class folders of images"
        )
    configs = [
        build_config(
            data=args.data,
            dataset=args.dataset,
            data_dir=args.data_dir,
            classes=args.classes,
            hidden=args.hidden,
            model=args.model,
            batch_size=b,
        )
        for b in batch_sizes
    ]
    from gradloop.bench import data_bench

    results = (
        data_bench.run_data_bench(config, seconds=args.seconds, rounds=args.rounds, progress=_progress)
        for config in configs
    )
    return _print(results, data_bench.format_data_table, args.json)


def _progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def _print(results: Iterable[dict], format_table: Callable[[dict], str], as_json: bool) -> int:
    """Each batch size's table as soon as it is measured, or all of them as JSON at the end."""
    collected = []
    for result in results:
        collected.append(result)
        if not as_json:
            print(format_table(result), flush=True)
    if as_json:
        print(json.dumps(collected, indent=2))
    return 0
