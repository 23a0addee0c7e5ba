"""``gradfit data convert`` and ``gradfit data describe``: one streamed pass over a table, in flat memory.

A converted folder holds ``X.npy`` (rows x features, float64 unless asked otherwise), ``y.npy`` (int32: each
row's index into the classes) and ``meta.json`` (feature names, classes in ``encode_labels`` order, row count,
where it came from). Training memory-maps it and can stream it (``data.in_memory: false``); eval and predict
read it like any table. The folder is written under a temporary name (``.OUT.partial-PID``, its writer holding an
flock on ``.lock`` inside it) and renamed when complete: an interrupted or failed conversion leaves nothing, and an
existing folder is replaced only with ``force`` and only if it is itself a converted folder. A conversion killed
with SIGKILL (which no process can catch) leaves its partial folder; the next conversion to the same place removes
it, and never the folder of a conversion still running. No jax.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import stat
import struct
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import numpy as np

from gradfit import files
from gradfit.abort import removed_on_abort
from gradfit.data import blocks, tabular
from gradfit.data.converted import CONVERTED_FILES, CONVERTED_FORMAT, read_meta
from gradfit.data.labels import LabelIndex, Labels, class_index
from gradfit.errors import GradfitError

HEADER_BYTES = 256  # a reserved .npy header: rewritten with the row count at the end, without moving the data
LOCK = ".lock"  # in a partial folder: its writer holds an exclusive flock on it until the folder is complete
Progress = Callable[[int, int], None]  # (done, total) bytes: of a CSV's text, or of an array file's features


@dataclasses.dataclass(frozen=True)
class Conversion:
    out_dir: str
    source: str
    rows: int
    features: int
    classes: list
    dtype: str
    bytes_in: int
    bytes_out: int
    seconds: float
    removed: list[str] = dataclasses.field(default_factory=list)  # partial folders of killed conversions

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / max(self.seconds, 1e-9)


def convert(
    source: Path,
    out_dir: Path,
    target: str = "target",
    dtype: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    categorical: Collection[str] | str = "auto",
) -> Conversion:
    """Convert a table with labels (CSV, Parquet, Feather, .npz or converted folder) into a converted folder.

    Args:
        dtype: "float32" or "float64" for X; None keeps the source's (float64 for a CSV: no rounding).
        force: replace ``out_dir`` if it is a converted folder (anything else is never replaced).
        categorical: the categorical columns, stored as codes into meta.json's ``categorical`` dictionaries;
            "auto": every column whose cells are not numbers. Missing cells are stored as NaN.
    """
    source, out_dir = Path(source), Path(out_dir)
    _check_out_dir(source, out_dir, force)
    tick = time.perf_counter()
    removed = _remove_stale_partials(out_dir)
    table = tabular.open_table(source, target, categorical=categorical)
    partial = out_dir.parent / f"{_partial_prefix(out_dir)}{os.getpid()}"
    try:
        with _partial_folder(partial):
            rows, classes, x_dtype = _write_arrays(table, partial, dtype, progress)
            meta = {
                "format": CONVERTED_FORMAT,
                "version": 1,
                "rows": rows,
                "feature_names": table.names,
                "categorical": table.categories.dictionaries,
                "classes": classes,
                "target": table.target,
                "dtype": x_dtype,
                "source": str(source),
            }
            files.write_atomic(partial / "meta.json", json.dumps(meta, indent=1) + "\n")
            (partial / LOCK).unlink()  # a converted folder holds its three files only; the lock stays held
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(partial, out_dir)
    except OSError as exc:
        raise _write_failed(exc, partial, out_dir) from None
    written = sum(os.path.getsize(out_dir / name) for name in CONVERTED_FILES)
    in_bytes = (
        os.path.getsize(source) if source.is_file() else sum(os.path.getsize(source / name) for name in CONVERTED_FILES)
    )
    return Conversion(
        str(out_dir),
        str(source),
        rows,
        len(table.names),
        classes,
        x_dtype,
        in_bytes,
        written,
        time.perf_counter() - tick,
        removed,
    )


def _write_failed(exc: OSError, partial: Path, out_dir: Path) -> OSError:
    """The error for an OSError met while writing the partial folder: it names what the user asked for (the file
    of ``out_dir`` being written), since the partial folder is gone by the time the message is read."""
    where = Path(exc.filename) if exc.filename else None
    if where is None or partial not in (where, where.parent):  # not one of our writes (reading the source, say)
        return exc
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = "; free space on that disk or choose another destination" if exc.errno in files.FULL_DISK else ""
    named = out_dir / where.name if where != partial else out_dir
    return OSError(exc.errno, f"{reason}{hint} (nothing was left behind)", str(named))  # exit 1, as everywhere


def _check_out_dir(source: Path, out_dir: Path, force: bool) -> None:
    if os.path.realpath(source) == os.path.realpath(out_dir):
        raise GradfitError(f"{out_dir}: that is the data being converted; choose another folder")
    if not out_dir.exists() and not out_dir.is_symlink():
        if not out_dir.parent.is_dir():
            raise GradfitError(f"{out_dir}: its parent folder {out_dir.parent} does not exist")
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise GradfitError(f"{out_dir}: exists and is not a folder; choose another name")
    try:
        converted = set(os.listdir(out_dir)) <= set(CONVERTED_FILES) and bool(read_meta(out_dir))
    except GradfitError:  # a meta.json of its own: not ours to replace
        converted = False
    if not converted:
        raise GradfitError(
            f"{out_dir}: exists and is not a folder made by 'gradfit data convert'; gradfit never "
            "replaces it: choose another name"
        )
    if not force:
        raise GradfitError(f"{out_dir}: already exists; pass --force to replace it, or choose another name")


# ---------------------------------------------------------------------------------------------------- partial folders


def _partial_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}.partial-"


@contextlib.contextmanager
def _partial_folder(partial: Path) -> Iterator[None]:
    """Make the folder ``partial`` and hold an flock on its ``.lock`` (released by the kernel however the process
    ends) until the block ends; the folder is removed if the block fails or a signal ends the process."""
    held: list[int] = []

    def make() -> Path:
        partial.mkdir()
        try:
            held.append(_take_lock(partial / LOCK))
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return partial

    try:
        with removed_on_abort(make):
            try:
                yield
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
    finally:
        for fd in held:
            os.close(fd)


def _take_lock(path: Path) -> int:
    """Create ``path``, hold an exclusive flock on it and write this process's id into it; returns its descriptor.

    The id is written once the lock is held: an empty lock file is one whose writer has not taken it yet."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        with contextlib.suppress(ImportError):  # Windows: no flock; the process id alone keeps the folder
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while another conversion probes it (an instant)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:
        os.close(fd)
        raise
    return fd


def _remove_stale_partials(out_dir: Path) -> list[str]:
    """Remove the partial folders of conversions to ``out_dir`` whose writer is gone; returns their paths.

    A folder whose ``.lock`` can be locked was abandoned (a writer holds its lock until it is done, and the kernel
    releases it when the writer dies, however it dies): the process id in its name is not trusted, since it may
    have been reused. A folder without a lock file (made by a gradfit from before the lock, or in the instant
    between making the folder and locking it) is removed only once no process has that id.
    """
    out_dir = Path(out_dir)
    prefix = _partial_prefix(out_dir)
    try:
        names = os.listdir(out_dir.parent)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        pid = name[len(prefix) :]
        if not (name.startswith(prefix) and pid.isascii() and pid.isdigit()):
            continue
        partial = out_dir.parent / name
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(partial).st_mode) and _abandoned(partial, int(pid)):
                shutil.rmtree(partial)
                removed.append(str(partial))
    return removed


def _abandoned(partial: Path, pid: int) -> bool:
    """True if no process is writing ``partial`` (see ``_remove_stale_partials``)."""
    try:
        fd = os.open(partial / LOCK, os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return not _another_process(pid)
    except OSError:  # cannot tell (another user's folder): keep it
        return False
    try:
        import fcntl

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (ImportError, OSError):  # held: its writer is alive (or no flock here to tell)
        return False
    else:  # free: abandoned, unless the file is still empty (its writer may be about to take the lock)
        return os.fstat(fd).st_size > 0 or not _another_process(pid)
    finally:
        os.close(fd)


def _another_process(pid: int) -> bool:
    """True if a process other than this one has id ``pid`` (or this cannot be told without risk). This one has
    not made its partial folder yet: one with its id was left by an earlier process that had the same id."""
    if pid == os.getpid():
        return False
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists and belongs to another user
        return True
    return True


# ---------------------------------------------------------------------------------------------------- writing


def _write_arrays(
    table: blocks.Table, folder: Path, dtype: str | None, progress: Progress | None
) -> tuple[int, list, str]:
    """Stream the blocks into X.npy and y.npy; returns (rows, classes, X's dtype)."""
    index = LabelIndex()
    rows = 0
    x_dtype: np.dtype | None = None
    # unbuffered: every write reaches the disk at once, so a full disk is met here, naming the file (not at close)
    with open(folder / "X.npy", "wb", buffering=0) as x_file, open(folder / "y.npy", "w+b", buffering=0) as y_file:
        _write_all(x_file, b"\0" * HEADER_BYTES)
        _write_all(y_file, b"\0" * HEADER_BYTES)
        for block in table.blocks():
            if block.labels is None:  # open_table was asked for labels: it refuses a file without them
                raise GradfitError(f"{table.path}: no labels to convert")
            x_dtype = x_dtype or np.dtype(dtype or block.x.dtype)
            _write_all(x_file, np.ascontiguousarray(block.x, x_dtype).data)
            _write_all(y_file, index.codes(block.labels).astype(np.int32).data)
            rows += len(block.x)
            _advance(progress, table, rows, block)
        if rows == 0 or x_dtype is None:
            raise table.no_rows()
        x_file.seek(0)
        _write_all(x_file, npy_header(x_dtype, (rows, len(table.names))))
        y_file.seek(0)
        _write_all(y_file, npy_header(np.dtype(np.int32), (rows,)))
        values = index.values(text=table.kind == "csv")
        remap, classes = class_index(Labels(values, np.arange(len(values))), str(table.path))
        step = blocks.BLOCK_ROWS * 16
        for start in range(HEADER_BYTES, HEADER_BYTES + 4 * rows, 4 * step):  # first-seen codes -> class order
            y_file.seek(start)
            codes = np.fromfile(y_file, np.int32, min(step, rows - (start - HEADER_BYTES) // 4))
            y_file.seek(start)
            _write_all(y_file, remap[codes].astype(np.int32).data)
        for handle in (x_file, y_file):  # before the folder is renamed into place; a network disk may fail here
            try:
                os.fsync(handle.fileno())
            except OSError as exc:
                raise files.write_error(exc, Path(str(handle.name))) from None
    return rows, classes, x_dtype.name


def _write_all(handle: io.FileIO, data: bytes | memoryview) -> None:
    """Write all of ``data`` (a raw file may take part of it per call); an OSError names the file."""
    view = memoryview(data).cast("B")
    try:
        while view:
            view = view[handle.write(view) :]
    except OSError as exc:
        raise files.write_error(exc, Path(str(handle.name))) from None


def _advance(progress: Progress | None, table: blocks.Table, rows: int, block: blocks.Block) -> None:
    """Tell ``progress`` how far the pass is, after ``rows`` rows (ending with ``block``)."""
    if progress is not None:
        progress(*table.progress(rows, block))


def npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    """A .npy (version 1.0) header of exactly ``HEADER_BYTES`` bytes, so it can be written after the data."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    body = text.ljust(HEADER_BYTES - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")
