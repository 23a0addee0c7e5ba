"""Derived metric logs of a run: ``metrics.csv`` and TensorBoard event files.

``metrics.jsonl`` is the source of truth (``runs.append_jsonl`` writes it; the "jsonl" logger is always on). The
files here are made from the same records, so they can always be remade from it: on resume, after
``runs.truncate_metrics``, ``MetricLoggers.rebuild`` replaces them with ones made from the kept records. A value
metrics.jsonl stores as null (None, missing, NaN, inf) is an empty CSV cell and no TensorBoard point, so a file
written live and one rebuilt from metrics.jsonl are the same. No jax; tensorboardX is imported only when asked for.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any, Mapping, Optional, Sequence

from gradfit import files
from gradfit.errors import ConfigError, RunDirError, first_line

LOGGERS = ("jsonl", "csv", "tensorboard")
CSV_NAME = "metrics.csv"
EVENTS_GLOB = "events.out.tfevents.*"  # tensorboardX's file names: events.out.tfevents.<seconds>.<host><suffix>


def check_available(names: Sequence[str]) -> None:
    """Check that every logger in ``names`` is known and can run here; call it before the run directory is made.


    Raises:
        ConfigError: an unknown name, or "tensorboard" without an importable tensorboardX.
    """
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"train.loggers: unknown logger {name!r}; choose from {', '.join(LOGGERS)}")
    if "tensorboard" in names:
        try:
            _tensorboardx()
        except Exception as exc:  # ImportError, or a broken install (say, a protobuf it cannot load)
            reason = "" if isinstance(exc, ImportError) else f" (importing it failed: {first_line(exc)})"
            raise ConfigError("train.loggers: tensorboard needs tensorboardX: pip install 'gradfit[tensorboard]' "
                              f"(or remove it from train.loggers){reason}") from None


class MetricLoggers:
    """Writes each batch of metrics records to the run's derived logs, flushed so a crash loses nothing that
    metrics.jsonl has. Files are made on the first ``append``: a run that never logs leaves none.

    Example:
        with MetricLoggers(run_dir, ["jsonl", "csv", "tensorboard"], RECORD_KEYS) as loggers:
            loggers.append(records)
    """

    def __init__(self, run_dir: Path, names: Sequence[str], columns: Sequence[str]):
        check_available(names)
        self.run_dir = Path(run_dir)
        self.columns = tuple(columns)
        self.csv_path: Optional[Path] = self.run_dir / CSV_NAME if "csv" in names else None
        self.tensorboard = "tensorboard" in names
        self._csv: Optional[IO[str]] = None
        self._events: Any = None  # a tensorboardX EventsWriter

    def append(self, records: Sequence[Mapping]) -> None:
        """Add ``records`` (flat dicts with a "step") after those already written."""
        if not records:
            return
        if self.csv_path is not None:
            if self._csv is None:
                self._csv = _open_csv(self.csv_path, self.columns)
            self._csv.write(_csv_text(records, self.columns))
            self._csv.flush()
        if self.tensorboard:
            if self._events is None:
                self._events = _open_events(self.run_dir)
            _write_events(self._events, records)

    def rebuild(self, records: Sequence[Mapping]) -> None:
        """Replace the derived logs with ones made from exactly ``records`` (the kept part of metrics.jsonl on
        resume); later ``append`` calls continue them. TensorBoard would show two points per step otherwise."""
        self.close()
        if self.csv_path is not None:
            files.write_atomic(self.csv_path, _csv_text(records, self.columns, header=True))
        if self.tensorboard:
            # the new file is complete before the old ones go: a crash in between leaves duplicates, not a gap
            old = list(self.run_dir.glob(EVENTS_GLOB))
            if records:
                self._events = _open_events(self.run_dir)
                _write_events(self._events, records)
            for path in old:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the open files (idempotent)."""
        for handle in (self._csv, self._events):
            if handle is not None:
                handle.close()
        self._csv = self._events = None

    def __enter__(self) -> MetricLoggers:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _cell(value: Any) -> str:
    """A CSV cell: integers as digits, floats by ``repr`` (reads back exactly), null-like values empty."""
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        value = float(value)  # repr(np.float32(1)) is 'np.float32(1.0)'
        return repr(value) if math.isfinite(value) else ""
    return "" if value is None else str(value)


def _csv_text(records: Sequence[Mapping], columns: Sequence[str], header: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    writer.writerows([_cell(record.get(column)) for column in columns] for record in records)
    return buffer.getvalue()


def _open_csv(path: Path, columns: Sequence[str]) -> IO[str]:
    """``path`` opened for appending, its header written if it is new; one naming other columns is refused, since
    appending to it would put values under the wrong names."""
    header = _csv_text([], columns, header=True)
    existing = ""
    if path.exists():
        with files.open_regular(path, "metrics file", RunDirError) as reader:
            existing = reader.readline(len(header.encode()) + 1).decode("utf-8", "replace")
    if existing and existing != header:
        raise RunDirError(f"{path}: its header is {existing.strip()!r}, not {header.strip()!r}; move it away "
                          "and resume the run, which writes it again from metrics.jsonl")
    handle = files.open_append(path, RunDirError)
    if not existing:
        handle.write(header)
    return handle


def _open_events(run_dir: Path):
    """A new event file in ``run_dir``, written synchronously.

    Not tensorboardX's SummaryWriter: its flush() misses events still queued for its writer thread, and two
    writers opened in one second in one folder get the same file name, the second truncating the first. A
    random suffix keeps names apart (TensorBoard reads every file with "tfevents" in its name).
    """
    EventsWriter, _, _ = _tensorboardx()
    return EventsWriter(str(run_dir / "events"), f".{uuid.uuid4().hex[:12]}")


def _write_events(writer, records: Sequence[Mapping]) -> None:
    """One event per record: a scalar per finite number but "step", tagged with its key as in metrics.jsonl."""
    _, Event, Summary = _tensorboardx()

    for record in records:
        values = [Summary.Value(tag=key, simple_value=float(value)) for key, value in record.items()
                  if key != "step" and isinstance(value, numbers.Real) and math.isfinite(value)]
        if values:
            writer.write_event(Event(wall_time=time.time(), step=int(record["step"]), summary=Summary(value=values)))
    writer.flush()


def _tensorboardx():
    """(EventsWriter, Event, Summary) from tensorboardX, without PyTorch.

    tensorboardX's package imports PyTorch where it is installed, for writers gradfit does not use: 2 s and 190 MB
    more per run (measured). So torch, unless something imported it already, reads as absent during the import
    (tensorboardX then falls back to NumPy) and is importable again afterwards.
    """
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import tensorboardX  # noqa: F401  (first: a submodule imported earlier would not say it is gone)
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
    finally:
        if blocked:
            del sys.modules["torch"]
    return EventsWriter, Event, Summary
