"""The config schema, YAML loading, --set overrides and the `gradfit config` commands.

Everything here is pure Python (config.py never imports jax), so the whole file runs in about a second.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pydantic
import pytest
import yaml
from conftest import CONFIGS
from typer.testing import CliRunner

from gradfit.cli.app import app
from gradfit.config.load import (
    GradfitConfig,
    describe_keys,
    parse_override,
    resolve_config,
    to_yaml,
    unused_keys,
)
from gradfit.errors import ConfigError, GradfitError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


# --------------------------------------------------------------------------------------------- helpers


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    """Write a dedented YAML config under tmp_path and return its path."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path, overrides=()) -> str:
    """The message of the ConfigError that resolving `path` with `overrides` must raise."""
    with pytest.raises(ConfigError) as info:
        resolve_config(path, list(overrides))
    return str(info.value)


def problem_line(message: str, key: str) -> str:
    """The one line of a multi-problem message that is about `key` (e.g. 'optimizer.learnin_rate')."""
    lines = [line for line in message.splitlines() if re.search(rf"(^|\s){re.escape(key)}:", line)]
    assert len(lines) == 1, f"expected exactly one problem about {key!r} in:\n{message}"
    return lines[0]


def flatten(tree: dict, prefix: tuple = ()) -> dict:
    """{"a": {"b": 1}} -> {("a", "b"): 1}"""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def invoke(*args: str):
    """Run the CLI in-process with a wide terminal, so Rich does not wrap table rows or messages."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


# --------------------------------------------------------------------------------------------- valid configs


def test_builtin_defaults_validate_and_match_the_schema():
    resolved = resolve_config()
    assert resolved.config == GradfitConfig()
    assert resolved.path is None
    assert resolved.config.optimizer.name == "adam"
    assert resolved.config.optimizer.learning_rate == pytest.approx(1e-3)
    assert resolved.config.train.epochs == 100 and resolved.config.train.steps is None
    assert resolved.source_of(("optimizer", "learning_rate")) == "default"


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    resolved = resolve_config(path)
    assert resolved.config.name == path.stem
    assert resolved.source_of(("name",)) == f"{path}:{resolved.file_lines[('name',)]}"


def test_shipped_configs_exist():
    assert {p.name for p in SHIPPED_CONFIGS} >= {"logreg.yaml", "mlp.yaml"}


def test_resolved_config_is_frozen():
    resolved = resolve_config(ROOT / "configs" / "mlp.yaml")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        resolved.config.seed = 1
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        resolved.config.optimizer.learning_rate = 1.0
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        resolved.config.optimizer.schedule.warmup_steps = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        resolved.config = GradfitConfig()
    assert resolved.config.seed == 0 and resolved.config.optimizer.learning_rate == pytest.approx(0.003)


def test_config_error_is_a_gradfit_error_with_exit_code_2():
    assert issubclass(ConfigError, GradfitError)
    assert ConfigError.exit_code == 2


# --------------------------------------------------------------------------------------------- bad keys and values


def test_unknown_key_names_line_and_suggests_the_close_match(tmp_path):
    path = write(
        tmp_path,
        """\
        seed: 1
        optimizer:
          name: adam
          learnin_rate: 0.01
        """,
    )
    message = config_error(path)
    assert message.startswith(f"{path}: 1 problem:")
    line = problem_line(message, "optimizer.learnin_rate")
    assert "line 4" in line
    assert "unknown key" in line
    assert "did you mean 'learning_rate'?" in line


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(tmp_path):
    path = write(tmp_path, "train:\n  zzzzzz: 3\n")
    line = problem_line(config_error(path), "train.zzzzzz")
    assert "line 2" in line
    assert "did you mean" not in line
    assert (
        "allowed keys here: batch_size, checkpoint_every, early_stopping, epochs, eval_every, keep_checkpoints, "
        "log_every, loggers, shuffle, steps, tol"
    ) in line


def test_unknown_section_suggests_the_section(tmp_path):
    path = write(tmp_path, "optimiser:\n  name: sgd\n")
    line = problem_line(config_error(path), "optimiser")
    assert "line 1" in line and "did you mean 'optimizer'?" in line


BAD_VALUES = [
    # (yaml text, key named in the message, line, fragments that must appear in that problem's line)
    pytest.param("train:\n  epochs: many\n", "train.epochs", 2, ["valid integer", "'many'"], id="epochs-not-int"),
    pytest.param("train:\n  epochs: 2.5\n", "train.epochs", 2, ["integer", "2.5"], id="epochs-fractional"),
    pytest.param("train:\n  epochs: true\n", "train.epochs", 2, ["True"], id="epochs-bool"),
    pytest.param("optimizer:\n  learning_rate: fast\n", "optimizer.learning_rate", 2, ["'fast'"], id="lr-not-float"),
    pytest.param(
        "optimizer:\n  learning_rate: -0.1\n",
        "optimizer.learning_rate",
        2,
        ["greater than 0", "-0.1"],
        id="lr-negative",
    ),
    pytest.param(
        "optimizer:\n  learning_rate: 0\n", "optimizer.learning_rate", 2, ["greater than 0", "(got 0)"], id="lr-zero"
    ),
    pytest.param(
        "train:\n  batch_size: 0\n", "train.batch_size", 2, ["greater than or equal to 1", "(got 0)"], id="batch-size-0"
    ),
    pytest.param(
        "model:\n  kind: mlp\n  hidden: []\n", "model.hidden", 3, ["at least 1 item", "[]"], id="hidden-empty"
    ),
    pytest.param(
        "model:\n  kind: mlp\n  hidden: [0, 4]\n",
        "model.hidden.0",
        3,
        ["greater than or equal to 1", "(got 0)"],
        id="hidden-zero-flow",
    ),
    pytest.param(
        "model:\n  kind: mlp\n  hidden:\n    - 8\n    - -2\n",
        "model.hidden.1",
        5,
        ["greater than or equal to 1", "(got -2)"],
        id="hidden-negative-block",
    ),
    pytest.param(
        "data:\n  val_fraction: 0.5\n  test_fraction: 0.5\n",
        "data.val_fraction",
        2,
        ["val_fraction + test_fraction = 1", "below 1"],
        id="fractions-sum-1",
    ),
    pytest.param(
        "data:\n  val_fraction: 0.7\n  test_fraction: 0.6\n",
        "data.val_fraction",
        2,
        ["val_fraction + test_fraction = 1.3"],
        id="fractions-sum-over-1",
    ),
    pytest.param(
        "data:\n  val_fraction: 1.5\n", "data.val_fraction", 2, ["less than 1", "1.5"], id="val-fraction-over-1"
    ),
    pytest.param("seed: -1\n", "seed", 1, ["greater than or equal to 0", "-1"], id="seed-negative"),
    pytest.param("name: 'my run'\n", "name", 1, ["use letters, digits", "'my run'"], id="name-with-space"),
    pytest.param(
        "optimizer:\n  name: adma\n",
        "optimizer.name",
        2,
        ["got 'adma'", "expected one of sgd, momentum, nesterov, adam", "did you mean 'adam'?"],
        id="literal-typo",
    ),
    pytest.param(
        "model:\n  kind: mlp\n  activation: rleu\n",
        "model.activation",
        3,
        ["did you mean 'relu'?"],
        id="activation-typo",
    ),
    pytest.param(
        "runtime:\n  device: cuda\n",
        "runtime.device",
        2,
        ["got 'cuda'", "expected one of auto, cpu, gpu"],
        id="literal-no-close-match",
    ),
    # data.path is absent from the file, so the problem points at its section's line
    pytest.param("data:\n  source: file\n", "data.path", 1, ["data.path is not set"], id="file-without-path"),
    pytest.param(
        "optimizer:\n  schedule:\n    name: exponential\n    final_fraction: 0\n",
        "optimizer.schedule.final_fraction",
        4,
        ["needs final_fraction > 0"],
        id="exponential-to-zero",
    ),
    pytest.param("optimizer: 3\n", "optimizer", 1, ["dictionary", "(got 3)"], id="section-is-a-scalar"),
]


@pytest.mark.parametrize("text, key, line_no, fragments", BAD_VALUES)
def test_bad_value_is_reported_with_line_key_and_value(tmp_path, text, key, line_no, fragments):
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}: 1 problem:")
    line = problem_line(message, key)
    assert re.search(rf"\bline {line_no}\b", line), line
    for fragment in fragments:
        assert fragment in line


def test_all_problems_in_a_file_are_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        """\
        seed: -1
        model:
          kind: mlp
          hidden: [0, 4]
        optimizer:
          learnin_rate: 0.1
        train:
          epochs: many
        runtime:
          precision: float16
        """,
    )
    message = config_error(path)
    assert message.startswith(f"{path}: 5 problems:")
    assert "line 1" in problem_line(message, "seed")
    assert "line 4" in problem_line(message, "model.hidden.0")
    assert "did you mean 'learning_rate'?" in problem_line(message, "optimizer.learnin_rate")
    assert "'many'" in problem_line(message, "train.epochs")
    assert "got 'float16'; expected one of float32, float64" in problem_line(message, "runtime.precision")


def test_several_unused_keys_in_one_section_are_all_reported(tmp_path):
    path = write(
        tmp_path,
        """\
        optimizer:
          name: adam
          momentum: 0.5
          decay: 0.9
        """,
    )
    message = config_error(path)
    assert message.startswith(f"{path}: 2 problems:")
    assert "line 3" in problem_line(message, "optimizer.momentum")
    assert "line 4" in problem_line(message, "optimizer.decay")


# --------------------------------------------------------------------------------------------- variant-specific keys


NOT_APPLICABLE = [
    # (yaml text, key, line, fragment naming the chosen variant, fragment naming the variants it applies to)
    pytest.param(
        "optimizer:\n  name: adam\n  momentum: 0.5\n",
        "optimizer.momentum",
        3,
        "when name is 'adam'",
        "momentum, nesterov",
        id="momentum-with-adam",
    ),
    pytest.param(
        "optimizer:\n  name: sgd\n  b1: 0.8\n", "optimizer.b1", 3, "when name is 'sgd'", "adam, adamw", id="b1-with-sgd"
    ),
    pytest.param(
        "model:\n  kind: logistic\n  hidden: [8]\n",
        "model.hidden",
        3,
        "when kind is 'logistic'",
        "mlp",
        id="hidden-with-logistic",
    ),
    pytest.param(
        "model:\n  hidden: [8]\n",
        "model.hidden",
        2,
        "when kind is 'logistic'",
        "mlp",
        id="hidden-with-default-logistic",
    ),
    pytest.param(
        "optimizer:\n  name: lbfgs\n  learning_rate: 0.1\n",
        "optimizer.learning_rate",
        3,
        "when name is 'lbfgs'",
        "sgd",
        id="learning-rate-with-lbfgs",
    ),
    pytest.param(
        "optimizer:\n  name: lbfgs\n  schedule:\n    name: cosine\n",
        "optimizer.schedule",
        3,
        "when name is 'lbfgs'",
        "adam",
        id="schedule-with-lbfgs",
    ),
    pytest.param(
        "optimizer:\n  name: adam\n  memory_size: 5\n",
        "optimizer.memory_size",
        3,
        "when name is 'adam'",
        "lbfgs",
        id="memory-size-with-adam",
    ),
    pytest.param(
        "optimizer:\n  schedule:\n    name: cosine\n    warmup_steps: 10\n",
        "optimizer.schedule.warmup_steps",
        4,
        "when name is 'cosine'",
        "warmup_cosine",
        id="warmup-with-cosine",
    ),
    pytest.param(
        "optimizer:\n  schedule:\n    final_fraction: 0.1\n",
        "optimizer.schedule.final_fraction",
        3,
        "when name is 'constant'",
        "cosine, exponential, warmup_cosine",
        id="final-fraction-with-constant",
    ),
    pytest.param(
        "data:\n  source: breast_cancer\n  synthetic:\n    n_samples: 100\n",
        "data.synthetic",
        3,
        "when source is 'breast_cancer'",
        "synthetic",
        id="synthetic-with-breast-cancer",
    ),
    pytest.param(
        "data:\n  source: digits\n  path: x.csv\n",
        "data.path",
        3,
        "when source is 'digits'",
        "file",
        id="path-with-digits",
    ),
]


@pytest.mark.parametrize("text, key, line_no, chosen, applies_to", NOT_APPLICABLE)
def test_keys_of_another_variant_are_rejected(tmp_path, text, key, line_no, chosen, applies_to):
    path = write(tmp_path, text)
    line = problem_line(config_error(path), key)
    assert re.search(rf"\bline {line_no}\b", line), line
    assert f"{key}: not used {chosen}" in line
    assert applies_to in line
    assert "remove it" in line


def test_batch_size_with_lbfgs_is_rejected(tmp_path):
    path = write(
        tmp_path,
        """\
        optimizer:
          name: lbfgs
        train:
          batch_size: 32
        """,
    )
    line = problem_line(config_error(path), "train.batch_size")
    assert "line 4" in line
    assert "lbfgs is a full-batch method" in line and "train.batch_size=null" in line


def test_the_same_keys_are_accepted_by_the_variant_that_uses_them(tmp_path):
    path = write(
        tmp_path,
        """\
        model:
          kind: mlp
          hidden: [8]
        optimizer:
          name: nesterov
          momentum: 0.5
          schedule:
            name: warmup_cosine
            warmup_steps: 10
        data:
          source: synthetic
          synthetic:
            n_samples: 100
        """,
    )
    config = resolve_config(path).config
    assert config.model.hidden == [8]
    assert config.optimizer.momentum == 0.5
    assert config.optimizer.schedule.warmup_steps == 10
    assert config.data.synthetic.n_samples == 100


# --------------------------------------------------------------------------------------------- epochs vs steps


def test_epochs_and_steps_together_are_rejected(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n  steps: 50\n")
    line = problem_line(config_error(path), "train.steps")
    assert "line 3" in line
    assert "set either train.epochs or train.steps, not both" in line


@pytest.mark.parametrize(
    "text, epochs, steps",
    [
        ("seed: 0\n", 100, None),
        ("train:\n  log_every: 5\n", 100, None),
        ("train:\n  epochs: null\n  steps: null\n", 100, None),
        ("train:\n  steps: 50\n", None, 50),
        ("train:\n  epochs: 7\n", 7, None),
    ],
)
def test_epochs_default_to_100_only_when_steps_is_unset(tmp_path, text, epochs, steps):
    train = resolve_config(write(tmp_path, text)).config.train
    assert (train.epochs, train.steps) == (epochs, steps)


def test_switching_a_file_from_epochs_to_steps_via_set():
    mlp = ROOT / "configs" / "mlp.yaml"  # the file sets train.epochs
    for overrides in (["train.steps=10"], ["train.epochs=null", "train.steps=10"]):
        train = resolve_config(mlp, overrides).config.train
        assert (train.epochs, train.steps) == (None, 10)
    logreg = ROOT / "configs" / "logreg.yaml"  # the file sets train.steps
    train = resolve_config(logreg, ["train.epochs=5"]).config.train
    assert (train.epochs, train.steps) == (5, None)
    message = config_error(mlp, ["train.steps=10", "train.epochs=3"])  # both on the command line: ambiguous
    assert "--set" in problem_line(message, "train.steps")


# --------------------------------------------------------------------------------------------- YAML problems


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\nmodel:\n  hidden: [8, 4\nruntime:\n  device: cpu\n")
    message = config_error(path)
    assert re.match(rf"{re.escape(str(path))}:\d+: invalid YAML: ", message), message
    line = int(re.match(rf"{re.escape(str(path))}:(\d+):", message).group(1))
    assert 3 <= line <= 4  # PyYAML notices the missing ']' at the next key


def test_tab_indentation_gets_a_hint(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("optimizer:\n\tname: sgd\n", encoding="utf-8")
    message = config_error(path)
    assert message.startswith(f"{path}:2: invalid YAML")
    assert "tabs" in message and "use spaces" in message


@pytest.mark.parametrize(
    "text, key, line_no",
    [
        ("seed: 1\nname: a\nseed: 2\n", "seed", 3),
        ("optimizer:\n  name: adam\n  name: sgd\n", "name", 3),
    ],
)
def test_duplicate_keys_are_an_error(tmp_path, text, key, line_no):
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}:{line_no}: invalid YAML")
    assert f"duplicate key '{key}'" in message


def test_python_tags_are_rejected_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    message = config_error(path)
    assert not marker.exists()
    assert message.startswith(f"{path}:1: invalid YAML")
    assert "python/object/apply:os.system" in message
    assert "remove the !! tag" in message


@pytest.mark.parametrize("text, kind", [("- seed\n- name\n", "list"), ("just words\n", "str"), ("3\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}: a config must be a mapping")
    assert message.endswith(f"got a {kind}")


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n"])
def test_an_empty_file_means_the_defaults(tmp_path, text):
    resolved = resolve_config(write(tmp_path, text))
    assert resolved.config == GradfitConfig()
    assert resolved.source_of(("seed",)) == "default"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    assert config_error(path) == f"{path}: config file not found"


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    message = config_error(path)
    assert message.startswith(f"{path}: ")
    assert "utf-8" in message.lower()


def test_a_directory_is_not_a_config(tmp_path):
    message = config_error(tmp_path)
    assert message.startswith(f"{tmp_path}: config file is a directory, not a regular file")


# --------------------------------------------------------------------------------------------- --set overrides


def test_precedence_defaults_file_set(tmp_path):
    path = write(
        tmp_path,
        """\
        seed: 3
        optimizer:
          name: sgd
          learning_rate: 0.01
        """,
    )
    resolved = resolve_config(path, ["optimizer.learning_rate=0.5"])
    config = resolved.config
    assert (config.seed, config.optimizer.name, config.optimizer.learning_rate) == (3, "sgd", 0.5)
    assert config.train.log_every == 10
    assert resolved.source_of(("optimizer", "learning_rate")) == "--set"
    assert resolved.source_of(("optimizer", "name")) == f"{path}:3"
    assert resolved.source_of(("seed",)) == f"{path}:1"
    assert resolved.source_of(("train", "log_every")) == "default"
    assert resolved.source_of(("optimizer", "clip_norm")) == "default"


def test_set_on_a_section_covers_its_keys():
    resolved = resolve_config(ROOT / "configs" / "mlp.yaml", ["model.hidden=[256, 256]"])
    assert resolved.config.model.hidden == [256, 256]
    assert resolved.source_of(("model", "hidden")) == "--set"
    assert resolved.source_of(("model", "hidden", 0)) == "--set"
    assert resolved.source_of(("model", "kind")) == f"{ROOT / 'configs' / 'mlp.yaml'}:13"
    assert resolved.source_of(("model", "init")) == "default"


def test_later_set_wins():
    assert resolve_config(None, ["seed=1", "seed=2"]).config.seed == 2


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("model.hidden=[256, 256]", ("model", "hidden"), [256, 256]),
        ("model.hidden=[256,256]", ("model", "hidden"), [256, 256]),
        ("optimizer.clip_norm=null", ("optimizer", "clip_norm"), None),
        ("optimizer.learning_rate=3e-3", ("optimizer", "learning_rate"), 0.003),
        ("optimizer.learning_rate=1e-3", ("optimizer", "learning_rate"), 0.001),  # PyYAML: the string '1e-3'
        ("optimizer.clip_norm=1e-3", ("optimizer", "clip_norm"), 0.001),
        ("data.standardize=false", ("data", "standardize"), False),
        ("name=1e-3", ("name",), "1e-3"),  # a str field keeps the text
        (" seed = 7", ("seed",), 7),
    ],
)
def test_set_values_are_parsed_as_yaml(override, key, expected):
    config = resolve_config(None, ["model.kind=mlp", "optimizer.name=sgd", override]).config
    value = config
    for part in key:
        value = getattr(value, part)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_override_returns_key_path_and_yaml_value():
    assert parse_override("model.hidden=[256, 256]") == (("model", "hidden"), [256, 256])
    assert parse_override("optimizer.clip_norm=null") == (("optimizer", "clip_norm"), None)
    assert parse_override("name=a=b") == (("name",), "a=b")


@pytest.mark.parametrize("override", ["noequals", "=3", "a..b=1", ".seed=1", "seed.=1", "model.hidden.0=5"])
def test_malformed_overrides(override):
    message = config_error(None, [override])
    assert message == f"--set {override!r}: expected KEY.PATH=VALUE, e.g. --set optimizer.learning_rate=3e-3"


@pytest.mark.parametrize("file_text", [None, "seed: 3\n"], ids=["defaults", "file-sets-seed"])
@pytest.mark.parametrize(
    "override, scalar", [("seed.x=1", "seed"), ("optimizer.learning_rate.x=1", "optimizer.learning_rate")]
)
def test_override_into_a_scalar(tmp_path, file_text, override, scalar):
    path = write(tmp_path, file_text) if file_text is not None else None
    key = override.partition("=")[0]
    assert config_error(path, [override]) == f"--set {key}: '{scalar}' is a value, not a section"


def test_override_with_invalid_yaml_value():
    message = config_error(None, ["model.hidden=[1, 2"])
    assert message.startswith("--set model.hidden")
    assert "invalid YAML" in message


@pytest.mark.parametrize(
    "override, key, fragment",
    [
        ("optimizer.learnin_rate=0.1", "optimizer.learnin_rate", "did you mean 'learning_rate'?"),
        ("optimiser.name=sgd", "optimiser", "did you mean 'optimizer'?"),
        ("optimizer.name=adma", "optimizer.name", "did you mean 'adam'?"),
        ("train.epochs=many", "train.epochs", "'many'"),
        ("optimizer.momentum=0.5", "optimizer.momentum", "not used when name is 'adam'"),
    ],
)
def test_a_bad_set_is_blamed_on_set_not_on_the_file(tmp_path, override, key, fragment):
    path = write(tmp_path, "seed: 1\noptimizer:\n  name: adam\n  learning_rate: 0.01\ntrain:\n  epochs: 3\n")
    message = config_error(path, [override])
    assert message.startswith(f"{path}: 1 problem:")
    line = problem_line(message, key)
    assert line.strip().startswith("--set:"), line
    assert "line " not in line
    assert fragment in line


# --------------------------------------------------------------------------------------------- data.path


def test_relative_data_path_in_a_file_is_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "project" / "configs").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    path = write(tmp_path / "project" / "configs", "data:\n  source: file\n  path: ../data/train.csv\n")
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = resolve_config(path).config
    assert config.data.path == str((tmp_path / "project" / "data" / "train.csv").resolve())
    # the same when the config file itself is named relative to the working directory
    config = resolve_config(os.path.join("..", "project", "configs", "config.yaml")).config
    assert config.data.path == str((tmp_path / "project" / "data" / "train.csv").resolve())


def test_absolute_data_path_is_kept(tmp_path):
    target = (tmp_path / "abs" / "train.csv").resolve()
    path = write(tmp_path, f"data:\n  source: file\n  path: {target}\n")
    assert resolve_config(path).config.data.path == str(target)


@pytest.mark.parametrize(
    "overrides",
    [
        ["data.source=file", "data.path=rel/train.csv"],
        ["data.path=rel/train.csv", "data.source=file"],
        ["data={source: file, path: rel/train.csv}"],
    ],
)
def test_relative_data_path_from_set_is_relative_to_the_working_directory(tmp_path, monkeypatch, overrides):
    (tmp_path / "configs").mkdir()
    (tmp_path / "cwd").mkdir()
    path = write(tmp_path / "configs", "data:\n  source: file\n  path: from_file.csv\n")
    monkeypatch.chdir(tmp_path / "cwd")
    expected = str((tmp_path / "cwd" / "rel" / "train.csv").resolve())
    assert resolve_config(path, overrides).config.data.path == expected
    assert resolve_config(None, overrides).config.data.path == expected


# --------------------------------------------------------------------------------------------- introspection


def test_describe_keys_lists_every_leaf_key_with_a_description():
    infos = describe_keys()
    keys = [info.key for info in infos]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(flatten(GradfitConfig().model_dump()))
    assert ("optimizer", "schedule", "warmup_steps") in keys
    assert ("data", "synthetic", "n_samples") in keys
    for info in infos:
        assert info.description.strip(), f"{'.'.join(info.key)} has no description"
    by_key = {info.key: info for info in infos}
    assert "lbfgs" in by_key[("optimizer", "name")].choices
    assert by_key[("optimizer", "learning_rate")].default == pytest.approx(1e-3)
    assert by_key[("optimizer", "learning_rate")].choices is None


def test_unused_keys_follow_the_chosen_variants():
    adam = resolve_config(None, ["optimizer.name=adam"]).config
    unused = unused_keys(adam)
    assert ("optimizer", "momentum") in unused
    assert ("optimizer", "memory_size") in unused
    assert ("optimizer", "b1") not in unused
    assert ("optimizer", "learning_rate") not in unused
    assert ("model", "hidden") in unused  # default model is logistic

    lbfgs = resolve_config(None, ["optimizer.name=lbfgs", "model.kind=mlp"]).config
    unused = unused_keys(lbfgs)
    assert {("optimizer", "learning_rate"), ("optimizer", "schedule"), ("optimizer", "b1")} <= unused
    assert ("optimizer", "memory_size") not in unused
    assert ("model", "hidden") not in unused


ROUND_TRIP_CASES = [
    pytest.param(None, [], id="defaults"),
    *[pytest.param(p, [], id=p.name) for p in SHIPPED_CONFIGS],
    pytest.param(
        ROOT / "configs" / "mlp.yaml",
        [
            "optimizer.name=rmsprop",
            "optimizer.clip_norm=1e-3",
            "optimizer.schedule={name: exponential, final_fraction: 0.5}",
        ],
        id="mlp-rmsprop",
    ),
]


@pytest.mark.parametrize("source, overrides", ROUND_TRIP_CASES)
def test_to_yaml_round_trips(tmp_path, source, overrides):
    config = resolve_config(source, overrides).config
    text = to_yaml(config, header="# resolved by gradfit\n")
    assert text.startswith("# resolved by gradfit\n")
    path = tmp_path / "resolved.yaml"
    path.write_text(text, encoding="utf-8")
    assert resolve_config(path).config == config


# --------------------------------------------------------------------------------------------- CLI


def test_cli_config_show_marks_set_values():
    result = invoke("config", "show", str(ROOT / "configs" / "mlp.yaml"), "--set", "model.hidden=[256,256]")
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "model.hidden" in line)
    assert "[256, 256]" in row and "--set" in row
    learning_rate_row = next(line for line in result.output.splitlines() if "optimizer.learning_rate" in line)
    assert "0.003" in learning_rate_row and "mlp.yaml:20" in learning_rate_row
    assert "optimizer.momentum" not in result.output  # not used by adam, so hidden


def test_cli_config_show_yaml_loads_back():
    result = invoke("config", "show", str(ROOT / "configs" / "mlp.yaml"), "--yaml", "--set", "seed=5")
    assert result.exit_code == 0, result.output
    loaded = yaml.safe_load(result.output)
    assert loaded["name"] == "mlp"
    assert loaded["seed"] == 5
    assert loaded["model"]["hidden"] == [128, 64]
    assert loaded["optimizer"]["learning_rate"] == pytest.approx(0.003)
    assert loaded["optimizer"]["schedule"]["name"] == "warmup_cosine"


def test_cli_config_show_defaults_yaml():
    result = invoke("config", "show", "--yaml")
    assert result.exit_code == 0, result.output
    loaded = yaml.safe_load(result.output)
    assert loaded["optimizer"]["name"] == "adam"
    assert loaded["train"]["epochs"] == 100


def test_cli_config_validate_all_good():
    result = invoke("config", "validate", *map(str, SHIPPED_CONFIGS))
    assert result.exit_code == 0, result.output
    for path in SHIPPED_CONFIGS:
        assert f"ok {path}" in result.output


def test_cli_config_validate_names_the_bad_file(tmp_path):
    good = ROOT / "configs" / "logreg.yaml"
    bad = write(tmp_path, "optimizer:\n  learnin_rate: 0.1\n", name="bad.yaml")
    result = invoke("config", "validate", str(good), str(bad))
    assert result.exit_code == 2
    assert f"ok {good}" in result.output
    assert f"invalid {bad}: 1 problem" in result.output
    assert "did you mean 'learning_rate'?" in result.output
    assert f"ok {bad}" not in result.output


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            "optimizer:\n  learnin_rate: 0.1\n",
            "line 2: optimizer.learnin_rate: unknown key; did you mean 'learning_rate'?",
        ),
        ("seed: 1\nseed: 2\n", "invalid YAML: duplicate key 'seed'"),
        ("- a\n", "a config must be a mapping"),
    ],
)
def test_cli_bad_config_is_a_clean_error(tmp_path, text, fragment):
    bad = write(tmp_path, text)
    result = invoke("config", "show", str(bad))
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # typer.Exit, not an escaped exception
    assert result.output.startswith(f"error: {bad}")
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_cli_train_rejects_a_bad_config_before_training(tmp_path):
    bad = write(tmp_path, "optimizer:\n  name: lbfgs\ntrain:\n  batch_size: 8\n")
    result = invoke("train", str(bad), "--out-dir", str(tmp_path / "runs"))
    assert result.exit_code == 2
    assert "lbfgs is a full-batch method" in result.output
    assert not (tmp_path / "runs").exists()


def test_cli_bad_set_in_a_real_process_has_no_traceback(tmp_path):
    """In a real process (not CliRunner) the user sees one red message on stderr and exit code 2."""
    result = subprocess.run(
        [sys.executable, "-m", "gradfit", "config", "show", "--set", "optimizer.learnin_rate=0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "error: <defaults>: 1 problem" in result.stderr
    assert "--set: optimizer.learnin_rate: unknown key; did you mean 'learning_rate'?" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["logreg", "mlp"])
def test_built_in_examples_equal_the_shipped_configs(name):
    """compare-grads, trace and bench use EXAMPLES when given no file: they must be the shipped configs."""
    from gradfit.config.load import EXAMPLES

    assert resolve_config(None, EXAMPLES[name]).config == resolve_config(CONFIGS / f"{name}.yaml").config
