"""A model's own train_step under MirroredStrategy on 2 CPU replicas: gradloop.Trainer(model) against model.fit,
the models built in the strategy's scope from the same seed, on the same batches: the history within 1e-5
relative and the weights within rtol=1e-5, atol=1e-6, as in tests/test_custom_train_step.py.

Two logical CPU devices must be configured before TensorFlow initialises its devices, so the comparison runs
in a process of its own (the script below) and prints the histories and the largest weight differences."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
EXAMPLES = TESTS.parents[1] / "examples"  # the guide's GAN, as test_custom_train_step imports it

MIRRORED = """
import json, sys
sys.path[:0] = [{tests!r}, {examples!r}]
from gradloop.app import cpu
cpu.use_onednn()
import numpy as np, tensorflow as tf
cpu_device = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu_device, [tf.config.LogicalDeviceConfiguration()] * 2)
from gradloop import Trainer
from gradloop.loop.keras_steps import ModelStepTrainer
import test_custom_train_step as cases

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
build, data, validation = cases.CASES[{name!r}]

def fresh():
    with strategy.scope():
        model = build()
    model.built = True  # its sub-models are; under a strategy, fit's symbolic build would call the GAN's call()
    return model

def fitted(model, fit):
    history = fit(data(), validation_data=validation and validation(), epochs=2, verbose=0).history
    history.pop("train_time", None)
    return {{k: [float(v) for v in vs] for k, vs in history.items()}}, model.get_weights()

def first_line(exc):
    return str(exc).strip().splitlines()[0][:300]

# Each steps_per_execution: Keras' fit, then gradloop's; an InvalidArgumentError of either is reported, not raised.
out = {{"keras": {{}}, "gradloop": {{}}, "weight_diff": {{}}, "keras_error": {{}}, "gradloop_error": {{}}}}
for spe in (1, 32):
    keras_model = fresh()
    keras_model.steps_per_execution = spe  # as compile(steps_per_execution=spe) sets it
    try:
        out["keras"][spe], weights = fitted(keras_model, lambda *a, **k: keras_model.fit(*a, shuffle=False, **k))
    except tf.errors.InvalidArgumentError as exc:
        out["keras_error"][spe] = first_line(exc)
    model = fresh()
    trainer = Trainer(model, options=cases.options(spe))
    assert isinstance(trainer, ModelStepTrainer) and trainer.strategy.num_replicas_in_sync == 2
    try:
        out["gradloop"][spe], ours = fitted(model, trainer.fit)
    except tf.errors.InvalidArgumentError as exc:
        out["gradloop_error"][spe] = first_line(exc)
        continue
    if spe in out["keras"]:
        # np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6) holds where this is at most 1
        out["weight_diff"][spe] = max(
            float(np.max(np.abs(a - b) / (1e-6 + 1e-5 * np.abs(b)))) if a.size else 0.0
            for a, b in zip(ours, weights)
        )
print(json.dumps(out))
"""


@pytest.mark.parametrize("name", ["guide_gan", "own_train_and_test_step"])
def test_the_models_own_step_on_two_mirrored_replicas_computes_what_model_fit_computes(name):
    script = MIRRORED.format(tests=str(TESTS), examples=str(EXAMPLES), name=name)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Where Keras' fit trains, gradloop trains the same; where fit itself fails (a GAN's step, or a group of
    # steps on two logical CPUs: "You must feed a value for placeholder tensor ... cond/Placeholder"), gradloop
    # is not held to more.
    for spe, theirs in result["keras"].items():
        assert spe in result["gradloop"], (spe, result["gradloop_error"].get(spe))
        history = result["gradloop"][spe]
        assert set(history) == set(theirs)
        for key, values in theirs.items():
            assert history[key] == pytest.approx(values, rel=1e-5, abs=1e-7), (spe, key)
        assert result["weight_diff"][spe] <= 1.0, (spe, "weights differ beyond rtol=1e-5, atol=1e-6")
    if not result["keras"]:
        pytest.xfail(f"model.fit itself fails under MirroredStrategy on 2 logical CPUs: {result['keras_error']}")
