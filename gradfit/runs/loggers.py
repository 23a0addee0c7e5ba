"""Derived metric logs of a run: ``metrics.csv`` and TensorBoard event files.

``metrics.jsonl`` is the source of truth (``runs.metrics.append_jsonl`` writes it; the "jsonl" logger is always
on). The files here are made from the same records, so they can always be remade from it: on resume, after
``runs.metrics.truncate_metrics``, ``MetricLoggers.rebuild`` replaces those still asked for with ones made from the
kept records and removes those no longer asked for (they would end at the resume step). A value
metrics.jsonl stores as null (None, missing, NaN, inf) is an empty CSV cell and no TensorBoard point, so a file
written live and one rebuilt from metrics.jsonl are the same. No jax; tensorboardX is imported only when asked for.
"""

from __future__ import annotations

import csv
import io
import math
import numbers
import socket
import struct
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

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
            raise ConfigError(
                "train.loggers: tensorboard needs tensorboardX: pip install 'gradfit[tensorboard]' "
                f"(or remove it from train.loggers){reason}"
            ) from None


class MetricLoggers:
    """Writes each batch of metrics records to the run's derived logs. Every ``append`` opens, writes and closes
    its files: nothing is lost that metrics.jsonl has, and a sweep of a thousand members holds no file open.
    Files are made on the first ``append``: a run that never logs leaves none.
    """

    def __init__(self, run_dir: Path, names: Sequence[str], columns: Sequence[str]):
        check_available(names)
        self.run_dir = Path(run_dir)
        self.columns = tuple(columns)
        self.csv = "csv" in names
        self.tensorboard = "tensorboard" in names
        self._events: Path | None = None  # this session's event file

    @property
    def csv_path(self) -> Path:
        return self.run_dir / CSV_NAME

    @property
    def active(self) -> bool:
        """True when ``rebuild`` has work on resume: derived logs asked for, or left by an earlier session."""
        return self.csv or self.tensorboard or self.csv_path.is_file() or any(self.run_dir.glob(EVENTS_GLOB))

    def append(self, records: Sequence[Mapping]) -> None:
        """Add ``records`` (flat dicts with a "step") after those already written."""
        if not records:
            return
        if self.csv:
            with _open_csv(self.csv_path, self.columns) as handle:
                handle.write(_csv_text(records, self.columns))
        if self.tensorboard:
            if self._events is None:
                self._events = _new_event_file(self.run_dir)
            _append_events(self._events, records)

    def rebuild(self, records: Sequence[Mapping]) -> list[str]:
        """Make the derived logs asked for again from exactly ``records`` (the kept part of metrics.jsonl on
        resume; TensorBoard would show two points per step otherwise), which later ``append`` calls continue.

        Those an earlier session left and this one does not ask for are removed: nothing would continue them, so
        they would end at the resume step while the run goes on, and metrics.jsonl holds every record they held.
        Returns the names of the files removed that way.
        """
        removed = []
        if self.csv:
            files.write_atomic(self.csv_path, _csv_text(records, self.columns, header=True))
        elif self.csv_path.is_file():
            self.csv_path.unlink()
            removed.append(CSV_NAME)
        old = sorted(self.run_dir.glob(EVENTS_GLOB))
        self._events = None
        if self.tensorboard and records:
            # the new file is complete before the old ones go: a crash in between leaves duplicates, not a gap
            self._events = _new_event_file(self.run_dir)
            _append_events(self._events, records)
        for path in old:
            path.unlink(missing_ok=True)
        return removed if self.tensorboard else removed + [path.name for path in old]


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
        raise RunDirError(
            f"{path}: its header is {existing.strip()!r}, not {header.strip()!r}; move it away "
            "and resume the run, which writes it again from metrics.jsonl"
        )
    handle = files.open_append(path, RunDirError)
    if not existing:
        handle.write(header)
    return handle


def _new_event_file(run_dir: Path) -> Path:
    """A new event file in ``run_dir`` holding the file-version event TensorBoard expects first.

    Written here rather than by tensorboardX's SummaryWriter: its flush() misses events still queued for its
    writer thread, and two writers opened in one second in one folder get the same file name, the second
    truncating the first. A random suffix keeps names apart (TensorBoard reads every file with "tfevents" in it).
    """
    _, Event, _ = _tensorboardx()
    path = run_dir / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{uuid.uuid4().hex[:12]}"
    _write_records(path, [Event(wall_time=time.time(), file_version="brain.Event:2")], "xb")
    return path


def _append_events(path: Path, records: Sequence[Mapping]) -> None:
    """One event per record: a scalar per finite number but "step", tagged with its key as in metrics.jsonl."""
    _, Event, Summary = _tensorboardx()
    events = []
    for record in records:
        values = [
            Summary.Value(tag=key, simple_value=float(value))
            for key, value in record.items()
            if key != "step" and isinstance(value, numbers.Real) and math.isfinite(value)
        ]
        if values:
            events.append(Event(wall_time=time.time(), step=int(record["step"]), summary=Summary(value=values)))
    _write_records(path, events, "ab")


def _write_records(path: Path, events: Sequence[Any], mode: str) -> None:
    """Events in TFRecord framing: length (8 bytes, little-endian), its masked CRC-32C, the payload, its CRC."""
    masked_crc32c, _, _ = _tensorboardx()
    with open(path, mode) as handle:
        for event in events:
            payload = event.SerializeToString()
            length = struct.pack("<Q", len(payload))
            handle.write(
                length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))
            )


def _tensorboardx():
    """(masked_crc32c, Event, Summary) from tensorboardX, without PyTorch.

    tensorboardX's package imports PyTorch where it is installed, for writers gradfit does not use: 2 s and 190 MB
    more per run (measured). So torch, unless something imported it already, reads as absent during the import
    (tensorboardX then falls back to NumPy) and is importable again afterwards.
    """
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None
    try:
        import tensorboardX  # noqa: F401  (first: a submodule imported earlier would not say it is gone)
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.record_writer import masked_crc32c
    finally:
        if blocked:
            del sys.modules["torch"]
    return masked_crc32c, Event, Summary
