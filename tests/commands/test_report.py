"""gradloop report: the page's numbers, its self-contained figures, and that Chromium renders it."""

from __future__ import annotations

import base64
import json
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import missing

from gradloop.cli import main
from gradloop.commands import report
from gradloop.commands.evaluate import evaluate_run


class Page(HTMLParser):
    """The tables (by id) and images of an HTML page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[dict[str, str]] = []
        self._table = self._row = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._row.append("")
        elif tag == "img":
            self.images.append(attrs)

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = self._row = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._row:
            self._row[-1] += data


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def page(tiny_run, tmp_path_factory) -> Path:
    return report.write_report(tiny_run, out=tmp_path_factory.mktemp("report"), notify=lambda line: None)


def test_the_page_holds_the_runs_numbers(tiny_run, page):
    parsed = Page(page.read_text(encoding="utf-8"))
    history = json.loads((tiny_run / "history.json").read_text())
    result = evaluate_run(tiny_run, split="val", notify=lambda line: None)
    # The default split is the run's own validation data: the page's accuracy is the history's last val_accuracy.
    assert result["accuracy"] == pytest.approx(history["val_accuracy"][-1], abs=1e-6)
    assert f"accuracy {result['accuracy']:.4f}" in page.read_text()

    per_class = parsed.tables["per-class"]
    assert per_class[0] == ["class", "samples", "correct", "accuracy"]
    matrix = np.array(result["confusion_matrix"])
    for i, (row, c) in enumerate(zip(per_class[1:], result["classes"])):
        assert row == [str(c), str(matrix[i].sum()), str(matrix[i, i]), f"{matrix[i, i] / matrix[i].sum():.4f}"]
    confusion = parsed.tables["confusion"]
    assert [[int(v) for v in row[1:]] for row in confusion[1:]] == matrix.tolist()
    assert matrix.sum() == 250  # the run's 250 validation digits

    epochs = parsed.tables["history"]
    assert len(epochs) == 1 + 2
    assert float(epochs[2][epochs[0].index("val_loss")]) == pytest.approx(history["val_loss"][1], abs=1e-4)
    config = dict(parsed.tables["config"][1:])
    run = json.loads((tiny_run / "run.json").read_text())
    assert set(config) == set(run["config"]) and config["hidden"] == "64" and config["epochs"] == "2"


def test_the_figures_are_embedded_and_also_written_beside_the_page(page):
    images = Page(page.read_text(encoding="utf-8")).images
    assert len(images) == len(report.FIGURES) == 3
    for attrs, name in zip(images, ("history.png", "per_class_accuracy.png", "confusion_matrix.png")):
        assert attrs["src"].startswith("data:image/png;base64,")
        embedded = base64.b64decode(attrs["src"].split(",", 1)[1])
        assert embedded == (page.parent / name).read_bytes()
        width, height = png_size(embedded)
        assert width > 200 and height > 200
    assert "http" not in page.read_text() and "<script" not in page.read_text()  # works alone, offline


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def rendered_dom(page: Path, tmp_path: Path) -> Page:
    """The page as headless Chromium renders it, each image marked ``data-decoded`` with its decoded size."""
    # A copy of the page, standalone in an empty folder, that records each image's decoded size once loaded.
    probe = tmp_path / "probe.html"
    recorder = (
        "<script>window.addEventListener('load', () => { for (const img of document.images) "
        "img.setAttribute('data-decoded', img.naturalWidth + 'x' + img.naturalHeight); });</script>"
    )
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", recorder + "</body>"), encoding="utf-8")
    result = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    return Page(result.stdout)


def check_screenshot(page: Path, tmp_path: Path, *, width: int, height: int) -> None:
    """Headless Chromium's screenshot of the page is the window's size and shows text, tables and plots."""
    shot = tmp_path / "shot.png"
    result = chromium(tmp_path, f"--window-size={width},{height}", f"--screenshot={shot}", page.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (height, width)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, tables and plots, not a blank page
    assert pixels.std() > 0.05


def test_headless_chromium_renders_the_tables_and_decodes_every_image(page, tmp_path):
    if CHROMIUM is None:
        missing("chromium", "Debian's chromium is not installed (apt-get install -y chromium)")
    dom = rendered_dom(page, tmp_path)
    assert len(dom.tables["per-class"]) == 1 + 3 and len(dom.tables["confusion"]) == 1 + 3
    decoded = [img.get("data-decoded") for img in dom.images]
    expected = [
        "{}x{}".format(*png_size((page.parent / name).read_bytes()))
        for name in ("history.png", "per_class_accuracy.png", "confusion_matrix.png")
    ]
    assert decoded == expected  # every data: URI decoded to the PNG's own size
    check_screenshot(page, tmp_path, width=1000, height=2000)


def test_cli_writes_the_report_into_the_run_directory(tiny_run, capsys):
    assert main(["report", str(tiny_run)]) == 0
    assert capsys.readouterr().out.strip() == f"gradloop: wrote {tiny_run / 'report' / 'report.html'}"
    assert sorted(p.name for p in (tiny_run / "report").iterdir()) == sorted([*report.FIGURES, "report.html"])


def test_cli_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"gradloop: error: .*not a gradloop run directory.*\n", err)


# --------------------------------------------------------------------- your own data: regression and named classes


def quiet(line: str) -> None:
    pass


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory) -> Path:
    """2 epochs of a small MLP on scikit-learn's diabetes data (442 rows, 10 features), target standardised."""
    from sklearn.datasets import load_diabetes

    folder = tmp_path_factory.mktemp("diabetes")
    diabetes = load_diabetes()
    y = (diabetes.target - diabetes.target.mean()) / diabetes.target.std()
    np.savez(folder / "diabetes.npz", x=diabetes.data.astype("float32"), y=y.astype("float32"))
    run = folder / "run"
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
                str(run),
            ]
        )
        == 0
    )
    return run


@pytest.fixture(scope="module")
def regression_page(regression_run, tmp_path_factory) -> Path:
    return report.write_report(regression_run, out=tmp_path_factory.mktemp("regression_report"), notify=quiet)


def test_a_regression_page_shows_evaluate_runs_scores_in_place_of_the_class_tables(regression_run, regression_page):
    text = regression_page.read_text(encoding="utf-8")
    result = evaluate_run(regression_run, split="val", notify=quiet)
    assert result["task"] == "regression"
    assert f"MAE {result['mae']:.4f}, RMSE {result['rmse']:.4f}, R^2 {result['r2']:.4f}" in text
    history = json.loads((regression_run / "history.json").read_text())
    assert result["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-5)  # the run's own validation data
    assert f"loss {result['loss']:.4f}" in text

    parsed = Page(text)
    assert "confusion" not in parsed.tables and "per-class" not in parsed.tables
    assert "Confusion matrix" not in text and "Per-class accuracy" not in text
    info = json.loads((regression_run / "run.json").read_text())
    run = dict(parsed.tables["run"])
    assert run["task"] == "regression" and run["data kind"] == "arrays" and run["model"] == info["model"]
    assert run["parameters"] == f"{info['parameters']:,}" and run["loss"] == info["loss"] == "MeanSquaredError()"
    assert "classes" not in run and run["outputs"] == "1"


def test_a_regression_page_embeds_its_two_figures_and_writes_them_beside_it(regression_page):
    figures = report.FIGURES_BY_TASK["regression"]
    assert figures == ("history.png", "predicted_vs_true.png", "residuals.png")
    images = Page(regression_page.read_text(encoding="utf-8")).images
    assert len(images) == len(figures)
    for attrs, name in zip(images, figures):
        embedded = base64.b64decode(attrs["src"].removeprefix("data:image/png;base64,"))
        assert embedded == (regression_page.parent / name).read_bytes()
        width, height = png_size(embedded)
        assert width > 200 and height > 200
    assert sorted(p.name for p in regression_page.parent.iterdir()) == sorted([*figures, "report.html"])


def test_the_history_plot_of_a_regression_run_has_mae_on_top(regression_run, regression_page, tmp_path):
    from gradloop.pages import plots

    history = json.loads((regression_run / "history.json").read_text())
    assert plots.plot_history(history, tmp_path / "history.png") == "mae"
    assert (tmp_path / "history.png").read_bytes() == (regression_page.parent / "history.png").read_bytes()
    assert (regression_run / "history.png").exists()  # training drew it too

    figure = plots.history_figure(history)
    try:
        top, bottom = figure.axes
        assert top.get_title() == "mae values" and [line.get_label() for line in top.lines] == ["train_mae", "val_mae"]
        assert list(top.lines[1].get_ydata()) == history["val_mae"]
        assert bottom.get_title() == "Loss values"
        assert [line.get_label() for line in bottom.lines] == ["train_loss", "val_loss"]
    finally:
        plots.plt.close(figure)


@pytest.mark.parametrize(
    "history, metric, top",
    [
        ({"train_loss": [1.0], "train_accuracy": [0.5], "val_loss": [1.0], "val_accuracy": [0.5]}, None, "accuracy"),
        # --metrics auc,accuracy: history files list columns alphabetically, run.json in the given order
        ({"train_accuracy": [0.5], "train_auc": [0.6], "train_loss": [1.0], "train_time": [2.0]}, "auc", "auc"),
        (
            {"train_accuracy": [0.5], "train_auc": [0.6], "train_loss": [1.0]},
            None,
            "accuracy",
        ),  # the history's own order
        ({"train_loss": [1.0], "train_time": [2.0], "val_loss": [1.0]}, "mae", None),  # no metric: the loss alone
    ],
)
def test_the_history_plots_top_panel_is_the_named_metric_else_the_historys_first(history, metric, top):
    from gradloop.pages import plots

    assert plots.top_metric(history, metric) == top
    figure = plots.history_figure(history, metric=metric)
    try:
        titles = [ax.get_title() for ax in figure.axes]
        expected = {None: [], "accuracy": ["Accuracy values"]}.get(top, [f"{top} values"])
        assert titles == [*expected, "Loss values"]
    finally:
        plots.plt.close(figure)


def test_the_report_draws_the_top_panel_of_run_jsons_first_metric():
    assert report.first_metric({"metrics": ["auc", "accuracy"]}) == "auc"
    assert report.first_metric({"metrics": ["loss", "mae"]}) == "mae"
    assert report.first_metric({}) is None and report.first_metric({"metrics": "auc"}) is None


@pytest.fixture(scope="module")
def named_classes_page(tmp_path_factory) -> Path:
    """A classifier trained on an npz whose labels are the strings cat and dog."""
    folder = tmp_path_factory.mktemp("pets")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype("float32")
    labels = (x[:, 0] + x[:, 1] > 0).astype(int)
    np.savez(folder / "pets.npz", x=x, y=np.array(["cat", "dog"])[labels])
    run = folder / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(folder / "pets.npz"),
                "--epochs",
                "2",
                "--lr",
                "0.01",
                "--hidden",
                "16",
                "--run-dir",
                str(run),
            ]
        )
        == 0
    )
    return report.write_report(run, out=folder / "report", notify=quiet)


def test_a_classification_page_of_your_data_names_its_classes(named_classes_page):
    parsed = Page(named_classes_page.read_text(encoding="utf-8"))
    run = dict(parsed.tables["run"])
    assert run["task"] == "classification" and run["classes"] == "cat, dog" and run["data kind"] == "arrays"
    per_class = parsed.tables["per-class"]
    assert [row[0] for row in per_class[1:]] == ["cat", "dog"]
    assert sum(int(row[1]) for row in per_class[1:]) == 50  # a sixth of 300 held out
    confusion = parsed.tables["confusion"]
    assert confusion[0] == ["true \\ predicted", "cat", "dog"] and [row[0] for row in confusion[1:]] == ["cat", "dog"]
    assert sorted(p.name for p in named_classes_page.parent.iterdir()) == sorted([*report.FIGURES, "report.html"])


def test_every_value_from_the_run_folder_is_escaped():
    """A run folder may come from someone else: its names reach the page as text, never as markup."""
    evil = "<script>alert(1)</script>"
    info = {
        "status": evil,
        "task": "classification",
        "data_source": evil,
        "classes": [evil, "b&b"],
        "data": {"kind": evil},
        "model": evil,
        "parameters": evil,
        "loss": evil,
        "started": evil,
        "versions": {evil: evil},
        "config": {evil: [evil]},
        "metrics": [evil],
    }
    history = {f"train_{evil}": [0.5], "train_loss": [1.0], "val_loss": [1.0]}
    result = {
        "task": "classification",
        "split": "val",
        "source": evil,
        "n_samples": 2,
        "classes": [evil, "b&b"],
        "loss": 1.0,
        "accuracy": 0.5,
        "per_class_accuracy": {evil: 1.0, "b&b": 0.0},
        "confusion_matrix": [[1, 0], [1, 0]],
    }
    images = dict.fromkeys(report.FIGURES, "data:image/png;base64,AAAA")
    page = report.render(Path("/runs") / evil, info, history, result, images)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "b&amp;b" in page
    regression = {
        "task": "regression",
        "split": "val",
        "source": evil,
        "n_samples": 2,
        "loss": 1.0,
        "mae": 0.5,
        "rmse": 1.0,
        "r2": 0.1,
        "predicted": [0.0, 1.0],
        "true": [0.0, 1.0],
    }
    images = dict.fromkeys(report.FIGURES_BY_TASK["regression"], "data:image/png;base64,AAAA")
    info = {**info, "task": "regression", "n_outputs": evil}
    page = report.render(Path("/runs") / evil, info, history, regression, images)
    assert "<script" not in page and "&lt;script&gt;" in page
