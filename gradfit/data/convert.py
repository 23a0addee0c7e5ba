"""``gradfit data convert`` and ``gradfit data describe``: one streamed pass over a table, in flat memory.

A converted folder holds ``X.npy`` (rows x features, float64 unless asked otherwise), ``y.npy`` (int32: each
row's index into the classes) and ``meta.json`` (feature names, classes in ``encode_labels`` order, row count,
where it came from). Training memory-maps it and can stream it (``data.in_memory: false``); eval and predict
read it like any table. The folder is written under a temporary name and renamed when complete: an interrupted
or failed conversion leaves nothing, and an existing folder is replaced only with ``force`` and only if it is
itself a converted folder. No jax.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gradfit import files
from gradfit.abort import removed_on_abort
from gradfit.data import tabular
from gradfit.data.converted import CONVERTED_FILES, CONVERTED_FORMAT, read_meta
from gradfit.data.labels import LabelIndex, Labels, class_index
from gradfit.data.standardize import Moments
from gradfit.errors import GradfitError

HEADER_BYTES = 256  # a reserved .npy header: rewritten with the row count at the end, without moving the data
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
) -> Conversion:
    """Convert a CSV, .npz or converted folder with labels into a converted folder at ``out_dir``.

    Args:
        dtype: "float32" or "float64" for X; None keeps the source's (float64 for a CSV: no rounding).
        force: replace ``out_dir`` if it is a converted folder (anything else is never replaced).
    """
    source, out_dir = Path(source), Path(out_dir)
    _check_out_dir(source, out_dir, force)
    tick = time.perf_counter()
    table = tabular.open_table(source, target)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"

    def make_partial() -> Path:
        partial.mkdir(parents=True)
        return partial

    with removed_on_abort(make_partial):
        try:
            rows, classes, x_dtype = _write_arrays(table, partial, dtype, progress)
            meta = {
                "format": CONVERTED_FORMAT,
                "version": 1,
                "rows": rows,
                "feature_names": table.names,
                "classes": classes,
                "target": target if table.kind == "csv" else "y",
                "dtype": x_dtype,
                "source": str(source),
            }
            files.write_atomic(partial / "meta.json", json.dumps(meta, indent=1) + "\n")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(partial, out_dir)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
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
    )


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


def _write_arrays(
    table: tabular.Table, folder: Path, dtype: str | None, progress: Progress | None
) -> tuple[int, list, str]:
    """Stream the blocks into X.npy and y.npy; returns (rows, classes, X's dtype)."""
    index = LabelIndex()
    rows = 0
    x_dtype: np.dtype | None = None
    with open(folder / "X.npy", "wb") as x_file, open(folder / "y.npy", "wb") as y_file:
        x_file.write(b"\0" * HEADER_BYTES)
        y_file.write(b"\0" * HEADER_BYTES)
        for block in table.blocks():
            if block.labels is None:  # open_table was asked for labels: it refuses a file without them
                raise GradfitError(f"{table.path}: no labels to convert")
            x_dtype = x_dtype or np.dtype(dtype or block.x.dtype)
            x_file.write(np.ascontiguousarray(block.x, x_dtype).data)
            y_file.write(index.codes(block.labels).astype(np.int32).data)
            rows += len(block.x)
            _advance(progress, table, rows, block)
        if rows == 0 or x_dtype is None:
            raise table.no_rows()
        x_file.seek(0)
        x_file.write(npy_header(x_dtype, (rows, len(table.names))))
        y_file.seek(0)
        y_file.write(npy_header(np.dtype(np.int32), (rows,)))
    values = index.values(text=table.kind == "csv")
    remap, classes = class_index(Labels(values, np.arange(len(values))), str(table.path))
    y = np.load(folder / "y.npy", mmap_mode="r+")
    for start in range(0, rows, tabular.BLOCK_ROWS * 16):  # first-seen codes -> class order
        y[start : start + tabular.BLOCK_ROWS * 16] = remap[y[start : start + tabular.BLOCK_ROWS * 16]]
    y.flush()
    del y
    return rows, classes, x_dtype.name


def _advance(progress: Progress | None, table: tabular.Table, rows: int, block: tabular.Block) -> None:
    """Tell ``progress`` how far a pass is, after ``rows`` rows (ending with ``block``)."""
    if progress is None:
        return
    if table.kind == "csv":
        progress(table.bytes_read, os.path.getsize(table.path))
    else:
        row_bytes = block.x.shape[1] * block.x.dtype.itemsize
        progress(rows * row_bytes, table.rows * row_bytes)


def npy_header(dtype: np.dtype, shape: tuple) -> bytes:
    """A .npy (version 1.0) header of exactly ``HEADER_BYTES`` bytes, so it can be written after the data."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape})
    body = text.ljust(HEADER_BYTES - 11) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


# ---------------------------------------------------------------------------------------------------- describe


def describe(path: Path, target: str = "target", progress: Progress | None = None) -> dict:
    """Rows, columns, classes with counts, and per feature its mean, std (population), min, max and count of
    non-finite cells, in one streamed pass in float64. A column whose variance overflows float64 is listed
    under ``overflow`` (its std is None): training refuses such values (beyond 1e150)."""
    path = Path(path)
    table = tabular.open_table(path, target, need_labels=None)
    table.checked = False  # count what training would refuse rather than stop at it
    moments, extremes = Moments(len(table.names)), _Extremes(len(table.names))
    index, counts = LabelIndex(), np.zeros(0, np.int64)  # rows per distinct label: memory flat in rows
    rows = 0
    for block in table.blocks():
        moments.add(block.x)
        extremes.add(block.x)
        rows += len(block.x)
        if block.labels is not None and table.kind != "converted":
            codes, seen = index.codes(block.labels), len(index.index)
            counts = np.pad(counts, (0, seen - len(counts))) + np.bincount(codes, minlength=seen)
        _advance(progress, table, rows, block)
    if rows == 0:
        raise table.no_rows()
    std = moments.std()
    overflow = [name for name, s, m in zip(table.names, std, moments.mean) if not (np.isfinite(s) and np.isfinite(m))]
    return {
        "path": str(path),
        "format": table.kind,
        "rows": rows,
        "columns": len(table.names),
        "target": (target if table.kind == "csv" else "y") if table.has_labels else None,
        "classes": _class_rows(table, index, counts),
        "features": _feature_rows(table.names, moments, extremes),
        "overflow": overflow,
        "non_finite_cells": int(moments.non_finite.sum()),
    }


class _Extremes:
    """Per-column min and max of the finite cells seen so far (inf and -inf before any)."""

    def __init__(self, width: int):
        self.low = np.full(width, np.inf)
        self.high = np.full(width, -np.inf)

    def add(self, x: np.ndarray) -> None:
        finite = np.isfinite(x)
        self.low = np.minimum(self.low, np.where(finite, x, np.inf).min(axis=0))
        self.high = np.maximum(self.high, np.where(finite, x, -np.inf).max(axis=0))


def _class_rows(table: tabular.Table, index: LabelIndex, counts: np.ndarray) -> list[dict] | None:
    """[{"label", "rows"}] per class, in class order (as training orders them), or None without labels."""
    if table.stored_codes is not None and table.classes is not None and table.meta is not None:  # converted
        found = np.bincount(np.asarray(table.stored_codes), minlength=len(table.classes))
        return [{"label": c, "rows": int(n)} for c, n in zip(table.meta["classes"], found)]
    if not (table.has_labels and len(counts)):
        return None
    values = index.values(text=table.kind == "csv")
    per_class, names = class_index(Labels(values, np.arange(len(values))), str(table.path))
    found = np.bincount(per_class, weights=counts, minlength=len(names))
    return [{"label": c, "rows": int(n)} for c, n in zip(names, found)]


def _feature_rows(names: list[str], moments: Moments, extremes: _Extremes) -> list[dict]:
    """Per feature: name, mean, std, min, max (None where no finite cell was seen) and non-finite count."""
    std = moments.std()
    features = []
    for i, name in enumerate(names):
        seen = moments.count[i] > 0
        features.append(
            {
                "name": name,
                "mean": _finite(moments.mean[i]) if seen else None,
                "std": _finite(std[i]) if seen else None,
                "min": float(extremes.low[i]) if seen else None,
                "max": float(extremes.high[i]) if seen else None,
                "non_finite": int(moments.non_finite[i]),
            }
        )
    return features


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
