"""Labels: which raw values are classes, how they compare, and how they are encoded for the loss. No jax.

Labels are encoded for the loss: two classes become -1.0/+1.0 (``classes[0] -> -1``), more classes become
integer ids ``0..K-1`` in sorted order of the original values (see ``encode_labels`` for how labels compare).
Readers hold labels once per distinct value (``Labels``, ``LabelIndex``), so memory stays flat in the rows.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import numpy as np

from gradfit.data.text import decoded, is_number, preview
from gradfit.errors import DataError

EXACT_INTEGERS = 2**53  # integers up to this magnitude are exact in float64
_REFUSED_LABELS = {
    "c": "complex numbers",
    "M": "dates (datetime64)",
    "m": "time spans (timedelta64)",
    "V": "structured records",
    "O": "Python objects",
}


class Labels(NamedTuple):
    """Raw labels, stored once per distinct value: ``values[codes]`` are the labels of the rows."""

    values: np.ndarray  # (k,) distinct raw labels
    codes: np.ndarray  # (n,) int index into values


class LabelIndex:
    """Raw labels coded by first appearance: a label is stored once, however many rows hold it."""

    def __init__(self) -> None:
        self.index: dict = {}

    def codes(self, labels: np.ndarray) -> np.ndarray:
        """(b,) int64 codes of a block's labels, new labels getting the next codes."""
        return np.fromiter((self.index.setdefault(v, len(self.index)) for v in labels.tolist()), np.int64, len(labels))

    def values(self, text: bool) -> np.ndarray:
        """The distinct labels in code order: an object array of str (``text``: a CSV's) or a typed array."""
        if not text:
            return np.asarray(list(self.index))
        values = np.empty(len(self.index), dtype=object)
        values[:] = list(self.index)
        return values


def label_dtype(n_classes: int, float_dtype: Any, weighted: bool = False) -> Any:
    """The dtype labels take for the loss: ±1 (two classes) or a standardized numeric target (no classes, 0) in
    ``float_dtype``; int32 class ids for more classes. Weighted rows are (label, weight) pairs in ``float_dtype``."""
    return float_dtype if n_classes <= 2 or weighted else np.int32


def with_weights(y: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Labels (n,) as the loss takes them: unchanged without weights, else (n, 2) float64 pairs (label, weight)
    (class ids are exact in float64: classes number far fewer than 2**53)."""
    return y if weights is None else np.stack([np.asarray(y, np.float64), weights], axis=1)


def class_weights(setting: Any, classes: list, counts: np.ndarray, origin: str) -> np.ndarray | None:
    """``model.class_weight`` as one weight per class (in ``classes``' order), or None.

    balanced: n / (K * n_c) over the training split's rows (``counts``: rows per class, or their summed sample
    weights), as scikit-learn computes it (a class absent from the training split weighs 1). A mapping names labels
    as they read (``class_ids`` matches them); others weigh 1.
    """
    if setting is None:
        return None
    weights = np.ones(len(classes))
    if setting == "balanced":
        present = counts > 0
        weights[present] = counts.sum() / (len(classes) * counts[present])
        return weights
    labels = list(setting)
    try:
        ids = class_ids(np.array([str(label) for label in labels], dtype=object), classes, "model.class_weight")
    except DataError as exc:
        raise DataError(f"{origin}: {exc}") from None
    weights[ids] = [float(setting[label]) for label in labels]
    return weights


def check_label_dtype(dtype: np.dtype, origin: str) -> None:
    """Refuse labels that cannot be classes: complex numbers, dates, time spans, structured records, objects."""
    what = _REFUSED_LABELS.get(dtype.kind)
    if what is not None:
        raise DataError(
            f"{origin}: labels of dtype {dtype} ({what}) cannot be classes; gradfit takes labels that "
            "are integers, booleans, real numbers or text: convert them first (for example "
            "y.astype(str))"
        )


def _mixed_types(origin: str) -> DataError:
    return DataError(f"{origin}: the labels mix types; use one type (text or numbers) for every label")


def distinct_labels(labels: np.ndarray, origin: str) -> Labels:
    """Raw labels (n,) as their distinct values and a code per row; refused: dtypes that cannot be classes."""
    if labels.dtype.kind != "O":  # object arrays come from gradfit's own CSV reader: str, checked when encoded
        check_label_dtype(labels.dtype, origin)
    try:
        values, codes = np.unique(labels, return_inverse=True)
    except TypeError:
        raise _mixed_types(origin) from None
    return Labels(values, codes.reshape(-1))


def class_values(classes: list) -> np.ndarray:
    """A converted folder's classes (JSON values) as an array labels can be taken from: the type they had."""
    if all(isinstance(c, bool) for c in classes):
        return np.array(classes, dtype=bool)
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return np.array(classes, dtype=np.int64)
    if all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes):
        return np.array(classes, dtype=np.float64)
    values = np.empty(len(classes), dtype=object)
    values[:] = [str(c) for c in classes]
    return values


# ---------------------------------------------------------------------------------------------------- training


def class_index(labels: Labels | np.ndarray, origin: str) -> tuple[np.ndarray, list]:
    """(each row's index into ``classes``, classes): the classes as ``encode_labels`` orders them."""
    if not isinstance(labels, Labels):
        labels = distinct_labels(np.asarray(labels), origin)
    values = _normalize_labels(labels.values, origin)
    try:
        classes, remap = np.unique(values, return_inverse=True)
    except TypeError:  # an object array of mixed types: only a caller's mistake can make one
        raise _mixed_types(origin) from None
    return remap.reshape(-1)[labels.codes], [c.item() if isinstance(c, np.generic) else c for c in classes]


def encode_labels(labels: Labels | np.ndarray, origin: str) -> tuple[np.ndarray, list]:
    """Map raw labels to the loss's encoding; returns (y, classes).

    How labels compare (``classes`` holds plain Python str, int, float or bool, in sorted order, so the mapping
    is the same for any row order and survives JSON):

    - Text (and bytes, decoded as UTF-8) is stripped of surrounding spaces. Text labels that all look like
      numbers are compared as numbers ("1" == "1.0" == " 1 ") only when every one is exactly representable in
      float64: an integral value of magnitude at most 2**53 written exactly ("1", "1.0", "1e3"), or a
      non-integral one ("0.5"). Otherwise ("9007199254740993", "1e19", "1.0000000000000000001") they all stay
      text, compared exactly as written, so no two labels are ever merged by rounding. "nan"/"inf" are refused.
    - Integer and boolean arrays are exact as they are (uint64 beyond int64 included: Python ints).
    - Float arrays must be finite; they become int64 when every value is integral and within int64's range.
    - Complex, datetime64, timedelta64, structured and object labels are refused.

    Two classes become -1.0/+1.0, more become 0..K-1.
    """
    y, classes = class_index(labels, origin)
    if len(classes) < 2:
        raise DataError(f"{origin}: the target has a single class ({preview(classes)}); need at least two")
    if len(classes) == 2:
        return np.where(y == 1, 1.0, -1.0), classes
    return y.astype(np.int32), classes


def numeric_target(labels: Labels | np.ndarray, origin: str, name: str | None = None) -> np.ndarray:
    """Raw labels (n,) as the numeric target of a regression, float64: numbers, or text that reads as one.

    Raises:
        DataError: a label is not a number (naming it and the column), NaN or inf, or the target is constant.
    """
    if not isinstance(labels, Labels):
        labels = distinct_labels(np.asarray(labels), origin)
    column = f"the target column '{name}'" if name else "the target"
    values = labels.values
    if values.dtype.kind == "b":
        raise DataError(f"{origin}: {column} holds true/false; a numeric target needs numbers (for classes: log loss)")
    if values.dtype.kind in "SUO":
        text = _texts(values, origin)
        not_numbers = [t for t in text if not is_number(t)]
        if not_numbers:
            raise DataError(
                f"{origin}: {column} holds {preview(not_numbers)}, not numbers; a linear model or a squared or huber "
                "loss fits a numeric target (for classes: model.kind logistic, or loss log)"
            )
        values = text.astype(np.float64)
    elif values.dtype.kind not in "iuf":
        check_label_dtype(values.dtype, origin)
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{origin}: {column} holds NaN or inf; remove those rows or fill them in")
    return values[labels.codes]


def _normalize_labels(values: np.ndarray, origin: str) -> np.ndarray:
    """Distinct raw labels -> the values they are compared as (see ``encode_labels``), in the same order."""
    kind = values.dtype.kind
    if kind != "O":
        check_label_dtype(values.dtype, origin)
    if kind in "SUO":
        text = _texts(values, origin)
        numbers = _exact_numbers(text, origin)
        return text if numbers is None else numbers
    if kind in "biu":
        return values
    if values.dtype.itemsize > 8:  # longdouble: only if float64 holds every value
        wide = values[np.isfinite(values)]
        if not np.array_equal(wide.astype(np.float64), wide):
            raise DataError(
                f"{origin}: labels of dtype {values.dtype} that float64 cannot hold exactly; save them as "
                "integers or strings"
            )
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{origin}: the target contains NaN or inf labels; remove those rows or fill them in")
    if np.all(values == np.floor(values)) and np.all((values >= -(2.0**63)) & (values < 2.0**63)):
        return values.astype(np.int64)
    return values


def _texts(values: np.ndarray, origin: str) -> np.ndarray:
    """Labels as an object array of stripped Python str (bytes decoded as UTF-8)."""
    if values.dtype.kind == "S":
        items = decoded(values, f"{origin}: the labels")
    else:
        items = values.tolist()
        if not all(isinstance(v, str) for v in items):
            raise DataError(f"{origin}: labels that are Python objects cannot be classes; use text or numbers")
    text = np.empty(len(items), dtype=object)
    text[:] = [v.strip() for v in items]
    return text


def _exact_numbers(text: np.ndarray, origin: str) -> np.ndarray | None:
    """Text labels as float64 (int64 when all integral) if each is a number float64 holds exactly, else None.

    Only plain ASCII decimal numbers count (``is_number``): "1_000", "١" and "１" stay labels of their own
    rather than merge with "1000" and "1".
    """
    if not all(is_number(t) for t in text):
        return None
    try:
        numbers = text.astype(np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    finite = np.isfinite(numbers)
    integral = finite & (numbers == np.floor(np.where(finite, numbers, 0.0)))
    beyond = text[~finite]
    for written in beyond:
        if not _decimal(written).is_finite():  # "nan", "inf": a missing label, not a class
            raise DataError(
                f"{origin}: the target contains NaN or inf labels ({written!r}); remove those rows or fill them in"
            )
    if len(beyond):
        return None  # "1e400": beyond float64, so not a number to compare as one
    for written, value in zip(text[integral], numbers[integral]):
        if abs(value) > EXACT_INTEGERS or _decimal(written) != value:  # Decimal == float compares exactly
            return None
    return numbers.astype(np.int64) if integral.all() else numbers


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        return Decimal("NaN")


# ---------------------------------------------------------------------------------------------------- new data


def exact_number(text: str) -> int | float | None:
    """A label's text as the number it is exactly (int for integral values, float otherwise), or None.

    Non-integral values are the nearest float (as ``encode_labels`` compares them); a text whose nearest float is
    integral although the text is not ("1.0000000000000000001") is not a number here, as in training.
    """
    number = _decimal(text.strip())
    if not number.is_finite():
        return None
    if number == number.to_integral_value():
        return int(number) if number.adjusted() < 400 else None
    value = float(number)
    return value if math.isfinite(value) and not value.is_integer() else None


def class_ids(labels: np.ndarray, classes: list, origin: str) -> np.ndarray:
    """Raw labels -> index into ``classes`` (a run's label mapping), matched as ``encode_labels`` matches them.

    With text classes (training kept its labels as text), labels compare as stripped text (numbers as they
    are written: 7 -> "7"). With numeric classes, each label compares as the number it exactly is, so
    "9007199254740993" matches the integer 9007199254740993 and never 9007199254740992.
    """
    distinct = distinct_labels(np.asarray(labels), origin)
    values = distinct.values
    items = decoded(values, f"{origin}: the labels") if values.dtype.kind == "S" else values.tolist()
    text = all(isinstance(c, str) for c in classes)
    index = {c: i for i, c in enumerate(classes)}
    ids = np.zeros(len(items), dtype=np.int32)
    unknown = []
    for j, item in enumerate(items):
        found = index.get(_match_key(item, text))
        if found is None:
            unknown.append(item.strip() if isinstance(item, str) else item)
        else:
            ids[j] = found
    if unknown:
        raise DataError(
            f"{origin}: label(s) {preview(unknown)} were not seen in training; the run knows {preview(classes, 10)}"
        )
    return ids[distinct.codes]


def _match_key(item: Any, text: bool) -> Any:
    """What a label is compared as against a run's classes (text classes: its text; else its exact number)."""
    if isinstance(item, str):
        item = item.strip()
        if text:
            return item
        number = exact_number(item)
        return item if number is None else number
    if isinstance(item, float) and item.is_integer():
        item = int(item)
    return str(item) if text else item
