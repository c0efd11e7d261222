"""Which CPU kernels TensorFlow runs: oneDNN's, with NaNs left visible.

TensorFlow has two sets of CPU kernels, Eigen's and oneDNN's, and reads which to
run from ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported. Unset, it runs
oneDNN's only on CPUs with the features they were tuned for (AVX-VNNI, AVX-512
VNNI or BF16, AMX, some Arm Neoverse). On this project's 2-core AVX2 EPYC,
where TensorFlow picks Eigen, oneDNN trained the reference MLP about 20% faster
and cut a CNN epoch from 4.4-5.7 s to 2.7 s (README, Speed), so the CLI asks
for oneDNN unless the variable says otherwise.

One oneDNN kernel hides divergence: the MatMul or Conv2D fused with BiasAdd and
ReLU, which Grappler's remapper builds, turns NaN into 0. A layer whose weights
went NaN then leaves the loss finite, and neither the loss nor the NaN guard
(:class:`gradloop.stopping.StopOnNonFiniteLoss`) sees it. With the remapper off,
NaN propagates as on Eigen, and the unfused oneDNN kernels were no slower here
(medians 24,100 against 22,900 samples/s). So wherever oneDNN runs,
:func:`use_onednn` turns the remapper off, where TensorFlow chose oneDNN too.
"""

from __future__ import annotations

import os
import sys


KERNEL_NAMES = {True: "oneDNN", False: "Eigen"}  # by onednn_kernels()'s answer


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
