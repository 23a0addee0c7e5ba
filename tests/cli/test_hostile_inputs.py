"""A catalogue of broken and hostile inputs, each walked through the real ``gradfit train`` command.

Every case must end the same way: exit code 2, a message on stderr that names the problem (the file and line,
the key, the column, a "did you mean"), no traceback, no run directory, and nothing the input tried to do
(run a shell command, write outside the output folder) done. Nothing here should reach training: configs are
tiny and each case is rejected while the config or the data is read, or before compilation.

The table maps a case id to a ``Case``: the text of config.yaml, the stderr fragments expected, data files to
write next to it (referenced relatively, as ``data: {source: file, path: data.csv}``), extra arguments, and globs
that must match nothing afterwards. ``{tmp}`` in the config, the args and the fragments stands for tmp_path.

A second catalogue, ``RESUME_CASES``, does the same for ``gradfit train --resume RUN_DIR``: one tiny real run is
trained and interrupted once per module (plus one that completed), each case damages a copy of it (files deleted,
checkpoints truncated, edited, re-signed with a valid digest but unusable, the config changed...) and the resume
must be refused with exit code 2 and a message naming the problem. On top of that, a refused resume must leave
the user's run exactly as it was: every file byte-identical, nothing added.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import InterruptAt, has_gpu, make_config
from typer.testing import CliRunner

from gradfit.cli.app import app
from gradfit.errors import Interrupted
from gradfit.runs import checkpoints, rundir
from gradfit.training import session
from gradfit.training.loop import fit

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


FileContent = str | bytes | Callable[[Path], None]


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
        "seed: 0\noptimizer: {name: adam\ntrain: {steps: 2}\n", ("config.yaml:3", "invalid YAML")
    ),
    "yaml-tab-indentation": Case("train:\n\tsteps: 2\n", ("config.yaml:2", "tabs")),
    "yaml-duplicate-key": Case("seed: 1\ntrain: {steps: 2}\nseed: 2\n", ("config.yaml:3", "duplicate key 'seed'")),
    "yaml-two-documents": Case("seed: 1\n---\nseed: 2\n", ("config.yaml:2", "invalid YAML")),
    "yaml-top-level-is-a-list": Case("- seed\n- 1\n", ("config.yaml", "must be a mapping", "list")),
    "yaml-python-tag-runs-nothing": Case(
        'name: !!python/object/apply:os.system ["touch {tmp}/hacked"]\n' + TINY,
        ("config.yaml:1", "remove the !! tag"),
        absent=("hacked",),
    ),
    "yaml-python-tag-in-set-runs-nothing": Case(
        TINY,
        ("--set name", "remove the !! tag"),
        args=("--set", 'name=!!python/object/apply:os.system ["touch {tmp}/hacked"]'),
        absent=("hacked",),
    ),
    "yaml-unhashable-key": Case(  # a complex key: PyYAML's own error, not a TypeError in the duplicate check
        "? [a, b]\n: 1\n" + TINY, ("config.yaml:1", "unhashable")
    ),
    "yaml-recursive-alias": Case(  # an alias inside its own anchor: must not recurse forever
        "seed: &loop [*loop]\n" + TINY, ("line 1: seed",)
    ),
    "yaml-billion-laughs": Case(  # 9**6 leaves from ~10 lines: the message must stay short
        "model: {kind: mlp, hidden: " + yaml_bomb(6) + "}\n" + TINY, ("line 1: model.hidden",)
    ),
    "yaml-deep-nesting": Case("seed: " + "[" * 3000 + "]" * 3000 + "\n" + TINY, ("config.yaml", "too deeply")),
    "yaml-5000-digit-integer": Case(  # Python refuses int('1' * 5000): a config error, not a ValueError
        "seed: 1" + "0" * 5000 + "\n" + TINY, ("config.yaml:1", "digits")
    ),
    "config-file-missing": Case(None, ("missing.yaml", "not found"), config_arg="missing.yaml"),
    "config-not-utf8": Case(b"seed: \xff\xfe\n", ("config.yaml", "config file is not UTF-8 text")),
    # ------------------------------------------------------------------------------------------ keys
    "unknown-top-level-key": Case(
        "optimiser: {name: sgd}\n" + TINY, ("line 1: optimiser", "did you mean 'optimizer'?")
    ),
    "unknown-nested-key": Case(
        "optimizer: {learnig_rate: 0.1}\n" + TINY, ("line 1: optimizer.learnig_rate", "did you mean 'learning_rate'?")
    ),
    "unknown-choice": Case("optimizer: {name: adma}\n" + TINY, ("optimizer.name", "'adma'", "did you mean 'adam'?")),
    "key-the-optimizer-ignores": Case(
        "optimizer: {name: adam, momentum: 0.9}\n" + TINY, ("optimizer.momentum", "not used when name is 'adam'")
    ),
    "epochs-and-steps-together": Case("train: {epochs: 5, steps: 5}\n", ("train.steps", "not both")),
    "file-source-without-path": Case("data: {source: file}\n" + TINY, ("data.path", "not set")),
    # ------------------------------------------------------------------------------------------ types
    "epochs-is-a-word": Case("train: {epochs: ten}\n", ("line 1: train.epochs", "valid integer", "'ten'")),
    "learning-rate-is-a-list": Case(
        "optimizer: {learning_rate: [0.1]}\n" + TINY, ("line 1: optimizer.learning_rate", "valid number", "[0.1]")
    ),
    "batch-size-is-yes": Case(  # YAML 1.1 reads `yes` as true
        "train: {steps: 2, batch_size: yes}\n", ("line 1: train.batch_size", "not a boolean")
    ),
    "section-is-a-list": Case("data: [1, 2]\n" + TINY, ("line 1: data", "valid dictionary")),
    "learning-rate-is-nan": Case(
        "optimizer: {learning_rate: .nan}\n" + TINY, ("optimizer.learning_rate", "finite number")
    ),
    # ------------------------------------------------------------------------------------------ ranges
    "negative-learning-rate": Case(
        "optimizer: {learning_rate: -0.1}\n" + TINY, ("optimizer.learning_rate", "greater than 0", "-0.1")
    ),
    "zero-batch-size": Case(
        "train: {steps: 2, batch_size: 0}\n", ("train.batch_size", "greater than or equal to 1", "got 0")
    ),
    "batch-larger-than-training-split": Case(
        file_config(train="train: {steps: 2, batch_size: 100}\n"),
        ("train.batch_size=100", "exceeds the 12 training rows"),
        files={"data.csv": VALID_CSV},
    ),
    "mlp-with-no-hidden-layers": Case(
        "model: {kind: mlp, hidden: []}\n" + TINY, ("line 1: model.hidden", "at least 1 item")
    ),
    "mlp-with-a-zero-width-layer": Case(
        "model: {kind: mlp, hidden: [8, 0]}\n" + TINY, ("line 1: model.hidden.1", "greater than or equal to 1")
    ),
    "split-fractions-leave-no-training-rows": Case(
        "data: {val_fraction: 0.5, test_fraction: 0.5}\n" + TINY, ("data.val_fraction", "no training rows")
    ),
    "negative-seed": Case("seed: -1\n" + TINY, ("line 1: seed", "greater than or equal to 0", "-1")),
    "seed-beyond-uint32": Case("seed: 4294967296\n" + TINY, ("line 1: seed", "less than or equal to 4294967295")),
    "log-every-zero": Case("train: {steps: 2, log_every: 0}\n", ("train.log_every", "greater than or equal to 1")),
    # ------------------------------------------------------------------------------------------ CSV data
    "data-file-missing": Case(file_config("nope.csv"), ("nope.csv", "data file not found")),
    "data-path-with-nul-byte": Case('data: {source: file, path: "data\\0.csv"}\n' + TINY, ("data.path", "NUL")),
    "csv-empty": Case(file_config(), ("data.csv", "file is empty"), files={"data.csv": ""}),
    "csv-header-only": Case(file_config(), ("data.csv", "no data rows"), files={"data.csv": "a,b,target\n"}),
    "csv-non-numeric-cell": Case(
        file_config(),
        ("data.csv:4", "column 'b'", "'abc'"),
        files={"data.csv": "a,b,target\n1,2,0\n3,4,1\n5,abc,0\n" + VALID_ROWS},
    ),
    "csv-nan-cell": Case(
        file_config(),
        ("data.csv:3", "column 'a' is missing", "data.missing"),
        files={"data.csv": "a,b,target\n1,2,0\nnan,4,1\n" + VALID_ROWS},
    ),
    "csv-inf-cell": Case(
        file_config(),
        ("data.csv:4", "column 'b'", "inf"),
        files={"data.csv": "a,b,target\n1,2,0\n3,4,1\n5,-inf,0\n" + VALID_ROWS},
    ),
    "csv-ragged-row": Case(
        file_config(),
        ("data.csv:5", "2 fields", "3 columns"),
        files={"data.csv": "a,b,target\n1,2,0\n3,4,1\n5,6,0\n7,1\n" + VALID_ROWS},
    ),
    "csv-unclosed-quote": Case(  # the quote opened on line 3 swallows the rest of the file
        file_config(), ("data.csv:3", "quote"), files={"data.csv": 'a,b,target\n1,2,0\n3,"4,1\n' + VALID_ROWS}
    ),
    "csv-field-over-csv-module-limit": Case(
        file_config(), ("data.csv:2",), files={"data.csv": "a,b,target\n" + "1" * 200_000 + ",2,0\n" + VALID_ROWS}
    ),
    "csv-missing-target-column": Case(
        file_config(),
        ("data.csv", "no label column 'target'", "did you mean 'targets'?"),
        files={"data.csv": "a,b,targets\n" + VALID_ROWS},
    ),
    "csv-semicolons": Case(
        file_config(), ("data.csv", "another separator"), files={"data.csv": "a;b;target\n1;2;0\n3;4;1\n"}
    ),
    "csv-not-utf8": Case(
        file_config(), ("data.csv", "not a UTF-8 text file"), files={"data.csv": b"a,b,target\n1,\xe9,0\n"}
    ),
    "csv-single-class": Case(
        file_config(),
        ("data.csv", "single class"),
        files={"data.csv": "a,b,target\n" + "".join(f"{i},{i},1\n" for i in range(20))},
    ),
    "csv-too-few-rows-to-split": Case(
        file_config(), ("data.csv", "rows"), files={"data.csv": "a,b,target\n1,2,0\n3,4,1\n"}
    ),
    # ------------------------------------------------------------------------------------------ .npz data
    "npz-without-X": Case(
        file_config("data.npz"),
        ("data.npz", "missing array(s) X"),
        files={"data.npz": npz(features=np.zeros((20, 2)), y=np.arange(20) % 2)},
    ),
    "npz-X-and-y-lengths-differ": Case(
        file_config("data.npz"),
        ("data.npz", "X has 20 rows", "(19,)"),
        files={"data.npz": npz(X=np.zeros((20, 2)), y=np.arange(19) % 2)},
    ),
    "npz-pickled-object-array": Case(
        file_config("data.npz"),
        ("data.npz", "never unpickles"),
        files={"data.npz": npz(X=np.array([[{"a": 1}, 2]] * 20, dtype=object), y=np.arange(20) % 2)},
    ),
    "npz-not-a-zip": Case(
        file_config("data.npz"), ("data.npz", "not a .npz archive"), files={"data.npz": "X,y\n1,0\n"}
    ),
    "npz-X-is-1d": Case(
        file_config("data.npz"),
        ("data.npz", "X must be a 2-D numeric array"),
        files={"data.npz": npz(X=np.zeros(20), y=np.arange(20) % 2)},
    ),
    # ------------------------------------------------------------------------------------------ command line
    "set-unknown-key": Case(
        TINY,
        ("--set", "optimizer.learnig_rate", "did you mean 'learning_rate'?"),
        args=("--set", "optimizer.learnig_rate=0.1"),
    ),
    "set-without-equals": Case(
        TINY, ("--set 'optimizer.learning_rate'", "expected KEY.PATH=VALUE"), args=("--set", "optimizer.learning_rate")
    ),
    "set-invalid-yaml-value": Case(TINY, ("--set train.steps", "invalid YAML"), args=("--set", "train.steps=[1")),
    "set-into-a-value": Case(TINY, ("train.steps", "is a value, not a section"), args=("--set", "train.steps.x=1")),
    "precision-not-a-choice": Case(
        TINY, ("Invalid value for '--precision'", "float16"), args=("--precision", "float16")
    ),
    "device-gpu-without-gpu": Case(
        TINY, ("JAX sees no GPU", "--device cpu"), args=("--device", "gpu"), needs_no_gpu=True
    ),
    # ------------------------------------------------------------------------------------------ run directory
    "name-climbs-out-of-the-output-dir": Case(
        "name: ../escape\n" + TINY, ("line 1: name", "'../escape'"), absent=("escape*",)
    ),
    "name-is-an-absolute-path": Case("name: {tmp}/abs\n" + TINY, ("line 1: name", "/abs"), absent=("abs*",)),
    "output-dir-below-a-file": Case(
        TINY,
        ("blocker", "cannot create output directory"),
        files={"blocker": "not a folder\n"},
        args=("--out-dir", "{tmp}/blocker/runs"),
    ),
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

    result = runner.invoke(
        app, ["train", str(tmp_path / case.config_arg), "--out-dir", str(tmp_path / "runs"), *args], env=WIDE
    )

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


# ================================================================================== broken run directories: --resume
# The fixture run: 12 steps, a log point every 2, a checkpoint every 4, interrupted at step 8. So it holds
# step-00000004.npz and step-00000008.npz, and resuming it intact works (see test_the_intact_run_resumes).
TINY_RUN = (
    "name=tiny",
    "train.steps=12",
    "train.log_every=2",
    "train.checkpoint_every=4",
    "train.keep_checkpoints=3",
    "runtime.device=cpu",
)
NEWEST, PREVIOUS = "step-00000008.npz", "step-00000004.npz"
LEARNING_RATE = "learning_rate: 0.001"  # as the fixture's config.yaml spells it


@pytest.fixture(scope="module")
def trained_runs(tmp_path_factory) -> dict[str, Path]:
    """{"interrupted": a resumable run stopped at step 8, "finished": the same run trained to the end}."""
    config = make_config(*TINY_RUN)
    out_dir = tmp_path_factory.mktemp("interrupted")
    with pytest.MonkeyPatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(session, "CHUNK_SECONDS", 0.0)  # one log window per chunk: stop exactly at step 8
        fit(config, out_dir, InterruptAt(8))
    (interrupted,) = out_dir.iterdir()
    finished = Path(fit(config, tmp_path_factory.mktemp("finished")).run_dir)
    assert [p.name for _, p in checkpoints.listing(interrupted)] == [PREVIOUS, NEWEST]
    return {"interrupted": interrupted, "finished": finished}


def _newest(run: Path) -> Path:
    return checkpoints.folder(run) / NEWEST


def _read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    arrays = rundir.load_arrays(path)
    return arrays, json.loads(str(arrays.pop("meta")))


def _write_checkpoint(path: Path, arrays: dict[str, np.ndarray], meta: dict | str | None) -> None:
    """As checkpoints.save writes it; meta as a dict (written as JSON), raw text, or None for no meta entry."""
    if meta is not None:
        arrays = {**arrays, "meta": np.array(meta if isinstance(meta, str) else json.dumps(meta))}
    rundir.save_arrays(path, arrays)


def raw_meta(meta: str | None) -> Callable[[Path], None]:
    """Damage: the newest checkpoint's meta entry replaced by this text (None: removed), arrays kept."""

    def damage(run: Path) -> None:
        arrays, _ = _read_checkpoint(_newest(run))
        _write_checkpoint(_newest(run), arrays, meta)

    return damage


Edit = Callable[[dict, dict], None]  # changes (arrays, meta) in place


def tampered(edit: Edit) -> Callable[[Path], None]:
    """Damage: the newest checkpoint edited and rewritten with its old digest, as a hand edit would leave it."""

    def damage(run: Path) -> None:
        arrays, meta = _read_checkpoint(_newest(run))
        edit(arrays, meta)
        _write_checkpoint(_newest(run), arrays, meta)

    return damage


def crafted(edit: Edit) -> Callable[[Path], None]:
    """Damage: the newest checkpoint edited and re-signed with a valid digest, as checkpoints.save would write it.

    The digest only proves the file is what some writer meant to write: everything behind it must still be checked.
    """

    def damage(run: Path) -> None:
        arrays, meta = _read_checkpoint(_newest(run))
        edit(arrays, meta)
        meta["digest"] = checkpoints.digest(arrays, meta)
        _write_checkpoint(_newest(run), arrays, meta)

    return damage


def remove(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        target = run / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return damage


def rewrite(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        (run / name).write_bytes(change((run / name).read_bytes()))

    return damage


def _not_a_run_dir(kind: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        shutil.rmtree(run)  # kind "missing": nothing more
        if kind == "file":
            run.write_text("not a folder\n")
        elif kind == "empty":
            run.mkdir()

    return damage


def _set(section: str | None, key: str, value) -> Edit:
    """meta[section][key] = value (meta[key] when section is None)."""
    return lambda arrays, meta: (meta if section is None else meta[section]).__setitem__(key, value)


def _scale_first_weight(arrays: dict, meta: dict) -> None:
    w = arrays["state/params/w"].copy()
    w[0] += 1.0
    arrays["state/params/w"] = w


def _widen_weights(arrays: dict, meta: dict) -> None:  # one more feature than the data has
    arrays["state/params/w"] = np.append(arrays["state/params/w"], np.float32(0))


def _to_float64(arrays: dict, meta: dict) -> None:
    for name, array in arrays.items():
        if array.dtype == np.float32:
            arrays[name] = array.astype(np.float64)


class _TouchOnUnpickle:
    """Pickles to a call of Path.touch: if anything unpickles it, the file appears and the snapshot check fails."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


def _add_pickled_array(run: Path) -> None:
    arrays, meta = _read_checkpoint(_newest(run))
    evil = np.array([_TouchOnUnpickle(run / "UNPICKLED")], dtype=object)
    np.savez(_newest(run), **arrays, meta=np.array(json.dumps(meta)), **{"state/evil": evil})


def _garbage_metrics_line(run: Path) -> None:
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:2]) + "this is not JSON\n" + "".join(lines[2:]))


@dataclasses.dataclass(frozen=True)
class ResumeCase:
    damage: Callable[[Path], None]  # applied to a fresh copy of the run directory
    expect: tuple[str, ...]  # fragments that must all appear in stderr; {run} stands for the run directory
    args: tuple[str, ...] = ()  # after `train --resume RUN_DIR`
    run: str = "interrupted"  # which fixture run to copy: "interrupted" or "finished"
    command: tuple[str, ...] | None = None  # instead of `--resume RUN_DIR ARGS`, for misuse without --resume
    hold_lock: bool = False  # hold the run's lock during the call, as a running gradfit process would
    xfail: str | None = None  # a known gradfit bug: the case is expected to fail until it is fixed


def _keep(run: Path) -> None:
    """No damage: the problem is in the command line."""


RESUME_CASES = {
    # ------------------------------------------------------------------------------ not a run directory
    "run-dir-missing": ResumeCase(_not_a_run_dir("missing"), ("{run}", "no such run directory")),
    "run-dir-is-a-file": ResumeCase(_not_a_run_dir("file"), ("{run}", "not a directory")),
    "run-dir-is-empty": ResumeCase(_not_a_run_dir("empty"), ("{run}", "not a gradfit run directory")),
    "config-yaml-deleted": ResumeCase(remove("config.yaml"), ("{run}", "not a gradfit run directory", "config.yaml")),
    "metrics-jsonl-deleted": ResumeCase(
        remove("metrics.jsonl"), ("{run}", "not a gradfit run directory", "metrics.jsonl")
    ),
    "checkpoints-deleted": ResumeCase(  # a run killed before its first checkpoint looks like this
        remove("checkpoints"), ("{run}", "no checkpoint to resume from")
    ),
    "run-locked-by-another-process": ResumeCase(_keep, ("{run}", "another gradfit process"), hold_lock=True),
    # ------------------------------------------------------------------------------ damaged checkpoint files
    "newest-checkpoint-truncated": ResumeCase(  # a full disk, a copy cut short: point to the previous checkpoint
        rewrite(f"checkpoints/{NEWEST}", lambda data: data[: len(data) // 2]),
        (NEWEST, "unreadable", "delete it", PREVIOUS),
    ),
    "newest-checkpoint-empty": ResumeCase(
        rewrite(f"checkpoints/{NEWEST}", lambda data: b""), (NEWEST, "unreadable", "delete it", PREVIOUS)
    ),
    "newest-checkpoint-random-bytes": ResumeCase(
        rewrite(f"checkpoints/{NEWEST}", lambda data: np.random.default_rng(0).bytes(len(data))),
        (NEWEST, "unreadable", "delete it", PREVIOUS),
    ),
    "newest-checkpoint-is-a-folder": ResumeCase(
        lambda run: (remove(f"checkpoints/{NEWEST}")(run), _newest(run).mkdir()), (NEWEST, "unreadable", PREVIOUS)
    ),
    "checkpoint-array-edited": ResumeCase(  # the digest is what catches a changed value
        tampered(_scale_first_weight), (NEWEST, "do not match the digest", "modified", PREVIOUS)
    ),
    "checkpoint-meta-edited": ResumeCase(
        tampered(_set("loop", "step", 12)), (NEWEST, "do not match the digest", "modified")
    ),
    "checkpoint-meta-removed": ResumeCase(raw_meta(None), (NEWEST, "not a gradfit checkpoint", PREVIOUS)),
    "checkpoint-meta-not-json": ResumeCase(raw_meta("{not json"), (NEWEST, "not a gradfit checkpoint")),
    "checkpoint-pickled-object-array": ResumeCase(  # refused without unpickling: UNPICKLED must not appear
        _add_pickled_array, (NEWEST, "pickle")
    ),
    # ------------------------------------------------------------------------------ valid digest, unusable contents
    "checkpoint-of-another-model": ResumeCase(
        crafted(_widen_weights), (NEWEST, "'params/w' has shape (31,)", "(30,)", "another model")
    ),
    "checkpoint-float64-in-float32-run": ResumeCase(
        crafted(_to_float64), (NEWEST, "float64", "float32", "runtime.precision")
    ),
    "checkpoint-meta-without-loop": ResumeCase(
        crafted(lambda arrays, meta: meta.pop("loop")), (NEWEST, "metadata is inconsistent", "'loop'", PREVIOUS)
    ),
    "checkpoint-meta-loop-is-a-list": ResumeCase(
        crafted(_set(None, "loop", [8])), (NEWEST, "metadata is inconsistent")
    ),
    "checkpoint-meta-config-is-a-string": ResumeCase(
        crafted(_set(None, "config", "adam")), (NEWEST, "metadata is inconsistent")
    ),
    "checkpoint-of-a-newer-format": ResumeCase(
        crafted(_set(None, "format", 99)), (NEWEST, "checkpoint format 99", "reads format 2")
    ),
    # values behind a valid digest are still checked: a wrong type or step never reaches the loop
    "checkpoint-meta-loop-step-is-a-string": ResumeCase(
        crafted(_set("loop", "step", "8")), (NEWEST, "metadata is inconsistent", "step")
    ),
    "checkpoint-meta-loop-last-empty": ResumeCase(
        crafted(_set("loop", "last", {})), (NEWEST, "metadata is inconsistent", "last log record")
    ),
    "checkpoint-meta-loop-resumes-null": ResumeCase(
        crafted(_set("loop", "resumes", None)), (NEWEST, "metadata is inconsistent", "resumes")
    ),
    "checkpoint-meta-loop-step-negative": ResumeCase(
        crafted(_set("loop", "step", -4)), (NEWEST, "metadata is inconsistent", "step")
    ),
    "checkpoint-meta-loop-step-huge": ResumeCase(
        crafted(_set("loop", "step", 10**30)), (NEWEST, "metadata is inconsistent", "step numbers disagree")
    ),
    "checkpoint-meta-elapsed-is-text": ResumeCase(
        crafted(_set("loop", "elapsed_s", "x")), (NEWEST, "metadata is inconsistent", "elapsed_s")
    ),
    "checkpoint-meta-early-stopping-is-text": ResumeCase(
        crafted(_set(None, "early_stopping", "val_loss")), (NEWEST, "metadata is inconsistent")
    ),
    # ------------------------------------------------------------------------------ config differs from the run's
    "config-yaml-edited": ResumeCase(  # the changes are listed, and how to go ahead anyway
        rewrite("config.yaml", lambda text: text.replace(LEARNING_RATE.encode(), b"learning_rate: 0.05")),
        ("optimizer.learning_rate", "0.001", "0.05", "--force"),
    ),
    "set-on-resume": ResumeCase(
        _keep, ("optimizer.learning_rate", "0.001", "0.05", "--force"), args=("--set", "optimizer.learning_rate=0.05")
    ),
    "config-yaml-not-yaml": ResumeCase(
        rewrite("config.yaml", lambda text: text.replace(LEARNING_RATE.encode(), b"learning_rate: [0.001")),
        ("config.yaml", "invalid YAML"),
    ),
    # ------------------------------------------------------------------------------ the run, the command line
    "run-already-finished": ResumeCase(_keep, ("{run}", "already finished", "--force"), run="finished"),
    "out-dir-with-resume": ResumeCase(_keep, ("--out-dir", "--resume"), args=("--out-dir", "{run}/elsewhere")),
    "force-without-resume": ResumeCase(  # would otherwise start a new run from the run's config
        _keep, ("--force", "--resume"), command=("{run}/config.yaml", "--out-dir", "{run}/runs", "--force")
    ),
    "metrics-garbage-line": ResumeCase(  # found after compiling, but before metrics.jsonl is rewritten
        _garbage_metrics_line, ("metrics.jsonl", "line 3", "not a gradfit metrics record")
    ),
}


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes under root, folders as None; a .lock only by its presence (it is opened to be locked)."""
    return {
        str(p.relative_to(root)): None if p.is_dir() or p.name == ".lock" else p.read_bytes() for p in root.rglob("*")
    }


def _copy_run(source: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(source, run)
    return run


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=case.xfail) if case.xfail else ())
        for name, case in RESUME_CASES.items()
    ],
)
def test_broken_run_dir_is_refused_untouched(name: str, tmp_path: Path, trained_runs):
    case = RESUME_CASES[name]
    run = _copy_run(trained_runs[case.run], tmp_path)
    case.damage(run)
    before = _snapshot(tmp_path)
    fill = lambda text: text.replace("{run}", str(run))  # noqa: E731
    argv = [fill(a) for a in case.command] if case.command else ["--resume", str(run), *map(fill, case.args)]

    lock = None
    if case.hold_lock:
        fcntl = pytest.importorskip("fcntl")
        lock = open(run / ".lock", "a")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        result = runner.invoke(app, ["train", *argv], env=WIDE)
    finally:
        if lock is not None:
            lock.close()

    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert len(result.stderr) < MAX_MESSAGE, f"{len(result.stderr)}-character message: {result.stderr[:300]}..."
    for fragment in case.expect:
        assert fill(fragment) in result.stderr, result.stderr
    # the point of the catalogue: a refused resume leaves the user's run exactly as it was
    after = _snapshot(tmp_path)
    assert sorted(after.keys() - before.keys()) == [], "files were added"
    assert sorted(before.keys() - after.keys()) == [], "files were deleted"
    assert [k for k in before if before[k] != after[k]] == [], "files were changed"


def test_the_intact_run_resumes(tmp_path: Path, trained_runs):
    """The control for the catalogue above: undamaged, the same copy resumes and finishes."""
    run = _copy_run(trained_runs["interrupted"], tmp_path)
    before = _snapshot(tmp_path)
    result = runner.invoke(app, ["train", "--resume", str(run), "--quiet", "--json"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert _snapshot(tmp_path) != before  # so the snapshot comparison above would see a resume that went ahead
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 12
    assert summary["resumes"][0]["checkpoint"] == NEWEST


def test_the_resume_catalogue_is_large_enough():
    assert len(RESUME_CASES) >= 25
