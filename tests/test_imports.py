"""The layering: the loop knows nothing of the CLI, the config, the run directory or the data
readers, and reading a run directory or parsing flags does not import TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gradloop

SRC = Path(gradloop.__file__).parent
# the library: every module of gradloop/loop/, found on disk so that a new one is checked too
CORE = tuple(
    sorted(
        ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        for path in (SRC / "loop").rglob("*.py")
    )
)
SHARED = ("gradloop", "gradloop.errors", "gradloop.atomic")  # what the core and the application both use


def loaded_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_the_core_imports_nothing_of_the_application():
    assert "gradloop.loop.trainer" in CORE and len(CORE) > 15
    modules = loaded_after("\n".join(f"import {name}" for name in CORE))
    core = set(CORE)
    assert core <= modules and "tensorflow" in modules  # the imports themselves worked
    application = sorted(
        m for m in modules if (m == "gradloop" or m.startswith("gradloop.")) and m not in core | set(SHARED)
    )
    assert application == []  # e.g. gradloop.app.config, gradloop.cli, gradloop.run.folder, gradloop.data.builtin.idx


def test_resuming_checks_and_parsing_flags_import_no_tensorflow(tmp_path):
    """The CLI reads a run to resume (run.json, its checkpoint) before TensorFlow is imported."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    (run / "run.json").write_text(json.dumps({"format": 1, "status": "interrupted", "config": {"epochs": 3}}))
    modules = loaded_after(
        "from gradloop import cli\nfrom gradloop.commands import train\n"
        "from gradloop.run import folder as run_folder\nfrom gradloop.run import start as run_start\n"
        f"args = cli.build_parser().parse_args(['train', '--resume', '--run-dir', {str(run)!r}, '--epochs', '4'])\n"
        "assert train.train_config(args).epochs == 4\n"
        f"run_start.check_resumable({str(run)!r}, epochs=4)\n"
        f"assert run_folder.RunDir.open({str(run)!r}).info['status'] == 'interrupted'"
    )
    assert "gradloop.run.folder" in modules and "gradloop.cli" in modules
    assert not {"tensorflow", "keras"} & modules


def test_the_data_and_run_packages_import_nothing_of_the_application_above_them():
    """The config is resolved in gradloop.app (gradloop.app.specs): the data readers and the run folder
    take small values, so neither imports the app, the commands or the CLI."""
    below = sorted(
        ".".join(path.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        for package in ("data", "run")
        for path in (SRC / package).rglob("*.py")
    )
    assert "gradloop.data.sources.prepared" in below and "gradloop.run.start" in below
    modules = loaded_after("\n".join(f"import {name}" for name in below))
    assert set(below) <= modules  # the imports themselves worked
    above = ("gradloop.app", "gradloop.commands", "gradloop.cli", "gradloop.sweep", "gradloop.bench")
    assert sorted(m for m in modules if m.startswith(above)) == []
