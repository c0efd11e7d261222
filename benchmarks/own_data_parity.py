"""Issue 15: ``gradloop train --data ...`` against Keras ``model.fit`` on the same split, model, initial weights
and per-epoch batch order, on data of a realistic size.

    .venv/bin/python benchmarks/own_data_parity.py [--images DIR] [--work DIR] [--only images,breast_cancer,diabetes]
                                                   [--no-diagnosis]

Three sources, each trained by gradloop's CLI (a process of its own, with --deterministic and the default seed
and val fraction) and then by Keras in this process:

    images         Fashion-MNIST as PNG files in class folders (DIR, default /tmp/fashion-png; made by
                   ``bash benchmarks/streaming.sh``'s first step or ``benchmarks/make_image_folders.py DIR``):
                   the whole folder, 50,000 train / 10,000 val after the split, streamed from disk;
                   --model cnn --epochs 3 --batch-size 128 --lr 1e-3
    breast_cancer  scikit-learn's breast cancer table as CSV, the target the class name (malignant, benign):
                   --epochs 20 --batch-size 32 --lr 1e-3
    diabetes       scikit-learn's diabetes table as CSV, the target a decimal (151.0), so a regression:
                   --epochs 30 --lr 1e-2

The Keras side reads the data with gradloop's own readers (``assemble.load_data`` with the run's config from
run.json: the very split and preprocessing the run had, its fingerprint checked against run.json's), builds
the model as gradloop's experiment does (``keras.utils.set_random_seed(seed)``, then ``models.build_model``; op
determinism first with --deterministic), with ``assemble.build_optimizer``, ``assemble.build_loss`` and
``assemble.build_metrics``, compiles with the run's ``steps_per_execution`` (32) and fits epoch by epoch
(``initial_epoch=e, epochs=e + 1``, ``shuffle=False``) on the training arrays in the run's order for that epoch,
``numpy.random.default_rng((seed, e)).permutation(n_train)``, validating on the val split each epoch. Both
sides run on the same TensorFlow kernels (``cpu.import_tensorflow``, as the CLI).

gradloop's CLI updates Adam's variables with TensorFlow's fused kernel, Keras with its own formula: the same
arithmetic in another order, so each step differs by float32 rounding, not to the bit, and training can
amplify that over many steps (measured: val_loss 5e-4 to 2e-2 relative after 300 to 1,200 steps, all of it
the fused kernel's, as the diagnosis shows; another epoch order moves it 4x to 5,000x more). The table gives
each source's final val accuracy (or val MAE) both ways, their absolute difference, and the largest relative
difference over the epochs of val_loss and of the training loss. Then, unless --no-diagnosis, where a
difference comes from: gradloop's Trainer in this process on the run's own feed, fused (it must repeat the
CLI's run) and with Keras' Adam (``fused_optimizer=False``, against Keras fit), and Keras fit in another
epoch order for scale. Then each epoch, the times and the exact commands.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gradloop.app import cpu  # noqa: E402  (imports no TensorFlow)

SOURCES = ("images", "breast_cancer", "diabetes")
IMAGES_DEFAULT = Path("/tmp/fashion-png")
WORK_DEFAULT = Path("/tmp/gradloop-own-data-parity")


@dataclass
class Case:
    name: str
    data: Path
    flags: list[str]
    command: list[str] = field(default_factory=list)
    log: Path | None = None
    gradloop_seconds: float = 0.0  # the process, start-up included
    run_seconds: float = 0.0  # run.json's: data, model, training and files
    keras_seconds: float = 0.0  # Keras fit's epochs, validation included
    ours: dict[str, list[float]] = field(default_factory=dict)  # the CLI run's history.json
    theirs: dict[str, list[float]] = field(default_factory=dict)  # Keras fit's, in the same names
    library_fused: dict[str, list[float]] = field(default_factory=dict)  # the diagnosis: see the module docstring
    library_unfused: dict[str, list[float]] = field(default_factory=dict)
    control: dict[str, list[float]] = field(default_factory=dict)
    metric: str = ""
    n_train: int = 0
    n_val: int = 0


# ----------------------------------------------------------------------------------- the data files


def write_csv(path: Path, header: list[str], rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def breast_cancer_csv(path: Path) -> Path:
    """569 rows of 30 measurements (column names with _ for spaces) and ``diagnosis``: malignant or benign."""
    from sklearn.datasets import load_breast_cancer

    table = load_breast_cancer()
    header = [name.replace(" ", "_") for name in table.feature_names] + ["diagnosis"]
    rows = [[*map(float, x), str(table.target_names[t])] for x, t in zip(table.data, table.target)]
    return write_csv(path, header, rows)


def diabetes_csv(path: Path) -> Path:
    """442 rows of 10 (scikit-learn's scaled) features and ``progression`` written as a decimal (151.0)."""
    from sklearn.datasets import load_diabetes

    table = load_diabetes()
    rows = [[*map(float, x), float(t)] for x, t in zip(table.data, table.target)]
    return write_csv(path, [*table.feature_names, "progression"], rows)


def cases(images: Path, work: Path, only: tuple[str, ...]) -> list[Case]:
    out = []
    if "images" in only:
        if not (images / "test").is_dir():
            sys.exit(
                f"{images} is not the Fashion-MNIST PNG folder; make it with "
                f".venv/bin/python benchmarks/make_image_folders.py {images}"
            )
        out.append(
            Case(
                "images",
                images,
                ["--model", "cnn", "--epochs", "3", "--batch-size", "128", "--lr", "1e-3", "--deterministic"],
            )
        )
    if "breast_cancer" in only:
        out.append(
            Case(
                "breast_cancer",
                breast_cancer_csv(work / "breast_cancer.csv"),
                ["--target", "diagnosis", "--epochs", "20", "--batch-size", "32", "--lr", "1e-3", "--deterministic"],
            )
        )
    if "diabetes" in only:
        out.append(
            Case(
                "diabetes",
                diabetes_csv(work / "diabetes.csv"),
                ["--target", "progression", "--epochs", "30", "--lr", "1e-2", "--deterministic"],
            )
        )
    return out


# ----------------------------------------------------------------------------------- gradloop


def train_with_gradloop(case: Case, work: Path) -> Path:
    """``gradloop train`` in a process of its own, its output in work/NAME.log; returns the run directory."""
    run = work / "runs" / case.name
    case.command = [
        sys.executable,
        "-m",
        "gradloop",
        "train",
        "--data",
        str(case.data),
        *case.flags,
        "--run-dir",
        str(run),
        "--overwrite",
    ]
    case.log = work / f"{case.name}.log"
    print(f"[{case.name}] gradloop: {shlex.join(case.command)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with open(case.log, "w") as log:
        code = subprocess.run(case.command, stdout=log, stderr=subprocess.STDOUT).returncode
    case.gradloop_seconds = time.perf_counter() - start
    if code != 0:
        sys.exit(f"gradloop train ({case.name}) exited {code}:\n{case.log.read_text()[-3000:]}")
    return run


# ----------------------------------------------------------------------------------- Keras


def arrays(examples) -> tuple[np.ndarray, np.ndarray]:
    """A split's (x, y) as the model takes them: in memory already, or every image decoded by the run's own
    pipeline, in the natural order (in batches of 1,024: one batch of all 50,000, which tf.data fuses into a
    single map-and-batch, took over 13 CPU minutes without finishing)."""
    if hasattr(examples, "x"):
        return examples.x, examples.y
    parts = [(x.numpy(), y.numpy()) for x, y in examples.batches(None, 1024)]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def reproduce(case: Case, run: Path, *, diagnose: bool) -> None:
    """The run's data read again with gradloop's readers, then Keras fit on it (and, with ``diagnose``, the
    gradloop library in this process, fused and not, and Keras fit in another order); histories into ``case``."""
    from gradloop.app import assemble
    from gradloop.app.config import build_config

    info = json.loads((run / "run.json").read_text())
    config = build_config({k: v for k, v in info["config"].items() if k != "run_dir"})
    data = assemble.load_data(config, notify=lambda line: print(line, file=sys.stderr))
    fingerprint = json.loads(json.dumps(data.fingerprint))  # as run.json holds it
    if fingerprint != info["data"]["fingerprint"] or (data.train.n, data.val.n) != (info["n_train"], info["n_val"]):
        sys.exit(f"{case.name}: the data read here is not the run's ({config.data} changed?)")
    train, val = arrays(data.train), arrays(data.val)
    case.n_train, case.n_val = len(train[1]), len(val[1])
    case.metric = assemble.build_metrics(config, data.task)[0]
    case.ours = json.loads((run / "history.json").read_text())
    case.run_seconds = float(info.get("seconds", 0.0))

    start = time.perf_counter()
    case.theirs = fit_with_keras(config, data, train, val, order_seed=config.seed)
    case.keras_seconds = time.perf_counter() - start
    if diagnose:
        case.library_fused = fit_with_library(config, data, fused=True)
        case.library_unfused = fit_with_library(config, data, fused=False)
        case.control = fit_with_keras(config, data, train, val, order_seed=config.seed + 1)


def seeded_model(config, data):
    """The model as gradloop's experiment builds it: op determinism (--deterministic), the seed, the builder."""
    import keras
    import tensorflow as tf

    from gradloop.app import models, specs

    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    return models.build_model(specs.model_spec(config), data.train.element_shape, data.n_outputs, task=data.task)


def fit_with_keras(config, data, train, val, *, order_seed: int) -> dict[str, list[float]]:
    """Keras fit epoch by epoch on the training arrays in the order ``default_rng((order_seed, e))`` gives epoch e,
    compiled with the run's optimizer, loss, metrics and steps per execution; its history in the run's names."""
    from gradloop.app import assemble
    from gradloop.run import history as run_history

    x, y = train
    model = seeded_model(config, data)
    model.compile(
        optimizer=assemble.build_optimizer(config, steps_per_epoch=math.ceil(len(y) / config.batch_size)),
        loss=assemble.build_loss(config, data.task, model),
        metrics=assemble.build_metrics(config, data.task),
        steps_per_execution=config.steps_per_execution,
        jit_compile=config.jit_compile,
    )
    history: dict[str, list[float]] = {}
    for epoch in range(config.epochs):
        order = np.random.default_rng((order_seed, epoch)).permutation(len(y))
        logs = model.fit(
            x[order],
            y[order],
            batch_size=config.batch_size,
            initial_epoch=epoch,
            epochs=epoch + 1,
            shuffle=False,
            validation_data=val,
            verbose=0,
        ).history
        for key, values in logs.items():
            history.setdefault(key, []).extend(float(v) for v in values)
    return run_history.tutorial_history(history)


def fit_with_library(config, data, *, fused: bool) -> dict[str, list[float]]:
    """gradloop's Trainer in this process on the run's own feed (``examples.epochs``), built as ``build_trainer``
    builds it; ``fused=False``: Keras' own Adam update instead of TensorFlow's fused kernel."""
    from gradloop.app import assemble
    from gradloop.data import examples
    from gradloop.loop.compiled import CompileOptions
    from gradloop.loop.trainer import Trainer
    from gradloop.run import history as run_history

    steps_per_epoch = math.ceil(data.train.n / config.batch_size)
    model = seeded_model(config, data)
    trainer = Trainer(
        model,
        optimizer=assemble.build_optimizer(config, steps_per_epoch=steps_per_epoch),
        loss=assemble.build_loss(config, data.task, model),
        metrics=assemble.build_metrics(config, data.task),
        options=CompileOptions(
            steps_per_execution=config.steps_per_execution, jit_compile=config.jit_compile, fused_optimizer=fused
        ),
    )
    history = trainer.fit(
        examples.epochs(data.train, batch_size=config.batch_size, seed=config.seed),
        validation_data=data.val.batches(None, config.batch_size),
        epochs=config.epochs,
        verbose=0,
    )
    return run_history.tutorial_history({k: v for k, v in history.history.items() if k != "train_time"})


# ----------------------------------------------------------------------------------- the table


def relative(ours: list[float], theirs: list[float]) -> np.ndarray:
    return np.abs(np.asarray(ours) / np.asarray(theirs) - 1)


def report(done: list[Case], argv: list[str], seconds: float) -> None:
    print("\nFinal val metric, gradloop vs Keras fit (same split, initial weights and per-epoch order):\n")
    head = (
        f"{'data':<14} {'metric':<9} {'gradloop':>10} {'keras':>10} {'|diff|':>9} "
        f"{'max rel val_loss':>17} {'max rel loss':>13}  split"
    )
    print(head)
    print("-" * len(head))
    for c in done:
        m = f"val_{c.metric}"
        ours, theirs = c.ours[m][-1], c.theirs[m][-1]
        diff = abs(ours - theirs)
        examples = f" ({round(diff * c.n_val)} of {c.n_val:,})" if c.metric == "accuracy" else ""
        print(
            f"{c.name:<14} {m:<9} {ours:>10.4f} {theirs:>10.4f} {diff:>9.2e} "
            f"{relative(c.ours['val_loss'], c.theirs['val_loss']).max():>17.2e} "
            f"{relative(c.ours['train_loss'], c.theirs['train_loss']).max():>13.2e}  "
            f"{c.n_train:,} train / {c.n_val:,} val{examples}"
        )

    if any(c.control for c in done):
        print(
            "\nDiagnosis, the largest relative difference of val_loss over the epochs (and of the final val metric,"
            "\nabsolute) between: A the CLI run and gradloop's Trainer in this process on the same feed, fused Adam"
            "\n(the same computation: 0 says the reproduction is the run); B that Trainer with Keras' own Adam update"
            "\n(fused_optimizer=False) and Keras fit; C the Trainer fused and not (the fused kernel's rounding alone);"
            "\nD Keras fit in another epoch order (seed + 1) and in the run's (what a real difference looks like):\n"
        )
        head = (
            f"{'data':<14} {'A cli / lib':>18} {'B lib unfused / keras':>22} {'C fused / unfused':>18} "
            f"{'D keras order':>18}"
        )
        print(head)
        print("-" * len(head))
        for c in done:
            if not c.control:
                continue
            m = f"val_{c.metric}"

            def both(a: dict, b: dict, m: str = m) -> str:
                return f"{relative(a['val_loss'], b['val_loss']).max():.1e} ({abs(a[m][-1] - b[m][-1]):.1e})"

            print(
                f"{c.name:<14} {both(c.ours, c.library_fused):>18} {both(c.library_unfused, c.theirs):>22} "
                f"{both(c.library_fused, c.library_unfused):>18} {both(c.control, c.theirs):>18}"
            )

    for c in done:
        m = f"val_{c.metric}"
        print(f"\n{c.name}: each epoch")
        print(
            f"{'epoch':>5} {'gradloop val_loss':>18} {'keras val_loss':>15} {'rel diff':>9} "
            f"{'gradloop ' + m:>21} {'keras ' + m:>18}"
        )
        rel = relative(c.ours["val_loss"], c.theirs["val_loss"])
        for e in range(len(c.ours["val_loss"])):
            print(
                f"{e + 1:>5} {c.ours['val_loss'][e]:>18.6f} {c.theirs['val_loss'][e]:>15.6f} {rel[e]:>9.2e} "
                f"{c.ours[m][e]:>21.6f} {c.theirs[m][e]:>18.6f}"
            )

    print("\nTime:")
    for c in done:
        print(
            f"  {c.name:<14} gradloop process {c.gradloop_seconds:7.1f} s (run.json: {c.run_seconds:.1f} s); "
            f"Keras fit {c.keras_seconds:7.1f} s"
        )
    if any(c.control for c in done):
        print("  (the diagnosis trains each source three more times in this process)")
    print(f"  all, this script: {seconds:.1f} s")
    print(
        f"\nKernels: {cpu.KERNEL_NAMES.get(cpu.onednn_kernels(), 'unknown')}; "
        f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}"
    )
    print("\nCommands:")
    print(f"  {shlex.join([sys.executable, *argv])}")
    for c in done:
        print(f"  {shlex.join(c.command)}    # log: {c.log}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=Path, default=IMAGES_DEFAULT, help=f"the Fashion-MNIST PNG folder (default {IMAGES_DEFAULT})"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=WORK_DEFAULT,
        help=f"where the CSV files, runs and logs go (replaced; default {WORK_DEFAULT})",
    )
    parser.add_argument("--only", default=",".join(SOURCES), help=f"comma-separated, of {', '.join(SOURCES)}")
    parser.add_argument(
        "--no-diagnosis",
        dest="diagnose",
        action="store_false",
        help="skip the diagnosis (the library fused and not, Keras in another order)",
    )
    args = parser.parse_args(argv)
    only = tuple(s.strip() for s in args.only.split(","))
    if unknown := set(only) - set(SOURCES):
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SOURCES)}")
    start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    todo = cases(args.images.resolve(), args.work.resolve(), only)
    print(f"uptime before: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
    cpu.import_tensorflow()  # the CLI's kernels, before anything imports TensorFlow
    for case in todo:
        run = train_with_gradloop(case, args.work.resolve())
        print(
            f"[{case.name}] gradloop done in {case.gradloop_seconds:.1f} s; Keras fit ...", file=sys.stderr, flush=True
        )
        reproduce(case, run, diagnose=args.diagnose)
    report(todo, [sys.argv[0], *(sys.argv[1:] if argv is None else argv)], time.perf_counter() - start)
    print(f"uptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
