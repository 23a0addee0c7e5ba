"""``gradfit data describe``: one streamed pass over a table, in flat memory. No jax.

Numeric columns get their mean, std (population), min and max in float64 (``standardize.Moments``), categorical
ones (every column whose cells are not numbers) their number of categories and the most frequent; both get their
count of missing cells (empty or NA), and numeric ones of infinite cells.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from gradfit.data import tabular
from gradfit.data.blocks import Table
from gradfit.data.labels import LabelIndex, Labels, class_index
from gradfit.data.standardize import Moments

TOP_CATEGORIES = 5  # categories listed per categorical column, most frequent first
Progress = Callable[[int, int], None]  # (done, total): see ``Table.progress``


def describe(path: Path, target: str = "target", progress: Progress | None = None) -> dict:
    """Rows, columns, classes with counts, and per column its summary (see the module's docstring). A numeric
    column whose variance overflows float64 is listed under ``overflow`` (its std is None): training refuses
    such values (beyond 1e150)."""
    path = Path(path)
    table = tabular.open_table(path, target, need_labels=None, categorical="auto")
    table.checked = False  # count what training would refuse rather than stop at it
    width = len(table.names)
    moments, extremes = Moments(width), _Extremes(width)
    missing = np.zeros(width, np.int64)
    index, counts = LabelIndex(), np.zeros(0, np.int64)  # rows per distinct label: memory flat in rows
    categorical = [j for j, name in enumerate(table.names) if name in table.categories.index]
    category_counts = {j: np.zeros(0, np.int64) for j in categorical}
    rows = 0
    for block in table.blocks():
        absent = np.isnan(block.x)
        missing += absent.sum(axis=0)
        moments.add(block.x)
        extremes.add(block.x)
        for j in categorical:
            codes = block.x[~absent[:, j], j].astype(np.int64)
            seen = len(table.categories.index[table.names[j]])
            category_counts[j] = np.pad(category_counts[j], (0, seen - len(category_counts[j])))
            category_counts[j] += np.bincount(codes, minlength=seen)
        rows += len(block.x)
        if block.labels is not None and table.kind != "converted":
            codes, seen = index.codes(block.labels), len(index.index)
            counts = np.pad(counts, (0, seen - len(counts))) + np.bincount(codes, minlength=seen)
        if progress is not None:
            progress(*table.progress(rows, block))
    if rows == 0:
        raise table.no_rows()
    numeric = np.array([j not in category_counts for j in range(width)], bool)
    finite = np.isfinite(moments.std()) & np.isfinite(moments.mean)
    overflow = [table.names[i] for i in np.flatnonzero(~finite & numeric)]
    features = _feature_rows(table, moments, extremes, missing, category_counts)
    return {
        "path": str(path),
        "format": table.kind,
        "rows": rows,
        "columns": width,
        "target": table.target if table.has_labels else None,
        "classes": _class_rows(table, index, counts),
        "features": features,
        "overflow": overflow,
        "missing_cells": int(missing.sum()),
        "non_finite_cells": int((moments.non_finite - missing)[numeric].sum()),
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


def _class_rows(table: Table, index: LabelIndex, counts: np.ndarray) -> list[dict] | None:
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


def _feature_rows(
    table: Table, moments: Moments, extremes: _Extremes, missing: np.ndarray, categories: dict[int, np.ndarray]
) -> list[dict]:
    """Per column: name, kind, missing cells; numeric: mean, std, min, max (None where no finite cell was seen)
    and infinite cells; categorical: the number of categories and the most frequent with their rows."""
    seen = moments.count > 0
    # whole columns at once, as Python floats: a loop over NumPy scalars took seconds for 100,000 columns
    mean, std = (np.where(seen & np.isfinite(v), v, np.nan).tolist() for v in (moments.mean, moments.std()))
    low, high = (np.where(seen, v, np.nan).tolist() for v in (extremes.low, extremes.high))
    infinite = (moments.non_finite - missing).tolist()
    dictionaries = table.categories.dictionaries
    rows = []
    for i, (name, absent) in enumerate(zip(table.names, missing.tolist())):
        if i in categories:
            found = categories[i]
            texts = dictionaries[name]
            order = sorted(np.flatnonzero(found), key=lambda c: (-found[c], texts[c]))[:TOP_CATEGORIES]  # as training
            top = [{"value": texts[c], "rows": int(found[c])} for c in order]
            count = int(np.count_nonzero(found))
            rows.append({"name": name, "kind": "categorical", "categories": count, "top": top, "missing": absent})
            continue
        rows.append(
            {
                "name": name,
                "kind": "numeric",
                "mean": _finite(mean[i]),
                "std": _finite(std[i]),
                "min": _finite(low[i]),
                "max": _finite(high[i]),
                "missing": absent,
                "non_finite": infinite[i],
            }
        )
    return rows


def _finite(value: float) -> float | None:
    return None if value != value else value  # NaN marks a missing value
