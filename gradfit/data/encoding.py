"""From a table's raw columns to the features a model sees: one-hot categories and imputed missing cells. No jax.

Readers hand over *raw* rows: a float64 (n, d) matrix with one column per input column, where a numeric column
holds its values and a categorical one holds codes into that column's dictionary (the text of each category, in
the order the reader met them), and a missing cell is NaN in both. ``fit`` learns from the training split alone:

- per categorical column, its categories (those the training rows hold, sorted as text), one 0/1 feature each
  (``city=rome``); with ``reference_category: first`` the first is left out, so its coefficients are relative to it;
- per column, the value that fills a missing cell (``data.missing``: mean, median or most frequent value of the
  training rows; a categorical column always takes its most frequent category, ties going to the smallest), and
  with ``missing_indicator`` a 0/1 feature ``missing(age)`` for each column that had missing training cells.

``Encoding.transform`` applies exactly that to any rows (training, evaluation, prediction), and ``record`` /
``from_record`` carry it through ``preprocessing.json``. Standardization comes after, on the numeric features only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from gradfit.data.standardize import Chunks, Moments
from gradfit.data.text import preview
from gradfit.errors import DataError

Locate = Callable[[int], str]  # a row of the matrix -> where it is in its file, for a message
Dictionaries = Mapping[str, Sequence[str]]  # categorical column -> category text per code
GATHER_CELLS = 1 << 25  # present values gathered at most at once for medians (256 MB of float64)


@dataclasses.dataclass(frozen=True)
class Column:
    """One input column: numeric (``categories`` None) or categorical; how its missing cells are filled."""

    name: str
    categories: tuple[str, ...] | None = None
    fill: float | str | None = None  # None: a missing cell is an error (data.missing: error)
    indicator: bool = False  # a missing(name) feature follows the others

    @property
    def categorical(self) -> bool:
        return self.categories is not None


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How raw input columns become features: fitted by ``fit``, saved in preprocessing.json."""

    columns: tuple[Column, ...]
    missing: str = "error"  # data.missing
    unknown_category: str = "error"  # data.unknown_category
    reference_category: str = "none"  # data.reference_category

    @property
    def input_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def categorical_names(self) -> list[str]:
        return [c.name for c in self.columns if c.categorical]

    @property
    def identity(self) -> bool:
        """True when features are the raw columns as they are (no categories, no indicators)."""
        return not any(c.categorical or c.indicator for c in self.columns)

    def _kept(self, column: Column) -> tuple[str, ...]:
        categories = column.categories or ()
        return categories[1:] if self.reference_category == "first" else categories

    @property
    def feature_names(self) -> list[str]:
        names: list[str] = []
        for column in self.columns:
            names += [f"{column.name}={c}" for c in self._kept(column)] if column.categorical else [column.name]
        return names + [f"missing({c.name})" for c in self.columns if c.indicator]

    @property
    def numeric_features(self) -> np.ndarray:
        """(d,) bool: which features are numbers (standardized), not 0/1 encodings."""
        flags: list[bool] = []
        for column in self.columns:
            flags += [False] * len(self._kept(column)) if column.categorical else [True]
        return np.array(flags + [False] * sum(c.indicator for c in self.columns), bool)

    def transform(self, raw: np.ndarray, dictionaries: Dictionaries, locate: Locate) -> np.ndarray:
        """Raw rows (n, len(columns)) -> features (n, len(feature_names)) float64.

        Raises:
            DataError: a missing cell where ``missing`` is error, or (``unknown_category: error``) a category the
                training rows did not hold, naming ``locate(row)`` and the column.
        """
        if self.identity:  # numbers as they are, in their dtype: only missing cells change
            missing = np.isnan(raw)
            if not missing.any():
                return raw
            for j, column in enumerate(self.columns):
                if column.fill is None:
                    _refuse_missing(raw[:, j : j + 1], (column,), locate)
            fills = np.array([0.0 if c.fill is None else c.fill for c in self.columns], raw.dtype)
            return np.where(missing, fills, raw)
        out = np.zeros((len(raw), len(self.feature_names)), np.float64)
        at = 0
        indicators = []
        for j, column in enumerate(self.columns):
            values = np.asarray(raw[:, j], np.float64)
            missing = np.isnan(values)
            if column.indicator:
                indicators.append(missing)
            if missing.any() and column.fill is None:
                _refuse_missing(raw[:, j : j + 1], (column,), locate)
            if not column.categorical:
                out[:, at] = np.where(missing, column.fill if column.fill is not None else 0.0, values)
                at += 1
                continue
            kept = self._kept(column)
            index = _category_index(column, dictionaries, len(kept), self.reference_category == "first")
            codes = np.where(missing, 0, values).astype(np.int64)
            beyond = np.flatnonzero(~missing & (codes >= len(index)))
            if len(beyond):  # only a converted folder's X.npy edited by hand holds such a code
                raise DataError(
                    f"{locate(int(beyond[0]))}: column '{column.name}' holds category code {codes[beyond[0]]}, beyond "
                    f"the {len(index)} categories listed for it; convert the data again"
                )
            slot = np.full(len(codes), _UNKNOWN, np.int64)  # a block may hold no category at all (all missing)
            slot[~missing] = index[codes[~missing]]
            if missing.any():
                slot[missing] = _fill_slot(column, kept)
            unknown = (slot == _UNKNOWN) & ~missing
            if unknown.any() and self.unknown_category == "error":
                row = int(np.flatnonzero(unknown)[0])
                value = dictionaries[column.name][codes[row]]
                raise DataError(
                    f"{locate(row)}: column '{column.name}' has the category {value!r}, which the training rows "
                    f"did not hold (they hold {preview(column.categories or (), 8)}); set "
                    "data.unknown_category: ignore to encode unseen categories as all zeros"
                )
            rows = np.flatnonzero(slot >= 0)
            out[rows, at + slot[rows]] = 1.0
            at += len(kept)
        for missing in indicators:
            out[:, at] = missing
            at += 1
        return out

    def record(self) -> dict:
        """JSON-ready: the input columns in order, each with its kind, categories and fill."""
        return {
            "columns": [
                {
                    "name": c.name,
                    "kind": "categorical" if c.categorical else "numeric",
                    **({"categories": list(c.categories)} if c.categories is not None else {}),
                    "fill": c.fill,
                    "indicator": c.indicator,
                }
                for c in self.columns
            ],
            "missing": self.missing,
            "unknown_category": self.unknown_category,
            "reference_category": self.reference_category,
        }

    @classmethod
    def from_record(cls, record: Any, feature_names: Sequence[str]) -> Encoding:
        """The encoding preprocessing.json describes (``record``'s ``encoding``); a run from before encodings
        (no record) reads its features as numeric columns. Raises ValueError if the record is malformed."""
        if record is None:
            return numeric(feature_names)
        if not isinstance(record, dict) or not isinstance(record.get("columns"), list):
            raise ValueError("encoding must hold a list of columns")
        columns = []
        for item in record["columns"]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ValueError("each encoding column needs a name")
            categories = item.get("categories")
            if item.get("kind") == "categorical":
                if (
                    not isinstance(categories, list)
                    or not categories
                    or not all(isinstance(c, str) for c in categories)
                ):
                    raise ValueError(f"categorical column {item['name']!r} needs a list of categories")
                categories = tuple(categories)
            elif item.get("kind") == "numeric":
                categories = None
            else:
                raise ValueError(f"column {item['name']!r}: kind must be numeric or categorical")
            fill = item.get("fill")
            valid_fill = fill is None or (fill in categories if categories else type(fill) in (int, float))
            if not valid_fill or not isinstance(item.get("indicator"), bool):
                raise ValueError(f"column {item['name']!r}: fill and indicator as gradfit train wrote them")
            columns.append(Column(item["name"], categories, fill, item["indicator"]))
        encoding = cls(
            tuple(columns),
            str(record.get("missing")),
            str(record.get("unknown_category")),
            str(record.get("reference_category")),
        )
        if encoding.feature_names != list(feature_names):
            raise ValueError("the encoding's features differ from feature_names")
        return encoding


_UNKNOWN = -2  # a category slot: not among the training categories (-1 is the reference level)


def _category_index(column: Column, dictionaries: Dictionaries, kept: int, reference: bool) -> np.ndarray:
    """Per code of the column's dictionary: its feature slot, -1 for the reference level, ``_UNKNOWN`` if unseen."""
    slots = {c: i - reference for i, c in enumerate(column.categories or ())}
    return np.array([slots.get(v, _UNKNOWN) for v in dictionaries.get(column.name, ())], np.int64)


def _fill_slot(column: Column, kept: tuple[str, ...]) -> int:
    if column.fill in kept:
        return kept.index(str(column.fill))
    return -1  # the reference level


def _refuse_missing(raw: np.ndarray, columns: Sequence[Column], locate: Locate) -> None:
    """Raise a DataError naming the first missing cell (in row order) of ``raw`` (n, len(columns)), if any."""
    missing = np.isnan(raw)
    if not missing.any():
        return
    row, j = (int(i) for i in np.argwhere(missing)[0])
    raise DataError(
        f"{locate(row)}: column '{columns[j].name}' is missing (an empty cell or NA); set data.missing to mean, "
        "median or most_frequent to impute missing cells, or remove the row"
    )


def refuse_missing(raw: np.ndarray, names: Sequence[str], locate: Locate) -> None:
    """Raise a DataError naming the first missing cell of raw rows (n, len(names)), if any (data.missing: error)."""
    _refuse_missing(raw, [Column(name) for name in names], locate)


def numeric(names: Sequence[str]) -> Encoding:
    """The encoding of numeric columns used as they are, missing cells refused (runs from before encodings)."""
    return Encoding(tuple(Column(n) for n in names))


def fit(
    chunks: Chunks,
    names: Sequence[str],
    dictionaries: Dictionaries,
    missing: str = "error",
    missing_indicator: bool = False,
    max_categories: int | None = None,
    unknown_category: str = "error",
    reference_category: str = "none",
    origin: str = "data",
) -> Encoding:
    """Learn the encoding of the training rows that ``chunks()`` yields, raw (b, len(names)) blocks in split
    order (see the module's docstring); columns named in ``dictionaries`` are categorical.

    One pass counts missing cells, means (``standardize.Moments``, so rows in memory and streamed ones get the
    same bits) and categories; medians and most frequent numbers take one more pass, gathering a few columns'
    present values at a time. Raises DataError for a column without any value in the training rows, or a
    categorical one with more than ``max_categories`` categories.
    """
    if not dictionaries and missing == "error":  # numbers as they are: a missing cell is refused where it is met
        return Encoding(tuple(Column(name) for name in names), missing, unknown_category, reference_category)
    moments = Moments(len(names))
    counts = {name: np.zeros(len(dictionaries[name]), np.int64) for name in names if name in dictionaries}
    position = {name: j for j, name in enumerate(names)}
    for chunk in chunks():
        moments.add(chunk)
        for name in counts:
            codes = chunk[:, position[name]]
            found = np.bincount(codes[~np.isnan(codes)].astype(np.int64), minlength=len(counts[name]))
            counts[name] = counts[name] + found[: len(counts[name])]
    for j, name in enumerate(names):
        if moments.count[j] == 0:
            raise DataError(
                f"{origin}: column '{name}' has no values in the training split (all "
                f"{int(moments.non_finite[j]):,} missing); drop it (data.drop) or fill it in"
            )
    gathered = missing in ("median", "most_frequent")
    wanted = [j for j, name in enumerate(names) if gathered and name not in dictionaries]
    fills = _gathered_fills(chunks, wanted, missing) if wanted else {}
    columns = []
    for j, name in enumerate(names):
        indicator = missing_indicator and bool(moments.non_finite[j])
        if name not in dictionaries:
            fill = None if missing == "error" else fills.get(j, float(moments.mean[j]))
            columns.append(Column(name, None, fill, indicator))
            continue
        texts = dictionaries[name]
        per_text = {texts[c]: int(n) for c, n in enumerate(counts[name]) if n}
        seen = sorted(per_text)
        if max_categories is not None and len(seen) > max_categories:
            raise DataError(
                f"{origin}: column '{name}' has {len(seen):,} categories in the training split, more than "
                f"data.max_categories = {max_categories} (is it an id?); drop it (data.drop) or raise "
                "data.max_categories"
            )
        top = max(seen, key=lambda c: (per_text[c], _Reverse(c)))  # most frequent, the smallest among ties
        columns.append(Column(name, tuple(seen), None if missing == "error" else top, indicator))
    return Encoding(tuple(columns), missing, unknown_category, reference_category)


def _gathered_fills(chunks: Chunks, wanted: list[int], strategy: str) -> dict[int, float]:
    """Median or most frequent present value of columns ``wanted``, gathering ``GATHER_CELLS`` values a pass."""
    fills: dict[int, float] = {}
    rows = sum(len(chunk) for chunk in chunks()) if len(wanted) > 1 else 1
    per_pass = max(1, GATHER_CELLS // max(rows, 1))
    for first in range(0, len(wanted), per_pass):
        group = wanted[first : first + per_pass]
        parts = [chunk[:, group].astype(np.float64) for chunk in chunks()]
        values = np.concatenate(parts) if parts else np.zeros((0, len(group)))
        for k, j in enumerate(group):
            column = values[:, k]
            fills[j] = _numeric_fill(column[~np.isnan(column)], strategy)
    return fills


class _Reverse:
    """Orders text in reverse, so that ``max`` picks the smallest text among equal counts."""

    def __init__(self, text: str):
        self.text = text

    def __lt__(self, other: _Reverse) -> bool:
        return self.text > other.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reverse) and self.text == other.text


def _numeric_fill(present: np.ndarray, strategy: str) -> float:
    """The value a numeric column's missing cells take, from its present training values."""
    if strategy == "median":
        return float(np.median(present))
    values, counts = np.unique(present, return_counts=True)  # sorted: argmax takes the smallest of ties
    return float(values[np.argmax(counts)])
