"""Data that stay on disk: a converted folder (memory-mapped) or synthetic rows generated on demand, read in
row blocks and standardized with statistics taken in streamed passes. No jax.

A ``StreamedDataset``'s splits hand out rows by index (``StreamedSplit.take``) exactly as the in-memory path
would have them: the same split, the same row order for the same shuffle mode, the same standardization
arithmetic, the same casts. That is what makes a streamed run's parameters equal an in-memory run's bit for bit.
Whether a run streams is decided in ``gradfit.data.load``.

Row order within the splits: ``train.shuffle: full`` keeps the split's seeded permutation (rows are then read
at random: fast on an SSD or from the page cache, slow from a spinning disk); ``blocks`` keeps the rows of each
split in file order, so that a block of consecutive training rows is one run of the file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from gradfit.config.schema import GradfitConfig, data_seed
from gradfit.data import standardize, synthetic, tabular
from gradfit.data.dataset import check_binary_model, file_path, preprocessing_record, shuffle_mode, split_indices
from gradfit.data.labels import Labels, encode_labels
from gradfit.errors import DataError

# ---------------------------------------------------------------------------------------------------- sources


class ConvertedRows:
    """Rows of a converted folder, memory-mapped: only the pages of the rows read are touched."""

    def __init__(self, table: tabular.Table):
        if table.stored_x is None or table.stored_codes is None or table.classes is None or table.rows is None:
            raise DataError(f"{table.path}: only a folder made by 'gradfit data convert' can be streamed")
        self.table, self.x, self.codes, self.classes = table, table.stored_x, table.stored_codes, table.classes
        self.n_rows, self.names = table.rows, table.names

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw features (len(rows), d) and class codes of ``rows`` (sorted, distinct), in that order."""
        if len(rows) and rows[-1] - rows[0] < 2 * len(rows):  # a run of the file: read it whole, then pick
            first, last = int(rows[0]), int(rows[-1]) + 1
            picked = rows - first
            return np.asarray(self.x[first:last])[picked], np.asarray(self.codes[first:last])[picked]
        return np.asarray(self.x[rows]), np.asarray(self.codes[rows])

    def digest(self) -> int:
        """CRC-32 of the folder's files."""
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
        self.n_rows, self.names = self.spec.n_samples, synthetic.feature_names(self.spec.n_features)
        self.seen = np.zeros(self.spec.n_classes, bool)  # classes drawn so far
        self.made: set[int] = set()  # blocks generated so far
        self._block = functools.lru_cache(maxsize=4)(self._make_block)

    def _make_block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        self.made.add(block)
        start = block * synthetic.SYNTHETIC_BLOCK
        x, y = synthetic.synthetic_rows(
            self.spec, self.seed, start, min(start + synthetic.SYNTHETIC_BLOCK, self.n_rows)
        )
        self.seen[np.unique(y)] = True
        return x, y

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features (len(rows), d) float32 and class ids of ``rows`` (any order)."""
        blocks = rows // synthetic.SYNTHETIC_BLOCK
        x = np.empty((len(rows), self.spec.n_features), np.float32)
        y = np.empty(len(rows), np.int64)
        for block in np.unique(blocks):
            mine = np.flatnonzero(blocks == block)
            bx, by = self._block(int(block))
            offset = rows[mine] - block * synthetic.SYNTHETIC_BLOCK
            x[mine], y[mine] = bx[offset], by[offset]
        return x, y

    def digest(self) -> int:
        """CRC-32 of the generator's settings."""
        return zlib.crc32(json.dumps([self.spec.model_dump(), self.seed]).encode())


Rows = ConvertedRows | SyntheticRows


# ---------------------------------------------------------------------------------------------------- dataset


@dataclasses.dataclass(frozen=True)
class StreamedSplit:
    """A split whose rows stay on disk: ``rows`` are their indices in the file, in the split's order."""

    rows: np.ndarray
    dataset: StreamedDataset

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, positions: np.ndarray, param_dtype: Any, compute_dtype: Any) -> tuple[np.ndarray, np.ndarray]:
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
            raw_row = self.dataset.source.read(wanted[row : row + 1])[0]
            tabular.check_features(raw_row, self.dataset.feature_names, self.dataset.locate, wanted[row : row + 1])
            value = raw_row[0, col]
            raise DataError(
                f"{self.dataset.locate(wanted[row])}: column '{self.dataset.feature_names[col]}' is "
                f"{float(value)!r}, beyond {np.dtype(compute_dtype).name}'s range after preprocessing; "
                "remove or impute it, or set runtime.precision: float64"
            )
        y = self.dataset.encoded[codes]
        return x, (np.asarray(y, param_dtype) if self.dataset.n_classes == 2 else np.asarray(y, np.int32))

    def blocks(
        self, rows: int, param_dtype: Any = np.float64, compute_dtype: Any = np.float64
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``take`` of consecutive rows, ``rows`` at a time (as ``Split.blocks`` hands them out)."""
        for start in range(0, len(self), rows):
            yield self.take(np.arange(start, min(start + rows, len(self))), param_dtype, compute_dtype)


@dataclasses.dataclass(frozen=True)
class StreamedDataset:
    """A ``Dataset`` whose splits read their rows from ``source`` when asked."""

    name: str
    source: Rows
    split_rows: tuple  # (train, val, test) row indices in the file
    feature_names: tuple[str, ...]
    classes: tuple
    encoded: np.ndarray  # class code -> y as the loss wants it (+-1, or class id)
    mean: np.ndarray | None
    std: np.ndarray | None

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
        """Where a row of the source is, for a message."""
        return f"{self.name}: row {row}"

    def standardize_in_place(self, raw: np.ndarray) -> np.ndarray:
        """``(raw - mean) / std`` in raw's dtype, as ``load_dataset`` computes it, written over ``raw``."""
        if self.mean is not None and self.std is not None:  # beyond the dtype's range: reported by ``take``
            return standardize.standardize_in_place(raw, self.mean, self.std)
        return raw

    def digest(self) -> str:
        """CRC-32 of the source (the files' bytes, or the generator's settings) and of the splits."""
        crc = self.source.digest()
        for rows in self.split_rows:
            crc = zlib.crc32(np.ascontiguousarray(rows, np.int64).data, crc)
        return f"{crc:08x}"

    def preprocessing(self) -> dict:
        """JSON-ready record of the feature names, label mapping and standardization (the in-memory one's)."""
        return preprocessing_record(self)


def load_streamed(config: GradfitConfig) -> StreamedDataset:
    """Open the source, split it (the in-memory split), take the training statistics in a streamed pass."""
    data = config.data
    source: Rows
    if data.source == "synthetic":
        source, origin = SyntheticRows(config), "synthetic"
    else:
        table = tabular.open_table(file_path(data))
        source, origin = ConvertedRows(table), str(table.path)
    n = source.n_rows
    try:
        splits = split_indices(n, data.val_fraction, data.test_fraction, data_seed(config))
    except DataError as exc:
        raise DataError(f"{origin}: {exc}") from None
    splits = tuple(rows.astype(np.int32 if n < 2**31 else np.int64) for rows in splits)  # 100M rows: 400 MB
    if shuffle_mode(config, True) == "blocks":
        for rows in splits:
            rows.sort()
    train = splits[0]
    mean = std = None
    if data.standardize:
        mean, std = standardize.statistics(_training_chunks(source, train, origin), source.names, origin)
    classes, encoded = _classes(config, source, origin, train)
    return StreamedDataset(origin, source, splits, tuple(source.names), tuple(classes), encoded, mean, std)


def _training_chunks(source: Rows, train: np.ndarray, origin: str) -> standardize.Chunks:
    """The training rows in split order, ``CHUNK_ROWS`` at a time, each chunk read in file order and checked."""

    def chunks() -> Iterator[np.ndarray]:
        for start in range(0, len(train), standardize.CHUNK_ROWS):
            rows = train[start : start + standardize.CHUNK_ROWS]
            order = np.argsort(rows, kind="stable")
            x, _ = source.read(rows[order])
            tabular.check_features(x, source.names, lambda row: f"{origin}: row {row}", rows[order])
            yield x[np.argsort(order, kind="stable")]

    return chunks


def _classes(config: GradfitConfig, source: Rows, origin: str, train: np.ndarray) -> tuple[list, np.ndarray]:
    """The classes (as ``encode_labels`` would list them) and, per stored class code, its encoding."""
    if isinstance(source, SyntheticRows):
        block_rows = synthetic.SYNTHETIC_BLOCK
        for block in range(-(-source.n_rows // block_rows)):  # the blocks the statistics did not draw
            if block not in source.made:
                source.read(np.array([block * block_rows]))
        values = np.flatnonzero(source.seen)
    else:
        values = source.classes
    encoded, classes = encode_labels(Labels(values, np.arange(len(values))), origin)
    check_binary_model(config, classes, origin)
    if isinstance(source, ConvertedRows) and len(np.unique(np.asarray(source.codes[train]))) < 2:
        raise DataError(f"{origin}: the training split holds a single class; use more rows or another seed")
    if isinstance(source, SyntheticRows):  # class ids index the table of seen values
        table = np.zeros(config.data.synthetic.n_classes, encoded.dtype)
        table[values] = encoded
        encoded = table
    return classes, encoded
