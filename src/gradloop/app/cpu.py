"""Which CPU kernels TensorFlow runs: oneDNN's, with NaNs left visible; and importing it quietly.

TensorFlow has two sets of CPU kernels, Eigen's and oneDNN's, and reads which to
run from ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported. Unset, it runs
oneDNN's only on CPUs with the features they were tuned for (AVX-VNNI, AVX-512
VNNI or BF16, AMX, some Arm Neoverse). The CLI asks for oneDNN unless the
variable says otherwise, because gradloop's models trained faster on its kernels
also on a CPU where TensorFlow picks Eigen (docs/performance.md).

One oneDNN kernel hides divergence: the MatMul or Conv2D fused with BiasAdd and
ReLU, which Grappler's remapper builds, turns NaN into 0. A layer whose weights
went NaN then leaves the loss finite, and neither the loss nor the NaN guard
(:class:`gradloop.loop.callbacks.nan_guard.StopOnNonFiniteLoss`) sees it. With the remapper off,
NaN propagates as on Eigen, and the unfused oneDNN kernels measured as fast as
the fused ones (docs/performance.md). So wherever oneDNN runs, :func:`use_onednn`
turns the remapper off, where TensorFlow chose oneDNN too.

:func:`import_tensorflow` is how the CLI imports TensorFlow: with those kernels,
and with the notices TensorFlow prints as it starts kept off stderr.
"""

from __future__ import annotations

import os
import sys
import tempfile

KERNEL_NAMES = {True: "oneDNN", False: "Eigen"}  # by onednn_kernels()'s answer

# Written by TensorFlow straight to file descriptor 2 while it is imported, before its logging starts, so
# TF_CPP_MIN_LOG_LEVEL cannot hold them back: the notice that its oneDNN kernels are on (its default on
# CPUs with AVX-VNNI, AVX-512 VNNI or BF16, or AMX, and on some Arm Neoverse; the CLI's, use_onednn).
_TF_IMPORT_NOTICES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "] oneDNN custom operations are on.",
)


def import_tensorflow() -> None:
    """Import TensorFlow, running its oneDNN kernels with NaNs kept visible unless ``TF_ENABLE_ONEDNN_OPTS``
    says otherwise (:func:`use_onednn`), with its start-up notices kept off stderr, where the CLI's errors
    are one line; whatever else it writes meanwhile is passed on. The CLI calls it before the commands'
    lazy imports. Without a stderr, or a temporary file to catch it in, TensorFlow is imported as it is."""
    if "tensorflow" in sys.modules:
        use_onednn()
        return
    try:
        sys.stderr.flush()
        captured = tempfile.TemporaryFile()
        stderr = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no sys.stderr, fd 2 closed, no temporary folder
        use_onednn()
        return
    with captured:
        try:
            os.dup2(captured.fileno(), 2)
            use_onednn()
        finally:
            sys.stderr.flush()  # a line Python wrote meanwhile goes into the capture, in its place
            os.dup2(stderr, 2)
            os.close(stderr)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not any(notice in line for notice in _TF_IMPORT_NOTICES):
                    sys.stderr.write(line)
            sys.stderr.flush()


def use_onednn() -> bool | None:
    """Run TensorFlow on its oneDNN kernels unless ``TF_ENABLE_ONEDNN_OPTS`` is set, with NaNs
    kept visible through them; return whether they are on (None where TensorFlow cannot say).

    Call it before TensorFlow is imported, as the CLI does; after, the kernels are whatever
    TensorFlow chose, and only the remapper is turned off if they are oneDNN's. It sets a
    process-wide Grappler option, so it is for programs, not for libraries to call. Where there is
    a GPU it stays on, for the GPU's fusions (whether they keep NaN is untested: no GPU here)."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    import tensorflow as tf

    on = onednn_kernels()
    if on is not False and not tf.config.list_physical_devices("GPU"):  # unknown counts as on
        tf.config.optimizer.set_experimental_options({"remapping": False})
    return on


def onednn_kernels() -> bool | None:
    """Whether TensorFlow runs its oneDNN CPU kernels in this process (None where it cannot say).

    They change results in the last bits, so run.json records them: a resume is bit-identical
    to an unstopped run only on the same kernels."""
    try:
        from tensorflow.python.util import _pywrap_util_port  # TensorFlow's own answer; not public API
    except ImportError:
        return None
    is_enabled = getattr(_pywrap_util_port, "IsMklEnabled", None)
    return None if is_enabled is None else bool(is_enabled())
