"""Datasets as NumPy arrays: built-in CSVs, user CSV/.npz files and a seeded synthetic generator.

Labels are encoded for the loss: two classes become -1.0/+1.0 (``classes[0] -> -1``), more classes become
integer ids ``0..K-1`` in sorted order of the original values (see ``encode_labels`` for how labels compare).
Splits are seeded; standardization statistics come from the training split only.

Files are opened through ``gradfit.files`` (regular files only, lines of bounded length, .npz headers checked
before anything is allocated). Every feature cell must be finite and at most ``MAX_FEATURE`` in magnitude, and
what the model sees after preprocessing must be finite in the run's dtype (``check_features``,
``first_overflow``): a bad cell is a DataError naming the file, the line (or .npz row) and the column. No jax here.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import difflib
import io
import math
import re
import zlib
from array import array as c_array  # compact growable int arrays: a line number per row
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np

from gradfit import files, precision
from gradfit.errors import DataError
from gradfit.schema import DataConfig, GradfitConfig

BUILTIN = {"breast_cancer": "breast_cancer.csv", "digits": "digits.csv"}
MAX_FEATURE = 1e150  # largest feature magnitude: its square (a variance) cannot overflow float64
EXACT_INTEGERS = 2 ** 53  # integers up to this magnitude are exact in float64
CHUNK_ROWS = 1 << 16  # rows per chunk when scanning features, so no full-size temporary is made
_REFUSED_LABELS = {"c": "complex numbers", "M": "dates (datetime64)", "m": "time spans (timedelta64)",
                   "V": "structured records", "O": "Python objects"}

_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_NOT_FINITE = {"nan", "inf", "infinity"}

Locate = Callable[[int], str]  # row index -> where it is, for a message: "data.csv:7" or "data.npz: X row 5"


@dataclasses.dataclass(frozen=True)
class Split:
    """x: (n, d) float; y: (n,) float in {-1, +1} (binary) or int class ids (multiclass)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


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


def load_dataset(config: GradfitConfig) -> Dataset:
    """Load, check, encode, split and standardize the dataset a config names.

    Raises:
        DataError: a missing or malformed file, bad labels, a feature cell that is not finite or beyond
            ``MAX_FEATURE``, or one that preprocessing takes beyond the range of the run's dtype
            (``precision.of(config).compute_dtype``: float32's is 3.4e38), each naming the file, line and column.
    """
    data = config.data
    source = read_source(data, config.seed)
    x, names, origin = source.x, source.names, source.origin
    y, classes = encode_labels(source.labels, origin)
    if config.model.kind == "logistic" and len(classes) > 2:
        raise DataError(
            f"{origin}: the logistic model is binary but the target has {len(classes)} classes "
            f"({preview(classes)}); use model.kind: mlp for multiclass"
        )
    try:
        train_idx, val_idx, test_idx = split_indices(len(y), data.val_fraction, data.test_fraction, config.seed)
    except DataError as exc:
        raise DataError(f"{origin}: {exc}") from None
    if len(np.unique(y[train_idx])) < 2:
        raise DataError(f"{origin}: the training split holds a single class; use more rows or another seed")
    raw, mean, std = x, None, None
    if data.standardize:
        mean, std = fit_standardization(x[train_idx])
        bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std)))
        if len(bad):  # cannot happen for cells within MAX_FEATURE: a guard, so that null never reaches the JSON
            raise DataError(f"{origin}: column '{names[bad[0]]}': its mean or standard deviation overflows float64; "
                            "rescale it")
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


def check_features(x: np.ndarray, names: list[str], locate: Locate) -> None:
    """Every cell of ``x`` (n, d) must be finite and at most ``MAX_FEATURE`` (1e150) in magnitude.

    The bound keeps a column's variance (a mean of squares) finite in float64; a value beyond it is almost
    always a sentinel for a missing value (-9.99e307, 1e300). Raises DataError naming the first bad cell (in row
    order) by ``locate(row)`` and column name.
    """
    if x.dtype.kind in "biu":  # integers are at most 1.8e19
        return
    small = x.dtype.itemsize < 8  # float16/float32 cannot exceed the bound: only check they are finite
    for start in range(0, len(x), CHUNK_ROWS):
        chunk = x[start:start + CHUNK_ROWS]
        ok = np.isfinite(chunk) if small else np.abs(chunk) <= MAX_FEATURE
        if ok.all():
            continue
        row, col = (int(i) for i in np.argwhere(~ok)[0])
        value = chunk[row, col]
        where = f"{locate(start + row)}: column '{names[col]}' is {_number(value)}"
        if not np.isfinite(value):
            raise DataError(f"{where}; remove or impute missing and infinite values first")
        raise DataError(f"{where}, beyond the magnitude of {MAX_FEATURE:g} gradfit accepts for a feature (its square "
                        "must fit in float64); such a value is almost always a sentinel for a missing value: remove "
                        "or impute it")


def _number(value) -> str:
    return repr(float(value))


def split_arrays(split: Split, n_classes: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as the loss wants them: x in ``dtype``; y as ±1 in ``dtype`` (binary) or int32 class ids."""
    y = np.asarray(split.y, dtype) if n_classes == 2 else np.asarray(split.y, np.int32)
    return np.asarray(split.x, dtype), y


class Labels(NamedTuple):
    """Raw labels, stored once per distinct value: ``values[codes]`` are the labels of the rows."""

    values: np.ndarray  # (k,) distinct raw labels
    codes: np.ndarray  # (n,) int index into values


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
    if data.source == "file":
        path = Path(data.path)
        if path.suffix.lower() == ".npz":
            x, y, names = read_npz(path)
            return Source(x, y, names, str(path), _npz_row(path))
        x, labels, names, lines = _read_csv(path, data.target)
        return Source(x, labels, names, str(path), _csv_line(path, lines))
    path = builtin_path(data.source)
    x, labels, names, lines = _read_csv(path, "target")
    return Source(x, labels, names, data.source, _csv_line(path, lines))


def _csv_line(path: Path, lines: np.ndarray) -> Locate:
    return lambda row: f"{path}:{lines[row]}"


def _npz_row(path: Path) -> Locate:
    return lambda row: f"{path}: X row {row}"


def builtin_path(name: str) -> Path:
    """Where a built-in CSV lives: inside the installed package, or in data/ of a source checkout."""
    here = Path(__file__).resolve().parent
    for folder in (here / "_data", here.parent / "data"):
        if (folder / BUILTIN[name]).is_file():
            return folder / BUILTIN[name]
    raise DataError(f"built-in dataset '{name}' is missing from the installation; reinstall gradfit")


def make_synthetic(
    n_samples: int, n_features: int, n_classes: int, separation: float, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian features and labels drawn from a softmax (for 2 classes: logistic) model.

    x ~ N(0, I); true weights W ~ N(0, separation^2 / d); label = argmax(x W + noise * Gumbel), so with
    noise = 1 the labels are exact samples of the model and with noise = 0 the classes are separable.

    Returns:
        x: (n, d) float32, y: (n,) int class ids.
    """
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((n_features, n_classes)) * (separation / math.sqrt(n_features))
    try:
        x = rng.standard_normal((n_samples, n_features), dtype=np.float32)
    except MemoryError:
        raise DataError(f"synthetic data of {n_samples:,} x {n_features:,} needs {n_samples * n_features * 4 / 2**30:.1f} "
                        "GiB of memory for the features alone; lower data.synthetic.n_samples") from None
    logits = x @ weights.astype(np.float32)
    if noise > 0:
        logits += noise * rng.gumbel(size=logits.shape).astype(np.float32)
    return x, logits.argmax(axis=1)


def read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An .npz with ``X`` (n, d) numeric and ``y`` (n,); optional ``feature_names`` (d,) strings.

    Read with ``gradfit.files``: each array's declared shape is checked against the archive before anything
    is allocated, object arrays are refused (nothing is unpickled), and only X, y and feature_names are read.
    X's cells are checked by ``check_features``; y's dtype must be one ``encode_labels`` takes.
    """
    path = Path(path)
    with files.open_npz(path, "data file", DataError) as (archive, members):
        missing = [k for k in ("X", "y") if k not in members]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)}; found {sorted(members) or 'none'}. "
                            "Save with np.savez(path, X=features, y=labels)")
        with npy_member(archive, "X", path) as x_member, npy_member(archive, "y", path) as y_member:
            shape = x_member.shape
            if len(shape) != 2 or x_member.dtype.kind not in "biuf":
                raise DataError(f"{path}: X must be a 2-D numeric array, got shape {shape} dtype {x_member.dtype}")
            if len(y_member.shape) != 1 or y_member.shape[0] != shape[0]:
                raise DataError(f"{path}: y must be 1-D with one label per row of X; X has {shape[0]} rows, y has "
                                f"shape {y_member.shape}")
            check_label_dtype(y_member.dtype, f"{path}: y")
            names = [f"x{i}" for i in range(shape[1])]
            if "feature_names" in members:
                names = read_feature_names(archive, path)
                if len(names) != shape[1]:
                    raise DataError(f"{path}: feature_names has {len(names)} entries but X has {shape[1]} columns")
            x, y = x_member.read(), y_member.read()
    x = x.astype(np.float32 if x.dtype == np.float32 else np.float64, copy=False)
    check_features(x, names, _npz_row(path))
    return x, y, names


@contextlib.contextmanager
def npy_member(archive, name: str, path: Path) -> Iterator[files.NpyMember]:
    """One array of an open .npz (``files.NpyMember``: header checked, data not read yet), closed afterwards."""
    member = files.NpyMember(archive, name, path, DataError)
    try:
        yield member
    finally:
        member.close()


def read_feature_names(archive, path: Path) -> list[str]:
    """The ``feature_names`` array of an open .npz as a list of str (bytes decoded as UTF-8)."""
    with npy_member(archive, "feature_names", path) as member:
        if len(member.shape) != 1 or member.dtype.kind not in "USiu":
            raise DataError(f"{path}: feature_names must be a 1-D array of strings, got shape {member.shape} dtype "
                            f"{member.dtype}")
        stored = member.read()
    if stored.dtype.kind == "S":
        return list(_decoded(stored, f"{path}: feature_names"))
    return [str(n) for n in stored.tolist()]


def read_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A CSV with a header row; every column but ``target`` must be numeric, finite and within ``MAX_FEATURE``.

    Returns:
        x: (n, d) float64; labels: (n,) the stripped label texts (an object array of str); names: the features.
    """
    x, labels, names, _ = _read_csv(path, target)
    return x, labels.values[labels.codes], names


def _read_csv(path: Path, target: str) -> tuple[np.ndarray, Labels, list[str], np.ndarray]:
    """(x, labels, feature names, line number of each data row).

    A first pass with the csv module checks the shape of every row, collects the labels and records the line
    each data row starts on (blank lines are skipped, so rows and lines drift apart); NumPy's fast parser then
    reads the features, and on failure a second pass names the offending line and column. Lines are read
    through ``files.bounded_lines``: one longer than ``files.MAX_LINE_CHARS`` is refused before it is read whole.
    """
    path = Path(path)
    with files.open_regular(path, "data file", DataError) as raw, \
            io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        try:
            header, labels, lines = _read_csv_structure(f, path, target)
            t = header.index(target)
            feature_cols = [i for i in range(len(header)) if i != t]
            f.seek(0)
            body = _lines(f, path)
            next(body)
            try:
                x = np.loadtxt(body, delimiter=",", usecols=feature_cols, ndmin=2, quotechar='"', comments=None,
                               dtype=np.float64)
            except ValueError as exc:
                f.seek(0)
                _diagnose_features(f, path, header, t)  # raises a precise error when it finds the bad cell
                raise DataError(f"{path}: cannot parse CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); save it as UTF-8 "
                            "CSV") from None
    names = [header[i] for i in feature_cols]
    if len(x) != len(labels.codes):  # the two passes must see the same rows
        raise DataError(f"{path}: read {len(x)} feature rows but {len(labels.codes)} labels; check the quoting")
    check_features(x, names, _csv_line(path, lines))
    return x, labels, names, lines


def _lines(f, path: Path) -> Iterator[str]:
    return files.bounded_lines(f, path, DataError, max_chars=files.MAX_LINE_CHARS)


def csv_error(path: Path, line: int, exc: csv.Error, part: str = "row") -> DataError:
    """A csv module error as a DataError naming the line: a field over its limit, an unclosed quote..."""
    if "field larger than field limit" in str(exc):
        return DataError(f"{path}:{line}: a field of the CSV {part} is longer than {csv.field_size_limit():,} "
                         "characters, the most gradfit reads in one cell; is a '\"' quote left open, or is this not a "
                         "CSV file?")
    return DataError(f"{path}:{line}: malformed CSV {part} ({exc}); is a '\"' quote left open?")


def _read_csv_structure(f, path: Path, target: str) -> tuple[list[str], Labels, np.ndarray]:
    """Check the header and that every row has one field per column and a label.

    Returns (header, labels, the line each data row starts on).
    """
    reader = csv.reader(_lines(f, path), strict=True)
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise csv_error(path, 1, exc, "header") from None
    if not any(header):
        raise DataError(f"{path}: file is empty; expected a header row naming the columns")
    if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
        raise DataError(f"{path}: the header has a single column {header[0][:100]!r}; gradfit reads comma-separated "
                        "files, and this one seems to use another separator")
    duplicates = sorted(h for h, n in collections.Counter(header).items() if n > 1)
    if duplicates:
        raise DataError(f"{path}: duplicate column name(s) in the header: {preview(duplicates)}")
    if target not in header:
        close = difflib.get_close_matches(target, header, n=1)
        hint = f"did you mean '{close[0]}'? (set data.target)" if close else "set data.target to the label column"
        raise DataError(f"{path}: no target column '{target}' in the header; {hint}")
    if len(header) == 1:
        raise DataError(f"{path}: the only column is the target '{target}'; there are no features")
    t = header.index(target)
    index: dict[str, int] = {}  # distinct label -> code: a label is stored once, however many rows hold it
    codes, lines = c_array("l"), c_array("l")
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # strict=True: an unclosed quote, a field over the csv module's limit
            raise csv_error(path, start, exc) from None
        if not row:
            continue  # blank lines are skipped, as NumPy does
        if len(row) != len(header):
            raise DataError(f"{path}:{start}: {len(row)} fields but the header has {len(header)} columns")
        label = row[t].strip()
        if not label:
            raise DataError(f"{path}:{start}: missing label in column '{target}'")
        code = index.get(label)
        if code is None:
            code = index[label] = len(index)
        codes.append(code)
        lines.append(start)
    if not codes:
        raise DataError(f"{path}: the header has no data rows below it")
    values = np.empty(len(index), dtype=object)
    values[:] = list(index)
    return header, Labels(values, np.frombuffer(codes, dtype=np.dtype("l"))), np.frombuffer(lines, np.dtype("l"))


def _diagnose_features(f, path: Path, header: list[str], target_col: int) -> None:
    """Walk the file line by line and raise a DataError naming the first non-numeric or non-finite cell."""
    reader = csv.reader(_lines(f, path))
    try:
        next(reader)
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            for i, cell in enumerate(row[:len(header)]):
                if i == target_col:
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    raise DataError(
                        f"{path}:{start}: column '{header[i]}' has non-numeric value {cell[:100]!r}; "
                        "features must be numbers (encode categories as numbers first)"
                    ) from None
                if not math.isfinite(value):
                    raise DataError(f"{path}:{start}: column '{header[i]}' is {cell.strip()[:100]}; "
                                    "remove or impute missing and infinite values first")
    except csv.Error as exc:
        raise csv_error(path, reader.line_num, exc) from None


def check_label_dtype(dtype: np.dtype, origin: str) -> None:
    """Refuse labels that cannot be classes: complex numbers, dates, time spans, structured records, objects."""
    what = _REFUSED_LABELS.get(dtype.kind)
    if what is not None:
        raise DataError(f"{origin}: labels of dtype {dtype} ({what}) cannot be classes; gradfit takes labels that "
                        "are integers, booleans, real numbers or text: convert them first (for example "
                        "y.astype(str))")


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
    if not isinstance(labels, Labels):
        labels = _distinct(np.asarray(labels), origin)
    values = _normalize_labels(labels.values, origin)
    try:
        classes, remap = np.unique(values, return_inverse=True)
    except TypeError:  # an object array of mixed types: only a caller's mistake can make one
        raise DataError(f"{origin}: the labels mix types; use one type (text or numbers) for every label") from None
    y = remap.reshape(-1)[labels.codes]
    classes = [c.item() if isinstance(c, np.generic) else c for c in classes]
    if len(classes) < 2:
        raise DataError(f"{origin}: the target has a single class ({preview(classes)}); need at least two")
    if len(classes) == 2:
        return np.where(y == 1, 1.0, -1.0), classes
    return y.astype(np.int32), classes


def _distinct(labels: np.ndarray, origin: str) -> Labels:
    if labels.dtype.kind != "O":  # object arrays come from gradfit's own CSV readers: str, checked later
        check_label_dtype(labels.dtype, origin)
    try:
        values, codes = np.unique(labels, return_inverse=True)
    except TypeError:
        raise DataError(f"{origin}: the labels mix types; use one type (text or numbers) for every label") from None
    return Labels(values, codes.reshape(-1))


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
        items = _decoded(values, f"{origin}: the labels")
    else:
        items = values.tolist()
        if not all(isinstance(v, str) for v in items):
            raise DataError(f"{origin}: labels that are Python objects cannot be classes; use text or numbers")
    text = np.empty(len(items), dtype=object)
    text[:] = [v.strip() for v in items]
    return text


def _decoded(values: np.ndarray, origin: str) -> list[str]:
    """Byte strings (as h5py and np.bytes_ arrays hold text) decoded as UTF-8."""
    try:
        return [bytes(v).decode("utf-8") for v in values.tolist()]
    except UnicodeDecodeError as exc:
        raise DataError(f"{origin} are byte strings that are not UTF-8 text ({exc.reason} at byte {exc.start}); "
                        "decode them first (for example y.astype(str))") from None


def _exact_numbers(text: np.ndarray, origin: str) -> Optional[np.ndarray]:
    """Text labels as float64 (int64 when all integral) if each is a number float64 holds exactly, else None.

    Only plain ASCII decimal numbers count: Python's float() also reads "1_000", "١" and "１", which must stay
    labels of their own rather than merge with "1000" and "1".
    """
    if not all(_PLAIN_NUMBER.fullmatch(t) or t.lower().lstrip("+-") in _NOT_FINITE for t in text):
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
    distinct = _distinct(np.asarray(labels), origin)
    values = distinct.values
    items = _decoded(values, f"{origin}: the labels") if values.dtype.kind == "S" else values.tolist()
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


def fit_standardization(x: np.ndarray, rows_per_chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std in float64 (constant features get std 1, so they become 0 instead of NaN).

    Two passes over row chunks: exact like ``x.std(dtype=float64)``, several times faster on large float32 data
    because no full-size float64 copy is made. Finite for any finite x: where the sum of squares overflows
    (cells near ``MAX_FEATURE`` over millions of rows) it is taken again on values scaled by the column's largest
    magnitude.
    """
    n = len(x)
    mean = sum(x[i:i + rows_per_chunk].sum(axis=0, dtype=np.float64) for i in range(0, n, rows_per_chunk)) / n
    with np.errstate(over="ignore", invalid="ignore"):
        squares = _sum_of_squares(x, mean, None, rows_per_chunk)
        std = np.sqrt(squares / n)
    overflowed = ~np.isfinite(std)
    if overflowed.any():
        columns = np.flatnonzero(overflowed)
        part = x[:, columns]
        scale = np.max(np.abs(part.astype(np.float64) - mean[columns]), axis=0)
        std[columns] = scale * np.sqrt(_sum_of_squares(part, mean[columns], scale, rows_per_chunk) / n)
    std[std < 1e-12] = 1.0
    return mean, std


def _sum_of_squares(x: np.ndarray, mean: np.ndarray, scale: Optional[np.ndarray], rows_per_chunk: int) -> np.ndarray:
    """sum over rows of ((x - mean) / scale)**2 (scale None: 1), per column, in float64."""
    squares = np.zeros(x.shape[1])
    for i in range(0, len(x), rows_per_chunk):
        centered = x[i:i + rows_per_chunk].astype(np.float64) - mean
        if scale is not None:
            centered /= scale
        squares += np.einsum("ij,ij->j", centered, centered)
    return squares


def preview(values, limit: int = 5) -> str:
    """The first values, repr'd, for an error message: "'a', 'b', ... (12 in all)"."""
    shown = ", ".join(repr(v) for v in list(values)[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")
