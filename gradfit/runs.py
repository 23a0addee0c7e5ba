"""Run directories: unique names, atomic writes, metrics, params. Nothing existing is ever overwritten.

Layout of ``<out_dir>/<name>-<YYYYmmdd-HHMMSS>[-n]/``:
    config.yaml         fully resolved config (loadable by `gradfit train`), versions and device as comments
    preprocessing.json  feature names, label mapping, standardization mean/std
    metrics.jsonl       one JSON object per log point
    params.npz          final parameters (the best ones under early stopping), keyed by pytree path; no pickle
    summary.json        outcome, timings and final metrics
    checkpoints/        step-NNNNNNNN.npz files to resume from (see gradfit.checkpoints)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from gradfit import files
from gradfit.abort import removed_on_abort
from gradfit.errors import RunDirError
from gradfit.files import write_atomic  # noqa: F401  (a run's files are written this way)


def create_run_dir(parent: str | Path, name: str, now: Optional[_dt.datetime] = None) -> Path:
    """Make a fresh directory ``parent/name-timestamp``, adding ``-2``, ``-3``... if that exists.

    ``os.mkdir`` is atomic, so two runs started in the same second still get distinct directories.
    """
    parent = Path(parent)
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create output directory {parent}: {exc.strerror}") from None
    for n in range(1, 10_000):
        candidate = parent / (f"{name}-{stamp}" if n == 1 else f"{name}-{stamp}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {candidate}: {exc.strerror}") from None
    raise RunDirError(f"too many runs named {name}-{stamp} in {parent}")


def check_run_dir(path: Path) -> Path:
    """``path`` if it is a run directory made by gradfit train, else a RunDirError saying what it is instead."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory" if not path.exists() else f"{path}: not a directory")
    for name in ("config.yaml", "metrics.jsonl"):
        with contextlib.suppress(OSError):
            mode = os.stat(path / name).st_mode
            if not stat.S_ISREG(mode):
                raise RunDirError(f"{path / name}: {files.kind(mode)}, not a regular file; is {path} a gradfit run "
                                  "directory someone altered?")
    missing = [name for name in ("config.yaml", "metrics.jsonl") if not (path / name).is_file()]
    if missing:
        raise RunDirError(f"{path}: not a gradfit run directory (it has no {' and no '.join(missing)}); "
                          "pass a folder made by gradfit train, e.g. runs/<name>-<timestamp>")
    return path


@contextlib.contextmanager
def fresh(parent: str | Path, name: str):
    """A new run directory (``create_run_dir``) that, within the block, has not started: a failure (a full disk
    while config.yaml is written) or a signal that ends the process removes the whole folder, so nothing
    half-made is left. No signal can land between its creation and that promise."""
    with removed_on_abort(lambda: create_run_dir(parent, name)) as run_dir:
        try:
            yield run_dir
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise


MAX_METRICS_BYTES = 4 << 30  # metrics.jsonl: 10 million log points

RUN_FILES = ("config.yaml", "preprocessing.json", "metrics.jsonl", "metrics.discarded.jsonl", "params.npz",
             "summary.json", ".lock")


def own_files(run_dir: Path) -> list[Path]:
    """The files gradfit keeps in a run directory (existing or not): never a place for a command's output."""
    run_dir = Path(run_dir)
    return [run_dir / name for name in RUN_FILES] + sorted((run_dir / "checkpoints").glob("*.npz"))


@contextlib.contextmanager
def locked(run_dir: Path):
    """Hold an exclusive lock on the run directory, so two processes never write the same run.

    An OS file lock, released by the kernel when the process dies, so a killed run never leaves it stale.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; rely on the user
        yield
        return
    with files.open_append(Path(run_dir) / ".lock", RunDirError) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunDirError(f"{run_dir}: another gradfit process is writing this run; wait for it to "
                              "finish or stop it") from None
        yield


def to_jsonable(value: Any) -> Any:
    """NumPy scalars/arrays to Python; NaN and inf to None (JSON has no such numbers)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n")


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
    return {key: None if type(value) is float and not math.isfinite(value) else value
            for key, value in record.items()}


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the records of ``path`` up to ``step`` and move later ones to ``metrics.discarded.jsonl``.

    A run resumed from its step-``step`` checkpoint logs those steps again; this keeps metrics.jsonl free of
    duplicates without losing what was there. A torn last line (a crash mid-write) is moved too.
    Returns the number of records moved.
    """
    lines = files.read_text(path, "metrics file", RunDirError, MAX_METRICS_BYTES).splitlines()
    kept, moved = [], []
    for number, line in enumerate(lines, 1):
        try:
            record_step = json.loads(line)["step"]
            if not isinstance(record_step, int):
                raise TypeError
        except (ValueError, KeyError, TypeError, RecursionError):
            if number < len(lines):
                raise RunDirError(f"{path}, line {number}: not a gradfit metrics record; the run directory was "
                                  "edited by hand") from None
            moved.append(line)
            continue
        (kept if record_step <= step else moved).append(line)
    if moved:  # rewrite first: a failure in between must not let a retry discard the same lines twice
        write_atomic(path, "".join(line + "\n" for line in kept))
        with files.open_append(Path(path).with_name("metrics.discarded.jsonl"), RunDirError) as f:
            f.write("".join(line + "\n" for line in moved))
    return len(moved)


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically write named arrays as .npz (object arrays are refused: nothing needs unpickling)."""
    files.save_npz(path, arrays)


def load_arrays(path: Path, expected: Optional[Mapping[str, Sequence[int]]] = None) -> dict[str, np.ndarray]:
    """The arrays of a run's .npz file, checked before allocation (see ``files.load_npz``)."""
    return files.load_npz(path, "array file", RunDirError, expected)
