"""Where a training run stands, besides its variables: what a resume continues from.

:class:`gradloop.loop.trainer.Trainer` keeps one and moves it on; :mod:`gradloop.loop.checkpoint`
saves it with the variables and rebuilds it on restore.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LoopState:
    """Where training stands, besides the variables: what a resume continues from.

    ``iterator`` yields the rest of epoch ``epoch`` after its first ``step``
    batches. Between epochs it is the next epoch's fresh iterator, whose
    shuffle order is already drawn, so saving it saves that order too.
    ``history`` holds the finished epochs' logs (Keras names); ``seconds`` the
    training time already spent in the epoch.
    """

    epoch: int = 0
    step: int = 0
    iterator: Any = None
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0


def validates(epoch: int, validation_freq: int | Sequence[int]) -> bool:
    """Whether 0-based ``epoch`` is validated: Keras' rule, on 1-based epochs."""
    if isinstance(validation_freq, int):
        return (epoch + 1) % validation_freq == 0
    return epoch + 1 in validation_freq
