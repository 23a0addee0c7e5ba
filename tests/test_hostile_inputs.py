"""A catalogue of broken and hostile inputs, each walked through the real ``gradfit train`` command.

Every case must end the same way: exit code 2, a message on stderr that names the problem (the file and line,
the key, the column, a "did you mean"), no traceback, no run directory, and nothing the input tried to do
(run a shell command, write outside the output folder) done. Nothing here should reach training: configs are
tiny and each case is rejected while the config or the data is read, or before compilation.

The table maps a case id to a ``Case``: the text of config.yaml, the stderr fragments expected, data files to
write next to it (referenced relatively, as ``data: {source: file, path: data.csv}``), extra arguments, and globs
that must match nothing afterwards. ``{tmp}`` in the config, the args and the fragments stands for tmp_path.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Union

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import has_gpu
from gradfit.cli import app

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # keep Rich from wrapping messages mid-sentence
MAX_MESSAGE = 4000  # characters: an error message is read by a person, whatever the input held

TINY = "train: {steps: 2}\n"
VALID_ROWS = "".join(f"{i},{i % 3},{i % 2}\n" for i in range(20))  # 20 rows, two classes
VALID_CSV = "a,b,target\n" + VALID_ROWS


def file_config(path: str = "data.csv", train: str = TINY) -> str:
    return f"data: {{source: file, path: {path}}}\n{train}"


def npz(**arrays) -> Callable[[Path], None]:
    """A file writer for the table: np.savez (object arrays are pickled, as NumPy does by default)."""
    return lambda path: np.savez(path, **arrays)


def yaml_bomb(levels: int) -> str:
    """A 'billion laughs' list: `levels` anchors, each nine aliases of the previous one (9**levels leaves)."""
    text = "[&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"
    for i in range(1, levels):
        text += f", &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]"
    return text + "]"


FileContent = Union[str, bytes, Callable[[Path], None]]


@dataclasses.dataclass(frozen=True)
class Case:
    config: str | bytes | None  # text of config.yaml; None: do not write one
    expect: tuple[str, ...]  # fragments that must all appear in stderr
    files: dict[str, FileContent] = dataclasses.field(default_factory=dict)
    args: tuple[str, ...] = ()
    config_arg: str = "config.yaml"  # what is passed to `gradfit train`, relative to tmp_path
    absent: tuple[str, ...] = ()  # globs (relative to tmp_path) that must match nothing afterwards
    needs_no_gpu: bool = False


CASES = {
    # ---------------------------------------------------------------------------------------- YAML itself
    "yaml-syntax-error": Case(
        "seed: 0\noptimizer: {name: adam\ntrain: {steps: 2}\n",
        ("config.yaml:3", "invalid YAML")),
    "yaml-tab-indentation": Case(
        "train:\n\tsteps: 2\n",
        ("config.yaml:2", "tabs")),
    "yaml-duplicate-key": Case(
        "seed: 1\ntrain: {steps: 2}\nseed: 2\n",
        ("config.yaml:3", "duplicate key 'seed'")),
    "yaml-two-documents": Case(
        "seed: 1\n---\nseed: 2\n",
        ("config.yaml:2", "invalid YAML")),
    "yaml-top-level-is-a-list": Case(
        "- seed\n- 1\n",
        ("config.yaml", "must be a mapping", "list")),
    "yaml-python-tag-runs-nothing": Case(
        'name: !!python/object/apply:os.system ["touch {tmp}/hacked"]\n' + TINY,
        ("config.yaml:1", "remove the !! tag"), absent=("hacked",)),
    "yaml-python-tag-in-set-runs-nothing": Case(
        TINY, ("--set name", "remove the !! tag"),
        args=("--set", 'name=!!python/object/apply:os.system ["touch {tmp}/hacked"]'), absent=("hacked",)),
    "yaml-unhashable-key": Case(  # a complex key: PyYAML's own error, not a TypeError in the duplicate check
        "? [a, b]\n: 1\n" + TINY,
        ("config.yaml:1", "unhashable")),
    "yaml-recursive-alias": Case(  # an alias inside its own anchor: must not recurse forever
        "seed: &loop [*loop]\n" + TINY,
        ("line 1: seed",)),
    "yaml-billion-laughs": Case(  # 9**6 leaves from ~10 lines: the message must stay short
        "model: {kind: mlp, hidden: " + yaml_bomb(6) + "}\n" + TINY,
        ("line 1: model.hidden",)),
    "yaml-deep-nesting": Case(
        "seed: " + "[" * 3000 + "]" * 3000 + "\n" + TINY,
        ("config.yaml", "too deeply")),
    "yaml-5000-digit-integer": Case(  # Python refuses int('1' * 5000): a config error, not a ValueError
        "seed: 1" + "0" * 5000 + "\n" + TINY,
        ("config.yaml:1", "digits")),
    "config-file-missing": Case(
        None, ("missing.yaml", "not found"), config_arg="missing.yaml"),
    "config-not-utf8": Case(
        b"seed: \xff\xfe\n", ("config.yaml", "cannot read config file")),
    # ------------------------------------------------------------------------------------------ keys
    "unknown-top-level-key": Case(
        "optimiser: {name: sgd}\n" + TINY,
        ("line 1: optimiser", "did you mean 'optimizer'?")),
    "unknown-nested-key": Case(
        "optimizer: {learnig_rate: 0.1}\n" + TINY,
        ("line 1: optimizer.learnig_rate", "did you mean 'learning_rate'?")),
    "unknown-choice": Case(
        "optimizer: {name: adma}\n" + TINY,
        ("optimizer.name", "'adma'", "did you mean 'adam'?")),
    "key-the-optimizer-ignores": Case(
        "optimizer: {name: adam, momentum: 0.9}\n" + TINY,
        ("optimizer.momentum", "not used when name is 'adam'")),
    "epochs-and-steps-together": Case(
        "train: {epochs: 5, steps: 5}\n",
        ("train.steps", "not both")),
    "file-source-without-path": Case(
        "data: {source: file}\n" + TINY,
        ("data.path", "not set")),
    # ------------------------------------------------------------------------------------------ types
    "epochs-is-a-word": Case(
        "train: {epochs: ten}\n",
        ("line 1: train.epochs", "valid integer", "'ten'")),
    "learning-rate-is-a-list": Case(
        "optimizer: {learning_rate: [0.1]}\n" + TINY,
        ("line 1: optimizer.learning_rate", "valid number", "[0.1]")),
    "batch-size-is-yes": Case(  # YAML 1.1 reads `yes` as true
        "train: {steps: 2, batch_size: yes}\n",
        ("line 1: train.batch_size", "not a boolean")),
    "section-is-a-list": Case(
        "data: [1, 2]\n" + TINY,
        ("line 1: data", "valid dictionary")),
    "learning-rate-is-nan": Case(
        "optimizer: {learning_rate: .nan}\n" + TINY,
        ("optimizer.learning_rate", "finite number")),
    # ------------------------------------------------------------------------------------------ ranges
    "negative-learning-rate": Case(
        "optimizer: {learning_rate: -0.1}\n" + TINY,
        ("optimizer.learning_rate", "greater than 0", "-0.1")),
    "zero-batch-size": Case(
        "train: {steps: 2, batch_size: 0}\n",
        ("train.batch_size", "greater than or equal to 1", "got 0")),
    "batch-larger-than-training-split": Case(
        file_config(train="train: {steps: 2, batch_size: 100}\n"),
        ("train.batch_size=100", "exceeds the 12 training rows"),
        files={"data.csv": VALID_CSV}),
    "mlp-with-no-hidden-layers": Case(
        "model: {kind: mlp, hidden: []}\n" + TINY,
        ("line 1: model.hidden", "at least 1 item")),
    "mlp-with-a-zero-width-layer": Case(
        "model: {kind: mlp, hidden: [8, 0]}\n" + TINY,
        ("line 1: model.hidden.1", "greater than or equal to 1")),
    "split-fractions-leave-no-training-rows": Case(
        "data: {val_fraction: 0.5, test_fraction: 0.5}\n" + TINY,
        ("data.val_fraction", "no training rows")),
    "negative-seed": Case(
        "seed: -1\n" + TINY,
        ("line 1: seed", "greater than or equal to 0", "-1")),
    "seed-beyond-uint32": Case(
        "seed: 4294967296\n" + TINY,
        ("line 1: seed", "less than or equal to 4294967295")),
    "log-every-zero": Case(
        "train: {steps: 2, log_every: 0}\n",
        ("train.log_every", "greater than or equal to 1")),
    # ------------------------------------------------------------------------------------------ CSV data
    "data-file-missing": Case(
        file_config("nope.csv"), ("nope.csv", "data file not found")),
    "data-path-with-nul-byte": Case(
        'data: {source: file, path: "data\\0.csv"}\n' + TINY,
        ("data.path", "NUL")),
    "csv-empty": Case(
        file_config(), ("data.csv", "file is empty"), files={"data.csv": ""}),
    "csv-header-only": Case(
        file_config(), ("data.csv", "no data rows"), files={"data.csv": "a,b,target\n"}),
    "csv-non-numeric-cell": Case(
        file_config(), ("data.csv:4", "column 'b'", "'abc'"),
        files={"data.csv": "a,b,target\n1,2,0\n3,4,1\n5,abc,0\n" + VALID_ROWS}),
    "csv-nan-cell": Case(
        file_config(), ("data.csv:3", "column 'a'", "nan"),
        files={"data.csv": "a,b,target\n1,2,0\nnan,4,1\n" + VALID_ROWS}),
    "csv-inf-cell": Case(
        file_config(), ("data.csv:4", "column 'b'", "inf"),
        files={"data.csv": "a,b,target\n1,2,0\n3,4,1\n5,-inf,0\n" + VALID_ROWS}),
    "csv-ragged-row": Case(
        file_config(), ("data.csv:5", "2 fields", "3 columns"),
        files={"data.csv": "a,b,target\n1,2,0\n3,4,1\n5,6,0\n7,1\n" + VALID_ROWS}),
    "csv-unclosed-quote": Case(  # the quote opened on line 3 swallows the rest of the file
        file_config(), ("data.csv:3", "quote"),
        files={"data.csv": 'a,b,target\n1,2,0\n3,"4,1\n' + VALID_ROWS}),
    "csv-field-over-csv-module-limit": Case(
        file_config(), ("data.csv:2",),
        files={"data.csv": "a,b,target\n" + "1" * 200_000 + ",2,0\n" + VALID_ROWS}),
    "csv-missing-target-column": Case(
        file_config(), ("data.csv", "no target column 'target'", "did you mean 'targets'?"),
        files={"data.csv": "a,b,targets\n" + VALID_ROWS}),
    "csv-semicolons": Case(
        file_config(), ("data.csv", "another separator"),
        files={"data.csv": "a;b;target\n1;2;0\n3;4;1\n"}),
    "csv-not-utf8": Case(
        file_config(), ("data.csv", "not a UTF-8 text file"),
        files={"data.csv": b"a,b,target\n1,\xe9,0\n"}),
    "csv-single-class": Case(
        file_config(), ("data.csv", "single class"),
        files={"data.csv": "a,b,target\n" + "".join(f"{i},{i},1\n" for i in range(20))}),
    "csv-three-classes-for-logistic": Case(
        file_config(), ("data.csv", "3 classes", "model.kind: mlp"),
        files={"data.csv": "a,b,target\n" + "".join(f"{i},{i},{i % 3}\n" for i in range(20))}),
    "csv-too-few-rows-to-split": Case(
        file_config(), ("data.csv", "rows"),
        files={"data.csv": "a,b,target\n1,2,0\n3,4,1\n"}),
    # ------------------------------------------------------------------------------------------ .npz data
    "npz-without-X": Case(
        file_config("data.npz"), ("data.npz", "missing array(s) X"),
        files={"data.npz": npz(features=np.zeros((20, 2)), y=np.arange(20) % 2)}),
    "npz-X-and-y-lengths-differ": Case(
        file_config("data.npz"), ("data.npz", "X has 20 rows", "(19,)"),
        files={"data.npz": npz(X=np.zeros((20, 2)), y=np.arange(19) % 2)}),
    "npz-pickled-object-array": Case(
        file_config("data.npz"), ("data.npz", "never unpickles"),
        files={"data.npz": npz(X=np.array([[{"a": 1}, 2]] * 20, dtype=object), y=np.arange(20) % 2)}),
    "npz-not-a-zip": Case(
        file_config("data.npz"), ("data.npz", "not a zip archive"),
        files={"data.npz": "X,y\n1,0\n"}),
    "npz-X-is-1d": Case(
        file_config("data.npz"), ("data.npz", "X must be a 2-D numeric array"),
        files={"data.npz": npz(X=np.zeros(20), y=np.arange(20) % 2)}),
    # ------------------------------------------------------------------------------------------ command line
    "set-unknown-key": Case(
        TINY, ("--set", "optimizer.learnig_rate", "did you mean 'learning_rate'?"),
        args=("--set", "optimizer.learnig_rate=0.1")),
    "set-without-equals": Case(
        TINY, ("--set 'optimizer.learning_rate'", "expected KEY.PATH=VALUE"),
        args=("--set", "optimizer.learning_rate")),
    "set-invalid-yaml-value": Case(
        TINY, ("--set train.steps", "invalid YAML"), args=("--set", "train.steps=[1")),
    "set-into-a-value": Case(
        TINY, ("train.steps", "is a value, not a section"), args=("--set", "train.steps.x=1")),
    "precision-not-a-choice": Case(
        TINY, ("Invalid value for '--precision'", "float16"), args=("--precision", "float16")),
    "device-gpu-without-gpu": Case(
        TINY, ("JAX sees no GPU", "--device cpu"), args=("--device", "gpu"), needs_no_gpu=True),
    # ------------------------------------------------------------------------------------------ run directory
    "name-climbs-out-of-the-output-dir": Case(
        "name: ../escape\n" + TINY, ("line 1: name", "'../escape'"), absent=("escape*",)),
    "name-is-an-absolute-path": Case(
        "name: {tmp}/abs\n" + TINY, ("line 1: name", "/abs"), absent=("abs*",)),
    "output-dir-below-a-file": Case(
        TINY, ("blocker", "cannot create output directory"),
        files={"blocker": "not a folder\n"}, args=("-o", "{tmp}/blocker/runs")),
}


def _write(path: Path, content: FileContent, tmp: str) -> None:
    if callable(content):
        content(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content.replace("{tmp}", tmp), encoding="utf-8")


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_refused_cleanly(name: str, tmp_path: Path):
    case = CASES[name]
    if case.needs_no_gpu and has_gpu():
        pytest.skip("this machine has a GPU")
    tmp = str(tmp_path)
    if case.config is not None:
        _write(tmp_path / "config.yaml", case.config, tmp)
    for filename, content in case.files.items():
        _write(tmp_path / filename, content, tmp)
    args = [arg.replace("{tmp}", tmp) for arg in case.args]

    result = runner.invoke(app, ["train", str(tmp_path / case.config_arg), "-o", str(tmp_path / "runs"), *args],
                           env=WIDE)

    # CliRunner catches exceptions instead of printing them: an escaped one is a traceback for the user
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.stderr) < MAX_MESSAGE, f"{len(result.stderr)}-character message: {result.stderr[:300]}..."
    for fragment in case.expect:
        assert fragment.replace("{tmp}", tmp) in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists(), "a rejected run left a run directory"
    for pattern in case.absent:
        assert not list(tmp_path.glob(pattern)), f"{pattern} was created"


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 30
