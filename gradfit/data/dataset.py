"""Datasets as NumPy arrays: built-in CSVs, user files (read by ``gradfit.data.tabular``) and a seeded synthetic generator.

Labels are encoded for the loss: two classes become -1.0/+1.0 (``classes[0] -> -1``), more classes become
integer ids ``0..K-1`` in sorted order of the original values (see ``encode_labels`` for how labels compare).
Splits are seeded; standardization statistics come from the training split only.

Every feature cell must be finite and at most ``MAX_FEATURE`` in magnitude (checked by the reader), and what
the model sees after preprocessing must be finite in the run's dtype (``first_overflow``): a bad cell is a
DataError naming the file, the line (or row) and the column. No jax here.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Optional

import numpy as np

from gradfit.core import precision
from gradfit.data import tabular
from gradfit.errors import DataError
from gradfit.config.schema import DataConfig, GradfitConfig, SyntheticConfig, data_seed
from gradfit.data.tabular import (NOT_FINITE, PLAIN_NUMBER, Labels, Locate, check_label_dtype, decoded, distinct_labels,
                             preview)

BUILTIN = {"breast_cancer": "breast_cancer.csv", "digits": "digits.csv"}
EXACT_INTEGERS = 2 ** 53  # integers up to this magnitude are exact in float64
CHUNK_ROWS = 1 << 16  # rows per chunk when scanning features, so no full-size temporary is made
SYNTHETIC_BLOCK = 1 << 16  # synthetic rows are generated in blocks of this many, each from its own seed



@dataclasses.dataclass(frozen=True)
class Split:
    """x: (n, d) float; y: (n,) float in {-1, +1} (binary) or int class ids (multiclass)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def blocks(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) of consecutive rows, ``rows`` at a time (as ``StreamedSplit.blocks`` reads them from disk)."""
        for start in range(0, len(self), rows):
            yield self.x[start:start + rows], self.y[start:start + rows]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A split, encoded dataset plus what is needed to apply the same preprocessing to new data later."""

    name: str
    train: Split
    val: Split
    test: Split
    feature_names: tuple[str, ...]
    classes: tuple  # original label values, in encoding order
    mean: Optional[np.ndarray] = None  # standardization, fitted on train
    std: Optional[np.ndarray] = None

    @property
    def n_features(self) -> int:
        return self.train.x.shape[1]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def digest(self) -> str:
        """CRC-32 of every split's features and labels, to tell that a resumed run sees the rows it started with.

        A check against accidental change, not tampering, at 2 GB/s (0.2 s for 1,000,000 x 100 float32).
        """
        crc = 0
        for split in (self.train, self.val, self.test):
            for array in (split.x, split.y):
                array = np.ascontiguousarray(array)
                crc = zlib.crc32(f"{array.dtype.str}{array.shape}".encode(), crc)
                crc = zlib.crc32(array.data, crc)
        return f"{crc:08x}"

    def preprocessing(self) -> dict:
        """JSON-ready record of the feature names, label mapping and standardization."""
        binary = self.n_classes == 2
        return {
            "dataset": self.name,
            "feature_names": list(self.feature_names),
            "classes": list(self.classes),
            "label_encoding": {str(c): (-1 if i == 0 else 1) if binary else i for i, c in enumerate(self.classes)},
            "standardize": None if self.mean is None else {"mean": self.mean.tolist(), "std": self.std.tolist()},
            "rows": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
        }


def load_dataset(config: GradfitConfig, shuffle: str = "full") -> Dataset:
    """Load, check, encode, split and standardize the dataset a config names.

    ``shuffle`` is the run's resolved ``train.shuffle``: with "blocks" each split keeps its rows in file order
    (the order a streamed run reads them in); with "full" they are in the split's seeded permutation.

    Raises:
        DataError: a missing or malformed file, bad labels, a feature cell that is not finite or beyond
            ``MAX_FEATURE``, or one that preprocessing takes beyond the range of the run's dtype
            (``precision.of(config).compute_dtype``: float32's is 3.4e38), each naming the file, line and column.
    """
    data = config.data
    source = read_source(data, data_seed(config))
    x, names, origin = source.x, source.names, source.origin
    y, classes = encode_labels(source.labels, origin)
    if config.model.kind == "logistic" and len(classes) > 2:
        raise DataError(
            f"{origin}: the logistic model is binary but the target has {len(classes)} classes "
            f"({preview(classes)}); use model.kind: mlp for multiclass"
        )
    try:
        train_idx, val_idx, test_idx = split_indices(len(y), data.val_fraction, data.test_fraction, data_seed(config))
    except DataError as exc:
        raise DataError(f"{origin}: {exc}") from None
    if shuffle == "blocks":
        train_idx, val_idx, test_idx = np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)
    if len(np.unique(y[train_idx])) < 2:
        raise DataError(f"{origin}: the training split holds a single class; use more rows or another seed")
    raw, mean, std = x, None, None
    if data.standardize:
        train_x = x[train_idx]
        mean, std = fit_checked(lambda: (train_x[i:i + CHUNK_ROWS] for i in range(0, len(train_x), CHUNK_ROWS)),
                                len(train_x), names, origin)
        del train_x
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is found and reported just below
            x = (raw - mean.astype(raw.dtype)) / std.astype(raw.dtype)
    _check_model_range(x, raw, names, source.locate, precision.of(config), data.standardize)
    del raw
    return Dataset(
        name=origin,
        train=Split(x[train_idx], y[train_idx]),
        val=Split(x[val_idx], y[val_idx]),
        test=Split(x[test_idx], y[test_idx]),
        feature_names=tuple(names),
        classes=tuple(classes),
        mean=mean,
        std=std,
    )


def _check_model_range(x: np.ndarray, raw: np.ndarray, names: list[str], locate: Locate,
                       chosen: precision.Precision, standardized: bool) -> None:
    """Raise if a preprocessed cell is not finite in the dtype the features are held in on the device."""
    dtype = chosen.compute_dtype
    if x.dtype == np.float64 and dtype == np.float64:
        # cells within MAX_FEATURE, minus a finite mean, over a std of at least 1e-12: at most 2e162, finite
        return
    found = first_overflow(x, dtype)
    if found is None:
        return
    row, col = found
    where = f"{locate(row)}: column '{names[col]}' is {_number(raw[row, col])}"
    if standardized:
        where += (f", which standardizes to {_number(x[row, col])} (with the training rows' mean and std), beyond "
                  f"{dtype.name}'s range")
    else:
        where += f", beyond {dtype.name}'s range after preprocessing"
    if dtype == np.float64:
        hint = "is it a sentinel for a missing value? Remove or impute it"
    elif standardized:
        hint = "is it a sentinel for a missing value? Remove or impute it, or set runtime.precision: float64"
    else:
        hint = "set data.standardize: true or runtime.precision: float64"
    raise DataError(f"{where}; {hint}")


def first_overflow(x: np.ndarray, dtype) -> Optional[tuple[int, int]]:
    """(row, column) of the first cell of ``x`` (n, d) that is not finite once cast to ``dtype``, or None."""
    for start in range(0, len(x), CHUNK_ROWS):
        with np.errstate(over="ignore", invalid="ignore"):
            ok = np.isfinite(x[start:start + CHUNK_ROWS].astype(dtype, copy=False))
        if not ok.all():
            row, col = np.argwhere(~ok)[0]
            return start + int(row), int(col)
    return None


def _number(value) -> str:
    return repr(float(value))


def split_arrays(split: Split, n_classes: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as the loss wants them: x in ``dtype``; y as ±1 in ``dtype`` (binary) or int32 class ids."""
    y = np.asarray(split.y, dtype) if n_classes == 2 else np.asarray(split.y, np.int32)
    return np.asarray(split.x, dtype), y


class Source(NamedTuple):
    """What ``read_source`` returns: features (n, d), labels, names, a display name, and where each row is."""

    x: np.ndarray
    labels: Labels | np.ndarray
    names: list[str]
    origin: str
    locate: Locate


def read_source(data: DataConfig, seed: int) -> Source:
    """Features (n, d), raw labels (n,), feature names and a display name for the configured source."""
    if data.source == "synthetic":
        s = data.synthetic
        x, y = make_synthetic(s.n_samples, s.n_features, s.n_classes, s.separation, s.noise, seed)
        return Source(x, y, [f"x{i}" for i in range(s.n_features)], "synthetic", lambda row: f"synthetic: row {row}")
    table = open_source(data)
    x, labels, positions = table.read_all()
    origin = str(table.path) if data.source == "file" else data.source
    return Source(x, labels, table.names, origin, lambda row: table.locate(int(positions[row])))


def open_source(data: DataConfig) -> tabular.Table:
    """The table a file or built-in source names (header checked, nothing else read yet)."""
    if data.source == "file":
        return tabular.open_table(Path(data.path), data.target)
    return tabular.open_table(builtin_path(data.source), "target")


def builtin_path(name: str) -> Path:
    """Where a built-in CSV lives: inside the installed package, or in data/ of a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "_data", package.parent / "data"):
        if (folder / BUILTIN[name]).is_file():
            return folder / BUILTIN[name]
    raise DataError(f"built-in dataset '{name}' is missing from the installation; reinstall gradfit")


def make_synthetic(
    n_samples: int, n_features: int, n_classes: int, separation: float, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features and labels drawn from a softmax (for 2 classes: logistic) model.

    x ~ N(0, I); true weights W ~ N(0, separation^2 / d); label = argmax(x W + noise * Gumbel), so with
    noise = 1 the labels are exact samples of the model and with noise = 0 the classes are separable.
    Rows come in blocks of ``SYNTHETIC_BLOCK``, each drawn from its own seed (seed, block): any range of rows
    can be made alone (``synthetic_rows``) and equals the same rows of the whole.

    Returns:
        x: (n, d) float32, y: (n,) int class ids.
    """
    spec = SyntheticConfig(n_samples=n_samples, n_features=n_features, n_classes=n_classes, separation=separation,
                           noise=noise)
    try:
        x = np.empty((n_samples, n_features), np.float32)
    except MemoryError:
        raise DataError(f"synthetic data of {n_samples:,} x {n_features:,} needs {n_samples * n_features * 4 / 2**30:.1f} "
                        "GiB of memory for the features alone; lower data.synthetic.n_samples or set "
                        "data.in_memory: false") from None
    y = np.empty(n_samples, np.int64)
    weights = _synthetic_weights(spec, seed)
    for block in range(-(-n_samples // SYNTHETIC_BLOCK)):
        rows = slice(block * SYNTHETIC_BLOCK, (block + 1) * SYNTHETIC_BLOCK)
        x[rows], y[rows] = _synthetic_block(spec, weights, seed, block)
    return x, y


def synthetic_rows(spec: SyntheticConfig, seed: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start:stop`` of ``make_synthetic``'s data, made without the rest: x (stop - start, d) float32, y."""
    weights = _synthetic_weights(spec, seed)
    first, last = start // SYNTHETIC_BLOCK, (stop - 1) // SYNTHETIC_BLOCK
    parts = [_synthetic_block(spec, weights, seed, block) for block in range(first, last + 1)]
    offset = start - first * SYNTHETIC_BLOCK
    x = np.concatenate([p[0] for p in parts])[offset:offset + stop - start]
    return x, np.concatenate([p[1] for p in parts])[offset:offset + stop - start]


def _synthetic_weights(spec: SyntheticConfig, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((spec.n_features, spec.n_classes)) * (spec.separation / math.sqrt(spec.n_features))
    return weights.astype(np.float32)


def _synthetic_block(spec: SyntheticConfig, weights: np.ndarray, seed: int, block: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    rows = min(SYNTHETIC_BLOCK, spec.n_samples - block * SYNTHETIC_BLOCK)
    rng = np.random.default_rng([seed, block])
    x = rng.standard_normal((rows, spec.n_features), dtype=np.float32)
    logits = x @ weights
    if spec.noise > 0:
        logits += spec.noise * rng.gumbel(size=logits.shape).astype(np.float32)
    return x, logits.argmax(axis=1)


def class_index(labels: Labels | np.ndarray, origin: str) -> tuple[np.ndarray, list]:
    """(each row's index into ``classes``, classes): the classes as ``encode_labels`` orders them."""
    if not isinstance(labels, Labels):
        labels = distinct_labels(np.asarray(labels), origin)
    values = _normalize_labels(labels.values, origin)
    try:
        classes, remap = np.unique(values, return_inverse=True)
    except TypeError:  # an object array of mixed types: only a caller's mistake can make one
        raise DataError(f"{origin}: the labels mix types; use one type (text or numbers) for every label") from None
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
            raise DataError(f"{origin}: labels of dtype {values.dtype} that float64 cannot hold exactly; save them as "
                            "integers or strings")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{origin}: the target contains NaN or inf labels; remove those rows or fill them in")
    if np.all(values == np.floor(values)) and np.all((values >= -2.0 ** 63) & (values < 2.0 ** 63)):
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


def _exact_numbers(text: np.ndarray, origin: str) -> Optional[np.ndarray]:
    """Text labels as float64 (int64 when all integral) if each is a number float64 holds exactly, else None.

    Only plain ASCII decimal numbers count: Python's float() also reads "1_000", "١" and "１", which must stay
    labels of their own rather than merge with "1000" and "1".
    """
    if not all(PLAIN_NUMBER.fullmatch(t) or t.lower().lstrip("+-") in NOT_FINITE for t in text):
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
            raise DataError(f"{origin}: the target contains NaN or inf labels ({written!r}); remove those rows or "
                            "fill them in")
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


def exact_number(text: str) -> Optional[int | float]:
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
        raise DataError(f"{origin}: label(s) {preview(unknown)} were not seen in training; the run knows "
                        f"{preview(classes, 10)}")
    return ids[distinct.codes]


def _match_key(item, text: bool):
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


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Seeded shuffled (train, val, test) row indices; a positive fraction never rounds to zero rows."""
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    for fraction, count, key in ((val_fraction, n_val, "val_fraction"), (test_fraction, n_test, "test_fraction")):
        if fraction > 0 and count == 0:
            raise DataError(f"data.{key}={fraction:g} of {n} rows gives no rows; use more data or a larger fraction")
    if n - n_val - n_test < 2:
        raise DataError(f"the dataset has {n} rows, too few to train on after the validation and test splits")
    order = np.random.default_rng(seed).permutation(n)
    return order[n_val + n_test:], order[:n_val], order[n_val:n_val + n_test]


def fit_checked(chunks: Callable[[], Iterable[np.ndarray]], n: int, names: list[str], origin: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """``standardization_of``, with a column whose mean or std is not finite in float64 reported by name."""
    mean, std = standardization_of(chunks, n)
    bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std)))
    if len(bad):  # cannot happen for cells within MAX_FEATURE: a guard, so that null never reaches the JSON
        raise DataError(f"{origin}: column '{names[bad[0]]}': its mean or standard deviation overflows float64; "
                        "rescale it")
    return mean, std


def fit_standardization(x: np.ndarray, rows_per_chunk: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of ``x`` (n, d) in float64; see ``standardization_of``."""
    return standardization_of(lambda: (x[i:i + rows_per_chunk] for i in range(0, len(x), rows_per_chunk)), len(x))


def standardization_of(chunks: Callable[[], Iterable[np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std in float64 of ``n`` rows that ``chunks()`` yields in row chunks (constant
    features get std 1, so they become 0 instead of NaN).

    Two passes over the chunks (three where a column overflows): exact like ``x.std(dtype=float64)``, several
    times faster on large float32 data because no full-size float64 copy is made, and the same numbers whether
    the rows are in memory or streamed from disk in the same chunks. Finite for any finite x: where the sum of
    squares overflows (cells near ``MAX_FEATURE`` over millions of rows) it is taken again on values scaled by
    the column's largest magnitude.
    """
    mean = sum(chunk.sum(axis=0, dtype=np.float64) for chunk in chunks()) / n
    with np.errstate(over="ignore", invalid="ignore"):
        squares = _sum_of_squares(chunks(), mean, None)
        std = np.sqrt(squares / n)
    overflowed = ~np.isfinite(std)
    if overflowed.any():
        columns = np.flatnonzero(overflowed)
        scale = np.max([np.max(np.abs(chunk[:, columns].astype(np.float64) - mean[columns]), axis=0)
                        for chunk in chunks()], axis=0)
        parts = (chunk[:, columns] for chunk in chunks())
        std[columns] = scale * np.sqrt(_sum_of_squares(parts, mean[columns], scale) / n)
    std[std < 1e-12] = 1.0
    return mean, std


def _sum_of_squares(chunks: Iterable[np.ndarray], mean: np.ndarray, scale: Optional[np.ndarray]) -> np.ndarray:
    """sum over rows of ((x - mean) / scale)**2 (scale None: 1), per column, in float64."""
    squares = np.zeros(len(mean))
    for chunk in chunks:
        centered = chunk.astype(np.float64)
        centered -= mean  # in place: one float64 copy of the chunk, not two
        if scale is not None:
            centered /= scale
        squares += np.einsum("ij,ij->j", centered, centered)
    return squares
