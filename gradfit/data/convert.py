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
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from gradfit import files
from gradfit.data import tabular
from gradfit.abort import removed_on_abort
from gradfit.data.dataset import class_index
from gradfit.errors import GradfitError
from gradfit.data.tabular import CONVERTED_FORMAT, Labels

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


def convert(source: Path, out_dir: Path, target: str = "target", dtype: Optional[str] = None, force: bool = False,
            progress: Optional[Progress] = None) -> Conversion:
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
    with removed_on_abort(lambda: (partial.mkdir(parents=True), partial)[1]):
        try:
            rows, classes, x_dtype = _write_arrays(table, partial, dtype, progress)
            meta = {"format": CONVERTED_FORMAT, "version": 1, "rows": rows, "feature_names": table.names,
                    "classes": classes, "target": target if table.kind == "csv" else "y", "dtype": x_dtype,
                    "source": str(source)}
            files.write_atomic(partial / "meta.json", json.dumps(meta, indent=1) + "\n")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(partial, out_dir)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    written = sum(os.path.getsize(out_dir / name) for name in tabular.CONVERTED_FILES)
    in_bytes = os.path.getsize(source) if source.is_file() else sum(
        os.path.getsize(source / name) for name in tabular.CONVERTED_FILES)
    return Conversion(str(out_dir), str(source), rows, len(table.names), classes, x_dtype, in_bytes, written,
                      time.perf_counter() - tick)


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
        converted = set(os.listdir(out_dir)) <= set(tabular.CONVERTED_FILES) and bool(tabular.read_meta(out_dir))
    except GradfitError:  # a meta.json of its own: not ours to replace
        converted = False
    if not converted:
        raise GradfitError(f"{out_dir}: exists and is not a folder made by 'gradfit data convert'; gradfit never "
                           "replaces it: choose another name")
    if not force:
        raise GradfitError(f"{out_dir}: already exists; pass --force to replace it, or choose another name")


def _write_arrays(table: tabular.Table, folder: Path, dtype: Optional[str], progress: Optional[Progress]
                  ) -> tuple[int, list, str]:
    """Stream the blocks into X.npy and y.npy; returns (rows, classes, X's dtype)."""
    index = tabular.LabelIndex()
    rows = 0
    x_dtype = None
    with open(folder / "X.npy", "wb") as x_file, open(folder / "y.npy", "wb") as y_file:
        x_file.write(b"\0" * HEADER_BYTES)
        y_file.write(b"\0" * HEADER_BYTES)
        for block in table.blocks():
            x_dtype = x_dtype or np.dtype(dtype or block.x.dtype)
            x_file.write(np.ascontiguousarray(block.x, x_dtype).data)
            y_file.write(index.codes(block.labels).astype(np.int32).data)
            rows += len(block.x)
            _advance(progress, table, rows, block)
        if rows == 0:
            raise table.no_rows()
        x_file.seek(0)
        x_file.write(npy_header(x_dtype, (rows, len(table.names))))
        y_file.seek(0)
        y_file.write(npy_header(np.dtype(np.int32), (rows,)))
    values = index.values(text=table.kind == "csv")
    remap, classes = class_index(Labels(values, np.arange(len(values))), str(table.path))
    y = np.load(folder / "y.npy", mmap_mode="r+")
    for start in range(0, rows, tabular.BLOCK_ROWS * 16):  # first-seen codes -> class order
        y[start:start + tabular.BLOCK_ROWS * 16] = remap[y[start:start + tabular.BLOCK_ROWS * 16]]
    y.flush()
    del y
    return rows, classes, x_dtype.name


def _advance(progress: Optional[Progress], table: tabular.Table, rows: int, block: tabular.Block) -> None:
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


@dataclasses.dataclass
class _Moments:
    """Per-column count, mean, sum of squared deviations (Chan et al.'s merge), min, max, non-finite count."""

    width: int

    def __post_init__(self):
        self.count = np.zeros(self.width)
        self.mean = np.zeros(self.width)
        self.m2 = np.zeros(self.width)
        self.low = np.full(self.width, np.inf)
        self.high = np.full(self.width, -np.inf)
        self.non_finite = np.zeros(self.width, np.int64)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        finite = np.isfinite(x)
        self.non_finite += (~finite).sum(axis=0)
        n = finite.sum(axis=0).astype(np.float64)
        clean = np.where(finite, x, 0.0)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, clean.sum(axis=0) / np.maximum(n, 1), 0.0)
            m2 = np.where(finite, (clean - mean) ** 2, 0.0).sum(axis=0)
            total = self.count + n
            delta = mean - self.mean
            share = np.where(total > 0, n / np.maximum(total, 1), 0.0)
            self.mean = self.mean + delta * share
            self.m2 = self.m2 + m2 + delta ** 2 * self.count * share
        self.count = total
        self.low = np.minimum(self.low, np.where(finite, x, np.inf).min(axis=0))
        self.high = np.maximum(self.high, np.where(finite, x, -np.inf).max(axis=0))


def describe(path: Path, target: str = "target", progress: Optional[Progress] = None) -> dict:
    """Rows, columns, classes with counts, and per feature its mean, std (population), min, max and count of
    non-finite cells, in one streamed pass in float64. A column whose variance overflows float64 is listed
    under ``overflow`` (its std is None): training refuses such values (beyond 1e150)."""
    path = Path(path)
    table = tabular.open_table(path, target, need_labels=None)
    table.checked = False  # count what training would refuse rather than stop at it
    moments = _Moments(len(table.names))
    index, counts = tabular.LabelIndex(), np.zeros(0, np.int64)  # rows per distinct label: memory flat in rows
    rows = 0
    for block in table.blocks():
        moments.add(block.x)
        rows += len(block.x)
        if block.labels is not None and table.kind != "converted":
            codes, seen = index.codes(block.labels), len(index.index)
            counts = np.pad(counts, (0, seen - len(counts))) + np.bincount(codes, minlength=seen)
        _advance(progress, table, rows, block)
    classes = None
    if table.kind == "converted":
        found = np.bincount(np.asarray(table.stored_codes), minlength=len(table.classes))
        classes = [{"label": c, "rows": int(n)} for c, n in zip(table.meta["classes"], found)]
    elif table.has_labels and len(counts):
        values = index.values(text=table.kind == "csv")
        per_class, names = class_index(Labels(values, np.arange(len(values))), str(path))
        found = np.bincount(per_class, weights=counts, minlength=len(names))
        classes = [{"label": c, "rows": int(n)} for c, n in zip(names, found)]
    with np.errstate(invalid="ignore"):
        std = np.sqrt(moments.m2 / np.maximum(moments.count, 1))
    overflow = [name for name, s, m in zip(table.names, std, moments.mean) if not (np.isfinite(s) and np.isfinite(m))]
    features = []
    for i, name in enumerate(table.names):
        seen = moments.count[i] > 0
        features.append({
            "name": name, "mean": _finite(moments.mean[i]) if seen else None, "std": _finite(std[i]) if seen else None,
            "min": float(moments.low[i]) if seen else None, "max": float(moments.high[i]) if seen else None,
            "non_finite": int(moments.non_finite[i]),
        })
    if rows == 0:
        raise table.no_rows()
    return {"path": str(path), "format": table.kind, "rows": rows, "columns": len(table.names),
            "target": (target if table.kind == "csv" else "y") if table.has_labels else None, "classes": classes,
            "features": features, "overflow": overflow,
            "non_finite_cells": int(moments.non_finite.sum())}


def _finite(value: float) -> Optional[float]:
    return float(value) if np.isfinite(value) else None
