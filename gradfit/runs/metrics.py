"""metrics.jsonl, the source of truth of a run's curves: its record keys, appending records, reading them back in a
bounded stream and setting aside the records after a checkpoint when a run resumes. No jax here."""

from __future__ import annotations

import io
import json
import math
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from gradfit import files
from gradfit.errors import RunDirError

MAX_METRICS_LINE_CHARS = 1 << 20  # a record is about 300 characters: a longer line is not one
MOVED_SPOOL_BYTES = 4 << 20  # truncate_metrics keeps up to this much of the lines it moves in memory
# the keys of a metrics.jsonl record (the columns of metrics.csv), in order
RECORD_KEYS = (
    "step",
    "epoch",
    "batch_objective",
    "batch_grad_norm",
    "objective",
    "train_loss",
    "grad_norm",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "elapsed_s",
)
#: a numeric target's records: its validation RMSE, MAE and R^2 where classes have an accuracy
REGRESSION_RECORD_KEYS = tuple(
    k for key in RECORD_KEYS for k in (("val_rmse", "val_mae", "val_r2") if key == "val_accuracy" else (key,))
)


def record_keys(regression: bool) -> tuple[str, ...]:
    """The keys of a run's metrics.jsonl records (the columns of its metrics.csv), in order."""
    return REGRESSION_RECORD_KEYS if regression else RECORD_KEYS


def append_jsonl(path: Path, records: Sequence[Mapping]) -> None:
    """Append one line per record, flushed so a crashing process loses nothing.

    Not fsynced: that made runs logging every step 12% slower, and what an OS crash could lose is logged
    again when the run resumes from its (fsynced) checkpoint.
    """
    with files.open_append(path, RunDirError) as f:
        f.write("".join(json.dumps(_flat_jsonable(record), allow_nan=False) + "\n" for record in records))


def _flat_jsonable(record: Mapping) -> dict:
    """A flat record of Python scalars with NaN and inf as None: ``to_jsonable``'s answer for it, 10x faster
    (metrics records are written by the hundred per chunk)."""
    return {key: None if type(value) is float and not math.isfinite(value) else value for key, value in record.items()}


def iter_metrics(path: Path, keys: Sequence[str] | None = None) -> Iterator[dict]:
    """The records of a metrics.jsonl, read one line at a time, with only ``keys`` (every key: None).

    Memory stays the same whatever the file's size; a torn last line (a crash mid-write) is left out.

    Raises:
        RunDirError: the file is not a regular file, not UTF-8, or a line before the last is not a metrics
            record (the file was edited by hand). Raised when the reading gets there.
    """
    for _, record in _metric_lines(path):
        if record is not None:
            yield record if keys is None else {key: record[key] for key in keys if key in record}


def _metric_lines(path: Path) -> Iterator[tuple[str, dict | None]]:
    """(line, record) for every line of a metrics.jsonl, in order; the record is None for a torn last line."""
    raw = files.open_regular(path, "metrics file", RunDirError)  # no size limit: memory does not grow with it
    with io.TextIOWrapper(raw, encoding="utf-8-sig") as text:  # closes raw; universal newlines, as splitlines()
        number, torn = 0, None
        while line := _read_line(text, path, number + 1):
            number += 1
            if torn is not None:
                raise RunDirError(
                    f"{path}, line {number - 1}: not a gradfit metrics record; the run directory was edited by hand"
                )
            line = line.removesuffix("\n")
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or type(record.get("step")) is not int:
                    raise TypeError
            except (ValueError, TypeError, RecursionError):
                torn = line  # an error unless it is the last line
                continue
            yield line, record
    if torn is not None:
        yield torn, None


def _read_line(text: IO[str], path: Path, number: int) -> str:
    """The next line ('' at the end), refused before it is read whole if it is longer than a record can be."""
    try:
        line = text.readline(MAX_METRICS_LINE_CHARS + 1)
    except UnicodeDecodeError as exc:
        raise RunDirError(f"{path}: metrics file is not UTF-8 text ({exc.reason} near line {number})") from None
    if len(line) > MAX_METRICS_LINE_CHARS:
        raise RunDirError(
            f"{path}, line {number}: longer than {MAX_METRICS_LINE_CHARS:,} characters, so not a gradfit metrics "
            "record; the run directory was edited by hand"
        )
    return line


class _Unchanged(Exception):
    """Nothing to move: the rewritten metrics.jsonl is thrown away."""


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the records of ``path`` up to ``step`` and move later ones to ``metrics.discarded.jsonl``.

    A run resumed from its step-``step`` checkpoint logs those steps again; this keeps metrics.jsonl free of
    duplicates without losing what was there. A torn last line (a crash mid-write) is moved too. One pass over
    the file in bounded memory: the moved lines wait in a temporary file once they pass ``MOVED_SPOOL_BYTES``.
    Returns the number of records moved.
    """
    path = Path(path)
    moved = 0
    with tempfile.SpooledTemporaryFile(MOVED_SPOOL_BYTES, dir=str(path.parent)) as spool:
        try:  # rewrite first: a failure in between must not let a retry discard the same lines twice
            with files.write_atomic_stream(path) as kept:
                for line, record in _metric_lines(path):
                    if record is not None and record["step"] <= step:
                        kept.write(line + "\n")
                    else:
                        spool.write((line + "\n").encode())
                        moved += 1
                if not moved:
                    raise _Unchanged
        except _Unchanged:
            return 0
        spool.seek(0)
        with files.open_append(path.with_name("metrics.discarded.jsonl"), RunDirError) as discarded:
            for raw_line in spool:  # a line at a time: none is split inside a character
                discarded.write(raw_line.decode())
    return moved
