"""``gradloop compare RUN RUN ...``: runs side by side on one self-contained HTML page.

    runs              each run's status, data, model, epochs, training time (as ``gradloop runs``)
    learning curves   every metric's training and validation curves, a colour per run
    metrics           the best epoch (run.json's ``best``), the lowest val_loss, and every
                      history column's final value
    config            only the keys whose values differ (``run_dir`` aside: it always does)

A RUN may also be a folder of runs (a sweep's): the runs in it are compared
(found as ``gradloop runs`` finds them). The page is written to ``--out``,
by default ``compare.html`` in the current folder; an existing file there is
replaced only when it is an earlier compare page, never anything else. Like
``gradloop report``'s page it has no scripts and no external references, and
every value read from the runs is escaped. Nothing here imports TensorFlow:
the runs' files are all it reads.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradloop.commands import runs
from gradloop.errors import ConfigError, RunDirError
from gradloop.pages.html import config_value, data_uri, escape, img, number, page, table
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder
from gradloop.run import history as run_history

DEFAULT_OUT = "compare.html"
GENERATOR = '<meta name="generator" content="gradloop compare">\n'  # how an earlier compare page is told apart
NOT_COMPARED = ("run_dir",)  # config keys that differ between any two runs by nature


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("compare", help="write one HTML page comparing runs: curves, metrics, config")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more runs, or folders of runs")
    parser.add_argument(
        "--out",
        metavar="FILE",
        help="the page (default compare.html in the current folder); replaces only an earlier compare page",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    print(f"gradloop: wrote {write_compare(args.run_dirs, out=args.out)}")
    return 0


@dataclass(frozen=True)
class Run:
    label: str  # the shortest end of its path that no other compared run shares
    summary: runs.RunSummary
    info: dict[str, Any]
    history: dict[str, list[float]]


def write_compare(run_dirs: Sequence[str | os.PathLike], *, out: str | os.PathLike | None = None) -> Path:
    """Compare the runs in ``run_dirs`` (run folders, or folders of runs) on one page at ``out``; return its path."""
    paths = resolve(run_dirs)
    target = check_out(Path(out) if out is not None else Path(DEFAULT_OUT))
    compared = read_runs(paths)
    html = render(compared)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        run_files.write_text(target, html)
    except OSError as exc:
        raise RunDirError(
            f"cannot write the compare page {target}: {exc.strerror or exc}; pass another --out"
        ) from None
    return target


def resolve(run_dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """The run folders named, a folder of runs standing for its runs; each once. Refused: a missing
    folder, one that neither is nor holds a run, and fewer than 2 runs in all."""
    found: dict[Path, Path] = {}
    for arg in run_dirs:
        path = Path(arg)
        if not path.is_dir():
            state = "is not a folder" if path.exists() else "does not exist"
            raise RunDirError(f"run directory {path} {state}; pass folders made by gradloop train, or folders of them")
        inside, _ = runs.find(path)
        if not inside:
            raise RunDirError(
                f"{path} is not a gradloop run directory (no run.json) and holds none; "
                "pass folders made by gradloop train, or folders of them"
            )
        for run in inside:
            found.setdefault(run.resolve(), run)
    if len(found) < 2:
        named = ", ".join(str(p) for p in found.values())
        raise ConfigError(
            f"compare needs at least 2 runs, got {len(found)} ({named}); name two or more run "
            "directories, or a folder that holds several"
        )
    return list(found.values())


def check_out(out: Path) -> Path:
    """``out``, when it may be written: new, or an earlier compare page; checked before the runs are read."""
    if out.is_dir():
        raise RunDirError(f"--out {out} is a folder; pass a file name, such as {out / DEFAULT_OUT}")
    if out.exists() and not _is_compare_page(out):
        raise RunDirError(
            f"--out {out} exists and is not a gradloop compare page, so it is left alone; pass another --out"
        )
    return out


def _is_compare_page(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return GENERATOR.strip().encode() in file.read(1024)
    except OSError:
        return False


def read_runs(paths: Sequence[Path]) -> list[Run]:
    """Each run's run.json, history and ``gradloop runs`` line; a run without a finished epoch is refused."""
    labels = short_labels(paths)
    compared = []
    for path, label in zip(paths, labels):
        run = run_folder.RunDir.open(path)
        compared.append(Run(label, runs.summarize(path, name=label), run.info, run.read_history()))
    return compared


def short_labels(paths: Sequence[Path]) -> list[str]:
    """Each path's last parts, as few as tell it from the others: ``a``, ``sweep1/trial-0``, ``sweep2/trial-0``."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    labels = []
    for mine in parts:
        for n in range(1, len(mine) + 1):
            if sum(other[-n:] == mine[-n:] for other in parts) == 1:
                break
        labels.append("/".join(mine[-n:]))
    return labels


# --------------------------------------------------------------------- the page


def render(compared: Sequence[Run]) -> str:
    from gradloop.pages import plots  # matplotlib: not for the parser

    labels = [run.label for run in compared]
    histories = {run.label: run.history for run in compared}
    metrics = plots.compared_metrics(list(histories.values()), [run_history.first_metric(run.info) for run in compared])
    curves = data_uri(plots.png_bytes(plots.compare_figure(histories, metrics)))
    differing = config_differences(compared)
    body = [
        f"<h1>gradloop compare: {len(compared)} runs</h1>",
        table("runs", ("", *labels), _run_rows(compared)),
        "<h2>Learning curves</h2>",
        img(curves, f"{', '.join(metrics)} per epoch, training and validation, one colour per run"),
        "<h2>Metrics</h2>",
        table("metrics", ("", *labels), _metric_rows(compared)),
        "<h2>Config: the keys that differ</h2>",
        table("config", ("key", *labels), differing)
        if differing
        else f"<p>The runs' configs are the same, apart from {escape(', '.join(NOT_COMPARED))}.</p>",
    ]
    return page(f"gradloop compare: {', '.join(labels)}", body, head=GENERATOR)


def _run_rows(compared: Sequence[Run]) -> list[tuple[Any, ...]]:
    def row(name: str, value) -> tuple[Any, ...]:
        return (name, *(value(run) for run in compared))

    return [
        row("run directory", lambda run: run.summary.path),
        row("status", lambda run: run.summary.status),
        row("task", lambda run: run.info.get("task", "?")),
        row("data", lambda run: run.summary.data or "?"),
        row("model", lambda run: run.summary.model or "?"),
        row("parameters", lambda run: _thousands(run.info.get("parameters"))),
        row("epochs", lambda run: f"{_known(run.summary.epochs_done)}/{_known(run.summary.epochs)}"),
        row("train time", lambda run: runs.format_seconds(run.summary.train_seconds)),
        row("started", lambda run: run.summary.started or "?"),
    ]


def _metric_rows(compared: Sequence[Run]) -> list[tuple[Any, ...]]:
    """The best epoch by each run's own measure, the lowest val_loss (model.best.keras's epoch), then
    every history column's last value, validation first."""
    keys = sorted(
        {k for run in compared for k in run.history if k != "train_time"}, key=lambda k: (not k.startswith("val_"), k)
    )
    lowest = [run_history.progress({"val_loss": run.history.get("val_loss") or []})["best"] for run in compared]
    return [
        ("best epoch", *(runs.describe_best(run.summary.best) for run in compared)),
        ("lowest val_loss", *(runs.describe_best(best) for best in lowest)),
        *((f"final {key}", *(number(_last(run.history.get(key))) for run in compared)) for key in keys),
    ]


def config_differences(compared: Sequence[Run]) -> list[tuple[str, ...]]:
    """(key, each run's value) of the config keys whose values are not all equal; a key a run's
    config lacks (an older gradloop's) reads ``(not set)``."""
    configs = [run.info.get("config", {}) for run in compared]
    keys = [k for k in dict.fromkeys(k for config in configs for k in config) if k not in NOT_COMPARED]
    rows = []
    for key in keys:
        values = [json.dumps(config[key], sort_keys=True) if key in config else None for config in configs]
        if len(set(values)) > 1:
            rows.append((key, *(config_value(config[key]) if key in config else "(not set)" for config in configs)))
    return rows


def _last(values: Any) -> Any:
    """The last measured value: an epoch without validation holds null."""
    measured = [v for v in values if v is not None] if isinstance(values, list) else []
    return measured[-1] if measured else None


def _known(value: Any) -> Any:
    return "?" if value is None else value


def _thousands(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "?"
