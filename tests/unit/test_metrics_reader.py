"""Reading metrics.jsonl in a bounded stream (``runs.metrics.iter_metrics``, ``truncate_metrics``) and reducing a long
curve to a bounded number of points (``plot.Curve``): memory that does not grow with the file."""

from __future__ import annotations

import json
import math
import os
import tracemalloc
from pathlib import Path

import pytest

from gradfit.errors import RunDirError
from gradfit.runs.metrics import iter_metrics, truncate_metrics
from gradfit.runs.plot import Curve
from gradfit.runs.rundir import RunDir

LINES = 60_000  # about 11 MB of metrics.jsonl: the reader that held it whole peaked far above the bounds below


def record(step: int) -> dict:
    loss = 1 / (1 + step)
    return {
        "step": step,
        "epoch": step / 7,
        "batch_objective": loss,
        "objective": loss,
        "val_loss": loss + 0.1 if step % 10 == 0 else None,
        "learning_rate": 0.001,
        "elapsed_s": step * 1e-3,
    }


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """A metrics.jsonl of ``LINES`` records and a torn last line (the file is shared: copy it to change it)."""
    path = tmp_path_factory.mktemp("big") / "metrics.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record(step)) + "\n" for step in range(LINES))
        handle.write('{"step": 6000')
    return path


def peak_bytes(work) -> int:
    """The most memory Python held at once while ``work()`` ran, above what it held before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        work()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_reading_holds_one_line_at_a_time(big):
    seen = []
    peak = peak_bytes(lambda: seen.append(sum(1 for _ in iter_metrics(big))))
    assert seen == [LINES]
    assert peak < 1 << 20, f"{peak / 2**20:.1f} MiB held to read a {big.stat().st_size / 2**20:.0f} MiB file"


def test_truncating_holds_a_bounded_amount_of_memory_and_moves_exactly_the_later_lines(big, tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(big.read_bytes())
    lines = big.read_text().splitlines()
    moved = []
    peak = peak_bytes(lambda: moved.append(truncate_metrics(path, LINES - 101)))
    assert peak < 2 << 20, f"{peak / 2**20:.1f} MiB held to truncate a {big.stat().st_size / 2**20:.0f} MiB file"
    assert moved == [101]  # 100 later records and the torn line
    assert path.read_text() == "".join(line + "\n" for line in lines[: LINES - 100])
    assert (tmp_path / "metrics.discarded.jsonl").read_text() == "".join(line + "\n" for line in lines[LINES - 100 :])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.discarded.jsonl", "metrics.jsonl"]


def test_truncating_at_the_last_step_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 5}\n')
    before = os.stat(path)
    assert truncate_metrics(path, 5) == 0
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file, no discarded file


def test_truncating_keeps_records_by_step_not_by_position(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 9}\n{"step": 3}\n{"st')
    assert truncate_metrics(path, 5) == 2
    assert path.read_text() == '{"step": 0}\n{"step": 3}\n'
    assert (tmp_path / "metrics.discarded.jsonl").read_text() == '{"step": 9}\n{"st\n'


def test_the_reader_keeps_only_the_keys_asked_for(tmp_path):
    run = RunDir(tmp_path)
    run.metrics_file.write_text('{"step": 0, "a": 1, "b": 2}\r\n{"step": 5, "b": 3}\n{"ste')
    assert list(run.iter_metrics(("step", "a"))) == [{"step": 0, "a": 1}, {"step": 5}]
    assert run.metrics() == [{"step": 0, "a": 1, "b": 2}, {"step": 5, "b": 3}]


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"step": 0}\n{"oops"}\n{"step": 5}\n', r"line 2: not a gradfit metrics record"),
        (b'{"step": 0}\n\n{"step": 5}\n', r"line 2: not a gradfit metrics record"),
        (b'{"step": 0}\n{"step": "5"}\n{"step": 6}\n', r"line 2: not a gradfit metrics record"),
        (b'{"step": 0}\n{"step": 1, "x": "\xff"}\n', r"not UTF-8 text"),
        (b'{"step": 0}\n{"step": 1, "x": "' + b"a" * (2 << 20) + b'"}\n{"step": 2}\n', r"line 2: longer than"),
    ],
)
def test_a_damaged_file_is_a_run_dir_error_naming_the_line(tmp_path, content, message):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(content)
    with pytest.raises(RunDirError, match=message):
        list(iter_metrics(path))


def test_a_fifo_is_refused_without_hanging(tmp_path):
    path = tmp_path / "metrics.jsonl"
    os.mkfifo(path)
    with pytest.raises(RunDirError, match="FIFO"):
        list(iter_metrics(path))


# ------------------------------------------------------------------------------------------------ plot.Curve


def test_a_short_curve_is_kept_exactly():
    curve = Curve(limit=50)
    for step in range(50):
        curve.add(step, math.sin(step))
    assert curve.points() == (list(range(50)), [math.sin(step) for step in range(50)])


@pytest.mark.parametrize("count", [51, 52, 1000, 12_345])
def test_a_long_curve_keeps_its_ends_and_extremes_within_the_limit(count):
    curve = Curve(limit=50)
    values = [
        math.sin(step / 50) + (5.0 if step == count // 3 else 0.0) - (7.0 if step == count // 2 else 0.0)
        for step in range(count)
    ]
    for step, value in enumerate(values):
        curve.add(step, value)
    steps, kept = curve.points()
    assert len(steps) <= 50 and curve.count == count
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == count - 1  # in order, first and last kept
    assert kept == [values[step] for step in steps]
    assert max(kept) == max(values) and min(kept) == min(values)  # a spike survives the reduction
    assert len(steps) >= 20  # and the shape keeps enough points to show it
