"""``gradloop lr-find``: the learning-rate range test (:mod:`gradloop.loop.lr_range`) on a run's config.

    data, model, optimizer   as ``gradloop train`` builds them (gradloop.app.assemble), on one device
    range test               a few hundred steps, the rate growing from start_lr to end_lr
    suggestion               the steepest fall of the smoothed loss, printed in one line
    RUN_DIR (optional)       lr_find.png and lr_find.json; without it nothing is written

The model trained here is a throwaway copy: the rates near the end wreck it on purpose.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gradloop import cli
from gradloop.app import cpu
from gradloop.app.config import TrainConfig, build_config, load_yaml
from gradloop.errors import ConfigError, TrainingError
from gradloop.run import files as run_files
from gradloop.run import start as run_start

if TYPE_CHECKING:
    from gradloop.loop.lr_range import RangeTestResult

PLOT = "lr_find.png"
JSON = "lr_find.json"


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("lr-find", help="suggest a learning rate: the range test on train's data and model")
    parser.add_argument("--config", metavar="FILE.yaml", help="config file, as for train; flags override its values")
    cli.add_config_flags(
        parser.add_argument_group(
            "the experiment, as for train (--run-dir DIR: write lr_find.png and lr_find.json there; "
            "else nothing is written)"
        )
    )
    parser.add_argument(
        "--start-lr", type=cli.number, default=1e-7, metavar="LR", help="the first step's rate (default 1e-7)"
    )
    parser.add_argument(
        "--end-lr", type=cli.number, default=10.0, metavar="LR", help="the last step's rate (default 10)"
    )
    parser.add_argument(
        "--steps", type=cli.integer, default=300, metavar="N", help="steps from --start-lr to --end-lr (default 300)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    file_values = load_yaml(args.config) if args.config else {}
    config = build_config(file_values, **cli.config_flags(args))
    cpu.import_tensorflow()
    result, out = find_lr(config, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps, notify=cli.to_stderr)
    print(format_result(result))
    if out is not None:
        print(f"gradloop: wrote {out / PLOT} and {out / JSON}")
    return 0


def find_lr(
    config: TrainConfig,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 300,
    notify: Callable[[str], None] = print,
) -> tuple[RangeTestResult, Path | None]:
    """Run the range test on ``config``'s data and model; with ``config.run_dir``, write the plot
    and the json there (a new or empty folder). Returns the result and that folder."""
    import keras

    from gradloop.app import assemble
    from gradloop.app.feed import Feed, check_fits
    from gradloop.loop import step as step_lib
    from gradloop.loop.lr_range import LearningRateRangeTest
    from gradloop.pages import plots

    try:
        test = LearningRateRangeTest(start_lr=start_lr, end_lr=end_lr, steps=steps)
    except ValueError as exc:
        raise ConfigError(f"lr-find: {exc}") from None
    out = run_start.check_new(Path(config.run_dir)) if config.run_dir else None
    # The rate is the test's to set; the global batch, and so the answer, is the same on one device.
    config = dataclasses.replace(
        config, lr_schedule="constant", warmup_steps=0, decay_steps=None, strategy="default", replicas=None
    )
    strategy = assemble.make_strategy(config)
    data = assemble.load_data(config, notify=notify)
    feed = Feed.of(config, data)
    keras.utils.set_random_seed(config.seed)
    trainer = assemble.build_trainer(config, strategy, data, test.watch(step_lib.train_step), feed.steps_per_epoch)
    check_fits(config, data, trainer, feed)
    trainer.fit(feed.train, epochs=test.epochs_for(feed.steps_per_epoch), callbacks=[test], verbose=0)
    result = test.result()
    if result.suggestion is None:
        where = f"it rose from the start at lr {start_lr:g}" if len(result.lrs) < 12 else "it never fell"
        raise TrainingError(
            f"lr-find found no learning rate at which the loss falls ({where}); "
            "pass a lower --start-lr, or more --steps"
        )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plots.plot_lr_range(result.lrs, result.losses, result.smoothed, out / PLOT, suggestion=result.suggestion)
        run_files.write_json(out / JSON, summary(result, config, start_lr=start_lr, end_lr=end_lr, steps=steps))
    return result, out


def summary(result: RangeTestResult, config: TrainConfig, *, start_lr: float, end_lr: float, steps: int) -> dict:
    """lr_find.json: the suggestion, how the test ran, its curve and the config it ran on."""
    return {
        "suggested_lr": result.suggestion,
        "min_loss_lr": result.min_loss_lr,
        "diverged": result.diverged,
        "start_lr": start_lr,
        "end_lr": end_lr,
        "steps": steps,
        "steps_used": len(result.lrs),
        "lrs": [float(v) for v in result.lrs],
        "losses": [float(v) for v in result.losses],
        "smoothed": [float(v) for v in result.smoothed],
        "config": config.to_dict(),
    }


def format_result(result: RangeTestResult) -> str:
    """The one line ``gradloop lr-find`` prints."""
    ended = f"diverged at {result.lrs[-1]:.2g}" if result.diverged else f"reached {result.lrs[-1]:.2g}"
    return (
        f"gradloop: suggested lr {result.suggestion:.2g} (steepest fall of the smoothed loss; "
        f"lowest loss at {result.min_loss_lr:.2g}, {ended}, {len(result.lrs)} steps)"
    )
