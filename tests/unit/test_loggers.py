"""Derived metric logs (metrics.csv, TensorBoard event files): read back, they hold exactly the records given,
across appends and after the rebuild that resuming a run does."""

from __future__ import annotations

import math
import sys
import threading

import numpy as np
import pytest
from logfiles import read_csv, read_events

from gradfit.errors import ConfigError, RunDirError
from gradfit.runs.loggers import MetricLoggers, check_available

COLUMNS = ("step", "epoch", "batch_objective", "objective", "val_loss", "val_accuracy", "learning_rate", "elapsed_s")


def make_records(steps, shift: float = 0.0) -> list[dict]:
    """Records as the loop writes them: validation only every other log point, one key missing entirely."""
    records = []
    for step in steps:
        record = {
            "step": step,
            "epoch": step // 20,
            "batch_objective": 0.7 / (step + 1) + shift,
            "objective": 1 / 3 + step * 1e-3 + shift,
            "learning_rate": 0.1 * 0.99**step,
            "elapsed_s": 0.1 + 0.2 * step,
        }
        record.update(
            {"val_loss": 0.5 + shift + step / 7, "val_accuracy": 0.9} if step % 20 == 0 else {"val_loss": None}
        )
        records.append(record)
    return records


def expected_rows(records, columns=COLUMNS) -> list[dict]:
    return [{key: record.get(key) for key in columns} for record in records]


def expected_points(records) -> dict[tuple[str, int], float]:
    return {
        (key, record["step"]): value
        for record in records
        for key, value in record.items()
        if key != "step" and value is not None
    }


def assert_points_match(points, records) -> None:
    """Each (tag, step) once, at the record's value to float32 precision (TensorBoard stores float32)."""
    keys = [(tag, step) for tag, step, _ in points]
    assert len(keys) == len(set(keys)), "a (tag, step) is written twice"
    got = {(tag, step): value for tag, step, value in points}
    want = expected_points(records)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert math.isclose(got[key], value, rel_tol=1e-6), key


# ---------------------------------------------------------------------------------------------------- csv


def test_csv_reads_back_exactly_across_appends(tmp_path):
    first, second = make_records(range(0, 30, 10)), make_records(range(30, 60, 10))
    loggers = MetricLoggers(tmp_path, ["jsonl", "csv"], COLUMNS)
    loggers.append(first)
    header, rows = read_csv(tmp_path / "metrics.csv")  # flushed: readable while the run goes on
    assert rows == expected_rows(first)
    loggers.append(second)
    loggers = MetricLoggers(tmp_path, ["csv"], COLUMNS)  # a later process appends under the same header
    loggers.append(make_records([60]))
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert header == list(COLUMNS)
    assert rows == expected_rows(first + second + make_records([60]))  # == on floats: exact, not close
    assert (tmp_path / "metrics.csv").read_text().count("step") == 1


def test_csv_rebuild_replaces_the_file(tmp_path):
    loggers = MetricLoggers(tmp_path, ["csv"], COLUMNS)
    loggers.append(make_records(range(0, 60, 10)))
    loggers.rebuild(make_records(range(0, 40, 10)))
    loggers.append(make_records(range(40, 70, 10), shift=1.0))
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert header == list(COLUMNS)
    assert rows == expected_rows(make_records(range(0, 40, 10)) + make_records(range(40, 70, 10), shift=1.0))


def test_csv_cells_match_what_metrics_jsonl_stores(tmp_path):
    """Floats by repr (0.1 + 0.2 and 1e-300 read back exactly), NumPy scalars as plain numbers, and NaN/inf
    empty, as metrics.jsonl stores them as null: a file written live equals one rebuilt from metrics.jsonl."""
    record = {
        "step": np.int64(7),
        "objective": 0.1 + 0.2,
        "val_loss": 1e-300,
        "learning_rate": np.float32(0.5),
        "batch_objective": float("nan"),
        "elapsed_s": float("inf"),
    }
    loggers = MetricLoggers(tmp_path, ["csv"], COLUMNS)
    loggers.append([record])
    text = (tmp_path / "metrics.csv").read_text()
    assert text.splitlines()[1] == "7,,,0.30000000000000004,1e-300,,0.5,"
    _, rows = read_csv(tmp_path / "metrics.csv")
    assert rows[0]["objective"] == 0.1 + 0.2 and rows[0]["batch_objective"] is None


def test_csv_with_other_columns_is_not_appended_to(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,loss\n0,1.0\n")
    loggers = MetricLoggers(tmp_path, ["csv"], COLUMNS)
    with pytest.raises(RunDirError, match="metrics.csv"):
        loggers.append(make_records([10]))
    assert (tmp_path / "metrics.csv").read_text() == "step,loss\n0,1.0\n"


# ---------------------------------------------------------------------------------------------------- tensorboard


def test_tensorboard_points_match_records(tmp_path):
    pytest.importorskip("tensorboardX")
    records = make_records(range(0, 60, 10))
    threads = set(threading.enumerate())
    loggers = MetricLoggers(tmp_path, ["jsonl", "tensorboard"], COLUMNS)
    loggers.append(records[:3])
    assert_points_match(read_events(tmp_path), records[:3])  # on disk when append returns
    loggers.append(records[3:])
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    assert_points_match(read_events(tmp_path), records)
    assert set(threading.enumerate()) <= threads, "a writer thread was left running"


def test_rebuild_removes_the_logs_an_earlier_session_asked_for_and_this_one_does_not(tmp_path):
    """Kept, they would end at the resume step while the run goes on: metrics.jsonl holds all they held."""
    pytest.importorskip("tensorboardX")
    MetricLoggers(tmp_path, ["csv", "tensorboard"], COLUMNS).append(make_records([0, 10, 20, 30]))
    (events,) = tmp_path.glob("events.out.tfevents.*")
    resumed = MetricLoggers(tmp_path, ["jsonl"], COLUMNS)  # resumed from step 10 with the derived logs dropped
    assert resumed.rebuild(make_records([0, 10])) == ["metrics.csv", events.name]
    resumed.append(make_records([20, 30]))
    assert list(tmp_path.iterdir()) == []


def test_rebuild_keeps_what_is_still_asked_for_and_removes_the_rest(tmp_path):
    pytest.importorskip("tensorboardX")
    MetricLoggers(tmp_path, ["csv", "tensorboard"], COLUMNS).append(make_records([0, 10, 20, 30]))
    resumed = MetricLoggers(tmp_path, ["csv"], COLUMNS)
    assert resumed.rebuild(make_records([0, 10]))[0].startswith("events.out.tfevents.")
    resumed.append(make_records([20, 30], shift=1.0))
    assert read_csv(tmp_path / "metrics.csv")[1] == expected_rows(make_records([0, 10]) + make_records([20, 30], 1.0))
    assert not list(tmp_path.glob("events.out.tfevents.*"))


def test_appends_hold_no_file_open(tmp_path):
    """A sweep of many members keeps a logger each: none may hold a file descriptor between appends."""
    import os

    pytest.importorskip("tensorboardX")
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    loggers = [MetricLoggers(tmp_path / str(i), ["csv", "tensorboard"], COLUMNS) for i in range(20)]
    for i, logger in enumerate(loggers):
        (tmp_path / str(i)).mkdir()
        logger.append(make_records([0, 10]))
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) <= before


def test_tensorboard_after_resume_has_each_step_once(tmp_path):
    """A run logged steps 0..50, was resumed from its step-30 checkpoint and logged 40..60 again."""
    pytest.importorskip("tensorboardX")
    loggers = MetricLoggers(tmp_path, ["tensorboard"], COLUMNS)
    loggers.append(make_records(range(0, 60, 10)))
    kept, relogged = make_records(range(0, 40, 10)), make_records(range(40, 70, 10), shift=1.0)
    loggers = MetricLoggers(tmp_path, ["tensorboard", "csv"], COLUMNS)  # the resuming process
    loggers.rebuild(kept)
    loggers.append(relogged)
    assert_points_match(read_events(tmp_path), kept + relogged)
    assert read_csv(tmp_path / "metrics.csv")[1] == expected_rows(kept + relogged)


def test_tensorboard_rebuild_twice_in_one_second_keeps_the_new_file(tmp_path):
    """tensorboardX names files by the second: two files made in one second must not share a name."""
    pytest.importorskip("tensorboardX")
    loggers = MetricLoggers(tmp_path, ["tensorboard"], COLUMNS)
    loggers.append(make_records([0, 10]))
    loggers.rebuild(make_records([0]))
    loggers.rebuild(make_records([0, 10], shift=2.0))
    assert_points_match(read_events(tmp_path), make_records([0, 10], shift=2.0))


def test_rebuild_with_no_records_leaves_no_event_file(tmp_path):
    pytest.importorskip("tensorboardX")
    loggers = MetricLoggers(tmp_path, ["tensorboard"], COLUMNS)
    loggers.append(make_records([0]))
    loggers.rebuild([])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------- choosing loggers


@pytest.mark.parametrize("names", [[], ["jsonl"]])
def test_jsonl_only_writes_nothing(tmp_path, names):
    loggers = MetricLoggers(tmp_path, names, COLUMNS)
    loggers.append(make_records([0, 10]))
    loggers.rebuild(make_records([0]))
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_never_logs_leaves_no_file(tmp_path):
    pytest.importorskip("tensorboardX")
    loggers = MetricLoggers(tmp_path, ["csv", "tensorboard"], COLUMNS)
    loggers.append([])
    assert list(tmp_path.iterdir()) == []


def test_check_available(monkeypatch):
    check_available(["jsonl", "csv"])
    with pytest.raises(ConfigError, match="unknown logger 'wandb'"):
        check_available(["jsonl", "wandb"])
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # what `import tensorboardX` sees when it is missing
    check_available(["jsonl", "csv"])
    with pytest.raises(
        ConfigError,
        match=r"train.loggers: tensorboard needs tensorboardX: pip install "
        r"'gradfit\[tensorboard\]' \(or remove it from train.loggers\)$",
    ):
        check_available(["csv", "tensorboard"])
