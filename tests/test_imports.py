"""The layering: the loop knows nothing of the CLI, the config or the data readers,
and reading a run directory or parsing flags does not import TensorFlow."""

from __future__ import annotations

import subprocess
import sys

CORE = ("trainer", "step", "compiled", "state", "distribute", "checkpoint", "stopping", "schedules",
        "optimizer_kernels", "losses", "release", "summaries", "progress")
APPLICATION = ("gradloop.config", "gradloop.cli", "gradloop.experiment", "gradloop.build", "gradloop.data")


def loaded_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


def test_the_core_imports_no_config_cli_experiment_or_data_readers():
    modules = loaded_after("\n".join(f"import gradloop.{name}" for name in CORE))
    assert {f"gradloop.{name}" for name in CORE} <= modules  # the import itself worked
    assert "tensorflow" in modules
    leaked = sorted(m for m in modules if any(m == app or m.startswith(app + ".") for app in APPLICATION))
    assert leaked == []


def test_reading_a_run_directory_and_parsing_flags_import_no_tensorflow():
    modules = loaded_after(
        "from gradloop import cli, rundir, errors\n"
        "cli.build_parser().parse_args(['train', '--lr', '1e-3', '--epochs', '2'])\n"
        "try:\n    rundir.RunDir.open('/nonexistent')\nexcept errors.RunDirError:\n    pass"
    )
    assert "gradloop.rundir" in modules and "gradloop.cli" in modules
    assert not {"tensorflow", "keras"} & modules
