"""Rows handed over in Python (``gradfit.fit(config, X=..., y=...)`` and the scikit-learn estimators) as one Arrow
table, which training reads as it reads a Parquet file (``arrow_tables.open_memory_table``): the same checks and
the same messages, naming ``X`` and the row instead of a file and a line. No jax.

``X`` is a pandas or polars DataFrame, a pyarrow Table or RecordBatch (columns by name), or an (n, d) array
(columns ``x0``, ``x1``, ...: scikit-learn's names for unnamed features; an object array may hold text, which
``data.categorical`` can then name). ``y`` and ``sample_weight`` hold one value per row (an array, a list, a
Series, an Arrow array) and become the columns that ``data.target`` and ``data.weight`` name; each may instead be
a column of ``X`` already, named by those keys, as in a file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from gradfit.data.arrow_tables import MemoryTable
from gradfit.data.columns import column_names
from gradfit.data.text import preview
from gradfit.errors import DataError


@dataclasses.dataclass(frozen=True)
class Supplied:
    """What a run reads instead of a file: X (and X_val below it) with the target and weight columns."""

    rows: MemoryTable
    val_rows: int = 0  # the last ``val_rows`` rows are the validation split (X_val); 0: data.val_fraction splits

    @property
    def n_rows(self) -> int:
        return self.rows.table.num_rows


def supplied(
    x: Any,
    y: Any = None,
    sample_weight: Any = None,
    x_val: Any = None,
    y_val: Any = None,
    *,
    target: str = "target",
    weight: str | None = None,
) -> Supplied:
    """One table of ``x`` (and ``x_val`` below it) with ``y`` as the column ``target`` and ``sample_weight`` as the
    column ``weight``.

    Raises:
        DataError: a value that is not a table or an array, a column name that is not text or repeats, ``y`` or
            ``sample_weight`` of the wrong length, ``x_val`` with other columns than ``x``, or ``y`` given for a
            table that already holds the target column (and so on), each naming the argument.
    """
    if (x_val is None) != (y_val is None) and not (x_val is not None and target in (column_names(x_val) or ())):
        raise DataError("X_val, y_val: give both (the validation rows and their labels), or neither")
    if sample_weight is not None and weight is None:
        raise ValueError("sample_weight needs the name of its column (data.weight)")
    table = _with_columns(arrow_table(x, "X"), "X", [(target, y, "y"), (weight or "", sample_weight, "sample_weight")])
    if x_val is None:
        return Supplied(MemoryTable(table, "X"))
    val = _with_columns(arrow_table(x_val, "X_val"), "X_val", [(target, y_val, "y_val")])
    if weight is not None and weight not in val.column_names:  # validation rows weigh 1, unless X_val says
        val = val.append_column(weight, pa.array(np.ones(val.num_rows)))
    if sorted(val.column_names) != sorted(table.column_names):
        missing = [n for n in table.column_names if n not in val.column_names]
        extra = [n for n in val.column_names if n not in table.column_names]
        problems = [f"missing {preview(missing)}" if missing else "", f"unexpected {preview(extra)}" if extra else ""]
        found = "; ".join(p for p in problems if p) or "a column name repeats"
        raise DataError(f"X_val: its columns must be X's ({found})")
    try:
        both = pa.concat_tables([table, val.select(table.column_names)], promote_options="permissive")
    except (pa.ArrowException, TypeError) as exc:
        raise DataError(f"X_val: its columns' types do not match X's ({exc})") from None
    return Supplied(MemoryTable(both, f"X (X_val from row {table.num_rows})"), val_rows=val.num_rows)


def arrow_table(x: Any, origin: str) -> pa.Table:
    """A table (pandas or polars DataFrame, pyarrow Table or RecordBatch) or an (n, d) array as an Arrow table."""
    if isinstance(x, pa.RecordBatch):
        return pa.Table.from_batches([x])
    if isinstance(x, pa.Table):
        return x
    names = column_names(x)
    if names is not None:
        unnamed = [n for n in names if not isinstance(n, str)]
        if unnamed:
            raise DataError(
                f"{origin}: the table's column names must be text, got {preview(unnamed)} (a DataFrame made "
                "from an array without names?); name its columns, or pass its values as an array"
            )
        try:
            if hasattr(x, "to_arrow"):  # polars
                return x.to_arrow()
            return pa.Table.from_pandas(x, preserve_index=False)
        except Exception as exc:  # a lazy frame, a column pyarrow cannot hold
            raise DataError(
                f"{origin}: cannot be read as a table ({type(exc).__name__}: {exc}); pass a pandas or polars "
                "DataFrame (collect a lazy frame first), a pyarrow Table or an array"
            ) from None
    return _array_table(x, origin)


def _array_table(x: Any, origin: str) -> pa.Table:
    if x is None or isinstance(x, (str, bytes, Mapping)):
        got = "None" if x is None else type(x).__name__
        raise DataError(f"{origin}: expected an (n, d) array or a table (a pandas or polars DataFrame), got {got}")
    try:
        values = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged lists
        raise DataError(f"{origin}: not an array ({exc})") from None
    if values.ndim != 2:
        raise DataError(f"{origin}: expected an (n, d) array, got shape {values.shape}")
    return pa.table({f"x{j}": _array(values[:, j], f"{origin}: column {j}") for j in range(values.shape[1])})


def _with_columns(table: pa.Table, origin: str, columns: list[tuple[str, Any, str]]) -> pa.Table:
    """``table`` with each (column name, values, argument) whose values are given appended as that column."""
    for name, values, what in columns:
        if values is None:
            continue
        if name in table.column_names:
            raise DataError(
                f"{origin}: has a column '{name}' and {what} is given too; pass the labels once (drop the "
                f"column, or leave {what} out to use it)"
            )
        array = _array(values, what)
        if len(array) != table.num_rows:
            raise DataError(f"{what}: expected {table.num_rows} values, one per row of {origin}, got {len(array)}")
        table = table.append_column(name, array)
    return table


def _array(values: Any, origin: str) -> pa.Array:
    """One column (an array, a list, a pandas or polars Series, an Arrow array) as an Arrow array; a missing
    value (None, NaN, pandas.NA) is null."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks()
    if isinstance(values, pa.Array):
        return values
    if column_names(values) is not None:
        raise DataError(f"{origin}: expected one value per row (an array or a Series), got a table")
    try:
        if hasattr(values, "to_arrow"):  # polars
            return _array(values.to_arrow(), origin)
        if hasattr(values, "array") and hasattr(values, "dtype"):  # pandas: keeps categories and nullable types
            return pa.Array.from_pandas(values)
        array = np.asarray(values)
        if array.ndim != 1:
            raise DataError(f"{origin}: expected one value per row, a 1-d array, got shape {array.shape}")
        return pa.array(array, from_pandas=True)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise DataError(f"{origin}: cannot be read as one column ({exc})") from None
