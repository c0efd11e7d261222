"""The ``gradloop`` command line: argument parsing and error reporting only.

``build_parser()`` knows the flags (train's options come from the fields of
:class:`gradloop.app.config.TrainConfig`); the commands call the library. Exit status:

    0    done
    2    a user error: one line, ``gradloop: error: <what is wrong and how to fix it>``
    1    the job failed: the loss diverged (one line naming the step), a worker failed,
         or a bug in gradloop (or TensorFlow): one line naming the exception
    130  interrupted (Ctrl-C); during training, after a checkpoint, with the resume command
    143  stopped by SIGTERM after a checkpoint, with the resume command

``--debug`` (before or after the command) shows the traceback instead of the
one line, for both kinds of error.
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import json
import os
import shlex
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Sequence

from gradloop import __version__
from gradloop.app import cpu
from gradloop.run import folder as rundir
from gradloop.bench.runner import DEFAULT_VARIANTS as DEFAULT_BENCH_VARIANTS, PEERS as BENCH_PEERS
from gradloop.bench.runner import PEERS_INSTALL as BENCH_PEERS_INSTALL, VARIANTS as BENCH_VARIANTS
from gradloop.app.config import CONFIG_KEYS, TrainConfig, build_config, flag_name, load_yaml, parse_int_list, resumed_config
from gradloop.data.builtin.splits import SPLITS
from gradloop.errors import ConfigError, DiskFullError, GradloopError, TrainingError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        if message.endswith(": expected one argument"):  # '--lr -1e-3': argparse took the value for a flag
            flag = message.removeprefix("argument ").split(":")[0].split("/")[-1]
            message += f" (give it a value; one starting with '-' is written {flag}=VALUE)"
        self.exit(2, f"gradloop: error: {one_line(message)}; see '{self.prog} --help'\n")


def one_line(text: object) -> str:
    """Collapse a message onto one line, so that stderr carries exactly one error line."""
    return " ".join(str(text).split())


def _quoted(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {_quoted(text)}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 0.001 or 1e-4, got {_quoted(text)}") from None


def _add_debug(parser: argparse.ArgumentParser, default: object) -> None:
    # On the top parser and every command, so that both 'gradloop --debug train' and 'gradloop train
    # --debug' work; SUPPRESS on the commands keeps them from resetting the top-level value.
    parser.add_argument("--debug", action="store_true", default=default,
                        help="show the traceback of an error instead of one line")


def _add_trust_code(parser: argparse.ArgumentParser) -> None:
    # One definition for every command that loads a run's model or data: a run folder may come from someone else.
    parser.add_argument(rundir.TRUST_CODE, dest="trust_code", action="store_true",
                        help="run the run's own code if its model or data needs it (its model_source.py, a custom "
                             "layer, a Lambda layer, a data function); only for runs from people you trust")


# What a flag turns its text into, by the type of its field; a bool field is a switch instead.
_READERS = {int: _integer, float: _number, str: None, tuple: None}  # the config parses tuples: "512,256,128"


def _add_config_flags(parser: Any, keys: Collection[str] = CONFIG_KEYS) -> None:
    """A flag on ``parser`` (or argument group) for each :class:`TrainConfig` field named in ``keys``,
    built from the field: its name (``--batch-size``, or its ``Flag.name``), type, choices, and its
    default, which the help states. Each flag defaults to None, "not given", so that a --config file's
    value stands unless the flag is given."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name not in keys or not field.metadata["flag"].cli:
            continue
        flag, kind = field.metadata["flag"], _flag_type(hints[field.name])
        if kind is bool:  # a switch that turns the option on: its default is off
            parser.add_argument(flag_name(field.name), dest=field.name, action="store_const", const=True,
                                help=flag.help)
            continue
        checked = flag.choices if flag.parser_checks_choices and flag.choices else None
        listed = "{" + ",".join(flag.choices) + "}" if flag.choices and not checked else None  # as argparse would
        text = f"{flag.help} (default: {_default_text(field.default, flag.unset)})"
        parser.add_argument(flag_name(field.name), dest=field.name, type=_READERS[kind], choices=checked,
                            metavar=flag.metavar or listed, help=text.replace("%", "%%"))


def _flag_type(annotation: Any) -> type:
    """The type a field's flag reads: ``int | None`` -> int (None: not given), ``tuple[int, ...]`` -> tuple."""
    if isinstance(annotation, types.UnionType):  # the first type is the flag's (str | dict: a dict comes from a file)
        annotation = next(t for t in typing.get_args(annotation) if t is not type(None))
    return typing.get_origin(annotation) or annotation


def _default_text(value: Any, unset: str) -> str:
    """A default as the help shows it: 512,256,128 for a tuple; 0.0001, 300 or 1/6 for a float; ``unset`` for None."""
    if value is None:
        return unset
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if not isinstance(value, float):
        return str(value)
    text = f"{value:g}"
    if float(text) != value:  # 0.166667 is not 1/6
        ratio = fractions.Fraction(value).limit_denominator(1000)
        text = str(ratio) if float(ratio) == value else repr(value)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradloop", description="A correct, fast, resumable custom training loop for TF/Keras.")
    parser.add_argument("--version", action="version", version=f"gradloop {__version__}")
    _add_debug(parser, False)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a model (default: the reference experiment)")
    train.add_argument("--config", metavar="FILE.yaml", help="config file; flags override its values")
    _add_config_flags(train.add_argument_group("the experiment (flags override the same keys in a --config file)"))
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace the earlier run in --run-dir")
    train.add_argument("--profile", action="store_true", help="first show where a step's time goes, by phase")
    train.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")

    evaluate = commands.add_parser("evaluate", help="evaluate a run's model on a data split")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--dataset", help="data set to evaluate on (default: the run's)")
    evaluate.add_argument("--data-dir", metavar="DIR", help="folder of IDX files or an mnist.npz")
    evaluate.add_argument("--data", metavar="PATH", help="other data of the kind the run trained on (--data): all of it, "
                                                         "or its test split with --split test")
    evaluate.add_argument("--split", choices=SPLITS, default="test", help="default test")
    evaluate.add_argument("--json", action="store_true", help="print JSON for machines")
    _add_trust_code(evaluate)

    launch = commands.add_parser("launch", help="run a multi-worker job as N local processes")
    launch.add_argument("--workers", type=_integer, required=True, help="number of worker processes")
    launch.add_argument("train_argv", nargs=argparse.REMAINDER, metavar="-- train ...", help="the train command to run")

    bench = commands.add_parser("bench", help="training throughput: eager, tf.function, Keras fit, gradloop and, "
                                              "with --peers, Keras on JAX, JAX and PyTorch loops; or, with --data, "
                                              "images streamed from disk against held in memory")
    _add_config_flags(bench, ("dataset", "data_dir", "classes", "hidden"))  # as for train
    from gradloop.app.config import MODELS  # the built-in models: bench builds no model of the user's

    bench.add_argument("--data", metavar="DIR", help="a folder of class folders of images: time training on them "
                                                     "streamed from disk and decoded into memory, each in its own process")
    bench.add_argument("--model", choices=MODELS, default="mlp",
                       help="the model (default mlp: the MLP of --hidden); cnn: without --data, bench's CNN (conv 32, "
                            "pool, conv 64, pool, dense), with --data, train's")
    bench.add_argument("--batch-size", default=str(TrainConfig.batch_size),
                       help="one or more, e.g. 32,256 (default %(default)s)")
    bench.add_argument("--seconds", type=_number, default=3.0, help="timed seconds per variant per round (default 3)")
    bench.add_argument("--rounds", type=_integer, default=3, help="interleaved rounds; the median counts (default 3)")
    bench.add_argument("--variants", help=f"comma-separated subset of: {', '.join(BENCH_VARIANTS)} "
                                          f"(default: {', '.join(DEFAULT_BENCH_VARIANTS)})")
    bench.add_argument("--peers", action="store_true",
                       help=f"also time every peer whose package is installed ({', '.join(BENCH_PEERS)}), each in a "
                            f"process of its own; the others are listed as skipped ({BENCH_PEERS_INSTALL})")
    bench.add_argument("--json", action="store_true", help="print JSON for machines")

    report = commands.add_parser("report", help="write a self-contained HTML report of a run")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--dataset", help="data set to evaluate on (default: the run's)")
    report.add_argument("--data-dir", metavar="DIR", help="folder of IDX files or an mnist.npz")
    report.add_argument("--data", metavar="PATH", help="other data of the kind the run trained on")
    report.add_argument("--split", choices=SPLITS, default="val",
                        help="split for per-class accuracy and the confusion matrix (default val: the run's own held-out data)")
    report.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/report)")
    _add_trust_code(report)

    export = commands.add_parser("export", help="export a run's model as a TensorFlow SavedModel for serving")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/saved_model); must not exist")
    _add_trust_code(export)

    predict = commands.add_parser("predict", help="a run's model on new inputs: a CSV row per input with the predicted "
                                                  "class and each class's probability, or the predicted values")
    predict.add_argument("run_dir", metavar="RUN_DIR")
    predict.add_argument("inputs", nargs="+", metavar="INPUT", help="of the kind the run trained on: image files or a "
                                                                     "folder of them, a CSV table, an .npz or .npy of x")
    predict.add_argument("--out", metavar="FILE.csv", help="write the CSV there (default: standard output)")
    predict.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    predict.add_argument("--batch-size", type=_integer, default=256, help="inputs per batch (default 256)")
    _add_trust_code(predict)

    runs = commands.add_parser("runs", help="list the runs in a folder, one line each, oldest first")
    runs.add_argument("dir", metavar="DIR", nargs="?", default="runs",
                      help="the folder of runs, searched 3 levels deep (default runs)")
    runs.add_argument("--json", action="store_true", help="print JSON for machines")

    compare = commands.add_parser("compare", help="write one HTML page comparing runs: curves, metrics, config")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more runs, or folders of runs")
    compare.add_argument("--out", metavar="FILE", help="the page (default compare.html in the current folder); "
                                                       "replaces only an earlier compare page")

    lr_find = commands.add_parser("lr-find", help="suggest a learning rate: the range test on train's data and model")
    lr_find.add_argument("--config", metavar="FILE.yaml", help="config file, as for train; flags override its values")
    _add_config_flags(lr_find.add_argument_group(
        "the experiment, as for train (--run-dir DIR: write lr_find.png and lr_find.json there; else nothing is written)"))
    lr_find.add_argument("--start-lr", type=_number, default=1e-7, metavar="LR", help="the first step's rate (default 1e-7)")
    lr_find.add_argument("--end-lr", type=_number, default=10.0, metavar="LR", help="the last step's rate (default 10)")
    lr_find.add_argument("--steps", type=_integer, default=300, metavar="N",
                         help="steps from --start-lr to --end-lr (default 300)")

    sweep = commands.add_parser("sweep", help="search train options with Optuna; each trial is a run directory")
    sweep.add_argument("spec", metavar="SPEC.yaml", help="trials, metric, direction, train (fixed options), space")
    sweep.add_argument("--out", metavar="DIR", help="the sweep folder (default sweeps/<SPEC's name>); run the same "
                                                    "command again to continue it")
    sweep.add_argument("--storage", metavar="URL", help="the study's storage: a journal file, or a PostgreSQL/MySQL URL "
                                                        "for several machines (default DIR/study.journal)")
    for command in commands.choices.values():
        _add_debug(command, argparse.SUPPRESS)
    return parser


# Train flags that are not config values: they say what to do with the config.
NON_CONFIG_TRAIN_FLAGS = ("config", "print_config", "profile", "debug", "resume", "overwrite")


def _train_config(args: argparse.Namespace) -> TrainConfig:
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --run-dir and --overwrite replaces it; pass one of them")
    if args.resume and not args.run_dir:
        raise ConfigError("--resume needs --run-dir DIR, the run to continue")
    file_values = load_yaml(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if k in CONFIG_KEYS}
    if not args.resume:
        return build_config(file_values, **flags)
    return resumed_config(  # the run's own config, changed only where a resume may
        rundir.open_to_resume(args.run_dir).info["config"], file_values, **flags)


def _train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    cpu.import_tensorflow()  # here, after the cheap checks
    from gradloop.loop.signals import StopSignals
    from gradloop.app.interrupted import RunInterrupted
    from gradloop.app import train as experiment

    try:
        with StopSignals() as stop:
            experiment.train(config, resume=args.resume, overwrite=args.overwrite, stop=stop, profile=args.profile)
    except RunInterrupted as exc:
        print(
            f"gradloop: interrupted at epoch {exc.epoch + 1} step {exc.step}; "
            f"resume with: {resume_command(config, exc.run_dir or config.run_dir)}",
            file=sys.stderr,
        )
        return _signal_exit_code(exc.signum)
    except DiskFullError as exc:  # the job failed, not the input: exit 1, with the way to go on
        if args.debug:
            raise
        run_dir = exc.run_dir or config.run_dir
        resumable = run_dir is not None and (Path(run_dir) / rundir.CHECKPOINTS / "checkpoint").is_file()
        advice = f"resume with: {resume_command(config, run_dir)}" if resumable else "start the run again with --overwrite"
        print(f"gradloop: error: {one_line(exc)}; free space and {advice}", file=sys.stderr)
        return 1
    return 0


def resume_command(config, run_dir: str | None) -> str:
    """How to continue an interrupted run; a multi-worker run resumes on all its workers at once."""
    from gradloop.commands.launch import WORKERS_ENV

    where = shlex.quote(str(run_dir)) if run_dir else "<the chief's run directory>"
    train = f"train --resume --run-dir {where}"
    if config.strategy != "multi_worker":
        return f"gradloop {train}"
    if workers := os.environ.get(WORKERS_ENV):  # started by gradloop launch, which starts them all again
        return f"gradloop launch --workers {workers} -- {train}"
    return f"gradloop {train} on every worker, with its TF_CONFIG"


def _evaluate(args: argparse.Namespace) -> int:
    cpu.import_tensorflow()
    from gradloop.commands import evaluate as evaluation

    result = evaluation.evaluate_run(
        args.run_dir, dataset=args.dataset, data_dir=args.data_dir, data_path=args.data, split=args.split,
        notify=lambda line: print(line, file=sys.stderr), trust_code=args.trust_code,
    )
    print(json.dumps(result, indent=2) if args.json else evaluation.format_report(result))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from gradloop.bench import runner as bench

    batch_sizes = parse_int_list("batch-size", args.batch_size)
    names = [v.strip() for v in args.variants.split(",")] if args.variants else None
    variants, skipped = bench.choose_variants(names, peers=args.peers)
    if not 0 < args.seconds < float("inf") or args.rounds < 1:  # nan fails the comparison too
        raise ConfigError("--seconds must be > 0 and --rounds >= 1")
    if args.data is not None:
        return _bench_data(args, batch_sizes)
    if args.model == "cnn" and args.hidden is not None:
        raise ConfigError("--hidden sizes the MLP's layers, and bench's CNN has fixed ones; drop --hidden or "
                          "--model cnn")
    configs = [
        build_config(dataset=args.dataset, data_dir=args.data_dir, classes=args.classes, hidden=args.hidden,
                     model=args.model, batch_size=b)
        for b in batch_sizes
    ]
    cpu.import_tensorflow()
    from gradloop.app import assemble as build

    prepared = build.prepare_data(configs[0], notify=lambda line: print(line, file=sys.stderr))
    works = (bench.Workload(*prepared.train, batch_size=config.batch_size, hidden=config.hidden,
                            n_classes=len(config.classes), lr=config.lr, seed=config.seed, kind=config.model)
             for config in configs)
    return _print_bench((bench.run_bench(work, variants=variants, seconds=args.seconds, rounds=args.rounds,
                                         skipped=skipped, progress=_bench_progress) for work in works),
                        bench.format_table, args.json)


def _bench_progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def _print_bench(results: Iterable[dict], format_table: Callable[[dict], str], as_json: bool) -> int:
    """Each batch size's table as soon as it is measured, or all of them as JSON at the end."""
    collected = []
    for result in results:
        collected.append(result)
        if not as_json:
            print(format_table(result), flush=True)
    if as_json:
        print(json.dumps(collected, indent=2))
    return 0


def _bench_data(args: argparse.Namespace, batch_sizes: tuple[int, ...]) -> int:
    """``bench --data``: streamed against in memory. Its processes import TensorFlow; this one need not."""
    if args.variants or args.peers:
        flag = "--variants" if args.variants else "--peers"
        raise ConfigError(f"{flag} picks among the bench's ways to train; with --data, bench times "
                          "streamed and in-memory data; drop one of them")
    from gradloop.data import sources

    # before build_config reads it (a CSV's "pass --target" names a flag bench does not have); --data with
    # --dataset or --data-dir is build_config's refusal
    kind = "images" if args.dataset or args.data_dir else sources.kind_of(args.data)
    if kind != "images":
        what = {"csv": "a CSV table", "arrays": "arrays", "function": "a data function"}[kind]
        raise ConfigError(f"bench --data times image folders; {args.data} is {what}, read into memory whole with "
                          "nothing to stream: pass a folder of class folders of images")
    configs = [
        build_config(data=args.data, dataset=args.dataset, data_dir=args.data_dir, classes=args.classes,
                     hidden=args.hidden, model=args.model, batch_size=b)
        for b in batch_sizes
    ]
    from gradloop.bench import runner as bench

    results = (bench.run_data_bench(config, seconds=args.seconds, rounds=args.rounds, progress=_bench_progress)
               for config in configs)
    return _print_bench(results, bench.format_data_table, args.json)


def _launch(args: argparse.Namespace) -> int:
    from gradloop.commands.launch import WorkerFailed, launch, train_argv

    # The workers' own checks would report a bad flag N times, after start-up: check it once, now.
    train_args = build_parser().parse_args([*train_argv(args.workers, args.train_argv), "--strategy", "multi_worker"])
    config = _train_config(train_args)
    if train_args.resume:
        rundir.check_resumable(config.run_dir, epochs=config.epochs, workers=args.workers)
    try:
        return launch(args.workers, args.train_argv)
    except WorkerFailed as exc:  # not the user's input: the job failed
        print(f"gradloop: error: {exc}", file=sys.stderr)
        return 1


def _report(args: argparse.Namespace) -> int:
    cpu.import_tensorflow()
    from gradloop.commands import report

    path = report.write_report(
        args.run_dir, out=args.out, dataset=args.dataset, data_dir=args.data_dir, data_path=args.data, split=args.split,
        notify=lambda line: print(line, file=sys.stderr), trust_code=args.trust_code,
    )
    print(f"gradloop: wrote {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    cpu.import_tensorflow()
    from gradloop.commands import export

    path = export.export_saved_model(args.run_dir, out=args.out, trust_code=args.trust_code)
    print(f"gradloop: wrote SavedModel {path} (signature serving_default)")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from gradloop.commands import predict  # TensorFlow only once predict_run runs: a bad --out is refused at once

    if args.out is not None:
        predict.check_out(args.out, overwrite=args.overwrite)
    elif args.overwrite:
        raise ConfigError("--overwrite replaces an existing --out file; drop it, or pass --out FILE.csv")
    cpu.import_tensorflow()
    predictions = predict.predict_run(args.run_dir, args.inputs, batch_size=args.batch_size,
                                      notify=lambda line: print(line, file=sys.stderr), trust_code=args.trust_code)
    try:
        predict.write_predictions(predictions, args.out, overwrite=args.overwrite)
    except BrokenPipeError:  # the reader of standard output stopped (| head): what it read is what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush fails no more
        return 0
    if args.out is not None:
        print(f"gradloop: wrote {args.out} ({len(predictions.ids):,} rows)")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from gradloop.commands import runs

    found, empty = runs.list_runs(args.dir)
    if empty:
        named = ", ".join(str(p) for p in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        print(f"gradloop: note: {named} hold{'s' * (len(empty) == 1)} no gradloop run; left out", file=sys.stderr)
    if args.json:
        print(json.dumps(runs.as_json(found), indent=2))
    elif found:
        print(runs.format_table(found))
    else:
        print(f"gradloop: no runs in {args.dir} (looked {runs.DEPTH} levels deep)", file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from gradloop.commands import compare

    print(f"gradloop: wrote {compare.write_compare(args.run_dirs, out=args.out)}")
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    file_values = load_yaml(args.config) if args.config else {}
    config = build_config(file_values, **{k: v for k, v in vars(args).items() if k in CONFIG_KEYS})
    cpu.import_tensorflow()
    from gradloop.commands import lr_find

    result, out = lr_find.find_lr(config, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps,
                                  notify=lambda line: print(line, file=sys.stderr))
    print(lr_find.format_result(result))
    if out is not None:
        print(f"gradloop: wrote {out / lr_find.PLOT} and {out / lr_find.JSON}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from gradloop.sweep import spec as sweep_spec

    spec = sweep_spec.read_spec(args.spec)  # before TensorFlow: a bad SPEC is one line at once
    cpu.import_tensorflow()
    from gradloop.loop.signals import StopSignals
    from gradloop.app.interrupted import RunInterrupted
    from gradloop.sweep import trials as run

    try:
        with StopSignals() as stop:
            run.run_sweep(spec, out=args.out, storage=args.storage, stop=stop,
                          notify=lambda line: print(line, file=sys.stderr))
    except RunInterrupted as exc:
        again = " ".join(shlex.quote(a) for a in ("gradloop", "sweep", args.spec, *(("--out", args.out) if args.out else ()),
                                                  *(("--storage", args.storage) if args.storage else ())))
        print(f"gradloop: sweep interrupted in {exc.run_dir} at epoch {exc.epoch + 1} step {exc.step}; "
              f"continue it with: {again}", file=sys.stderr)
        return _signal_exit_code(exc.signum)
    return 0


def _signal_exit_code(signum: int) -> int:
    """128 + the signal number, as a shell reports a process the signal ended: 143, 130."""
    return 128 + signum


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    args = build_parser().parse_args(argv)
    try:
        return {"train": _train, "evaluate": _evaluate, "bench": _bench, "launch": _launch, "report": _report,
                "export": _export, "predict": _predict, "runs": _runs, "compare": _compare, "lr-find": _lr_find,
                "sweep": _sweep}[args.command](args)
    except KeyboardInterrupt:
        print("gradloop: interrupted", file=sys.stderr)
        return 130
    except GradloopError as exc:
        if args.debug:
            raise
        print(f"gradloop: error: {one_line(exc)}", file=sys.stderr)
        return 1 if isinstance(exc, (TrainingError, DiskFullError)) else 2  # 1: diverged or disk full, not a bad input
    except OSError as exc:  # the machine, not gradloop: a full disk, a vanished folder
        if args.debug:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"gradloop: error: {where}{one_line(exc.strerror or exc)}; check the path and free space", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug: say so in one line, the traceback is one flag away
        if args.debug:
            raise
        print(
            f"gradloop: internal error: {type(exc).__name__}: {one_line(exc)[:500]}; "
            "rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return 1
