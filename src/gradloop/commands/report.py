"""``gradloop report RUN_DIR``: one self-contained HTML page about a run.

    OUT/history.png and, by task (FIGURES_BY_TASK), the evaluation's figures, as files:
        classification   per_class_accuracy.png, confusion_matrix.png
        regression       predicted_vs_true.png, residuals.png
        none             (data without labels: what the model's own test_step logs, as a table)
    OUT/history_<name>.png   every logged value history.png does not draw (a GAN's d_loss, g_loss):
                      its train and val curves; history.png only when the run logged a loss
    OUT/report.html   the run, its history, its evaluation (per-class accuracy and the
                      confusion matrix, or MAE, RMSE, R^2 and the two regression plots) and
                      config, with every figure embedded as a data: URI

The page has no scripts and no external references, so the one file works
alone: mailed, archived or opened from a CI artefact. Every value read from the
run folder is HTML-escaped: the folder may come from someone else. The
evaluation comes from :func:`gradloop.commands.evaluate.evaluate_run` on the chosen
split (default ``val``: the run's own held-out data, so the page's accuracy is
the history's last ``val_accuracy``).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gradloop import cli
from gradloop.app import cpu
from gradloop.commands import evaluate as evaluation
from gradloop.data.builtin.splits import SPLITS
from gradloop.data.sources import UNLABELED
from gradloop.errors import DataError, RunDirError
from gradloop.pages.html import config_value, data_uri, escape, img, number, page, table
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder
from gradloop.run.history import first_metric

FIGURES_BY_TASK = {
    "classification": ("history.png", "per_class_accuracy.png", "confusion_matrix.png"),
    "regression": ("history.png", "predicted_vs_true.png", "residuals.png"),
}
FIGURES = FIGURES_BY_TASK["classification"]  # the built-in runs' (the tutorial's) figures


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("report", help="write a self-contained HTML report of a run")
    parser.add_argument("run_dir", metavar="RUN_DIR")
    parser.add_argument("--dataset", help="data set to evaluate on (default: the run's)")
    parser.add_argument("--data-dir", metavar="DIR", help="folder of IDX files or an mnist.npz")
    parser.add_argument("--data", metavar="PATH", help="other data of the kind the run trained on")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="val",
        help="split for per-class accuracy and the confusion matrix (default val: the run's own held-out data)",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default RUN_DIR/report)")
    cli.add_trust_code(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    cpu.import_tensorflow()
    path = write_report(
        args.run_dir,
        out=args.out,
        dataset=args.dataset,
        data_dir=args.data_dir,
        data_path=args.data,
        split=args.split,
        notify=cli.to_stderr,
        trust_code=args.trust_code,
    )
    print(f"gradloop: wrote {path}")
    return 0


def write_report(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    data_path: str | None = None,
    split: str = "val",
    notify: Callable[[str], None] = print,
    trust_code: bool = False,
) -> Path:
    """Evaluate the run's model on ``split``, draw the figures, write the page; return its path.
    ``trust_code``: the run's own code may run (:func:`gradloop.commands.evaluate.load_model`)."""
    from gradloop.pages import plots  # matplotlib: not for the parser

    run = run_folder.RunDir.open(run_dir)
    run_dir, info, history = run.path, run.info, run.read_history()
    try:
        result = evaluation.evaluate_run(
            run_dir,
            dataset=dataset,
            data_dir=data_dir,
            data_path=data_path,
            split=split,
            notify=notify,
            keep_predictions=True,
            trust_code=trust_code,
        )
    except (evaluation.NoTestStep, DataError) as exc:  # a GAN on images alone: its history is the report
        if not isinstance(exc, evaluation.NoTestStep) and info.get("task") != UNLABELED:
            raise
        result = {"task": info.get("task"), "split": split, "unevaluated": str(exc)}
    out_dir = Path(out) if out else run_files.own_path(run.path, run_files.REPORT)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create report folder {out_dir}: {exc.strerror or exc}; pass another --out") from None
    figures = history_figures(history, first_metric(info))
    if "history.png" in figures:
        plots.plot_history(history, out_dir / "history.png", metric=first_metric(info))
    for name, file in figures.items():
        if name != "history.png":
            plots.plot_logged(history, file, out_dir / name)
    if "logs" in result or "unevaluated" in result:  # a model's own test_step: its logs, no figures
        pass
    elif result["task"] == "regression":
        plots.plot_predicted_vs_true(result["true"], result["predicted"], out_dir / "predicted_vs_true.png")
        plots.plot_residuals(result["true"], result["predicted"], out_dir / "residuals.png")
    else:
        plots.plot_per_class_accuracy(result["per_class_accuracy"], out_dir / "per_class_accuracy.png")
        plots.plot_confusion_matrix(result["confusion_matrix"], result["classes"], out_dir / "confusion_matrix.png")
    evaluated = () if "logs" in result or "unevaluated" in result else FIGURES_BY_TASK[result["task"]][1:]
    images = {name: data_uri(out_dir / name) for name in (*figures, *evaluated)}
    html_file = out_dir / "report.html"
    run_files.write_text(html_file, render(run_dir, info, history, result, images))
    return html_file


def history_figures(history: Mapping[str, list], metric: str | None) -> dict[str, str | None]:
    """The history's figures, file -> what it draws: ``history.png`` (the tutorial's panels: the top metric
    and loss) when the run logged a loss, then ``history_<name>.png`` for every other logged value (a
    GAN's d_loss and g_loss), each with its train and val curves."""
    from gradloop.pages import plots

    names = plots.logged_names(history)
    drawn = {plots.top_metric(history, metric), "loss"} if "loss" in names else set()
    figures: dict[str, str | None] = {"history.png": None} if drawn else {}
    for i, name in enumerate(n for n in names if n not in drawn):
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:60]  # a name from a run folder: never a path
        figures[f"history_{safe}.png" if f"history_{safe}.png" not in figures else f"history_{i}_{safe}.png"] = name
    return figures


def render(
    run_dir: Path,
    info: Mapping[str, Any],
    history: Mapping[str, list],
    result: Mapping[str, Any],
    images: Mapping[str, str],
) -> str:
    """The page's HTML: headings, tables and the embedded figures."""
    from gradloop.pages import plots

    epochs = len(next(iter(history.values()), []))
    history_keys = list(history)
    top = plots.top_metric(history, first_metric(info))
    logged = history_figures(history, first_metric(info))
    body = [
        f"<h1>gradloop run {escape(run_dir.name)}</h1>",
        table("run", None, _run_rows(run_dir, info, result)),
        "<h2>History</h2>",
        *(
            [img(images["history.png"], f"{top} and loss per epoch" if top else "loss per epoch")]
            if "history.png" in images
            else []
        ),
        *(img(images[file], f"{name} per epoch") for file, name in logged.items() if name and file in images),
        table(
            "history",
            ("epoch", *history_keys),
            [(i + 1, *(number(history[k][i]) for k in history_keys)) for i in range(epochs)],
        ),
        *_evaluation(result, images, outputs=info.get("n_outputs")),
        "<h2>Config</h2>",
        table("config", ("key", "value"), [(k, config_value(v)) for k, v in info.get("config", {}).items()]),
    ]
    return page(f"gradloop run {run_dir.name}", body)


def _evaluation(result: Mapping[str, Any], images: Mapping[str, str], *, outputs: Any) -> list[str]:
    """The evaluation's section: the class tables, the regression's scores, or what a model's own
    test_step logged (data without labels has no classes: no accuracy, no confusion matrix)."""
    if "unevaluated" in result:
        return ["<h2>Evaluation</h2>", f"<p>none: {escape(result['unevaluated'])}</p>"]
    head = (
        f"<h2>Evaluation: {escape(result['split'])} split of {escape(result['source'])}, "
        f"{result['n_samples']:,} samples</h2>"
    )
    if "logs" in result:
        rows = [(name, number(value)) for name, value in result["logs"].items()]
        return [
            head,
            f"<p>what the model's {escape(result['step'])} logs</p>",
            table("evaluation", ("", "value"), rows),
        ]
    if result["task"] == "regression":
        return [head, *_regression(result, images, outputs=outputs)]
    return [head, *_classification(result, images)]


def _run_rows(run_dir: Path, info: Mapping[str, Any], result: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The run table: what was trained on what, and when; a row run.json has no value for is left out."""
    data = info.get("data") if isinstance(info.get("data"), dict) else {}
    parameters = info.get("parameters")
    if result["task"] == "regression":
        targets = ("outputs", info.get("n_outputs"))
    elif result["task"] == "classification":
        targets = ("classes", ", ".join(map(str, info.get("classes") or result["classes"])))
    else:  # data without labels
        targets = ("classes", None)
    rows = [
        ("run directory", str(run_dir)),
        ("status", info.get("status", "?")),
        ("task", result["task"]),
        ("data", info.get("data_source", "?")),
        ("data kind", data.get("kind")),
        targets,
        ("samples", f"{info.get('n_train', '?')} train / {info.get('n_val', '?')} validation"),
        ("model", info.get("model")),
        ("parameters", f"{parameters:,}" if isinstance(parameters, int) else parameters),
        ("loss", info.get("loss")),
        ("started", info.get("started", "?")),
        ("seconds", info.get("seconds", "?")),
        *((f"version of {k}", v) for k, v in info.get("versions", {}).items()),
    ]
    return [(name, value) for name, value in rows if value is not None]


def _classification(result: Mapping[str, Any], images: Mapping[str, str]) -> list[str]:
    """Loss and accuracy, then per-class accuracy and the confusion matrix, each as a figure and a table."""
    classes = result["classes"]
    confusion = result["confusion_matrix"]
    per_class_rows = [
        (c, sum(row), row[i], number(result["per_class_accuracy"][str(c)]))
        for i, (c, row) in enumerate(zip(classes, confusion))
    ]
    return [
        f"<p>loss {escape(number(result['loss']))}, accuracy {escape(number(result['accuracy']))}</p>",
        "<h3>Per-class accuracy</h3>",
        img(images["per_class_accuracy.png"], "accuracy of each class"),
        table("per-class", ("class", "samples", "correct", "accuracy"), per_class_rows),
        "<h3>Confusion matrix (rows: true class, columns: predicted class)</h3>",
        img(images["confusion_matrix.png"], "confusion matrix"),
        table("confusion", ("true \\ predicted", *classes), [(c, *row) for c, row in zip(classes, confusion)]),
    ]


def _regression(result: Mapping[str, Any], images: Mapping[str, str], *, outputs: Any) -> list[str]:
    """Loss, MAE, RMSE and R^2, then the predictions against the truth and the residuals
    (of the first output: ``evaluate_run`` keeps that one's predictions)."""
    which = f" (the first of {escape(outputs)} outputs)" if isinstance(outputs, int) and outputs > 1 else ""
    return [
        f"<p>loss {escape(number(result['loss']))}, MAE {escape(number(result['mae']))}, "
        f"RMSE {escape(number(result['rmse']))}, R^2 {escape(number(result['r2']))}</p>",
        f"<h3>Predicted against true{which}</h3>",
        img(images["predicted_vs_true.png"], "predicted against true, with the line predicted = true"),
        f"<h3>Residuals (predicted - true) against predicted{which}</h3>",
        img(images["residuals.png"], "residuals against predicted, with the zero line"),
    ]
