"""The tutorial's figure: accuracy on top, loss below, train against validation."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history: Mapping[str, list[float]], path: Path) -> None:
    """Two panels sharing the epoch axis, as in the tutorial, saved as PNG."""
    fig, (acc_ax, loss_ax) = plt.subplots(2, sharex=True, figsize=(7, 6))
    for ax, name in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        for split in ("train", "val"):
            values = history.get(f"{split}_{name}")
            if values:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=f"{split}_{name}")
        ax.set_title(f"{name.capitalize()} values")
        ax.grid(alpha=0.3)
        ax.legend()
    loss_ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
