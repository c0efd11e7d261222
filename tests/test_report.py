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

from gradloop import report
from gradloop.cli import main
from gradloop.evaluation import evaluate_run


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
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium); .ci/run installs it")
def test_headless_chromium_renders_the_tables_and_decodes_every_image(page, tmp_path):
    # A copy of the page, standalone in an empty folder, that records each image's decoded size once loaded.
    probe = tmp_path / "probe.html"
    recorder = ("<script>window.addEventListener('load', () => { for (const img of document.images) "
                "img.setAttribute('data-decoded', img.naturalWidth + 'x' + img.naturalHeight); });</script>")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", recorder + "</body>"), encoding="utf-8")
    result = chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = Page(result.stdout)
    assert len(dom.tables["per-class"]) == 1 + 3 and len(dom.tables["confusion"]) == 1 + 3
    decoded = [img.get("data-decoded") for img in dom.images]
    expected = [
        "%dx%d" % png_size((page.parent / name).read_bytes())
        for name in ("history.png", "per_class_accuracy.png", "confusion_matrix.png")
    ]
    assert decoded == expected  # every data: URI decoded to the PNG's own size

    shot = tmp_path / "shot.png"
    result = chromium(tmp_path, "--window-size=1000,2000", f"--screenshot={shot}", page.as_uri())
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1000)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # text, tables and plots, not a blank page
    assert pixels.std() > 0.05


def test_cli_writes_the_report_into_the_run_directory(tiny_run, capsys):
    assert main(["report", str(tiny_run)]) == 0
    assert capsys.readouterr().out.strip() == f"gradloop: wrote {tiny_run / 'report' / 'report.html'}"
    assert sorted(p.name for p in (tiny_run / "report").iterdir()) == sorted([*report.FIGURES, "report.html"])


def test_cli_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"gradloop: error: .*not a gradloop run directory.*\n", err)
