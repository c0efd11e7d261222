"""The ``gradloop`` command line: argument parsing and error reporting only.

``build_parser()`` knows the flags; the commands call the library. Exit status:

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
import json
import os
import shlex
import sys
import tempfile
from typing import Sequence

from gradloop import __version__
from gradloop.errors import ConfigError, GradloopError, TrainingError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        if message.endswith(": expected one argument"):  # '--lr -1e-3': argparse took the value for a flag
            flag = message.removeprefix("argument ").split(":")[0].split("/")[-1]
            message += f" (give it a value; one starting with '-' is written {flag}=VALUE)"
        self.exit(2, f"gradloop: error: {one_line(message)}; see '{self.prog} --help'\n")


def one_line(text: object) -> str:
    """Collapse a message onto one line, so that stderr carries exactly one error line."""
    return " ".join(str(text).split())


# Written by TensorFlow straight to file descriptor 2 while it is imported, before its logging starts, so
# TF_CPP_MIN_LOG_LEVEL cannot hold them back: the notice that its oneDNN kernels are on (its default on
# CPUs with AVX-VNNI, AVX-512 VNNI or BF16, or AMX, and on some Arm Neoverse; the CLI's, gradloop.cpu).
_TF_IMPORT_NOTICES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "] oneDNN custom operations are on.",
)


def import_tensorflow() -> None:
    """Import TensorFlow with its start-up notices kept off stderr, where the CLI's errors are one
    line; whatever else it writes meanwhile is passed on. Called before the commands' lazy imports.
    Without a stderr, or a temporary file to catch it in, TensorFlow is imported as it is.
    TensorFlow runs its oneDNN kernels, with NaNs kept visible, unless TF_ENABLE_ONEDNN_OPTS
    says otherwise (:mod:`gradloop.cpu`: the reference MLP trains about 20% faster here)."""
    from gradloop import cpu

    if "tensorflow" in sys.modules:
        cpu.use_onednn()
        return
    try:
        sys.stderr.flush()
        captured = tempfile.TemporaryFile()
        stderr = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no sys.stderr, fd 2 closed, no temporary folder
        cpu.use_onednn()
        return
    with captured:
        try:
            os.dup2(captured.fileno(), 2)
            cpu.use_onednn()
        finally:
            sys.stderr.flush()  # a line Python wrote meanwhile goes into the capture, in its place
            os.dup2(stderr, 2)
            os.close(stderr)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(notice in line for notice in _TF_IMPORT_NOTICES):
                    sys.stderr.write(line)
            sys.stderr.flush()


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradloop", description="A correct, fast, resumable custom training loop for TF/Keras.")
    parser.add_argument("--version", action="version", version=f"gradloop {__version__}")
    _add_debug(parser, False)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a model (default: the reference experiment)")
    train.add_argument("--config", metavar="FILE.yaml", help="config file; flags override its values")
    train.add_argument("--dataset", help="mnist, fashion_mnist or mnist-sample (default: mnist if reachable, else mnist-sample)")
    train.add_argument("--data-dir", metavar="DIR", help="folder of the four IDX files (.gz or not) or a Keras-style mnist.npz")
    train.add_argument("--classes", help="classes to keep, e.g. 0,1,2 (default), 0-4 or all")
    train.add_argument("--model", choices=("mlp", "cnn"), help="mlp (default) or cnn")
    train.add_argument("--hidden", help="MLP hidden layer sizes (default 512,256,128)")
    train.add_argument("--epochs", type=_integer, help="default 10")
    train.add_argument("--batch-size", type=_integer, help="default 32")
    train.add_argument("--lr", type=_number, help="Adam learning rate (default 1e-4); the peak rate of a schedule")
    train.add_argument("--lr-schedule", choices=("constant", "cosine", "exponential", "step"), help="default constant")
    train.add_argument("--warmup-steps", type=_integer, metavar="N", help="ramp the rate up linearly over N steps first (default 0)")
    train.add_argument("--decay-steps", type=_integer, metavar="N",
                       help="cosine: steps to decay to 0 (default: the rest of training); exponential/step: steps per decay_rate (default: an epoch)")
    train.add_argument("--decay-rate", type=_number, metavar="R", help="factor per decay_steps for exponential/step (default 0.9)")
    train.add_argument("--clip-norm", type=_number, metavar="C", help="clip the gradient to global norm C (default: no clipping)")
    train.add_argument("--accumulate-steps", type=_integer, metavar="N", help="average the gradients of N batches per update (default 1)")
    train.add_argument("--precision", choices=("float32", "mixed_float16", "mixed_bfloat16"),
                       help="float32 (default); mixed_float16 uses dynamic loss scaling")
    train.add_argument("--val-fraction", type=_number, help="share of training data held out (default 1/6)")
    train.add_argument("--seed", type=_integer, help="seed for the split, shuffling and initial weights (default 42)")
    train.add_argument("--steps-per-execution", type=_integer, help="training steps per compiled call (default 32)")
    train.add_argument("--jit", dest="jit_compile", action="store_const", const=True, help="XLA-compile the step")
    train.add_argument("--strategy", help="default, mirrored (all GPUs, or --replicas CPUs) or multi_worker (TF_CONFIG)")
    train.add_argument("--replicas", type=_integer, help="with --strategy mirrored and no GPU: split the CPU into N devices")
    train.add_argument("--summary-every", type=_integer, metavar="N", help="TensorBoard batch summaries every N steps (default 32)")
    train.add_argument("--run-dir", metavar="DIR", help="output folder (default runs/<timestamp>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace the earlier run in --run-dir")
    train.add_argument("--deterministic", action="store_const", const=True,
                       help="op determinism: reruns and resumes are bit-identical")
    train.add_argument("--checkpoint-every", type=_integer, metavar="STEPS",
                       help="also checkpoint every STEPS steps of an epoch (default 1000, 0: off)")
    train.add_argument("--checkpoint-seconds", type=_number, metavar="S", help="also checkpoint every S seconds (default 300, 0: off)")
    train.add_argument("--early-stop", type=_integer, metavar="PATIENCE",
                       help="stop after PATIENCE epochs without a lower val_loss (default 0: off)")
    train.add_argument("--profile", action="store_true", help="first show where a step's time goes, by phase")
    train.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")

    evaluate = commands.add_parser("evaluate", help="evaluate a run's model on a data split")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--dataset", help="data set to evaluate on (default: the run's)")
    evaluate.add_argument("--data-dir", metavar="DIR", help="folder of IDX files or an mnist.npz")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test", help="default test")
    evaluate.add_argument("--json", action="store_true", help="print JSON for machines")

    launch = commands.add_parser("launch", help="run a multi-worker job as N local processes")
    launch.add_argument("--workers", type=_integer, required=True, help="number of worker processes")
    launch.add_argument("train_argv", nargs=argparse.REMAINDER, metavar="-- train ...", help="the train command to run")

    bench = commands.add_parser("bench", help="training throughput: eager, tf.function, Keras fit, gradloop")
    bench.add_argument("--dataset", help="as for train (default: mnist if reachable, else mnist-sample)")
    bench.add_argument("--data-dir", metavar="DIR")
    bench.add_argument("--classes", help="default 0,1,2")
    bench.add_argument("--hidden", help="MLP hidden sizes (default 512,256,128)")
    bench.add_argument("--batch-size", default="32", help="one or more, e.g. 32,256 (default 32)")
    bench.add_argument("--seconds", type=_number, default=3.0, help="timed seconds per variant per round (default 3)")
    bench.add_argument("--rounds", type=_integer, default=3, help="interleaved rounds; the median counts (default 3)")
    bench.add_argument("--variants", help="comma-separated subset of: " + ", ".join(_BENCH_VARIANTS))
    bench.add_argument("--json", action="store_true", help="print JSON for machines")

    report = commands.add_parser("report", help="write a self-contained HTML report of a run")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--dataset", help="data set to evaluate on (default: the run's)")
    report.add_argument("--data-dir", metavar="DIR", help="folder of IDX files or an mnist.npz")
    report.add_argument("--split", choices=("val", "test", "train"), default="val",
                        help="split for per-class accuracy and the confusion matrix (default val: the run's own held-out data)")
    report.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/report)")

    export = commands.add_parser("export", help="export a run's model as a TensorFlow SavedModel for serving")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/saved_model); must not exist")
    for command in commands.choices.values():
        _add_debug(command, argparse.SUPPRESS)
    return parser


_BENCH_VARIANTS = ("eager", "tf.function", "keras spe=1", "keras spe=32", "gradloop", "gradloop --jit")

# Train flags that are not config values: they say what to do with the config.
NON_CONFIG_TRAIN_FLAGS = ("config", "print_config", "profile", "debug", "resume", "overwrite")


def _train_config(args: argparse.Namespace):
    from gradloop.config import CONFIG_KEYS, build_config, load_yaml, resumed_config

    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --run-dir and --overwrite replaces it; pass one of them")
    if args.resume and not args.run_dir:
        raise ConfigError("--resume needs --run-dir DIR, the run to continue")
    file_values = load_yaml(args.config) if args.config else {}
    flags = {k: v for k, v in vars(args).items() if k in CONFIG_KEYS}
    if not args.resume:
        return build_config(file_values, **flags)
    import_tensorflow()
    from gradloop.experiment import read_run_to_resume  # the run's own config, changed only where a resume may

    return resumed_config(read_run_to_resume(args.run_dir)["config"], file_values, **flags)


def _train(args: argparse.Namespace) -> int:
    config = _train_config(args)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    import_tensorflow()  # here, after the cheap checks
    from gradloop import checkpoint, experiment

    try:
        with checkpoint.StopSignals() as stop:
            experiment.train(config, resume=args.resume, overwrite=args.overwrite, stop=stop, profile=args.profile)
    except checkpoint.Interrupted as exc:
        print(
            f"gradloop: interrupted at epoch {exc.epoch + 1} step {exc.step}; "
            f"resume with: {resume_command(config, exc.run_dir or config.run_dir)}",
            file=sys.stderr,
        )
        return exc.exit_code
    return 0


def resume_command(config, run_dir: str | None) -> str:
    """How to continue an interrupted run; a multi-worker run resumes on all its workers at once."""
    from gradloop.launch import WORKERS_ENV

    where = shlex.quote(str(run_dir)) if run_dir else "<the chief's run directory>"
    train = f"train --resume --run-dir {where}"
    if config.strategy != "multi_worker":
        return f"gradloop {train}"
    if workers := os.environ.get(WORKERS_ENV):  # started by gradloop launch, which starts them all again
        return f"gradloop launch --workers {workers} -- {train}"
    return f"gradloop {train} on every worker, with its TF_CONFIG"


def _evaluate(args: argparse.Namespace) -> int:
    import_tensorflow()
    from gradloop import evaluation

    result = evaluation.evaluate_run(
        args.run_dir, dataset=args.dataset, data_dir=args.data_dir, split=args.split,
        notify=lambda line: print(line, file=sys.stderr),
    )
    print(json.dumps(result, indent=2) if args.json else evaluation.format_report(result))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from gradloop.config import build_config, parse_int_list
    from gradloop.errors import ConfigError

    batch_sizes = parse_int_list("batch-size", args.batch_size)
    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else _BENCH_VARIANTS[:5]
    unknown = [v for v in variants if v not in _BENCH_VARIANTS]
    if unknown:
        raise ConfigError(f"unknown bench variant {unknown[0]!r}; choose from {', '.join(_BENCH_VARIANTS)}")
    if not 0 < args.seconds < float("inf") or args.rounds < 1:  # nan fails the comparison too
        raise ConfigError("--seconds must be > 0 and --rounds >= 1")
    configs = [
        build_config(dataset=args.dataset, data_dir=args.data_dir, classes=args.classes, hidden=args.hidden, batch_size=b)
        for b in batch_sizes
    ]
    import_tensorflow()
    from gradloop import bench, experiment

    prepared = experiment.prepare_data(configs[0], notify=lambda line: print(line, file=sys.stderr))
    results = []
    for config in configs:
        work = bench.Workload(*prepared.train, batch_size=config.batch_size, hidden=config.hidden,
                              n_classes=len(config.classes), lr=config.lr, seed=config.seed)
        result = bench.run_bench(work, variants=variants, seconds=args.seconds, rounds=args.rounds,
                                 progress=lambda line: print(f"bench: {line}", file=sys.stderr, flush=True))
        results.append(result)
        if not args.json:
            print(bench.format_table(result), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def _launch(args: argparse.Namespace) -> int:
    from gradloop.launch import WorkerFailed, launch, train_argv

    # The workers' own checks would report a bad flag N times, after start-up: check it once, now.
    train_args = build_parser().parse_args([*train_argv(args.workers, args.train_argv), "--strategy", "multi_worker"])
    config = _train_config(train_args)
    if train_args.resume:
        import_tensorflow()
        from gradloop.experiment import check_resumable

        check_resumable(config, workers=args.workers)
    try:
        return launch(args.workers, args.train_argv)
    except WorkerFailed as exc:  # not the user's input: the job failed
        print(f"gradloop: error: {exc}", file=sys.stderr)
        return 1


def _report(args: argparse.Namespace) -> int:
    import_tensorflow()
    from gradloop import report

    path = report.write_report(
        args.run_dir, out=args.out, dataset=args.dataset, data_dir=args.data_dir, split=args.split,
        notify=lambda line: print(line, file=sys.stderr),
    )
    print(f"gradloop: wrote {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    import_tensorflow()
    from gradloop import export

    path = export.export_saved_model(args.run_dir, out=args.out)
    print(f"gradloop: wrote SavedModel {path} (signature serving_default)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    args = build_parser().parse_args(argv)
    try:
        return {"train": _train, "evaluate": _evaluate, "bench": _bench, "launch": _launch, "report": _report,
                "export": _export}[args.command](args)
    except KeyboardInterrupt:
        print("gradloop: interrupted", file=sys.stderr)
        return 130
    except GradloopError as exc:
        if args.debug:
            raise
        print(f"gradloop: error: {one_line(exc)}", file=sys.stderr)
        return 1 if isinstance(exc, TrainingError) else 2  # 1: training diverged, not a bad input
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
