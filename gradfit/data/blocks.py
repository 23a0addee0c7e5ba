"""What every reader hands over: an opened ``Table`` whose ``blocks()`` yield raw rows (``Block``), the checks every
cell passes, and how a table's columns are chosen by name. No jax.

Raw rows are a float64 matrix (float32 where a stored array is float32) with one column per input column: numbers,
or for a categorical column codes into ``Table.categories``; a missing cell is NaN (``gradfit.data.encoding`` turns
raw rows into features).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import difflib
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gradfit.data.columns import CategoryCodes
from gradfit.data.labels import LabelIndex, Labels, distinct_labels
from gradfit.data.text import NonNumericCell, line_of_row, preview
from gradfit.errors import DataError

BLOCK_ROWS = 1 << 16  # rows per block at most
BLOCK_CELLS = 1 << 22  # cells per block at most: 32 MB of float64 (784 columns: 5,350 rows), so memory stays flat
MAX_FEATURE = 1e150  # largest feature magnitude: its square (a variance) cannot overflow float64

Locate = Callable[[int], str]  # a position (CSV line, row index) -> where it is, for a message


class Block(NamedTuple):
    """Consecutive rows of a table.

    x: (b, d) raw rows (see the module's docstring), columns in ``Table.names`` order.
    labels: (b,) raw labels (stripped text for a CSV, the stored values otherwise), or None.
    positions: (b,) int64: CSV line numbers, or row indices.
    weights: (b,) sample weights (a trained run's weight column), or None.
    """

    x: np.ndarray
    labels: np.ndarray | None
    positions: np.ndarray
    weights: np.ndarray | None = None


@dataclasses.dataclass
class Table:
    """An opened table, its header checked: iterate ``blocks()`` (each call reads the file again)."""

    path: Path
    kind: str  # "csv", "parquet", "feather", "npz", "converted" or "memory" (rows handed over in Python)
    names: list[str]  # the input columns, in the order blocks hold them
    has_labels: bool  # blocks carry labels
    rows: int | None  # known up front except for a CSV
    _read: Callable[[int], Iterator[Block]]
    meta: dict | None = None  # a converted folder's meta.json, and its arrays, memory-mapped:
    stored_x: np.ndarray | None = None  # (n, d) features in stored column order
    stored_codes: np.ndarray | None = None  # (n,) int class index per row, into ``classes``
    classes: np.ndarray | None = None
    categories: CategoryCodes = dataclasses.field(default_factory=CategoryCodes)  # of the categorical columns
    target: str | None = None  # the label column's name, where the table has one

    checked: bool = True  # refuse non-finite cells and those beyond MAX_FEATURE (describe counts them instead)
    bytes_read: int = 0  # of a CSV, so far: what a progress bar shows

    @property
    def categorical(self) -> list[str]:
        """The categorical input columns, in table order."""
        return [n for n in self.names if n in self.categories.index]

    def blocks(self, rows: int | None = None) -> Iterator[Block]:
        """Blocks of at most ``rows`` rows (default: ``BLOCK_CELLS`` cells, at most ``BLOCK_ROWS`` rows)."""
        return self._read(rows or max(1, min(BLOCK_ROWS, BLOCK_CELLS // max(len(self.names), 1))))

    def progress(self, rows: int, block: Block) -> tuple[int, int]:
        """(done, total) of a pass after ``rows`` rows ending with ``block``: bytes of a CSV's text, else of rows."""
        if self.kind == "csv":
            return self.bytes_read, os.path.getsize(self.path)
        row_bytes = block.x.shape[1] * block.x.dtype.itemsize
        return rows * row_bytes, (self.rows if self.rows is not None else rows) * row_bytes

    def locate(self, position: int) -> str:
        """Where a block position is, for a message: "data.csv:7" (a CSV's position is its data row) or
        "data.npz: X row 5"."""
        if self.kind == "csv":  # a data row's index, counted as pyarrow counts them: the line is found now
            return f"{self.path}:{line_of_row(self.path, position)}"
        return f"{self.path}: X row {position}" if self.kind == "npz" else f"{self.path}: row {position}"

    def no_rows(self) -> DataError:
        return DataError(
            f"{self.path}: the header has no data rows below it"
            if self.kind == "csv"
            else f"{self.path}: X has no rows"
            if self.kind == "npz"
            else f"{self.path}: the table has no rows"
        )

    def read_all(self) -> tuple[np.ndarray, Labels, np.ndarray]:
        """Every row: x (n, d), the labels (distinct values and a code per row), each row's position."""
        xs, positions, codes, stored = [], [], [], []
        index = LabelIndex()
        for block in self.blocks():
            xs.append(block.x)
            positions.append(block.positions)
            if block.labels is None or self.kind == "converted":
                continue
            if self.kind == "csv":
                codes.append(index.codes(block.labels))
            else:
                stored.append(block.labels)
        if not xs:
            raise self.no_rows()
        x, where = np.concatenate(xs), np.concatenate(positions)
        if self.classes is not None and self.stored_codes is not None:  # a converted folder: codes already
            return x, Labels(self.classes, np.asarray(self.stored_codes)), where
        if self.kind != "csv":
            return x, distinct_labels(np.concatenate(stored), str(self.path)), where
        return x, Labels(index.values(text=True), np.concatenate(codes)), where


@contextlib.contextmanager
def weight_cells(weight: str | None) -> Iterator[None]:
    """Within the block, a text cell in the sample-weight column is reported as such: the reader's advice for a
    feature column (data.categorical, data.drop) does not apply to it."""
    try:
        yield
    except NonNumericCell as exc:
        if weight is None or exc.column != weight:
            raise
        raise DataError(
            f"{exc.where}: the sample weight (column '{weight}', data.weight) is {exc.value!r}, not a number; "
            "weights are numbers >= 0"
        ) from None


def check_weight_column(names: Sequence[str], dictionaries: Mapping[str, list], weight: str) -> None:
    """Raise a DataError unless the table has ``weight`` among its columns, holding numbers (not categories)."""
    if weight not in names:
        raise DataError(f"data.weight: no column '{weight}' in the table; its columns are {preview(list(names), 10)}")
    if weight in dictionaries:
        raise DataError(f"data.weight: column '{weight}' holds text; sample weights are numbers >= 0")


def split_weight(
    x: np.ndarray, names: Sequence[str], dictionaries: Mapping[str, list], weight: str, locate: Locate
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(x without the sample-weight column, the other names, the weights (n,) float64), checked: the column holds
    numbers, none missing, none negative.

    Raises:
        DataError: naming the column (and the row) and ``data.weight``.
    """
    check_weight_column(names, dictionaries, weight)
    j = list(names).index(weight)
    weights = np.asarray(x[:, j], np.float64)
    bad = np.flatnonzero(~(weights >= 0))  # NaN (a missing cell) fails too
    if len(bad):
        value = "missing" if np.isnan(weights[bad[0]]) else repr(float(weights[bad[0]]))
        raise DataError(
            f"{locate(int(bad[0]))}: the weight (column '{weight}', data.weight) is {value}; weights are numbers >= 0"
        )
    return np.delete(x, j, axis=1), [n for n in names if n != weight], weights


# ---------------------------------------------------------------------------------------------------- checks


def check_features(
    x: np.ndarray,
    names: Sequence[str],
    locate: Locate,
    positions: np.ndarray | None = None,
) -> None:
    """Every present cell of ``x`` (n, d) must be finite and at most ``MAX_FEATURE`` (1e150) in magnitude; NaN
    is a missing cell, left to the encoding.

    The bound keeps a column's variance (a mean of squares) finite in float64; a value beyond it is almost
    always a sentinel for a missing value (-9.99e307, 1e300). Raises DataError naming the first bad cell (in row
    order) by ``locate(positions[row])`` (``locate(row)`` without positions) and column name.
    """
    if x.dtype.kind in "biu":  # integers are at most 1.8e19
        return
    small = x.dtype.itemsize < 8  # float16/float32 cannot exceed the bound: only check they are finite
    for start in range(0, len(x), BLOCK_ROWS):
        chunk = x[start : start + BLOCK_ROWS]
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(chunk) if small else np.abs(chunk) <= MAX_FEATURE
        if ok.all() or (ok | np.isnan(chunk)).all():
            continue
        row, col = (int(i) for i in np.argwhere(~(ok | np.isnan(chunk)))[0])
        value = chunk[row, col]
        row += start
        where = (
            f"{locate(row if positions is None else int(positions[row]))}: column '{names[col]}' is {float(value)!r}"
        )
        if not np.isfinite(value):
            raise DataError(f"{where}; remove infinite values first (a missing cell is left empty or written NA)")
        raise DataError(
            f"{where}, beyond the magnitude of {MAX_FEATURE:g} gradfit accepts for a feature (its square "
            "must fit in float64); such a value is almost always a sentinel for a missing value: leave the "
            "cell empty (see data.missing) or remove it"
        )


# ---------------------------------------------------------------------------------------------------- columns


def column_hint(name: str, columns: Sequence[str]) -> str:
    """The table's columns, those close to ``name`` (ignoring case) first: for a message about a missing one."""
    lowered = {c.lower(): c for c in reversed(columns)}
    close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)]
    rest = [c for c in columns if c not in close]
    shown = ", ".join(repr(c) for c in close[:3])
    if close:
        return f"did you mean {shown}? (its columns: {preview(close + rest, 8)})"
    return f"its columns: {preview(rest, 8)}"


def choose_columns(
    path: Path,
    present: list[str],
    features: Sequence[str] | None = None,
    drop: Collection[str] = (),
    run_inputs: bool = False,
    extra_ok: bool = False,
) -> list[str]:
    """The input columns to read, in order, from ``present`` (the table's columns but the label's).

    Args:
        features: the columns wanted, in this order (``data.features``, or a run's input columns); None: every
            column of ``present`` but those in ``drop``, in table order.
        drop: columns to ignore (``data.drop``); training (not ``run_inputs``) refuses a name the table lacks.
        run_inputs: ``features`` are the columns a run was trained on (the message says so).
        extra_ok: columns beyond ``features`` and ``drop`` are ignored (``data.features`` was given) rather than
            refused (a table for a run trained on all its columns must have no others).
    """
    counts = collections.Counter(present)
    if not run_inputs:
        unknown = [n for n in drop if n not in counts]
        if unknown:
            raise DataError(
                f"{path}: data.drop names {preview(unknown)}, not a column; {column_hint(unknown[0], present)}"
            )
    if features is None:
        chosen = [n for n in present if n not in drop]
        duplicates = sorted(n for n in set(chosen) if counts[n] > 1)
        if duplicates:
            raise DataError(f"{path}: duplicate column name(s) in the header: {preview(duplicates)}")
        if not chosen:
            raise DataError(f"{path}: no feature columns are left (the columns are {preview(present, 8)})")
        return chosen
    missing = [n for n in features if n not in counts]
    duplicates = sorted(n for n in set(features) if counts[n] > 1)
    extra = [] if extra_ok else [n for n in present if n not in set(features) and n not in drop]
    if not run_inputs and (missing or duplicates):
        what = f"{preview(missing)}, not a column" if missing else f"{preview(duplicates)}, a duplicated column"
        hint = column_hint(missing[0], present) if missing else "rename one of them"
        raise DataError(f"{path}: data.features names {what}; {hint}")
    if missing or duplicates or extra:
        parts = [
            f"missing {preview(missing)}" if missing else "",
            f"unexpected {preview(extra)}" if extra else "",
            f"duplicated {preview(duplicates)}" if duplicates else "",
        ]
        raise DataError(
            f"{path}: the feature columns do not match the {len(features)} the run was trained on "
            f"({'; '.join(p for p in parts if p)}); the run's preprocessing.json lists them"
        )
    return list(features)
