"""Read event files back the way a stock TensorBoard does: with its own EventAccumulator."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
from tensorboard.util import tensor_util


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of every summary the Scalars dashboard would list."""
    accumulator = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags = accumulator.PluginTagToContent("scalars")  # KeyError: nothing for the Scalars dashboard
    return {
        tag: [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in accumulator.Tensors(tag)]
        for tag in tags
    }


def read_hparams(log_dir: Path) -> tuple[dict, str]:
    """``({name: value}, group name)`` of the HParams summary in ``log_dir``, as the HParams dashboard reads it."""
    from google.protobuf import json_format
    from tensorboard.plugins.hparams import metadata

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    start = metadata.parse_session_start_info_plugin_data(content)
    return {name: json_format.MessageToDict(value) for name, value in start.hparams.items()}, start.group_name
