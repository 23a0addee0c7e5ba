"""``gradfit data describe`` and ``gradfit data convert`` at their edges: wide files, killed conversions, a full disk.

A conversion killed with SIGKILL cannot clean up after itself; the next conversion to the same destination removes
its hidden partial folder, and never one whose writer is alive (its writer holds an flock on ``.lock`` inside it).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_csv
from typer.testing import CliRunner

from gradfit import files
from gradfit.cli.app import app
from gradfit.cli.render import data as render
from gradfit.data import convert as convert_module
from gradfit.data.convert import convert
from gradfit.data.tabular import open_table

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # keep Rich from wrapping messages mid-sentence


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env=WIDE)


def labelled_csv(path: Path, rows: int = 40, columns: int = 3, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, columns))
    header = [f"f{j}" for j in range(columns)] + ["target"]
    return write_csv(path, header, [[repr(float(v)) for v in row] + ["ab"[i % 2]] for i, row in enumerate(x)])


def partials(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if ".partial-" in name)


# ------------------------------------------------------------------------------------------------- describe


def test_describe_json_draws_nothing(tmp_path):
    path = labelled_csv(tmp_path / "d.csv")
    result = invoke("data", "describe", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["columns"] == 3
    assert result.stderr == ""  # the tables cost a minute for 100,000 columns, and --json has every number


def test_describe_of_a_wide_file_draws_a_summary(tmp_path):
    columns = 300
    x = np.arange(4 * columns, dtype=float).reshape(4, columns)
    cells = [[repr(float(v)) for v in row] + ["ab"[i % 2]] for i, row in enumerate(x)]
    cells[1][150] = "nan"  # worth a look: drawn although it is in the middle
    cells[2][200] = "inf"
    path = write_csv(tmp_path / "wide.csv", [f"f{j}" for j in range(columns)] + ["target"], cells)
    result = invoke("data", "describe", path)
    assert result.exit_code == 0, result.output
    drawn = {name for name in (f"f{j}" for j in range(columns)) if f"│ {name} " in result.stdout}
    edge = render.EDGE_FEATURES
    assert drawn == {f"f{j}" for j in [*range(edge), 150, 200, *range(columns - edge, columns)]}
    hidden = columns - len(drawn)
    assert f"{hidden:,} of {columns:,} columns not shown" in result.stdout and "--json lists them all" in result.stdout
    small = invoke("data", "describe", labelled_csv(tmp_path / "small.csv"))
    assert small.exit_code == 0 and "not shown" not in small.stdout and "│ f2 " in small.stdout


def test_describe_summary_keeps_a_bounded_number_of_notable_columns(tmp_path):
    features = [
        {
            "name": f"f{j}",
            "kind": "numeric",
            "mean": 0.0,
            "std": 1.0,
            "min": 0.0,
            "max": 1.0,
            "missing": 0,
            "non_finite": 1,
        }
        for j in range(500)
    ]
    shown = render.shown_features(features)
    assert len(shown) == render.MAX_FEATURE_ROWS
    assert shown[: render.EDGE_FEATURES] == list(range(render.EDGE_FEATURES))
    assert shown[-render.EDGE_FEATURES :] == list(range(500 - render.EDGE_FEATURES, 500))


# ------------------------------------------------------------------------------------------------- a killed convert

# A conversion that stops after its first block is written, as if the machine were slow, and says so on stdout
STALLED = """
import sys, time
import gradfit.data.convert as convert
from gradfit.cli.entry import main

def stall(*args):
    print("written", flush=True)
    time.sleep(600)

convert._advance = stall
sys.argv[0] = "gradfit"
main()
"""


def start_stalled(data: Path, out: Path) -> subprocess.Popen:
    """A real ``gradfit data convert`` that has written its first block and waits there."""
    process = subprocess.Popen(
        [sys.executable, "-c", STALLED, "data", "convert", str(data), str(out), "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline() if process.stdout else ""
    if line.strip() != "written":
        process.kill()
        raise AssertionError(f"the stalled convert did not start: {line!r} {process.communicate()}")
    return process


def test_a_rerun_removes_the_partial_folder_of_a_killed_convert(tmp_path):
    data = labelled_csv(tmp_path / "data.csv", rows=200)
    out = tmp_path / "out"
    process = start_stalled(data, out)
    try:
        assert partials(tmp_path) == [f".out.partial-{process.pid}"]
        assert (tmp_path / f".out.partial-{process.pid}" / "X.npy").is_file()
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert partials(tmp_path) == [f".out.partial-{process.pid}"]  # SIGKILL cannot be caught: it stays, for now
    result = invoke("data", "convert", data, out, "-q")
    assert result.exit_code == 0, result.output
    assert partials(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "out"]
    x, labels, _ = open_table(out).read_all()
    np.testing.assert_array_equal(x, open_table(data, "target").read_all()[0])
    assert list(labels.values) == ["a", "b"] and len(x) == 200


def test_a_partial_folder_whose_writer_is_alive_is_kept(tmp_path):
    data = labelled_csv(tmp_path / "data.csv", rows=200)
    out = tmp_path / "out"
    process = start_stalled(data, out)
    live = tmp_path / f".out.partial-{process.pid}"
    try:
        before = sorted(os.listdir(live))
        done = convert(data, out)  # another conversion to the same place: it must not touch the live one
        assert done.rows == 200 and done.removed == []
        assert partials(tmp_path) == [live.name] and sorted(os.listdir(live)) == before
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    convert(data, out, force=True)
    assert partials(tmp_path) == []


def finished_pid() -> int:
    """The process id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize(
    "case, removed",
    [
        ("no lock, writer gone", True),  # left by a gradfit from before the lock
        ("no lock, writer alive", False),  # between making the folder and locking it, or an older gradfit's
        ("lock free, pid alive", True),  # the writer died and its process id was reused: the lock says so
        ("empty lock free, writer alive", False),  # the writer has made the lock file and is about to take it
        ("lock held, pid gone", False),  # a writer on another machine (a shared disk): its id means nothing here
    ],
)
def test_which_partial_folders_count_as_stale(tmp_path, case, removed):
    data = labelled_csv(tmp_path / "data.csv")
    pid = finished_pid() if "gone" in case else os.getppid()
    partial = tmp_path / f".out.partial-{pid}"
    partial.mkdir()
    (partial / "X.npy").write_bytes(b"\0" * 1000)
    if "lock" in case and "no lock" not in case:
        (partial / ".lock").write_text("" if "empty" in case else f"{pid}\n")
    with contextlib.ExitStack() as held:
        if "held" in case:
            import fcntl

            handle = held.enter_context(open(partial / ".lock", "rb"))
            fcntl.flock(handle, fcntl.LOCK_EX)
        done = convert(data, tmp_path / "out")
    assert done.removed == ([str(partial)] if removed else [])
    assert partial.exists() is not removed
    assert (tmp_path / "out" / "X.npy").exists()


def test_a_partial_folder_left_under_this_process_id_is_replaced(tmp_path):
    data = labelled_csv(tmp_path / "data.csv")
    mine = tmp_path / f".out.partial-{os.getpid()}"  # left by an earlier process that had this id
    mine.mkdir()
    (mine / "X.npy").write_bytes(b"old")
    done = convert(data, tmp_path / "out")
    assert done.removed == [str(mine)] and sorted(os.listdir(tmp_path)) == ["data.csv", "out"]


def test_convert_stores_classes_in_sorted_order_across_rewrite_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr("gradfit.data.blocks.BLOCK_ROWS", 2)  # blocks of 2 rows, codes rewritten 32 at a time
    labels = ["zeta", "eta", "alpha", "eta"] * 25  # first seen in another order than the sorted classes
    rows = [[str(i), str(-i), label] for i, label in enumerate(labels)]
    data = write_csv(tmp_path / "data.csv", ["a", "b", "target"], rows)
    done = convert(data, tmp_path / "out")
    assert done.classes == ["alpha", "eta", "zeta"]
    stored = np.load(tmp_path / "out" / "y.npy")
    np.testing.assert_array_equal(stored, [done.classes.index(label) for label in labels])
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "X.npy")[:, 0], np.arange(100.0))


def test_partials_of_other_destinations_and_other_files_are_left_alone(tmp_path):
    data = labelled_csv(tmp_path / "data.csv")
    pid = finished_pid()
    others = [f".other.partial-{pid}", f".out.partial-{pid}x", ".out.partial-", "out.partial-1"]
    for name in others:
        (tmp_path / name).mkdir()
    convert(data, tmp_path / "out")
    assert all((tmp_path / name).is_dir() for name in others)


# ------------------------------------------------------------------------------------------------- a full disk


class FullDisk:
    """A file object that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, handle, room: int):
        self.handle, self.room, self.name = handle, room, handle.name

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= size
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


@pytest.mark.parametrize("full", ["X.npy", "meta.json"])
def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, monkeypatch, full):
    data = labelled_csv(tmp_path / "data.csv", rows=200)
    out = tmp_path / "out"
    if full == "X.npy":
        real_open = open

        def opened(path, mode="r", *args, **kwargs):
            handle = real_open(path, mode, *args, **kwargs)
            return FullDisk(handle, 2000) if Path(path).name == "X.npy" and "w" in mode else handle

        monkeypatch.setattr(convert_module, "open", opened, raising=False)
    else:

        def write_atomic(path, text):
            with files.write_atomic_stream(path, binary=True):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(files, "write_atomic", write_atomic)
    result = invoke("data", "convert", data, out, "-q")
    assert result.exit_code == 1, result.output  # a full disk is not the input's fault
    message = result.stderr.strip()
    assert message.startswith(f"error: {out / full}: No space left on device; "), message
    assert "free space on that disk or choose another destination" in message and len(message.splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["data.csv"]  # no output, no partial folder
    with pytest.raises(OSError, match="No space left on device"):
        convert(data, out)


def test_an_atomic_write_on_a_full_disk_names_the_file(tmp_path):
    target = tmp_path / "result.json"
    with pytest.raises(OSError) as caught:
        with files.write_atomic_stream(target) as handle:
            handle.write("{}")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert caught.value.filename == str(target) and caught.value.errno == errno.ENOSPC
    assert "free space" in caught.value.strerror
    assert os.listdir(tmp_path) == []
