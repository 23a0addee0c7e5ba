"""Columns as raw rows: a float64 matrix holding numbers, or, for a categorical column, codes into its dictionary
(``CategoryCodes``, shared by the file readers); a missing cell is NaN (see ``gradfit.data.encoding``). No jax.

``feature_matrix`` takes features handed over in memory: a table's columns matched by name, or a plain array. A
table is anything with column names, found by duck typing so that no table library is imported for it: a pyarrow
``Table`` or ``RecordBatch`` (``.column_names``), a pandas or polars ``DataFrame`` (``.columns``); ``table[name]``
must give a column. Anything else goes through ``np.asarray``. Every refusal is a DataError naming the argument
(``origin``) and the column.
"""

from __future__ import annotations

import collections
import decimal
import numbers
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gradfit.data.text import NA_TEXT, preview
from gradfit.errors import DataError

_CATEGORICAL = ("category", "categorical", "dictionary", "enum")  # pandas, polars, pyarrow, polars Enum


class CategoryCodes:
    """The dictionaries of categorical columns, grown as blocks are read: a category's code is the order in which
    it was first met, and its text is stripped of surrounding spaces. ``dictionaries`` gives the text per code."""

    def __init__(self, initial: Mapping[str, Sequence[str]] | None = None):
        self.index: dict[str, dict[str, int]] = {
            name: {text: code for code, text in enumerate(values)} for name, values in (initial or {}).items()
        }

    @property
    def dictionaries(self) -> dict[str, list[str]]:
        return {name: list(index) for name, index in self.index.items()}

    def codes(self, name: str, column: Any) -> np.ndarray:
        """(n,) float64 codes of a column's cells (NaN for a missing one); any type is taken as its text."""
        array = _arrow_array(column)
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            array = pc.cast(array, pa.string())
        array = pc.utf8_trim_whitespace(array)
        encoded = pc.dictionary_encode(array)
        index = self.index.setdefault(name, {})
        known = [
            None if text in NA_TEXT else index.setdefault(text, len(index)) for text in encoded.dictionary.to_pylist()
        ]
        table = np.array([np.nan if code is None else code for code in known] + [np.nan], np.float64)
        codes = table[np.clip(integers(encoded.indices), 0, len(known))]  # a null's slot holds any value...
        return np.where(_valid(encoded.indices), codes, np.nan) if encoded.indices.null_count else codes  # ...masked


# pyarrow's own Array.to_numpy imports pandas (a second of a command's start) where it is installed: fixed-width
# arrays are read from their buffers instead


def floats(array: pa.Array) -> np.ndarray:
    """A numeric Arrow array (any width; booleans as 0/1) as float64, a null as NaN."""
    if not pa.types.is_float64(array.type):
        array = pc.cast(array, pa.float64())
    values = np.frombuffer(array.buffers()[1], np.float64, len(array), array.offset * 8)
    if not array.null_count:
        return values
    return np.where(_valid(array), values, np.nan)


def integers(array: pa.Array) -> np.ndarray:
    """An integer Arrow array (dictionary indices) as int64; a null's slot holds any value (see ``_valid``)."""
    dtype = np.dtype(f"int{array.type.bit_width}")
    return np.frombuffer(array.buffers()[1], dtype, len(array), array.offset * dtype.itemsize).astype(np.int64)


def _valid(array: pa.Array) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(array.buffers()[0], np.uint8), bitorder="little")
    return bits[array.offset : array.offset + len(array)].astype(bool)


def _arrow_array(column: Any) -> pa.Array:
    """A column (pyarrow, pandas or polars) as one pyarrow Array."""
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks()
    if isinstance(column, pa.Array):
        return column
    if hasattr(column, "to_arrow"):  # polars
        return _arrow_array(column.to_arrow())
    return pa.array(np.asarray(column, dtype=object), from_pandas=True)


_TABLES = "a table (pandas.DataFrame, polars.DataFrame, pyarrow.Table)"


def column_names(x: Any) -> list | None:
    """The column names of a table, in table order; None for anything else (an array, a list)."""
    names = getattr(x, "column_names", None)  # first: a pyarrow Table's .columns are its columns, not names
    if names is None:
        names = getattr(x, "columns", None)
    return None if names is None or isinstance(names, str) else list(names)


def feature_matrix(
    x: Any,
    features: Sequence[str] | None = None,
    ignore: Collection[str] = (),
    origin: str = "x",
    categories: CategoryCodes | None = None,
) -> tuple[np.ndarray, list[str] | None]:
    """``x`` as raw float64 (n, d) rows with n >= 1, and its column names (None for a plain array).

    Args:
        x: a table (columns matched by name) or anything ``np.asarray`` reads as an (n, d) array of numbers.
        features: the columns wanted, in this order (a run's): a table must hold exactly these, in any order,
            besides those in ``ignore``, and an array must be d = len(features) wide. None: every column of a
            table but those in ``ignore``, in table order (training from a table); an array of any width.
        ignore: columns a table may hold that are dropped (a label column).
        origin: how to name ``x`` in a message.
        categories: the codes of the categorical columns (those it names), which only a table can hold.

    Cells are not checked for finiteness here (callers have their own bounds); a missing cell is NaN.

    Raises:
        DataError: missing, unexpected, duplicated or unnamed columns; a column that is not numbers; a shape
            that is not (n, d).
    """
    names = column_names(x)
    categorical = set(categories.index) if categories is not None else set()
    if names is None:
        if categorical:
            raise DataError(
                f"{origin}: the run has categorical columns ({preview(sorted(categorical))}), which only a table "
                f"names; pass {_TABLES}"
            )
        return _array(x, features, origin), None
    chosen = _choose_columns(names, features, ignore, origin)
    if not chosen:
        raise DataError(f"{origin}: the table has no feature columns (only {preview(names)})")
    columns = [
        _categories(x, name, categories, f"{origin}: column {name!r}")
        if categories is not None and name in categorical
        else _column(x, name, f"{origin}: column {name!r}")
        for name in chosen
    ]
    if columns[0].ndim != 1 or len(columns[0]) == 0:
        raise DataError(f"{origin}: the table has no rows; pass at least one")
    return np.stack(columns, axis=1), chosen


def _choose_columns(names: list, features: Sequence[str] | None, ignore: Collection[str], origin: str) -> list[str]:
    """The column names to read, in the order of ``features`` (or of the table), after checking them."""
    unnamed = [n for n in names if not isinstance(n, str)]
    if unnamed:
        raise DataError(
            f"{origin}: the table's column names must be text, got {preview(unnamed)} (a DataFrame made from an "
            "array without names?); name its columns, or pass x.to_numpy() to take them in training order"
        )
    counts = collections.Counter(names)
    duplicates = sorted(n for n, c in counts.items() if c > 1)
    kept = [n for n in names if n not in ignore or (features is not None and n in features)]
    if features is None:
        missing, extra = [], []
    else:
        missing = [n for n in features if n not in counts]
        extra = [n for n in kept if n not in set(features)]
    if duplicates or missing or extra:
        parts = [
            f"missing {preview(missing)}" if missing else "",
            f"unexpected {preview(extra)}" if extra else "",
            f"duplicated {preview(duplicates)}" if duplicates else "",
        ]
        problems = "; ".join(p for p in parts if p)
        if features is None:
            raise DataError(f"{origin}: the table's column names must be distinct ({problems})")
        raise DataError(
            f"{origin}: the table's columns do not match the {len(features)} features ({problems}); "
            f"expected {preview(features, 10)}"
        )
    return list(features) if features is not None else kept


def _array(x: Any, features: Sequence[str] | None, origin: str) -> np.ndarray:
    """A plain (n, d) array of numbers, d = len(features) when given."""
    width = "d" if features is None else str(len(features))
    if x is None or isinstance(x, (str, bytes, Mapping)):
        got = "None" if x is None else type(x).__name__
        raise DataError(f"{origin}: expected an (n, {width}) array of numbers or {_TABLES}, got {got}")
    try:
        values = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged lists
        raise DataError(f"{origin}: not an array of numbers ({exc})") from None
    values = _numbers(values, f"{origin}: the array")
    if values.ndim != 2 or (features is not None and values.shape[1] != len(features)) or len(values) == 0:
        named = f" (features {preview(features)})" if features is not None else ""
        raise DataError(f"{origin}: expected an (n, {width}) array{named}, got shape {values.shape}")
    return values


def _get(table: Any, name: str, where: str) -> Any:
    try:
        return table[name]
    except Exception as exc:  # a lazy frame, a table type that names columns but does not index by name
        raise DataError(
            f"{where}: cannot be read from a {type(table).__name__} ({type(exc).__name__}: {exc}); pass a "
            "DataFrame, a pyarrow Table or an array (collect a lazy frame first)"
        ) from None


def _categories(table: Any, name: str, categories: CategoryCodes, where: str) -> np.ndarray:
    try:
        return categories.codes(name, _get(table, name, where))
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise DataError(f"{where} cannot be read as categories ({exc})") from None


def _column(table: Any, name: str, where: str) -> np.ndarray:
    """One numeric column of a table as float64 (n,). A categorical column is refused, whatever its categories:
    its codes or values as numbers would be a silent choice of encoding."""
    column = _get(table, name, where)
    kind = str(getattr(column, "dtype", getattr(column, "type", ""))).lower()  # pandas/polars, pyarrow
    if kind.startswith(_CATEGORICAL):
        raise DataError(
            f"{where} is categorical ({kind}), and the run takes it as numbers: train with data.categorical "
            "naming it to one-hot encode it, or pass .astype(float) when its categories are numbers"
        )
    try:
        values = np.asarray(column)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where} is not a column of numbers ({exc})") from None
    return _numbers(values, where)


def _numbers(values: np.ndarray, where: str) -> np.ndarray:
    """``values`` as float64, or a DataError saying ``where`` holds something that is not numbers.

    Booleans count as 0 and 1, as in NumPy. An object array (pandas' nullable and text columns, Arrow columns
    with nulls) is read value by value: numbers pass, a missing value (None, pandas.NA) is NaN, and anything
    else is refused.
    """
    if values.dtype.kind in "biuf":
        return values.astype(np.float64, copy=False)
    if values.dtype.kind != "O":
        what = "text" if values.dtype.kind in "US" else str(values.dtype)
        raise DataError(f"{where} is not numeric ({what}); convert it to numbers first")
    out = np.empty(values.shape, np.float64)
    flat = out.reshape(-1)
    for i, value in enumerate(values.reshape(-1)):
        if isinstance(value, (numbers.Real, np.bool_, decimal.Decimal)):
            flat[i] = float(value)
        elif value is None or type(value).__name__ == "NAType":  # pandas.NA, without importing pandas
            flat[i] = np.nan
        else:
            raise DataError(
                f"{where} is not numeric (holds {value!r:.40}, a {type(value).__name__}); a text column is a "
                "categorical one: name it in data.categorical"
            )
    return out
