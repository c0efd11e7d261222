"""Config: defaults are the reference experiment, file < flags, every bad value refused."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradloop.app.config import RESUMABLE, TrainConfig, build_config, flag_name, load_yaml, resumed_config
from gradloop.data import parse_classes
from gradloop.errors import ConfigError


def test_defaults_are_the_reference_experiment():
    c = TrainConfig()
    assert (c.classes, c.hidden, c.epochs, c.batch_size, c.lr) == ((0, 1, 2), (512, 256, 128), 10, 32, 1e-4)
    assert c.val_fraction == pytest.approx(1 / 6)
    assert c.model == "mlp" and c.dataset is None


def test_every_field_describes_its_flag_and_what_its_default_means():
    for field in dataclasses.fields(TrainConfig):
        flag = field.metadata["flag"]
        assert flag.help and (field.default is not None or flag.unset), field.name
    resumable = ["--epochs", "--checkpoint-every", "--checkpoint-seconds", "--summary-every", "--image-cache"]
    assert [flag_name(key) for key in RESUMABLE] == resumable
    assert flag_name("jit_compile") == "--jit"


def test_flags_override_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nbatch-size: 64\nclasses: [3, 5]\nhidden: 64,32\n")
    config = build_config(load_yaml(path), epochs=7, batch_size=None)
    assert (config.epochs, config.batch_size, config.classes, config.hidden) == (7, 64, (3, 5), (64, 32))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0,1,2", (0, 1, 2)), ("2,0", (2, 0)), ("0-3", (0, 1, 2, 3)), ("all", tuple(range(10))), ([7, 1], (7, 1))],
)
def test_classes_parse(text, expected):
    assert parse_classes(text) == expected


@pytest.mark.parametrize("text", ["", "1", "0,0", "0,10", "-1,2", "a,b", "1.5,2", [1]])
def test_bad_classes_are_refused(text):
    with pytest.raises(ConfigError, match="class"):
        parse_classes(text)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", 0),
        ("epochs", -3),
        ("epochs", 2.5),
        ("epochs", True),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", -1e-3),
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("lr", "fast"),
        ("val_fraction", 1.0),
        ("val_fraction", -0.1),
        ("hidden", "512,,128"),
        ("hidden", "0"),
        ("hidden", "a"),
        ("model", "resnet"),
        ("steps_per_execution", 0),
        ("seed", -1),
        ("lr_schedule", "linear"),
        ("warmup_steps", -1),
        ("warmup_steps", 1.5),
        ("decay_steps", 0),
        ("decay_rate", 0.0),
        ("decay_rate", 1.5),
        ("decay_rate", "half"),
        ("clip_norm", 0),
        ("clip_norm", -1.0),
        ("clip_norm", float("nan")),
        ("clip_norm", float("inf")),
        ("accumulate_steps", 0),
        ("accumulate_steps", True),
        ("precision", "float16"),
        ("summary_every", 0),
    ],
)
def test_bad_values_are_refused_with_the_key_named(key, value):
    with pytest.raises(ConfigError, match=key):
        build_config(**{key: value})


def test_unknown_keys_and_bad_yaml_are_refused(tmp_path):
    unknown = tmp_path / "u.yaml"
    unknown.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'epoch'"):
        load_yaml(unknown)
    broken = tmp_path / "b.yaml"
    broken.write_text("epochs: [3\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(broken)
    listing = tmp_path / "l.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(listing)
    with pytest.raises(ConfigError, match="cannot read"):
        load_yaml(tmp_path / "missing.yaml")


# Values as YAML or JSON can spell them: every one gives a checked config or a ConfigError, nothing else.
_YAML_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["1e-3", "nan", "0-4", "all", "512,256", "mnist-sample", "-1", "", "9" * 5000]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(key=st.sampled_from(sorted(f.name for f in dataclasses.fields(TrainConfig))), value=_YAML_VALUES)
def test_any_value_of_any_key_is_a_config_or_a_config_error(key, value):
    try:
        config = build_config({key: value})
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
    else:
        assert isinstance(config, TrainConfig) and build_config(config.to_dict()) == config


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(text=st.text(max_size=80) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_any_config_file_is_values_or_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        values = load_yaml(path)
        build_config(values)
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_a_resume_may_change_only_when_to_stop_and_save():
    saved = TrainConfig(hidden=(32,), epochs=2, run_dir="old/place").to_dict()
    config = resumed_config(saved, {"checkpoint_seconds": 60}, run_dir="r", epochs=5, checkpoint_every=7, hidden="32")
    assert (config.epochs, config.checkpoint_every, config.checkpoint_seconds, config.hidden) == (5, 7, 60, (32,))
    assert config.run_dir == "r"  # where the run is now, not where it was made
    with pytest.raises(ConfigError, match="^--early-stop 3 differs from the run's 0; a resumed run keeps"):
        resumed_config(saved, run_dir="r", early_stop=3)
    with pytest.raises(ConfigError, match="^--jit True differs"):
        resumed_config(saved, {"jit_compile": True}, run_dir="r")
    cosine = TrainConfig(epochs=2, lr_schedule="cosine").to_dict()  # decays over its 2 epochs
    with pytest.raises(ConfigError, match="^--epochs 5 would change the run's cosine schedule"):
        resumed_config(cosine, run_dir="r", epochs=5)
    assert resumed_config({**cosine, "decay_steps": 100}, run_dir="r", epochs=5).epochs == 5
    multi_worker = TrainConfig(strategy="multi_worker").to_dict()  # gradloop launch repeats --strategy
    assert resumed_config(multi_worker, run_dir="r", strategy="multi_worker").strategy == "multi_worker"
    with pytest.raises(ConfigError, match="^--strategy multi_worker differs from the run's default"):
        resumed_config(saved, run_dir="r", strategy="multi_worker")


@pytest.mark.parametrize(
    "values",
    [
        {"checkpoint_every": -1},
        {"checkpoint_seconds": -1.0},
        {"checkpoint_seconds": float("inf")},
        {"early_stop": 1.5},
        {"deterministic": "yes"},
        {"early_stop": 2, "val_fraction": 0},
    ],
)
def test_checkpoint_and_stopping_values_are_checked(values):
    with pytest.raises(ConfigError):
        TrainConfig(**values)
