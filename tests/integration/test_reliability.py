"""What gradfit promises about files and signals, tried the hostile way.

1. Outputs: only regular files are created or atomically replaced; a link is followed to the file it names; a
   device, FIFO or folder is refused; an existing file needs --force; the run's own files and the command's
   inputs are never an output, even with --force; ``-`` is stdout.
2. One JSON convention: ``--json`` prints JSON alone on stdout, ``--json-out FILE`` writes a file.
3. Bounded reads: a run directory someone hands over may hold links to /dev/zero, FIFOs and .npz files whose
   headers lie; each is refused with exit 2 and one line, never a hang or a MemoryError.
4. Signals: SIGINT, SIGTERM and SIGHUP before training starts end the process with exit 130, one line and
   nothing left behind; a signal while predict writes its output leaves no temporary file.
5. Messages: YAML merge keys work; a hand-edited preprocessing.json is refused; a full disk names the file and
   leaves no half-made run directory.

Every refusal is checked for its exit code, a message naming the problem, no traceback, and that nothing the
user had was changed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import CONFIGS, make_config
from typer.testing import CliRunner

from gradfit import files
from gradfit.cli.app import app, legacy_spellings
from gradfit.training.loop import fit

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env=WIDE)


def refused(result, *fragments: str, code: int = 2) -> None:
    """Exit ``code``, one line on stderr holding every fragment, no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    for fragment in fragments:
        assert fragment in message, message


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging the suite when a read blocks (a FIFO)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: the command hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(folder: Path) -> dict:
    """Every entry under ``folder``: its kind and, for regular files, the bytes."""
    found = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        found[str(path.relative_to(folder))] = path.read_bytes() if stat.S_ISREG(mode) else stat.S_IFMT(mode)
    return found


def bomb_npz(path: Path, name: str, elements: int = 10**12) -> None:
    """An .npz whose array ``name`` declares ``elements`` float64 values and holds 8 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (elements,)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.npy", header.getvalue() + b"\0" * 8)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished logistic regression run on the built-in data (2 steps)."""
    folder = tmp_path_factory.mktemp("reliability")
    summary = fit(make_config("name=tiny", "train.steps=2", "train.log_every=1"), out_dir=folder / "runs")
    return Path(summary.run_dir)


@pytest.fixture
def copy(run, tmp_path) -> Path:
    """A copy of the run to damage."""
    return Path(shutil.copytree(run, tmp_path / "run"))


@pytest.fixture
def new_rows(run, tmp_path) -> Path:
    """A labelled CSV with the run's feature columns."""
    names = json.loads((run / "preprocessing.json").read_text())["feature_names"]
    rows = [",".join(["0.5"] * len(names) + [str(i % 2)]) for i in range(10)]
    path = tmp_path / "new.csv"
    path.write_text(",".join(names + ["target"]) + "\n" + "\n".join(rows) + "\n")
    return path


# ------------------------------------------------------------------------------------------- 1. outputs


def test_json_out_follows_a_link_to_the_file_it_names(run, tmp_path):
    real = tmp_path / "real.json"
    real.write_text("mine\n")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    refused(invoke("eval", run, "--json-out", link), "already exists", "--force")
    assert real.read_text() == "mine\n" and link.is_symlink()
    assert invoke("eval", run, "--json-out", link, "--force").exit_code == 0
    assert link.is_symlink() and json.loads(real.read_text())["run_dir"] == str(run)


def test_a_dangling_link_creates_the_file_it_names(run, tmp_path):
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "made.json")
    assert invoke("eval", run, "--json-out", link).exit_code == 0
    assert link.is_symlink() and "accuracy" in json.loads((tmp_path / "made.json").read_text())


@pytest.mark.parametrize("command", ["eval", "inference", "predict"])
def test_a_device_is_never_replaced_even_with_force(run, new_rows, tmp_path, command):
    device = Path(os.devnull)
    link = tmp_path / "to-devnull"
    link.symlink_to(device)
    for target in (device, link):
        args = (
            ["predict", run, new_rows, "--out", target]
            if command == "predict"
            else [command, run, "--json-out", target]
        )
        refused(invoke(*args, "--force"), str(target), "character device", "regular file")
    assert stat.S_ISCHR(os.stat(device).st_mode)


@pytest.mark.parametrize("target", ["/dev/stdout", "/proc/self/fd/1", "LINK"])
def test_a_standard_stream_is_never_followed_to_the_file_behind_it(run, tmp_path, target):
    # with stdout redirected to a file, following /dev/stdout would atomically replace that file
    link = tmp_path / "out.json"
    link.symlink_to("/dev/stdout")
    refused(
        invoke("eval", run, "--json-out", link if target == "LINK" else target, "--force"),
        "a device or standard stream",
        "--json-out -",
    )


def test_a_folder_or_fifo_is_refused(run, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with deadline(30):
        refused(invoke("eval", run, "--json-out", tmp_path, "--force"), "a directory")
        refused(invoke("predict", run, run.parent.parent / "x.csv", "--out", fifo, "--force"), "FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_an_existing_file_needs_force(run, tmp_path):
    existing = tmp_path / "metrics.json"
    existing.write_text("keep me\n")
    refused(invoke("eval", run, "--json-out", existing), "already exists")
    assert existing.read_text() == "keep me\n"


@pytest.mark.parametrize("name", ["summary.json", "config.yaml", "params.npz", "metrics.jsonl", ".lock"])
def test_the_runs_own_files_are_never_an_output(copy, name):
    before = snapshot(copy)
    refused(invoke("inference", copy, "--json-out", copy / name, "--force"), "which this command reads")
    refused(invoke("eval", copy, "--json-out", copy / name, "--force"), "which this command reads")
    assert snapshot(copy) == before


def test_predict_never_writes_over_its_input(run, new_rows):
    before = new_rows.read_bytes()
    refused(invoke("predict", run, new_rows, "--out", new_rows, "--force"), "which this command reads")
    assert new_rows.read_bytes() == before


def test_train_json_out_never_writes_over_its_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train: {steps: 2}\n")
    refused(
        invoke("train", config, "--out-dir", tmp_path / "runs", "--json-out", config, "--force"),
        "which this command reads",
    )
    assert config.read_text() == "train: {steps: 2}\n" and not (tmp_path / "runs").exists()


def test_dash_means_stdout(run, new_rows):
    predicted = invoke("predict", run, new_rows, "--out", "-")
    assert predicted.exit_code == 0 and predicted.stdout.startswith("line,prediction\n")
    assert not Path("-").exists()
    result = invoke("eval", run, "--json-out", "-")
    assert result.exit_code == 0 and json.loads(result.stdout)["run_dir"] == str(run)


# -------------------------------------------------------------------------------------- 2. JSON convention


@pytest.mark.parametrize("args", [("eval", "RUN"), ("inference", "RUN")])  # one helper serves every command
def test_json_flag_prints_json_alone_on_stdout(run, args):
    result = invoke(*[run if a == "RUN" else a for a in args], "--json")
    assert result.exit_code in (0, 1), result.output  # inference reports the 2-step fit unconverged: exit 1
    assert isinstance(json.loads(result.stdout), dict)  # the tables went to stderr
    assert result.stderr.strip()


def test_train_json_and_json_out_hold_the_summary(tmp_path):
    out, config = tmp_path / "summary-copy.json", tmp_path / "c.yaml"
    config.write_text("train: {steps: 2}\n")
    result = invoke("train", config, "--out-dir", tmp_path / "runs", "--json", "--json-out", out)
    assert result.exit_code == 0, result.output
    printed, written = json.loads(result.stdout), json.loads(out.read_text())
    assert printed == written and printed["status"] == "completed"
    assert written == json.loads(Path(printed["run_dir"], "summary.json").read_text())


def test_the_old_spelling_still_writes_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert legacy_spellings(["eval", "RUN", "--json", "m.json"]) == ["eval", "RUN", "--json-out", "m.json"]
    Path("config.json").write_text("{}")  # an existing .json may be compare-grads' config: never rewritten
    assert legacy_spellings(["compare-grads", "--json", "config.json"]) == ["compare-grads", "--json", "config.json"]
    assert legacy_spellings(["eval", "RUN", "--json", "config.json"]) == ["eval", "RUN", "--json-out", "config.json"]
    assert legacy_spellings(["bench", "--json=b.json"]) == ["bench", "--json-out=b.json"]
    assert legacy_spellings(["eval", "RUN", "--json"]) == ["eval", "RUN", "--json"]
    assert legacy_spellings(["train", "c.yaml", "--json", "x.json"]) == ["train", "c.yaml", "--json", "x.json"]


# --------------------------------------------------------------------------------------- 3. bounded reads


@pytest.mark.parametrize("name", ["preprocessing.json", "summary.json"])
def test_a_link_to_dev_zero_is_refused(copy, name):
    (copy / name).unlink()
    (copy / name).symlink_to("/dev/zero")
    with deadline(30):
        refused(invoke("eval", copy), name, "character device")


@pytest.mark.parametrize("name", ["preprocessing.json", "summary.json", "params.npz"])
def test_a_fifo_never_hangs(copy, name):
    (copy / name).unlink()
    os.mkfifo(copy / name)
    with deadline(30):
        refused(invoke("eval", copy), name, "FIFO")


@pytest.mark.parametrize("command", ["eval", "predict", "inference"])
def test_params_whose_header_lies_are_refused_before_allocating(copy, new_rows, command):
    bomb_npz(copy / "params.npz", "w")
    args = [command, copy] + ([new_rows] if command == "predict" else [])
    refused(invoke(*args), "params.npz", "array w", "7.3 TiB", "8 bytes")


def lying_member(path: Path, name: str, claimed: int) -> None:
    """An .npz whose zip directory agrees with the .npy header on ``claimed`` float64 values it does not hold."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (claimed,)})
    body = header.getvalue() + b"\0" * 8
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}.npy", body)
    data = bytearray(buffer.getvalue())
    size = len(header.getvalue()) + 8 * claimed  # rewrite both sizes, local header and central directory
    for signature, offset in ((b"PK\x03\x04", 18), (b"PK\x01\x02", 20)):
        at = data.index(signature)
        data[at + offset : at + offset + 8] = size.to_bytes(4, "little") * 2
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("make", ["lying-zip-sizes", "negative-shape"])
def test_an_archive_that_lies_consistently_is_refused(copy, make):
    path = copy / "params.npz"
    if make == "lying-zip-sizes":
        lying_member(path, "w", 10**8)
    else:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (-2, -2)})
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("w.npy", header.getvalue())
    with pytest.raises(files.GradfitError, match="the file is damaged"):
        files.load_npz(path)
    refused(invoke("compare-grads", "--at", copy, "-q"), "params.npz", "damaged")  # -q: no stage lines


def test_params_that_are_not_an_npz_never_suggest_unpickling(copy):
    (copy / "params.npz").write_bytes(b"\x80\x04\x95garbage")
    result = invoke("eval", copy)
    refused(result, "params.npz", "not a .npz archive")
    assert "pickle" not in result.stderr


def test_a_checkpoint_whose_header_lies_is_refused_on_resume(tmp_path):
    summary = fit(
        make_config("name=ck", "train.steps=4", "train.log_every=2", "train.checkpoint_every=2"),
        out_dir=tmp_path / "runs",
    )
    run_dir = Path(summary.run_dir)
    newest = sorted((run_dir / "checkpoints").glob("*.npz"))[-1]
    bomb_npz(newest, "state/params/w")
    before = snapshot(run_dir)
    refused(invoke("train", "--resume", run_dir, "--force", "--set", "train.steps=6"), newest.name, "declares shape")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda p: {**p, "classes": [["a"], ["b"]]}, "classes must be"),
        (lambda p: {**p, "classes": ["a", "a"]}, "classes must be"),
        (lambda p: {**p, "feature_names": [1, 2]}, "feature_names must be"),
        (
            lambda p: {**p, "standardize": {"mean": p["standardize"]["mean"], "std": [0.0] * len(p["feature_names"])}},
            "std positive",
        ),
        (lambda p: [p], "must hold"),
    ],
)
def test_a_hand_edited_preprocessing_record_is_refused(copy, new_rows, edit, fragment):
    path = copy / "preprocessing.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    refused(invoke("eval", copy, "--data", new_rows), "preprocessing.json", "malformed", fragment)
    refused(invoke("predict", copy, new_rows), "preprocessing.json", fragment)


def test_three_classes_for_a_binary_model_are_refused(copy, new_rows):
    path = copy / "preprocessing.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "classes": [*record["classes"], "third"]}))
    refused(invoke("predict", copy, new_rows), "params.npz", "preprocessing.json describes", "3 classes")


def test_read_limits(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * 2048)
    with pytest.raises(files.GradfitError, match="more than"):
        files.read_text(big, "config", max_bytes=1024)
    lines = io.StringIO("a,b\n" + "x" * 100 + "\n")
    with pytest.raises(files.GradfitError, match=r":2: line longer than 50"):
        list(files.bounded_lines(lines, Path("f.csv"), max_chars=50))


# ------------------------------------------------------------------------------------------- 4. signals


def _start(args: list, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gradfit", *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_gradfit_handlers(process: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until gradfit caught SIGTERM and SIGHUP (its first act, which is when it is ready for a signal), read
    from /proc/PID/status.

    Before that instant the interpreter is still starting and a signal meets Python's own defaults, which no program
    can change; waiting for it keeps the test independent of the machine's load."""
    wanted = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGHUP - 1))
    status = Path(f"/proc/{process.pid}/status")
    started = time.monotonic()
    while process.poll() is None:
        caught = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("SigCgt:")), "0")
        if int(caught, 16) & wanted == wanted:
            return
        assert time.monotonic() - started < timeout, f"gradfit did not catch SIGTERM and SIGHUP within {timeout} s"
        time.sleep(0.005)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal dispositions from /proc")
@pytest.mark.parametrize("sig, delay", [(signal.SIGINT, 0.0), (signal.SIGTERM, 0.4), (signal.SIGHUP, 1.0)])
def test_a_signal_before_training_exits_130_and_leaves_nothing(tmp_path, sig, delay):
    process = _start(["train", CONFIGS / "mlp.yaml", "--out-dir", tmp_path / "runs"], tmp_path)
    _wait_for_gradfit_handlers(process)
    time.sleep(delay)  # from gradfit's first instant: while typer, rich and jax import, then while it compiles
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and f"interrupted: {sig.name}" in err.strip().splitlines()[-1]
    runs = list((tmp_path / "runs").glob("*")) if (tmp_path / "runs").exists() else []
    for run_dir in runs:  # only a run that had started training may remain, and it says it was interrupted
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_predict_writes_leaves_no_temporary_file(run, tmp_path, sig):
    names = json.loads((run / "preprocessing.json").read_text())["feature_names"]
    data = tmp_path / "many.csv"
    row = ",".join(["0.25"] * len(names)) + "\n"
    data.write_text(",".join(names) + "\n" + row * 400_000)
    out = tmp_path / "p.csv"
    process = _start(["predict", run, data, "--out", out, "--proba", "--batch-rows", "1000"], tmp_path)
    started = time.monotonic()
    while not list(tmp_path.glob(".p.csv.*.tmp")) and process.poll() is None and time.monotonic() - started < 60:
        time.sleep(0.01)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert not out.exists() and not list(tmp_path.glob(".p.csv.*")), list(tmp_path.iterdir())
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------- 5. messages


def test_yaml_merge_keys_are_supported(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  <<: {steps: 3, log_every: 1}\n  steps: 2\n")
    result = invoke("config", "show", config, "--yaml")
    assert result.exit_code == 0, result.output
    assert "steps: 2" in result.stdout and "log_every: 1" in result.stdout


def test_no_signal_lands_between_making_a_path_and_registering_it(tmp_path, monkeypatch):
    from gradfit import abort

    exits = []
    monkeypatch.setattr(abort, "_exit", exits.append)
    previous = signal.signal(signal.SIGINT, abort._abort)

    def make() -> Path:
        os.kill(os.getpid(), signal.SIGINT)  # arrives "during" the creation: held back until it is registered
        (tmp_path / "made").mkdir()
        return tmp_path / "made"

    try:
        with abort.removed_on_abort(make):
            assert exits == [130]  # acted on as the block began: the folder was already registered
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not (tmp_path / "made").exists()


def test_a_boolean_where_a_word_belongs_names_the_choices(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("runtime: {device: on}\n")
    result = invoke("config", "validate", config)
    assert result.exit_code == 2 and "one of 'auto', 'cpu', 'gpu', not a boolean" in result.stderr


def test_a_full_disk_names_the_file_and_leaves_no_run_directory(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    result = invoke("train", CONFIGS / "logreg.yaml", "--out-dir", tmp_path / "runs", "--set", "train.steps=2")
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    refused(result, "config.yaml", "No space left on device", code=1)
    assert list((tmp_path / "runs").iterdir()) == []
