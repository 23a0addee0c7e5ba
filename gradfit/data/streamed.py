"""Data that stay on disk: a converted folder (memory-mapped) or synthetic rows generated on demand, read in
row blocks and standardized with statistics taken in streamed passes. No jax.

``load(config)`` decides where a run's data live (``data.in_memory``) and returns either the in-memory
``Dataset`` or a ``StreamedDataset``, whose splits hand out rows by index (``StreamedSplit.take``) exactly as
the in-memory path would have them: the same split, the same row order for the same shuffle mode, the same
standardization arithmetic, the same casts. That is what makes a streamed run's parameters equal an in-memory
run's bit for bit.

Row order within the splits: ``train.shuffle: full`` keeps the split's seeded permutation (rows are then read
at random: fast on an SSD or from the page cache, slow from a spinning disk); ``blocks`` keeps the rows of each
split in file order, so that a block of consecutive training rows is one run of the file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import zlib
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from gradfit.core import precision
from gradfit.runtime import resources
from gradfit.data import tabular
from gradfit.data.dataset import (CHUNK_ROWS, SYNTHETIC_BLOCK, Dataset, builtin_path, encode_labels, fit_checked, load_dataset,
                          split_indices, synthetic_rows)
from gradfit.errors import ConfigError, DataError
from gradfit.files import format_bytes
from gradfit.config.schema import GradfitConfig, data_seed
from gradfit.data.tabular import Labels, preview

HOST_SHARE = 4  # auto streams when the training features would take over 1/4 of host memory...
DEVICE_SHARE = 2  # ... or over 1/2 of the device's


def shuffle_mode(config: GradfitConfig, streamed: bool) -> str:
    """``train.shuffle`` resolved: auto is full in memory and blocks when streaming."""
    mode = config.train.shuffle
    return ("blocks" if streamed else "full") if mode == "auto" else mode


def load(config: GradfitConfig, device_bytes: Optional[int] = None) -> Union[Dataset, "StreamedDataset"]:
    """The run's data: in memory, or streamed from disk, as ``data.in_memory`` says (see ``decide``)."""
    if decide(config, device_bytes):
        return load_streamed(config)
    resources.check_synthetic(config, resources.host_available_bytes())  # before the generator allocates it
    return load_dataset(config, shuffle_mode(config, False))


def decide(config: GradfitConfig, device_bytes: Optional[int] = None) -> bool:
    """Whether the run streams its data. Only a converted folder or synthetic data can stream, and only on
    minibatches; auto streams a minibatch run when the training split's features would take over half the
    device memory or a quarter of host RAM, and refuses a CSV or .npz that large (naming the command that
    converts it)."""
    data = config.data
    rows, width, path = _extent(config)
    share = 1 - data.val_fraction - data.test_fraction
    need = int(rows * share) * width * precision.of(config).compute_dtype.itemsize
    host = resources.host_available_bytes()
    large = (host is not None and need * HOST_SHARE > host) or (device_bytes is not None and need * DEVICE_SHARE >
                                                                  device_bytes)
    can_stream = data.source == "synthetic" or (path is not None and tabular.is_converted(path))
    if data.in_memory == "auto":  # full batch reads every row at every step: it stays in memory, or is refused
        wanted = large and config.train.batch_size is not None
    else:
        wanted = not data.in_memory
    if wanted and not can_stream:
        why = "data.in_memory is false" if data.in_memory is False else \
            f"its training split needs about {format_bytes(need)}, more than gradfit holds in memory"
        raise DataError(f"{path}: {why}, and only a folder made by 'gradfit data convert' (or synthetic data) can "
                        f"be streamed; convert it first: gradfit data convert {path} DIR, then set data.path: DIR")
    if wanted and config.train.batch_size is None:
        raise ConfigError("train.batch_size: streamed data train on minibatches; set train.batch_size (a full "
                          "batch would read the whole training split at every step), or data.in_memory: true")
    return wanted


def _extent(config: GradfitConfig) -> tuple[int, int, Optional[Path]]:
    """(rows, features, file) of the configured data, known before reading them; for a CSV or .npz an estimate
    of its cells as (cells, 1), one per 8 bytes of the file (a number as written takes 6-12)."""
    data = config.data
    if data.source == "synthetic":
        return data.synthetic.n_samples, data.synthetic.n_features, None
    if data.source != "file":
        return 0, 0, builtin_path(data.source)  # the built-in tables are small
    path = Path(data.path)
    if tabular.is_converted(path):
        meta = tabular.read_meta(path)
        return meta["rows"], len(meta["feature_names"]), path
    try:
        size = os.path.getsize(path)
    except OSError:
        return 0, 0, path  # the reader names the problem
    return size // 8, 1, path


# ---------------------------------------------------------------------------------------------------- sources


class ConvertedRows:
    """Rows of a converted folder, memory-mapped: only the pages of the rows read are touched."""

    def __init__(self, table: tabular.Table):
        self.table, self.x, self.codes = table, table.stored_x, table.stored_codes
        self.n_rows, self.names = table.rows, table.names

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw features (len(rows), d) and class codes of ``rows`` (sorted, distinct), in that order."""
        if len(rows) and rows[-1] - rows[0] < 2 * len(rows):  # a run of the file: read it whole, then pick
            first, last = int(rows[0]), int(rows[-1]) + 1
            picked = rows - first
            return np.asarray(self.x[first:last])[picked], np.asarray(self.codes[first:last])[picked]
        return np.asarray(self.x[rows]), np.asarray(self.codes[rows])

    def digest(self) -> int:
        crc = 0
        for name in ("X.npy", "y.npy", "meta.json"):
            with open(self.table.path / name, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 24), b""):
                    crc = zlib.crc32(chunk, crc)
        return crc


class SyntheticRows:
    """Synthetic rows generated on demand, a generator block at a time (the last few are kept)."""

    def __init__(self, config: GradfitConfig):
        self.spec, self.seed = config.data.synthetic, data_seed(config)
        self.n_rows, self.names = self.spec.n_samples, [f"x{i}" for i in range(self.spec.n_features)]
        self.seen = np.zeros(self.spec.n_classes, bool)  # classes drawn so far
        self.made: set[int] = set()  # blocks generated so far
        self._block = functools.lru_cache(maxsize=4)(self._make_block)

    def _make_block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        self.made.add(block)
        start = block * SYNTHETIC_BLOCK
        x, y = synthetic_rows(self.spec, self.seed, start, min(start + SYNTHETIC_BLOCK, self.n_rows))
        self.seen[np.unique(y)] = True
        return x, y

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blocks = rows // SYNTHETIC_BLOCK
        x = np.empty((len(rows), self.spec.n_features), np.float32)
        y = np.empty(len(rows), np.int64)
        for block in np.unique(blocks):
            mine = np.flatnonzero(blocks == block)
            bx, by = self._block(int(block))
            offset = rows[mine] - block * SYNTHETIC_BLOCK
            x[mine], y[mine] = bx[offset], by[offset]
        return x, y

    def digest(self) -> int:
        return zlib.crc32(json.dumps([self.spec.model_dump(), self.seed]).encode())


Rows = Union[ConvertedRows, SyntheticRows]


# ---------------------------------------------------------------------------------------------------- dataset


@dataclasses.dataclass(frozen=True)
class StreamedSplit:
    """A split whose rows stay on disk: ``rows`` are their indices in the file, in the split's order."""

    rows: np.ndarray
    dataset: "StreamedDataset"

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, positions: np.ndarray, param_dtype, compute_dtype) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the rows at ``positions`` (any order, repeats allowed) as the loss wants them: standardized
        x in ``compute_dtype``; y as +-1 in ``param_dtype`` (binary) or int32 class ids. The in-memory path's
        arithmetic and casts, so the same bits; the rows are read from the source in file order."""
        wanted = self.rows[positions]
        order = np.argsort(wanted, kind="stable")
        sorted_x, sorted_codes = self.dataset.source.read(wanted[order])
        raw = np.empty_like(sorted_x)
        raw[order] = sorted_x
        codes = np.empty_like(sorted_codes)
        codes[order] = sorted_codes
        del sorted_x
        x = self.dataset.standardize_in_place(raw)  # raw is not needed after, unless a cell overflows
        with np.errstate(over="ignore"):
            x = np.asarray(x, param_dtype).astype(compute_dtype, copy=False)
        if not np.isfinite(x).all():
            row, col = np.argwhere(~np.isfinite(x))[0]
            raw_row = self.dataset.source.read(wanted[row:row + 1])[0]
            tabular.check_features(raw_row, self.dataset.feature_names, self.dataset.locate, wanted[row:row + 1])
            value = raw_row[0, col]
            raise DataError(f"{self.dataset.locate(wanted[row])}: column '{self.dataset.feature_names[col]}' is "
                            f"{float(value)!r}, beyond {np.dtype(compute_dtype).name}'s range after preprocessing; "
                            "remove or impute it, or set runtime.precision: float64")
        y = self.dataset.encoded[codes]
        return x, (np.asarray(y, param_dtype) if self.dataset.n_classes == 2 else np.asarray(y, np.int32))

    def blocks(self, rows: int, param_dtype=np.float64, compute_dtype=np.float64
               ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(self), rows):
            yield self.take(np.arange(start, min(start + rows, len(self))), param_dtype, compute_dtype)


@dataclasses.dataclass(frozen=True)
class StreamedDataset:
    """What ``Dataset`` offers, with splits that read their rows from ``source`` when asked."""

    name: str
    source: Rows
    split_rows: tuple  # (train, val, test) row indices in the file
    feature_names: tuple[str, ...]
    classes: tuple
    encoded: np.ndarray  # class code -> y as the loss wants it (+-1, or class id)
    mean: Optional[np.ndarray]
    std: Optional[np.ndarray]

    @property
    def train(self) -> StreamedSplit:
        return StreamedSplit(self.split_rows[0], self)

    @property
    def val(self) -> StreamedSplit:
        return StreamedSplit(self.split_rows[1], self)

    @property
    def test(self) -> StreamedSplit:
        return StreamedSplit(self.split_rows[2], self)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def locate(self, row: int) -> str:
        return f"{self.name}: row {row}"

    def standardize_in_place(self, raw: np.ndarray) -> np.ndarray:
        """``(raw - mean) / std`` in raw's dtype, as ``load_dataset`` computes it, written over ``raw``."""
        if self.mean is not None:
            with np.errstate(over="ignore", invalid="ignore"):  # beyond the dtype's range: reported by ``take``
                raw -= self.mean.astype(raw.dtype)
                raw /= self.std.astype(raw.dtype)
        return raw

    def digest(self) -> str:
        """CRC-32 of the source (the files' bytes, or the generator's settings) and of the splits."""
        crc = self.source.digest()
        for rows in self.split_rows:
            crc = zlib.crc32(np.ascontiguousarray(rows, np.int64).data, crc)
        return f"{crc:08x}"

    def preprocessing(self) -> dict:
        return Dataset.preprocessing(self)  # the same record: it reads only names, classes, mean, std and rows


def load_streamed(config: GradfitConfig) -> StreamedDataset:
    """Open the source, split it (the in-memory split), take the training statistics in streamed passes."""
    data = config.data
    if data.source == "synthetic":
        source, origin = SyntheticRows(config), "synthetic"
    else:
        table = tabular.open_table(Path(data.path))
        source, origin = ConvertedRows(table), str(table.path)
    n = source.n_rows
    try:
        splits = split_indices(n, data.val_fraction, data.test_fraction, data_seed(config))
    except DataError as exc:
        raise DataError(f"{origin}: {exc}") from None
    splits = tuple(rows.astype(np.int32 if n < 2 ** 31 else np.int64) for rows in splits)  # 100M rows: 400 MB
    if shuffle_mode(config, True) == "blocks":
        for rows in splits:
            rows.sort()
    train = splits[0]
    mean = std = None
    if data.standardize:
        def chunks():
            for start in range(0, len(train), CHUNK_ROWS):
                rows = train[start:start + CHUNK_ROWS]
                order = np.argsort(rows, kind="stable")
                x, _ = source.read(rows[order])
                tabular.check_features(x, source.names, lambda row: f"{origin}: row {row}", rows[order])
                yield x[np.argsort(order, kind="stable")]

        mean, std = fit_checked(chunks, len(train), source.names, origin)
    classes, encoded = _classes(config, source, origin, train)
    return StreamedDataset(origin, source, splits, tuple(source.names), tuple(classes), encoded, mean, std)


def _classes(config: GradfitConfig, source: Rows, origin: str, train: np.ndarray) -> tuple[list, np.ndarray]:
    """The classes (as ``encode_labels`` would list them) and, per stored class code, its encoding."""
    if isinstance(source, SyntheticRows):
        for block in range(-(-source.n_rows // SYNTHETIC_BLOCK)):  # the blocks the statistics did not draw
            if block not in source.made:
                source.read(np.array([block * SYNTHETIC_BLOCK]))
        values = np.flatnonzero(source.seen)
    else:
        values = source.table.classes
    encoded, classes = encode_labels(Labels(values, np.arange(len(values))), origin)
    if config.model.kind == "logistic" and len(classes) > 2:
        raise DataError(f"{origin}: the logistic model is binary but the target has {len(classes)} classes "
                        f"({preview(classes)}); use model.kind: mlp for multiclass")
    codes = source.codes[train] if isinstance(source, ConvertedRows) else None
    if codes is not None and len(np.unique(np.asarray(codes))) < 2:
        raise DataError(f"{origin}: the training split holds a single class; use more rows or another seed")
    if isinstance(source, SyntheticRows):  # class ids index the table of seen values
        table = np.zeros(config.data.synthetic.n_classes, encoded.dtype)
        table[values] = encoded
        encoded = table
    return classes, encoded

