"""Datasets: what training, evaluation and the trained-run commands use of a run's data (``Dataset``, whether the
rows are in memory or streamed), and the in-memory kind: a built-in CSV, a user file (read by
``gradfit.data.tabular``), rows handed over in Python (``gradfit.data.supplied``) or synthetic data, checked,
encoded (``gradfit.data.labels``), split and standardized.

Splits are seeded; standardization statistics come from the training split only (``gradfit.data.standardize``).

Every feature cell must be finite and at most ``MAX_FEATURE`` in magnitude (checked by the reader), and what
the model sees after preprocessing must be finite in the run's dtype (``first_overflow``): a bad cell is a
DataError naming the file, the line (or row) and the column. No jax.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from gradfit.config.data import DataConfig
from gradfit.config.schema import GradfitConfig, data_seed
from gradfit.core import precision
from gradfit.data import blocks, standardize, synthetic, tabular
from gradfit.data.arrow_tables import MemoryTable
from gradfit.data.blocks import Locate
from gradfit.data.encoding import Encoding, refuse_missing
from gradfit.data.encoding import fit as encoding_fit
from gradfit.data.encoding import numeric as numeric_encoding
from gradfit.data.labels import Labels, encode_labels, label_dtype, numeric_target, with_weights
from gradfit.data.supplied import Supplied
from gradfit.data.text import preview
from gradfit.data.weighting import Weighting, class_positions, refuse_weightless_class
from gradfit.errors import ConfigError, DataError

BUILTIN = {"breast_cancer": "breast_cancer.csv", "digits": "digits.csv", "diabetes": "diabetes.csv"}


class DataSplit(Protocol):
    """A split's rows, held in memory or read from disk when asked."""

    def __len__(self) -> int:
        """Rows in the split."""
        ...

    def blocks(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) of consecutive rows, ``rows`` at a time: y as ±1 (binary) or class ids."""
        ...


class Dataset(Protocol):
    """A run's data, split and encoded, with what is needed to preprocess new data the same way later."""

    @property
    def name(self) -> str:
        """Where the rows come from, for messages: the file's path, a built-in name or "synthetic"."""
        ...

    @property
    def train(self) -> DataSplit:
        """The training rows (standardization statistics come from these alone)."""
        ...

    @property
    def val(self) -> DataSplit:
        """The validation rows (possibly none)."""
        ...

    @property
    def test(self) -> DataSplit:
        """The test rows (possibly none)."""
        ...

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The feature columns, in the order the rows hold them."""
        ...

    @property
    def classes(self) -> tuple:
        """The original label values, in encoding order."""
        ...

    @property
    def mean(self) -> np.ndarray | None:
        """Per-feature mean the rows were standardized with, or None without standardization."""
        ...

    @property
    def std(self) -> np.ndarray | None:
        """Per-feature standard deviation the rows were standardized with, or None."""
        ...

    @property
    def n_features(self) -> int:
        """Features per row."""
        ...

    @property
    def encoding(self) -> Encoding:
        """How the table's input columns became the features (categories, missing cells)."""
        ...

    @property
    def target(self) -> str | None:
        """The label column's name in the source table, or None (synthetic data)."""
        ...

    @property
    def n_classes(self) -> int:
        """Distinct classes: 2 encodes as ±1, more as class ids; 0 for a numeric target."""
        ...

    @property
    def target_scale(self) -> tuple[float, float] | None:
        """A numeric target's training mean and std: the rows hold (y - mean) / std. None for classes."""
        ...

    @property
    def weighting(self) -> Weighting | None:
        """Where the rows' weights come from (then each y is a (label, weight) pair), or None."""
        ...

    def digest(self) -> str:
        """A checksum of the rows and splits, to tell that a resumed run sees the rows it started with."""
        ...

    def preprocessing(self) -> dict:
        """JSON-ready record of the feature names, label mapping and standardization (``preprocessing_record``)."""
        ...


def preprocessing_record(dataset: Dataset) -> dict:
    """JSON-ready record of the feature names, label mapping, standardization and split sizes of ``dataset``."""
    binary = dataset.n_classes == 2
    scaling, target = None, dataset.target_scale
    if dataset.mean is not None and dataset.std is not None:
        scaling = {"mean": dataset.mean.tolist(), "std": dataset.std.tolist()}
    weighting = dataset.weighting
    return {
        "dataset": dataset.name,
        "target": dataset.target,
        "weight": None if weighting is None else weighting.column,
        "class_weight": None if weighting is None or weighting.classes is None else list(weighting.classes),
        "encoding": dataset.encoding.record(),
        "feature_names": list(dataset.feature_names),
        "classes": list(dataset.classes),
        "label_encoding": {str(c): (-1 if i == 0 else 1) if binary else i for i, c in enumerate(dataset.classes)},
        "standardize": scaling,
        "target_scale": None if target is None else {"mean": target[0], "std": target[1]},
        "rows": {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)},
    }


def shuffle_mode(config: GradfitConfig, streamed: bool) -> str:
    """``train.shuffle`` resolved: auto is full in memory and blocks when streaming."""
    mode = config.train.shuffle
    return ("blocks" if streamed else "full") if mode == "auto" else mode


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Seeded shuffled (train, val, test) row indices; a positive fraction never rounds to zero rows."""
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    for fraction, count, key in ((val_fraction, n_val, "val_fraction"), (test_fraction, n_test, "test_fraction")):
        if fraction > 0 and count == 0:
            raise DataError(f"data.{key}={fraction:g} of {n} rows gives no rows; use more data or a larger fraction")
    if n - n_val - n_test < 2:
        raise DataError(f"the dataset has {n} rows, too few to train on after the validation and test splits")
    order = np.random.default_rng(seed).permutation(n)
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


# ---------------------------------------------------------------------------------------------------- in memory


@dataclasses.dataclass(frozen=True)
class Split:
    """x: (n, d) float; y: (n,) float in {-1, +1} (binary), int class ids (multiclass) or a standardized numeric
    target."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def blocks(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) of consecutive rows, ``rows`` at a time (as ``StreamedSplit.blocks`` reads them from disk)."""
        for start in range(0, len(self), rows):
            yield self.x[start : start + rows], self.y[start : start + rows]


@dataclasses.dataclass(frozen=True)
class InMemoryDataset:
    """A ``Dataset`` whose splits are arrays in host memory."""

    name: str
    train: Split
    val: Split
    test: Split
    feature_names: tuple[str, ...]
    classes: tuple  # original label values, in encoding order
    mean: np.ndarray | None = None  # standardization, fitted on train
    std: np.ndarray | None = None
    encoding: Encoding = dataclasses.field(default_factory=lambda: numeric_encoding(()))
    target: str | None = None
    target_scale: tuple[float, float] | None = None  # a numeric target's (mean, std) over the training split
    weighting: Weighting | None = None

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
        return preprocessing_record(self)


def load_dataset(config: GradfitConfig, shuffle: str = "full", supplied: Supplied | None = None) -> InMemoryDataset:
    """Load, check, encode, split and standardize the dataset a config names.

    ``shuffle`` is the run's resolved ``train.shuffle``: with "blocks" each split keeps its rows in file order
    (the order a streamed run reads them in); with "full" they are in the split's seeded permutation.

    Raises:
        DataError: a missing or malformed file, bad labels, a feature cell that is not finite or beyond
            ``MAX_FEATURE``, or one that preprocessing takes beyond the range of the run's dtype
            (``precision.of(config).compute_dtype``: float32's is 3.4e38), each naming the file, line and column.
    """
    data = config.data
    regression = config.model.regression
    source = read_source(data, data_seed(config), regression, supplied)
    x, names, origin = source.x, source.names, source.origin
    checked = data.missing == "error" and data.source != "synthetic"  # the generator makes no missing cell
    if checked:  # before the split: a missing cell is the first thing to fix
        refuse_missing(x, names, source.locate)
    if regression:
        y, classes = numeric_target(source.labels, origin, source.target), list[Any]()
    else:
        y, classes = encode_labels(source.labels, origin)
    given = supplied.val_rows if supplied is not None else 0  # X_val: the last rows, data.val_fraction is 0
    try:
        train_idx, val_idx, test_idx = split_indices(
            len(y) - given, data.val_fraction, data.test_fraction, data_seed(config)
        )
    except DataError as exc:
        raise DataError(f"{origin}: {exc}") from None
    if given:
        val_idx = np.arange(len(y) - given, len(y))
    if shuffle == "blocks":
        train_idx, val_idx, test_idx = np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)
    target_scale = None
    if regression:
        moments = standardize.Moments(1)
        moments.add(y[train_idx, None])
        target_scale = target_statistics(moments, origin)
        y = (y - target_scale[0]) / target_scale[1]
    elif len(np.unique(y[train_idx])) < 2:
        raise DataError(f"{origin}: the training split holds a single class; use more rows or another seed")
    ids = class_positions(y, classes)
    if given and ids is not None:  # X_val's labels must be classes the training rows teach
        unseen = np.setdiff1d(np.unique(ids[val_idx]), np.unique(ids[train_idx]))
        if len(unseen):
            raise DataError(
                f"y_val: holds {preview([classes[i] for i in unseen])}, a class no training row of X has; the model "
                "cannot predict it (give X rows of it, or leave those validation rows out)"
            )
    sample = None if source.weights is None else source.weights[train_idx]  # balanced counts weights, as sklearn
    counts = None if ids is None else np.bincount(ids[train_idx], sample, minlength=len(classes))
    weighting = Weighting.of(config, source.weights is not None, classes, counts, origin)
    if weighting is not None:
        weights = weighting.rows(source.weights, ids)
        if not weights[train_idx].sum() > 0:
            raise DataError(f"{origin}: every training row weighs 0 (data.weight, model.class_weight); nothing to fit")
        if ids is not None:
            refuse_weightless_class(ids[train_idx], weights[train_idx], classes, origin)
        y = with_weights(y, weights)
    encoding = fit_encoding(data, standardize.taken_chunks(x, train_idx), names, source.dictionaries, origin)
    if not (encoding.identity and (checked or data.source == "synthetic")):  # else it would hand x back as it is
        x = encoding.transform(x, source.dictionaries, source.locate)
    names = encoding.feature_names
    raw, mean, std = x, None, None
    if data.standardize:
        mean, std = standardize.statistics(standardize.row_chunks(x[train_idx]), names, origin)
        mean, std = only_numeric(encoding, mean, std)
        x = standardize.standardized(raw, mean, std)  # an overflow is found and reported just below
    _check_model_range(x, raw, names, source.locate, precision.of(config), data.standardize)
    del raw
    return InMemoryDataset(
        name=origin,
        train=Split(x[train_idx], y[train_idx]),
        val=Split(x[val_idx], y[val_idx]),
        test=Split(x[test_idx], y[test_idx]),
        feature_names=tuple(names),
        classes=tuple(classes),
        mean=mean,
        std=std,
        encoding=encoding,
        target=source.target,
        target_scale=target_scale,
        weighting=weighting,
    )


def target_statistics(moments: standardize.Moments, origin: str) -> tuple[float, float]:
    """(mean, std) of a numeric target's training rows from their ``moments``: what it is standardized with, so
    that one learning rate serves any units. A constant target has nothing to fit."""
    mean, std = float(moments.mean[0]), float(moments.std()[0])
    if not std > 0:
        raise DataError(f"{origin}: the target is {mean:g} in every training row; there is nothing to fit")
    return mean, std


def fit_encoding(
    data: DataConfig, chunks: standardize.Chunks, names: list[str], dictionaries: Mapping[str, list[str]], origin: str
) -> Encoding:
    """The encoding of the training rows ``chunks`` yields, as ``data`` asks (``gradfit.data.encoding.fit``)."""
    return encoding_fit(
        chunks,
        names,
        dictionaries,
        missing=data.missing,
        missing_indicator=data.missing_indicator,
        max_categories=data.max_categories,
        unknown_category=data.unknown_category,
        reference_category=data.reference_category,
        origin=origin,
    )


def only_numeric(encoding: Encoding, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardization of the numeric features only: the 0/1 encodings keep mean 0 and std 1 (stay as they are)."""
    if encoding.identity:
        return mean, std
    numeric = encoding.numeric_features
    return np.where(numeric, mean, 0.0), np.where(numeric, std, 1.0)


def _check_model_range(
    x: np.ndarray, raw: np.ndarray, names: list[str], locate: Locate, chosen: precision.Precision, standardized: bool
) -> None:
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
        where += (
            f", which standardizes to {_number(x[row, col])} (with the training rows' mean and std), beyond "
            f"{dtype.name}'s range"
        )
    else:
        where += f", beyond {dtype.name}'s range after preprocessing"
    if dtype == np.float64:
        hint = "is it a sentinel for a missing value? Remove or impute it"
    elif standardized:
        hint = "is it a sentinel for a missing value? Remove or impute it, or set runtime.precision: float64"
    else:
        hint = "set data.standardize: true or runtime.precision: float64"
    raise DataError(f"{where}; {hint}")


def first_overflow(x: np.ndarray, dtype: Any) -> tuple[int, int] | None:
    """(row, column) of the first cell of ``x`` (n, d) that is not finite once cast to ``dtype``, or None."""
    for start in range(0, len(x), standardize.CHUNK_ROWS):
        with np.errstate(over="ignore", invalid="ignore"):
            ok = np.isfinite(x[start : start + standardize.CHUNK_ROWS].astype(dtype, copy=False))
        if not ok.all():
            row, col = np.argwhere(~ok)[0]
            return start + int(row), int(col)
    return None


def _number(value: Any) -> str:
    return repr(float(value))


def split_arrays(split: Split, n_classes: int, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as the loss wants them: x in ``dtype``; y as ±1 or a numeric target in ``dtype``, int32 class
    ids, or (label, weight) pairs in ``dtype``."""
    return np.asarray(split.x, dtype), np.asarray(split.y, label_dtype(n_classes, dtype, split.y.ndim == 2))


# ---------------------------------------------------------------------------------------------------- sources


class Source(NamedTuple):
    """What ``read_source`` returns: raw rows (n, d), labels, input column names, a display name, where each row
    is, the categorical columns' dictionaries and the label column's name."""

    x: np.ndarray
    labels: Labels | np.ndarray
    names: list[str]
    origin: str
    locate: Locate
    dictionaries: dict[str, list[str]] = {}
    target: str | None = None
    weights: np.ndarray | None = None  # data.weight's column (n,), float64


def read_source(data: DataConfig, seed: int, regression: bool = False, supplied: Supplied | None = None) -> Source:
    """Features (n, d), raw labels (n,), feature names and a display name for the configured source
    (``regression``: synthetic rows get a numeric target; ``supplied``: the rows of ``data.source: memory``)."""
    if data.source == "synthetic":
        s = data.synthetic
        x, y = synthetic.make_synthetic(s.n_samples, s.n_features, s.n_classes, s.separation, s.noise, seed, regression)
        return Source(x, y, synthetic.feature_names(s.n_features), "synthetic", lambda row: f"synthetic: row {row}")
    table = open_source(data, supplied=supplied)
    with blocks.weight_cells(data.weight):
        x, labels, positions = table.read_all()
    origin = str(table.path) if data.source in ("file", "memory") else data.source
    locate = lambda row: table.locate(int(positions[row]))  # noqa: E731
    names, weights = table.names, None
    if data.weight is not None:
        x, names, weights = blocks.split_weight(x, names, table.categories.dictionaries, data.weight, locate)
    return Source(x, labels, names, origin, locate, table.categories.dictionaries, table.target, weights)


def open_source(data: DataConfig, need_labels: bool | None = True, supplied: Supplied | None = None) -> blocks.Table:
    """The table a file, built-in or memory source names, its columns chosen as ``data`` says (header checked)."""
    path: Path | MemoryTable
    if data.source == "memory":
        path = memory_rows(supplied)
    else:
        path = file_path(data) if data.source == "file" else builtin_path(data.source)
    features = data.features
    if features is not None and data.weight is not None:
        features = [*features, data.weight]
    return tabular.open_table(
        path,
        data.target if data.source in ("file", "memory") else "target",
        features,
        need_labels,
        drop=data.drop,
        categorical=data.categorical,
        run_inputs=False,
        extra_ok=data.features is not None,
    )


def memory_rows(supplied: Supplied | None) -> MemoryTable:
    """The rows of ``data.source: memory``, which only Python hands over."""
    if supplied is None:
        raise ConfigError(
            "data.source: memory: the rows were handed over in Python (gradfit.fit(config, X=..., y=...) or a "
            "gradfit.sklearn estimator) and are not on disk; here, read them from a file (data.source: file, "
            "data.path) or pass a data file where the command takes one (--data)"
        )
    return supplied.rows


def file_path(data: DataConfig) -> Path:
    """``data.path`` of a file source (the config's schema refuses a file source without one)."""
    if data.path is None:
        raise ConfigError("data.source is 'file' but data.path is not set")
    return Path(data.path)


def builtin_path(name: str) -> Path:
    """Where a built-in CSV lives: inside the installed package, or in data/ of a source checkout."""
    package = Path(__file__).resolve().parents[1]
    for folder in (package / "_data", package.parent / "data"):
        if (folder / BUILTIN[name]).is_file():
            return folder / BUILTIN[name]
    raise DataError(f"built-in dataset '{name}' is missing from the installation; reinstall gradfit")
