"""A sweep's results, written by the process that finishes last (and again by any rerun):

    results.json   every trial: state, metric, options, run directory; the best; the importances
    best.yaml      the best complete trial's config: gradloop train --config best.yaml trains it again
    sweep.html     one self-contained page (gradloop.pages.html): the trials' learning curves overlaid
                   (gradloop.pages.plots.compare_figure, as gradloop compare draws them), the metric of
                   each trial, the options' importances (optuna.importance, fANOVA) and a table

Trials still running in another process are listed as running; that process writes the
results again when it ends.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from gradloop.app.config import build_config
from gradloop.errors import GradloopError
from gradloop.pages import html as pages
from gradloop.pages import plots
from gradloop.run import files as run_files
from gradloop.run import folder as run_folder
from gradloop.sweep.spec import Choices

if TYPE_CHECKING:
    from gradloop.sweep.study import Sweep

RESULTS_JSON = "results.json"
BEST_YAML = "best.yaml"
PAGE = "sweep.html"
_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def write_results(sweep: Sweep) -> dict[str, Any]:
    """results.json, best.yaml (when a trial completed) and sweep.html, from the study and the trials' runs."""
    spec, study = sweep.spec, sweep.study
    trials = [_trial(sweep, frozen) for frozen in study.get_trials(deepcopy=False)]
    complete = [t for t in trials if t["state"] == "complete"]
    best = None
    if complete:
        pick = max if spec.direction == "maximize" else min
        best = pick(complete, key=lambda t: t["value"])
        run_files.write_text(sweep.folder / BEST_YAML, _best_yaml(best, spec.metric, sweep.folder))
    results = {
        "metric": spec.metric,
        "direction": spec.direction,
        "trials_asked": spec.trials,
        "study": study.study_name,
        "storage": sweep.storage.shown,
        "counts": {state: n for state in _STATES.values() if (n := sum(t["state"] == state for t in trials))},
        "best": {**{k: best[k] for k in ("number", "value", "params", "run_dir")}, "config": BEST_YAML}
        if best
        else None,
        "importances": importances(study) if len(complete) >= 2 else None,
        "trials": trials,
    }
    run_files.write_json(sweep.folder / RESULTS_JSON, results)
    run_files.write_text(sweep.folder / PAGE, render(results, sweep.folder))
    return results


def _trial(sweep: Sweep, frozen: optuna.trial.FrozenTrial) -> dict[str, Any]:
    path = sweep.trial_dir(frozen.number)
    try:
        curves = run_folder.RunDir.open(path).read_history()
    except GradloopError:  # a trial that failed before its first epoch has no history
        curves = {}
    space = sweep.spec.space
    params = {
        name: space[name].decode(value) if isinstance(space.get(name), Choices) else value
        for name, value in frozen.params.items()
    }
    values = curves.get(sweep.spec.metric) or [
        frozen.intermediate_values[k] for k in sorted(frozen.intermediate_values)
    ]
    return {
        "number": frozen.number,
        "state": _STATES.get(frozen.state.name, frozen.state.name.lower()),
        "value": frozen.value if frozen.value is not None else (values[-1] if values else None),
        "epochs": len(values),
        "params": params,
        "run_dir": str(path.resolve()),
        "history": curves,
        **({"error": frozen.user_attrs["error"]} if "error" in frozen.user_attrs else {}),
    }


def _best_yaml(best: Mapping[str, Any], metric: str, folder: Path) -> str:
    """The best trial's config as --config takes it: its run.json's, without its run directory."""
    info = run_folder.RunDir.open(best["run_dir"]).info
    config = build_config({k: v for k, v in info["config"].items() if k != "run_dir"})
    return (
        f"# the best trial of the sweep {folder}: trial {best['number']}, {metric} {best['value']:.6g}\n"
        f"# train it again with: gradloop train --config {folder / BEST_YAML}\n" + config.to_yaml()
    )


def importances(study: optuna.Study) -> dict[str, float] | None:
    """Each option's share of the metric's variance across the complete trials (Optuna's fANOVA,
    seeded so that a rerun draws the same page); None when they cannot tell (all alike)."""
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None


def render(results: Mapping[str, Any], folder: Path) -> str:
    """sweep.html: the sweep, its best trial, the figures and the trials' table (every value escaped)."""
    trials, metric = results["trials"], results["metric"]
    best = results["best"]
    counts = ", ".join(f"{n} {state}" for state, n in results["counts"].items())
    options = sorted({name for t in trials for name in t["params"]})
    body = [
        f"<h1>gradloop sweep {pages.escape(folder.name)}</h1>",
        pages.table(
            "sweep",
            None,
            [
                ("sweep folder", str(folder)),
                ("study", f"{results['study']} in {results['storage']}"),
                ("metric", f"{results['direction']} {metric}"),
                ("trials", f"{len(trials)} of {results['trials_asked']}: {counts}"),
                (
                    "best",
                    f"trial {best['number']}: {metric} {best['value']:.4f} ({_options(best['params'])}), "
                    f"config in {folder / BEST_YAML}"
                    if best
                    else "no trial has completed yet",
                ),
            ],
        ),
    ]
    histories = {f"trial {t['number']} ({t['state']})": t["history"] for t in trials if t["history"]}
    if histories:
        figure = plots.compare_figure(histories, plots.compared_metrics(list(histories.values())))
        body += ["<h2>Learning curves</h2>", _img(figure, "each trial's learning curves")]
    scored = {
        t["number"]: (t["value"], t["state"])
        for t in trials
        if t["value"] is not None and t["state"] in ("complete", "pruned")
    }
    if scored:
        body += [
            f"<h2>{pages.escape(metric)} of each trial</h2>",
            _img(plots.trial_values_figure(scored, metric), f"{metric} of each trial"),
        ]
    body.append("<h2>Option importances</h2>")
    if results["importances"]:
        body += [
            _img(plots.importances_figure(results["importances"]), "importance of each option"),
            pages.table(
                "importances",
                ("option", "importance"),
                [(k, pages.number(v)) for k, v in results["importances"].items()],
            ),
        ]
    else:
        body.append("<p>Not yet: they need two complete trials that differ.</p>")
    body += [
        "<h2>Trials</h2>",
        pages.table(
            "trials",
            ("trial", "state", metric, "epochs", *options, "run directory"),
            [
                (
                    t["number"],
                    t["state"] + (f": {t['error']}" if "error" in t else ""),
                    pages.number(t["value"]),
                    t["epochs"],
                    *(format_value(t["params"].get(name)) for name in options),
                    t["run_dir"],
                )
                for t in trials
            ],
        ),
    ]
    return pages.page(f"gradloop sweep {folder.name}", body)


def _img(figure, alt: str) -> str:
    return pages.img(pages.data_uri(plots.png_bytes(figure)), alt)


def format_value(value: Any) -> str:
    """An option's value in a line or a table: 0.00123, [128, 64], adam."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _options(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in params.items())


def format_results(results: Mapping[str, Any], folder: Path) -> str:
    """What the sweep prints at its end: the counts, the best trial and where its config is."""
    counts = ", ".join(f"{n} {state}" for state, n in results["counts"].items())
    best = results["best"]
    lines = [
        f"gradloop: sweep {folder}: {sum(results['counts'].values())} of {results['trials_asked']} trials ({counts})"
    ]
    if best:
        lines.append(
            f"gradloop: best trial {best['number']}: {results['metric']} {best['value']:.4f} with "
            f"{_options(best['params'])} ({best['run_dir']})"
        )
        lines.append(
            f"gradloop: wrote {folder / BEST_YAML} (train it with gradloop train --config), "
            f"{folder / PAGE}, {folder / RESULTS_JSON}"
        )
    else:
        lines.append(f"gradloop: no trial completed yet; wrote {folder / PAGE}, {folder / RESULTS_JSON}")
    return "\n".join(lines)
